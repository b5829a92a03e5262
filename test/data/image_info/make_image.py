#!/usr/bin/python3
"""Disk images for the image-info tests, made with plain tools (not osbuild).

image-info has to read images it did not make, so these are built the way a
person with a shell would: truncate, sfdisk, mkfs.* filled from a directory
(mkfs.ext4 -d, mkfs.xfs -p protofile, mkfs.fat --offset + mcopy), dd into
place, and GRUB's BIOS boot code from grub-mkimage + boot.img. No loop devices,
no mounts, no root needed except for the xattrs some trees carry.

    make_image.py bios|uefi OUT.raw   (the tree is populate_tree()'s)
"""

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 1024 * 1024
SECTOR = 512
BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")
EFI_BINARY = Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi")

ROOT_UUID = "3d0c9b6e-2c8e-4a43-9c4f-7d1f6d2f0a11"
BOOT_UUID = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
ESP_VOLID = "1234ABCD"
ESP_UUID = "1234-ABCD"
DOS_ID = "0x7e57da7a"
GPT_ID = "5E1F0A6C-7B2D-4C3E-9A8F-0D1E2F3A4B5C"
ESP_PARTUUID = "0F0E0D0C-0B0A-4908-8706-050403020100"
ROOT_PARTUUID = "A1A2A3A4-B1B2-4C1C-8D1D-E1E2E3E4E5E6"
SELINUX_LABEL = "system_u:object_r:hostname_etc_t:s0"

UNIT = """[Unit]
Description={name}

[Service]
ExecStart=/bin/true
{install}"""


def write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def link(root: Path, path: str, target: str) -> None:
    where = root / path
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(target)


def populate_tree(root: Path, esp: bool = False) -> None:
    """A small but complete-looking Debian-like tree (no binaries needed)."""
    write(root, "usr/lib/os-release",
          'PRETTY_NAME="Test OS 1.2"\nNAME="Test OS"\nID=testos\nVERSION_ID="1.2"\n'
          "ID_LIKE=debian\n")
    # Absolute on purpose: followed on the host it would give the host's file.
    link(root, "etc/os-release", "/usr/lib/os-release")
    write(root, "var/lib/dpkg/status", """Package: base-files
Status: install ok installed
Priority: required
Architecture: amd64
Version: 13.8
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy.

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.41-12
Description: GNU C Library

Package: removed-thing
Status: deinstall ok config-files
Architecture: all
Version: 1.0-1

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2025b-4
Conffiles:
 /etc/timezone abc123
""")
    write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"
          "tester:x:1000:1000:Test User:/home/tester:/bin/sh\n")
    write(root, "etc/group", "root:x:0:\nsudo:x:27:tester\ntester:x:1000:\n")
    fstab = f"# static file system information\nUUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"
    if esp:
        fstab = f"PARTUUID={ROOT_PARTUUID.lower()} / xfs defaults 0 0\n" \
                f"UUID={ESP_UUID} /boot/efi vfat umask=0077 0 2\n"
    else:
        fstab += f"/dev/disk/by-uuid/{BOOT_UUID} /boot ext4 defaults 0 2\n"
    write(root, "etc/fstab", fstab)
    (root / "boot/efi").mkdir(parents=True)
    write(root, "etc/hostname", "testhost\n")
    write(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    link(root, "etc/localtime", "/usr/share/zoneinfo/Europe/Berlin")
    write(root, "etc/default/locale", 'LANG="en_GB.UTF-8"\n')
    write(root, "etc/default/keyboard", 'XKBMODEL="pc105"\nXKBLAYOUT="de"\n')
    write(root, "etc/vconsole.conf", "KEYMAP=de-latin1\n")
    # A link out of the tree by `..`: clamped at the tree's root it leads nowhere.
    link(root, "etc/kernel/cmdline", "../../../../../../../../proc/cmdline")

    units = "usr/lib/systemd/system"
    write(root, f"{units}/hello.service",
          UNIT.format(name="hello", install="\n[Install]\nWantedBy=multi-user.target\n"))
    write(root, f"{units}/idle.service",
          UNIT.format(name="idle", install="\n[Install]\nWantedBy=multi-user.target\n"))
    write(root, f"{units}/fixed.service", UNIT.format(name="fixed", install=""))
    write(root, f"{units}/noisy.service",
          UNIT.format(name="noisy", install="\n[Install]\nWantedBy=multi-user.target\n"))
    write(root, f"{units}/getty@.service",
          UNIT.format(name="getty", install="\n[Install]\nWantedBy=getty.target\n"))
    write(root, f"{units}/multi-user.target", "[Unit]\nDescription=Multi-User\n")
    etc_units = "etc/systemd/system"
    link(root, f"{etc_units}/multi-user.target.wants/hello.service", f"/{units}/hello.service")
    link(root, f"{etc_units}/getty.target.wants/getty@tty1.service", f"/{units}/getty@.service")
    link(root, f"{etc_units}/noisy.service", "/dev/null")
    link(root, f"{etc_units}/default.target", f"/{units}/multi-user.target")

    write(root, "etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\n"
          "PermitRootLogin yes\nPasswordAuthentication yes\nSubsystem sftp\t/usr/lib/sftp\n"
          "Match User bob\n    X11Forwarding yes\n")
    write(root, "etc/ssh/sshd_config.d/50-test.conf", "PermitRootLogin no\n")
    write(root, "etc/ssh/ssh_config", "Host *\n    SendEnv LANG LC_*\n    HashKnownHosts yes\n"
          "Host other\n    User nobody\n")
    write(root, "etc/sudoers", "Defaults env_reset\n# a comment\nroot ALL=(ALL:ALL) ALL\n"
          "@includedir /etc/sudoers.d\n", 0o440)
    write(root, "etc/sudoers.d/tester", "tester ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    write(root, "etc/sysctl.d/90-test.conf", "# tuned\nvm.swappiness = 10\n")
    write(root, "etc/modprobe.d/blacklist.conf", "blacklist floppy\n")
    write(root, "etc/tmpfiles.d/test.conf", "d /run/test 0755 root root -\n")
    write(root, "etc/udev/rules.d/70-test.rules", 'SUBSYSTEM=="net", NAME="lan0"\n')
    write(root, "etc/cloud/cloud.cfg.d/10-test.cfg", "datasource_list: [NoCloud]\n"
          "users:\n  - default\n")
    write(root, "etc/chrony/chrony.conf", "pool 2.debian.pool.ntp.org iburst\n"
          "sourcedir /etc/chrony/sources.d\nmakestep 1 3\n")
    write(root, "etc/chrony/sources.d/local.sources", "server 10.0.0.1 iburst\n")
    write(root, "etc/apt/sources.list", "# none\n")
    write(root, "etc/apt/sources.list.d/debian.sources",
          "Types: deb\nURIs: http://mirror.example/debian\nSuites: trixie\n"
          "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    write(root, "etc/firewalld/firewalld.conf", "DefaultZone=work\n")
    write(root, "usr/lib/firewalld/zones/work.xml", '<?xml version="1.0" encoding="utf-8"?>\n'
          '<zone><short>Work</short><service name="ssh"/><service name="dhcpv6-client"/>'
          "</zone>\n")
    write(root, "etc/selinux/config", "SELINUX=permissive\nSELINUXTYPE=default\n")

    boot = "boot"
    write(root, f"{boot}/grub/grub.cfg", f"""set default=0
set timeout=5
menuentry 'Test OS' --class debian $menuentry_id_option 'testos-simple' {{
    insmod ext2
    search --no-floppy --fs-uuid --set=root {ROOT_UUID}
    linux /vmlinuz-6.1.0-10-amd64 root=UUID={ROOT_UUID} ro quiet
    initrd /initrd.img-6.1.0-10-amd64
}}
menuentry "Test OS (recovery)" {{
    linux /vmlinuz-6.1.0-10-amd64 root=UUID={ROOT_UUID} ro single
    initrd /initrd.img-6.1.0-10-amd64
}}
submenu 'Advanced options' {{
    menuentry 'Test OS, older kernel' {{
        linux /vmlinuz-6.1.0-9-amd64 root=UUID={ROOT_UUID} ro
        initrd /initrd.img-6.1.0-9-amd64
    }}
}}
""")
    write(root, f"{boot}/grub/grubenv", "# GRUB Environment Block\nsaved_entry=0\n"
          + "#" * 990 + "\n")
    # Names sort (descending) differently than versions: the order must come from versions.
    for name, version in (("x-6.1.0-9", "6.1.0-9"), ("y-6.1.0-10", "6.1.0-10"),
                          ("z-6.1.0-10~rc1", "6.1.0-10~rc1")):
        write(root, f"{boot}/loader/entries/{name}.conf",
              f"title Test OS {version}\nversion {version}\nlinux /vmlinuz-{version}\n"
              f"initrd /initrd.img-{version}\noptions root=UUID={ROOT_UUID} ro\n")
    try:
        os.setxattr(root / "etc/hostname", "security.selinux", SELINUX_LABEL.encode() + b"\0")
    except OSError:
        pass  # no label support here: the tests that need labels check for them


def run(*cmd: str, stdin: str | None = None) -> None:
    subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True)


def place(disk: Path, fs: Path, offset: int) -> None:
    """Copy the file system image `fs` into `disk` at `offset`, keeping holes."""
    with open(fs, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(offset)
        while chunk := src.read(MIB):
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), os.SEEK_CUR)
            else:
                dst.write(chunk)


def grub_bios(disk: Path, work: Path, prefix: str) -> tuple[bytes, bytes]:
    """Install GRUB's BIOS boot code; return (MBR boot code, padded core.img) as written."""
    core_path = work / "core.img"
    run("grub-mkimage", "-O", "i386-pc", "-o", str(core_path), "-p", prefix,
        "biosdisk", "part_msdos", "ext2", "normal", "search", "linux")
    core = core_path.read_bytes()
    sectors = (len(core) + SECTOR - 1) // SECTOR
    padded = bytearray(core + bytes(sectors * SECTOR - len(core)))
    struct.pack_into("<QHH", padded, 0x1F4, 2, sectors - 1, 0x820)  # diskboot's blocklist
    mbr = bytearray(BOOT_IMG.read_bytes()[:440])
    struct.pack_into("<Q", mbr, 0x5C, 1)  # boot.img: where core.img starts
    with open(disk, "r+b") as f:
        f.write(mbr)
        f.seek(SECTOR)
        f.write(padded)
    return bytes(mbr), bytes(padded)


def bios_image(out: Path, work: Path) -> dict:
    """dos label: p1 /boot ext4 (8 MiB), p2 / ext4 (32 MiB), GRUB for BIOS."""
    tree = work / "tree"
    populate_tree(tree)
    boot_tree = work / "boot-tree"
    shutil.move(tree / "boot", boot_tree)  # /boot is its own partition
    (tree / "boot").mkdir()
    boot_start, boot_size = 1 * MIB, 8 * MIB
    root_start, root_size = 9 * MIB, 32 * MIB
    out.unlink(missing_ok=True)
    with open(out, "wb") as f:
        f.truncate(root_start + root_size)
    run("sfdisk", "-q", str(out), stdin=f"label: dos\nlabel-id: {DOS_ID}\n"
        f"start={boot_start // SECTOR}, size={boot_size // SECTOR}, type=83, bootable\n"
        f"start={root_start // SECTOR}, size={root_size // SECTOR}, type=83\n")
    for name, src, uuid, size, start in (("boot", boot_tree, BOOT_UUID, boot_size, boot_start),
                                          ("root", tree, ROOT_UUID, root_size, root_start)):
        fs = work / f"{name}.ext4"
        run("mkfs.ext4", "-q", "-F", "-U", uuid, "-L", name, "-d", str(src), str(fs),
            f"{size // 1024}k")
        place(out, fs, start)
    mbr, core = grub_bios(out, work, "(hd0,msdos1)/grub")
    return {"boot_code": mbr, "core": core, "first_partition": boot_start,
            "root_fs": work / "root.ext4"}


def _proto(root: Path, lines: list[str], depth: int) -> None:
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        st = entry.stat(follow_symlinks=False)
        indent = " " * depth
        perm = f"{st.st_mode & 0o777:03o}"
        if entry.is_symlink():
            lines.append(f"{indent}{entry.name} l--{perm} 0 0 {os.readlink(entry.path)}")
        elif entry.is_dir():
            lines.append(f"{indent}{entry.name} d--{perm} 0 0")
            _proto(Path(entry.path), lines, depth + 1)
            lines.append(f"{indent}$")
        else:
            lines.append(f"{indent}{entry.name} ---{perm} 0 0 {entry.path}")


def xfs_from_tree(tree: Path, fs: Path, size: int, uuid: str) -> None:
    """An xfs file system with the content of `tree`, via a protofile (no mount)."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]
    _proto(tree, lines, 1)
    lines.append("$")
    proto = fs.with_suffix(".proto")
    proto.write_text("\n".join(lines) + "\n")
    with open(fs, "wb") as f:
        f.truncate(size)
    run("mkfs.xfs", "-q", "-f", "-m", f"uuid={uuid}", "-L", "root", "-p", str(proto), str(fs))


def uefi_image(out: Path, work: Path) -> dict:
    """GPT: p1 ESP (FAT, 16 MiB) with GRUB's EFI binary, p2 / xfs (300 MiB, sparse)."""
    tree = work / "tree"
    populate_tree(tree, esp=True)
    esp_start, esp_size = 1 * MIB, 16 * MIB
    root_start, root_size = 17 * MIB, 300 * MIB  # xfs's minimum size
    out.unlink(missing_ok=True)
    with open(out, "wb") as f:
        f.truncate(root_start + root_size + MIB)
    run("sfdisk", "-q", str(out), stdin=f"label: gpt\nlabel-id: {GPT_ID}\n"
        f"start={esp_start // SECTOR}, size={esp_size // SECTOR}, "
        f"type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={ESP_PARTUUID}, name=ESP\n"
        f"start={root_start // SECTOR}, size={root_size // SECTOR}, "
        f"type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={ROOT_PARTUUID}, name=root\n")
    run("mkfs.fat", "-F", "16", "-n", "ESP", "-i", ESP_VOLID, "--offset", str(esp_start // SECTOR),
        str(out), str(esp_size // 1024))
    target = f"{out}@@{esp_start}"
    env_run = ["env", "MTOOLS_SKIP_CHECK=1"]
    for directory in ("::/EFI", "::/EFI/BOOT", "::/EFI/testos"):
        run(*env_run, "mmd", "-i", target, directory)
    stub = work / "grub.cfg"
    stub.write_text(f"search.fs_uuid {ROOT_UUID} root\nconfigfile ($root)/boot/grub/grub.cfg\n")
    for src, dst in ((EFI_BINARY, "::/EFI/BOOT/BOOTX64.EFI"),
                     (EFI_BINARY, "::/EFI/testos/grubx64.efi"), (stub, "::/EFI/testos/grub.cfg")):
        run(*env_run, "mcopy", "-i", target, str(src), dst)
    fs = work / "root.xfs"
    xfs_from_tree(tree, fs, root_size, ROOT_UUID)
    place(out, fs, root_start)
    fs.unlink()
    efi_sha = hashlib.sha256(EFI_BINARY.read_bytes()).hexdigest()
    return {"efi_sha256": efi_sha, "stub_sha256": hashlib.sha256(stub.read_bytes()).hexdigest()}


# The Discoverable Partitions test disk: (type, name, GPT attribute bits, partition UUID).
VAR_PARTUUID = "c0c46eff-e386-4746-a2bd-0962cd326ea2"  # the tree's machine-id's /var
DISCOVERABLE = (
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "esp", "", None),
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "root", "", ROOT_PARTUUID),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "home", "", None),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "home2", "", None),
    ("4D21B016-B534-45C2-A9FB-5C16E091FD2D", "var", "", VAR_PARTUUID),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "swap", "GUID:63", None),
    ("3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "srv", "GUID:60", None),
    ("7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", "tmp", "", None),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "data", "", None),
    ("21686148-6449-6E6F-744E-656564454649", "bios", "", None),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "arm64", "", None),
)


def discoverable_image(out: Path, work: Path) -> None:
    """GPT with one partition of each discoverable kind (1 MiB each, only / has a file
    system: ext4, 32 MiB), for the systemd-gpt-auto-generator verdicts."""
    tree = work / "tree"
    populate_tree(tree)
    write(tree, "etc/fstab", f"UUID={ROOT_UUID} / ext4 defaults 0 1\n"
          "PARTLABEL=srv /srv ext4 defaults 0 2\n")
    write(tree, "usr/lib/systemd/system-generators/systemd-gpt-auto-generator", "", 0o755)
    write(tree, "var/tmp/left-behind", "x\n")
    write(tree, "var/lib/dpkg/arch", "amd64\n")
    lines, start = [f"label: gpt\nlabel-id: {GPT_ID}"], MIB
    for kind, name, attrs, partuuid in DISCOVERABLE:
        size = 32 * MIB if name == "root" else MIB
        line = f"start={start // SECTOR}, size={size // SECTOR}, type={kind}, name={name}"
        line += f", attrs=\"{attrs}\"" if attrs else ""
        lines.append(line + (f", uuid={partuuid}" if partuuid else ""))
        if name == "root":
            root_start = start
        start += size
    out.unlink(missing_ok=True)
    with open(out, "wb") as f:
        f.truncate(start + MIB)
    run("sfdisk", "-q", str(out), stdin="\n".join(lines) + "\n")
    fs = work / "root.ext4"
    run("mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, "-L", "root", "-d", str(tree), str(fs),
        f"{32 * 1024}k")
    place(out, fs, root_start)
    fs.unlink()


def main() -> int:
    kind, out = sys.argv[1], Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as work:
        (bios_image if kind == "bios" else uefi_image)(out, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
