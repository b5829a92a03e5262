"""The corpus: Debian images this project did not make, for image-info's tests.

One mmdebstrap tree (Debian 13, minbase with systemd, openssh-server and
ifupdown, from the host's mirror) laid out the ways people and other tools
lay out disks, each with plain tools only (sfdisk, mkfs.* filled from a
directory, mkfs.fat + mcopy, tar; btrfs's `@` subvolume through one loop
mount):

- gpt-esp: GPT, an ESP with GRUB's EFI binary, an ext4 root; fstab by UUID;
- split: GPT, /boot, / and /var as their own ext4 partitions, /var the
  largest (so the root is not), fstab naming them by PARTUUID and LABEL;
- btrfs: dos label, one btrfs partition whose root is the `@` subvolume;
- bare: an ext4 file system image of the tree, no partition table;
- tarball: the tree as a tar archive;

and one image another tool made whole:

- vmdb2: Debian 12 by vmdb2 (Debian's package): a dos label, one ext4
  partition, GRUB for BIOS in the MBR and the gap after it, a kernel;
  bootable (corpus_vmdb2 says how it runs without device-mapper).

Built once into a store keyed by the two modules' text, the suite and the mirror
(CORPUS_STORE=DIR, default /var/tmp/osbuild-corpus, about 2 GB: a cache the
next run reuses; a corpus of other inputs is removed when a new one is
built), under a lock that pytest-xdist's workers share.
"""

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import corpus_vmdb2
from imagemaker import mk
from runshare import locked

from osbuild.depsolve import host_mirror

SUITE = "trixie"
INCLUDE = "systemd-sysv,openssh-server,ifupdown"
HOSTNAME = "corpus"
MACHINE_ID = "c0a9c0a9c0a9c0a9c0a9c0a9c0a9c0a9"
MIB = 1024 * 1024
SECTOR = 512
EFI_BINARY = Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
# Every image has its own file system UUIDs, labels and partition UUIDs: libguestfs,
# given several images at once (virt-inspector in test_corpus.py), resolves fstab's
# UUID=, LABEL= and PARTUUID= across all of their disks (root labels: root_label).
ROOT_UUID = {"gpt-esp": "5a0c0c1e-7d1e-4c61-9b9a-000000000101",
             "split": "5a0c0c1e-7d1e-4c61-9b9a-000000000201",
             "btrfs": "5a0c0c1e-7d1e-4c61-9b9a-000000000301",
             "bare": "5a0c0c1e-7d1e-4c61-9b9a-000000000401"}
BOOT_UUID = "5a0c0c1e-7d1e-4c61-9b9a-000000000202"  # split's
VAR_UUID = "5a0c0c1e-7d1e-4c61-9b9a-000000000203"  # split's
ROOT_PARTUUID = {"gpt-esp": "7c0f1a5e-0000-4000-8000-000000000101",
                 "split": "7c0f1a5e-0000-4000-8000-000000000201"}
VAR_PARTUUID = "7c0f1a5e-0000-4000-8000-000000000203"  # split's
ESP_VOLID = "C0A9C0A9"  # gpt-esp's
DEFAULT_STORE = Path("/var/tmp/osbuild-corpus")  # a cache: the next run reuses it
IMAGES = {"gpt-esp": "gpt-esp.raw", "split": "split.raw", "btrfs": "btrfs.raw",
          "bare": "bare.ext4", "tarball": "tree.tar", "vmdb2": "vmdb2.raw"}


def root_label(image: str) -> str:
    return f"{image}-root"  # ext4 allows 16 bytes: the longest, gpt-esp-root, is 12


def run(*cmd: str, stdin: str | None = None) -> str:
    return subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True).stdout


def tree_size(tree: Path) -> int:
    return int(run("du", "-sb", str(tree)).split()[0])


def fs_size(content: int) -> int:
    """Room for `content` bytes of files with the file system's overhead, in whole MiB."""
    return ((content * 3 // 2 + 64 * MIB) // MIB) * MIB


def mkext4(src: Path, out: Path, size: int, uuid: str, label: str) -> None:
    run("mkfs.ext4", "-q", "-F", "-U", uuid, "-L", label, "-E", "root_owner=0:0",
        "-d", str(src), str(out), f"{size // 1024}k")


def partition(disk: Path, label: str, parts: list[str], size: int) -> list[int]:
    """A disk of `size` bytes with sfdisk's `parts` lines; their start offsets."""
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as f:
        f.truncate(size)
    run("sfdisk", "-q", str(disk), stdin=f"label: {label}\n" + "\n".join(parts) + "\n")
    table = run("sfdisk", "-d", str(disk))
    return [int(line.split("start=")[1].split(",")[0]) * SECTOR
            for line in table.splitlines() if "start=" in line]


def configure(tree: Path, fstab: str) -> None:
    (tree / "etc/fstab").write_text(fstab)
    (tree / "etc/hostname").write_text(f"{HOSTNAME}\n")
    (tree / "etc/machine-id").write_text(f"{MACHINE_ID}\n")


def gpt_esp(tree: Path, out: Path, work: Path) -> None:
    configure(tree, f"UUID={ROOT_UUID['gpt-esp']} / ext4 errors=remount-ro 0 1\n"
              f"UUID={ESP_VOLID[:4]}-{ESP_VOLID[4:]} /boot/efi vfat umask=0077 0 2\n")
    root_size = fs_size(tree_size(tree))
    starts = partition(out, "gpt", [f"size={32 * MIB // SECTOR}, type={ESP_TYPE}, name=ESP",
                                    f"size={root_size // SECTOR}, type={LINUX_TYPE}, "
                                    f"uuid={ROOT_PARTUUID['gpt-esp']}, name=root"],
                       root_size + 35 * MIB)
    run("mkfs.fat", "-F", "16", "-n", "ESP", "-i", ESP_VOLID, "--offset",
        str(starts[0] // SECTOR), str(out), str(32 * MIB // 1024))
    target = f"{out}@@{starts[0]}"
    env = ["env", "MTOOLS_SKIP_CHECK=1"]
    for directory in ("::/EFI", "::/EFI/BOOT", "::/EFI/debian"):
        run(*env, "mmd", "-i", target, directory)
    run(*env, "mcopy", "-i", target, str(EFI_BINARY), "::/EFI/BOOT/BOOTX64.EFI")
    run(*env, "mcopy", "-i", target, str(EFI_BINARY), "::/EFI/debian/grubx64.efi")
    fs = work / "root.ext4"
    mkext4(tree, fs, root_size, ROOT_UUID["gpt-esp"], root_label("gpt-esp"))
    mk.place(out, fs, starts[1])
    fs.unlink()


@contextmanager
def moved_out(tree: Path, work: Path, *dirs: str) -> Iterator[dict[str, Path]]:
    """`dirs` of the tree moved aside (left empty in the tree) while the block runs."""
    aside = {d: work / f"aside-{d}" for d in dirs}
    try:
        for d, where in aside.items():
            (tree / d).rename(where)
            (tree / d).mkdir()
            shutil.copystat(where, tree / d)
        yield aside
    finally:
        for d, where in aside.items():
            if where.exists():
                (tree / d).rmdir()
                where.rename(tree / d)


def split(tree: Path, out: Path, work: Path) -> None:
    configure(tree, f"UUID={ROOT_UUID['split']} / ext4 errors=remount-ro 0 1\n"
              "LABEL=corpus-boot /boot ext4 defaults 0 2\n"
              f"PARTUUID={VAR_PARTUUID} /var ext4 defaults 0 2\n")
    with moved_out(tree, work, "boot", "var") as aside:
        boot_size, root_size = 64 * MIB, fs_size(tree_size(tree))
        var_size = max(fs_size(tree_size(aside["var"])), root_size + 64 * MIB)
        starts = partition(out, "gpt", [
            f"size={boot_size // SECTOR}, type={LINUX_TYPE}, name=boot",
            f"size={root_size // SECTOR}, type={LINUX_TYPE}, "
            f"uuid={ROOT_PARTUUID['split']}, name=root",
            f"size={var_size // SECTOR}, type={LINUX_TYPE}, uuid={VAR_PARTUUID}, name=var"],
            boot_size + root_size + var_size + 3 * MIB)
        for src, size, uuid, label, start in (
                (aside["boot"], boot_size, BOOT_UUID, "corpus-boot", starts[0]),
                (tree, root_size, ROOT_UUID["split"], root_label("split"), starts[1]),
                (aside["var"], var_size, VAR_UUID, "var", starts[2])):
            fs = work / f"{label}.ext4"
            mkext4(src, fs, size, uuid, label)
            mk.place(out, fs, start)
            fs.unlink()


def btrfs(tree: Path, out: Path, work: Path) -> None:
    configure(tree, f"UUID={ROOT_UUID['btrfs']} / btrfs subvol=@,defaults 0 0\n")
    size = fs_size(tree_size(tree)) + 128 * MIB
    fs, mnt = work / "root.btrfs", work / "mnt"
    with open(fs, "wb") as f:
        f.truncate(size)
    run("mkfs.btrfs", "-q", "-f", "-U", ROOT_UUID["btrfs"], "-L", root_label("btrfs"), str(fs))
    mnt.mkdir()
    run("mount", "-o", "loop", str(fs), str(mnt))  # the loop device goes with the umount
    try:
        run("btrfs", "subvolume", "create", str(mnt / "@"))
        run("cp", "-a", f"{tree}/.", str(mnt / "@"))
    finally:
        run("umount", str(mnt))
        mnt.rmdir()
    [start] = partition(out, "dos", [f"size={size // SECTOR}, type=83"], size + MIB)
    mk.place(out, fs, start)
    fs.unlink()


def bare(tree: Path, out: Path, work: Path) -> None:
    configure(tree, f"UUID={ROOT_UUID['bare']} / ext4 errors=remount-ro 0 1\n")
    mkext4(tree, out, fs_size(tree_size(tree)), ROOT_UUID["bare"], root_label("bare"))


def tarball(tree: Path, out: Path, work: Path) -> None:
    configure(tree, "# no file systems: a tarball\n")
    run("tar", "--numeric-owner", "--xattrs", "-C", str(tree), "-cf", str(out), ".")


BUILDERS = {"gpt-esp": gpt_esp, "split": split, "btrfs": btrfs, "bare": bare,
            "tarball": tarball}


def key(mirror: str) -> str:
    text = (Path(__file__).read_bytes() + Path(corpus_vmdb2.__file__).read_bytes()
            + f"\0{SUITE}\0{INCLUDE}\0{mirror}".encode())
    return hashlib.sha256(text).hexdigest()[:16]


def build(store: Path) -> Path:
    """The corpus directory (one file per IMAGES entry, and the tree), built if missing."""
    mirror = host_mirror()
    where = store / key(mirror)
    store.mkdir(parents=True, exist_ok=True)
    with locked(store / "corpus.lock"):
        if (where / "done").exists():
            return where
        for old in store.iterdir():  # other inputs' corpora: never used again
            if old.is_dir():
                shutil.rmtree(old)
        work = where / "work"
        work.mkdir(parents=True)
        tree = where / "tree"
        run("mmdebstrap", "--quiet", "--variant=minbase", f"--include={INCLUDE}",
            "--mode=root", SUITE, str(tree), mirror)
        for name, builder in BUILDERS.items():
            builder(tree, where / IMAGES[name], work)
        corpus_vmdb2.build(where / IMAGES["vmdb2"], work / "vmdb2", mirror)
        shutil.rmtree(work)
        (where / "done").touch()
    return where
