"""vmdb2's image for the corpus: Debian 12 on a dos label with GRUB for BIOS.

vmdb2 (Debian's package) runs its own steps: parted, mkfs, debootstrap, apt
and grub-install in the chroot onto the whole-disk loop device. It maps the
partitions with kpartx, which needs device-mapper, and this machine has none;
a kpartx of the same command line stands in (this file run as `kpartx`): one
loop device for the disk and one per partition with --offset/--sizelimit
(what osbuild does), named /dev/mapper/loopXpN by symlinks in a tmpfs that is
mounted over /dev/mapper in a private mount namespace, so the host's
/dev/mapper is never touched and every mount vmdb2 makes goes with the
namespace. Whatever vmdb2 leaves attached to the image is detached after it.

One difference shows: grub-mkconfig's 10_linux writes no menu entry when the
root is a loop device (it cannot tell a partition from a loop-mounted file),
and it writes root=UUID= only when udev has made /dev/disk/by-uuid, which no
udevd makes here. With kpartx and udev the root is a device-mapper node with
that link. So for its grub step the spec names the root to grub-mkconfig as
UUID= the UUID it gives mkfs (GRUB_DEVICE in a grub.d drop-in, removed after
the step): the kernel command line is the one vmdb2 writes with udev.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

HOSTNAME = "vmdb2"
LABEL = "vmdb2-root"
ROOT_UUID = "5d0b1a9e-0000-4000-8000-00000000a002"  # mkfs -U: the same facts every build
SPEC = """\
steps:
  - mkimg: "{{ output }}"
    size: 1536M
  - mklabel: msdos
    device: "{{ output }}"
  - mkpart: primary
    device: "{{ output }}"
    start: 1MiB
    end: 100%%
    tag: /
  - kpartx: "{{ output }}"
  - mkfs: ext4
    partition: /
    label: %(label)s
    options: -U %(uuid)s
  - mount: /
    zerofree: false
  - debootstrap: bookworm
    mirror: %(mirror)s
    target: /
    variant: minbase
  - apt: install
    packages: [linux-image-amd64, systemd-sysv, openssh-server, ifupdown]
    recommends: false
    tag: /
  - fstab: /
  - chroot: /
    shell: echo %(hostname)s > /etc/hostname
  - chroot: /
    shell: |
      mkdir -p /etc/default/grub.d
      echo GRUB_DEVICE=UUID=%(uuid)s > /etc/default/grub.d/corpus-kpartx.cfg
  - grub: bios
    tag: /
    console: serial
  - chroot: /
    shell: rm /etc/default/grub.d/corpus-kpartx.cfg
"""
MAPPER = Path("/dev/mapper")


def spec(mirror: str) -> str:
    return SPEC % {"mirror": mirror, "label": LABEL, "hostname": HOSTNAME,
                   "uuid": ROOT_UUID}


def build(out: Path, work: Path, mirror: str) -> None:
    """Run vmdb2 to make `out` (its log next to it as vmdb2.log)."""
    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "kpartx"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    shim.chmod(0o755)
    (work / "corpus.vmdb").write_text(spec(mirror))
    script = (f"mount -t tmpfs -o mode=755 corpus-vmdb2 {MAPPER} && "
              f"exec vmdb2 --output={out} --log={out.parent / 'vmdb2.log'} --verbose "
              f"{work / 'corpus.vmdb'}")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private",
                               "sh", "-ec", script], env=env, capture_output=True, text=True)
    finally:
        detach(out)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise RuntimeError("vmdb2 failed:\n" + "\n".join(tail))


def detach(image: Path) -> None:
    """Detach every loop device backed by `image`."""
    if not image.exists():
        return
    found = subprocess.run(["losetup", "-n", "-O", "NAME", "-j", str(image.resolve())],
                           capture_output=True, text=True).stdout.split()
    for device in found:
        subprocess.run(["losetup", "-d", device], check=False)


# --- the kpartx stand-in -----------------------------------------------------------


def losetup(*args: str) -> str:
    return subprocess.run(["losetup", "--show", "-f", *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def kpartx_add(image: str) -> None:
    """`kpartx -asv IMAGE`: map each partition, print kpartx's `add map` lines."""
    disk = losetup(image)
    table = json.loads(subprocess.run(["sfdisk", "--json", disk], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    sector = table.get("sectorsize", 512)
    for n, part in enumerate(table["partitions"], start=1):
        start, size = part["start"] * sector, part["size"] * sector
        device = losetup("--offset", str(start), "--sizelimit", str(size), image)
        name = f"{Path(disk).name}p{n}"
        (MAPPER / name).symlink_to(device)
        rdev = os.stat(device).st_rdev
        print(f"add map {name} ({os.major(rdev)}:{os.minor(rdev)}): 0 {part['size']} "
              f"linear {disk} {part['start']}")


def kpartx_delete(image: str) -> None:
    """`kpartx -dsv IMAGE`: remove the names and detach the image's loop devices."""
    for link in MAPPER.glob("loop*"):
        link.unlink()
    detach(Path(image))


def kpartx(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("-asv", "-dsv"):
        print(f"kpartx (corpus stand-in): unsupported arguments {argv}", file=sys.stderr)
        return 1
    (kpartx_add if argv[0] == "-asv" else kpartx_delete)(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(kpartx(sys.argv[1:]))
