"""image-info's architecture facts: ELF and PE headers built here byte by byte, per the specs.

The headers are written into trees and onto an ESP the way another
architecture's build would leave them, so a foreign image is read on this
host exactly as a native one: nothing from it runs. The host's own /usr/bin
is the sanity check against real binaries.
"""

import json
import os
import platform
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from osbuild.image_info import arch, tree
from osbuild.image_info.treeview import Tree

MIB = 1024 * 1024
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
HOST_GRUB_EFI = Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the loop backend needs root")
needs_guestfs = pytest.mark.skipif(
    subprocess.run(["/usr/bin/python3", "-c", "import guestfs"], capture_output=True).returncode
    != 0, reason="python3-guestfs is not installed")


def elf_header(machine: int, elf_class: int = 2, little: bool = True) -> bytes:
    """A complete ELF file header (e_ident, then the fixed fields of ELF32/ELF64)."""
    order = "<" if little else ">"
    ident = b"\x7fELF" + bytes([elf_class, 1 if little else 2, 1, 0]) + bytes(8)
    if elf_class == 2:
        # e_type ET_DYN, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags,
        # e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        rest = struct.pack(order + "HHIQQQIHHHHHH", 3, machine, 1, 0x1000, 64, 0, 0,
                           64, 56, 0, 64, 0, 0)
    else:
        rest = struct.pack(order + "HHIIIIIHHHHHH", 3, machine, 1, 0x1000, 52, 0, 0,
                           52, 32, 0, 40, 0, 0)
    return ident + rest


def pe_image(machine: int) -> bytes:
    """An MZ stub pointing at a PE signature and COFF header with `machine`, as EFI binaries are."""
    lfanew = 0x80
    dos = b"MZ" + bytes(0x3C - 2) + struct.pack("<I", lfanew)
    dos += bytes(lfanew - len(dos))
    # Machine, NumberOfSections, TimeDateStamp, PointerToSymbolTable, NumberOfSymbols,
    # SizeOfOptionalHeader, Characteristics
    coff = struct.pack("<HHIIIHH", machine, 0, 0, 0, 0, 0, 0x2022)
    return dos + b"PE\0\0" + coff + bytes(256)


def write(root: Path, path: str, data: bytes | str, mode: int = 0o755) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    target.chmod(mode)


def dpkg_status(arch_name: str) -> str:
    return (f"Package: dpkg\nStatus: install ok installed\nArchitecture: {arch_name}\n"
            "Version: 1.22.21\n\n"
            "Package: tzdata\nStatus: install ok installed\nArchitecture: all\n"
            "Version: 2025b-4\n")


def foreign_tree(root: Path) -> None:
    """An arm64 Debian-like userspace with one riscv64 stray and things that are no ELF."""
    write(root, "usr/lib/os-release", "ID=debian\nVERSION_ID=13\n", 0o644)
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    write(root, "var/lib/dpkg/status", dpkg_status("arm64"), 0o644)
    for name in ("bash", "ls", "dpkg"):
        write(root, f"usr/bin/{name}", elf_header(183) + b"\0" * 4096)
    write(root, "usr/bin/stray", elf_header(243))
    write(root, "usr/bin/script", "#!/bin/sh\necho not an ELF\n")
    write(root, "usr/bin/truncated", elf_header(183)[:19])  # e_machine cut in half
    write(root, "usr/bin/empty", b"")
    (root / "usr/bin/sh").symlink_to("bash")  # a link: bash is counted once
    (root / "usr/bin/escape").symlink_to("/../../../../usr/bin/env")  # stays in the tree
    (root / "usr/bin/subdir").mkdir()
    (root / "bin").symlink_to("usr/bin")


FOREIGN_ARCHITECTURE = {"dpkg": "arm64", "elf": {"aarch64": 3, "riscv64": 1}}


def report_of(target: Path, tmp_path: Path, *args: str) -> dict:
    """The report of the real command, its scratch space in a private TMPDIR left empty."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch), "LIBGUESTFS_CACHEDIR": "/var/tmp"}
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", str(target), *args],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(scratch.iterdir()) == []
    return json.loads(proc.stdout)


# --- the headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("machine", "elf_class", "little", "expected"), [
    (62, 2, True, "x86_64"),
    (183, 2, True, "aarch64"),
    (243, 2, True, "riscv64"),
    (243, 1, True, "riscv32"),
    (3, 1, True, "i386"),
    (40, 1, True, "arm"),
    (21, 2, True, "ppc64le"),
    (21, 2, False, "ppc64"),
    (22, 2, False, "s390x"),
    (8, 1, True, "mipsel"),
    (0x1234, 2, True, "unknown-0x1234"),
])
def test_elf_machine(machine: int, elf_class: int, little: bool, expected: str) -> None:
    header = elf_header(machine, elf_class, little)
    assert len(header) == (64 if elf_class == 2 else 52)
    assert arch.elf_machine(header) == expected


@pytest.mark.parametrize("data", [
    b"", b"\x7fELF", elf_header(183)[:19], b"#!/bin/sh\n" + bytes(64),
    b"\x7fELF\x03\x01\x01" + bytes(57),  # no such class
    b"\x7fELF\x02\x00\x01" + bytes(57),  # no such byte order
])
def test_what_is_no_elf_header_is_none(data: bytes) -> None:
    assert arch.elf_machine(data) is None


@pytest.mark.parametrize(("machine", "expected"), [
    (0x8664, "x86_64"), (0xAA64, "aarch64"), (0x5064, "riscv64"), (0x14C, "i386"),
    (0x1C2, "arm"), (0x1C4, "arm"), (0x9999, "unknown-0x9999"),
])
def test_pe_machine(machine: int, expected: str) -> None:
    assert arch.pe_machine(pe_image(machine)) == expected


def test_what_is_no_pe_image_is_none() -> None:
    good = pe_image(0xAA64)
    assert arch.pe_machine(b"") is None
    assert arch.pe_machine(b"MZ") is None
    assert arch.pe_machine(good[:0x80 + 5]) is None  # cut inside the Machine field
    assert arch.pe_machine(good[:0x3C] + struct.pack("<I", 1 << 30) + good[0x40:]) is None
    assert arch.pe_machine(b"ZM" + good[2:]) is None
    assert arch.pe_machine(elf_header(62)) is None


def test_host_efi_binary() -> None:
    if not HOST_GRUB_EFI.exists():
        pytest.skip(f"{HOST_GRUB_EFI} is not installed")
    assert arch.pe_machine(HOST_GRUB_EFI.read_bytes()) == "x86_64"


# --- trees ----------------------------------------------------------------------------------


def test_foreign_tree(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    foreign_tree(root)
    os.mkfifo(root / "usr/bin/fifo")  # not a regular file: skipped, and no read blocks on it
    assert tree.architecture(Tree(root)) == {"architecture": FOREIGN_ARCHITECTURE}


def test_dpkg_arch_file_comes_before_the_status(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write(root, "var/lib/dpkg/status", dpkg_status("amd64"), 0o644)
    assert tree.architecture(Tree(root)) == {"architecture": {"dpkg": "amd64"}}
    write(root, "var/lib/dpkg/arch", "riscv64\namd64\n", 0o644)  # native first, then foreign
    assert tree.architecture(Tree(root)) == {"architecture": {"dpkg": "riscv64"}}
    write(root, "var/lib/dpkg/arch-native", "arm64\n", 0o644)
    assert tree.architecture(Tree(root)) == {"architecture": {"dpkg": "arm64"}}


def test_nothing_to_say_is_no_key(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write(root, "usr/bin/script", "#!/bin/sh\n")
    write(root, "var/lib/dpkg/status", "Package: tzdata\nStatus: install ok installed\n"
          "Architecture: all\n", 0o644)
    assert tree.architecture(Tree(root)) == {}
    assert tree.architecture(Tree(tmp_path / "missing")) == {}


def test_links_out_of_usr_bin_are_not_followed(tmp_path: Path) -> None:
    """/usr/bin itself a link out of the tree (a hostile image): resolved inside it."""
    root = tmp_path / "tree"
    write(root, "elsewhere/tool", elf_header(243))
    (root / "usr").mkdir()
    (root / "usr/bin").symlink_to("/../../../../../usr/bin")  # the host's, if it escaped
    assert tree.architecture(Tree(root)) == {}
    (root / "usr/bin").unlink()
    (root / "usr/bin").symlink_to("/elsewhere")
    assert tree.architecture(Tree(root)) == {"architecture": {"elf": {"riscv64": 1}}}


def test_the_host_itself() -> None:
    found = tree.architecture(Tree(Path("/")))["architecture"]
    counts = found["elf"]
    assert max(counts, key=counts.__getitem__) == platform.machine()
    dpkg = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    if dpkg.returncode == 0:
        assert found["dpkg"] == dpkg.stdout.strip()


def test_directory_and_tarball_agree(tmp_path: Path) -> None:
    """A tarball is unpacked partly (tree.PATHS): /usr/bin and dpkg's files must be in it."""
    root = tmp_path / "tree"
    foreign_tree(root)
    tarball = tmp_path / "out" / "rootfs.tar.zst"
    tarball.parent.mkdir()
    subprocess.run(["tar", "--use-compress-program=zstd", "-C", str(root), "-cf", str(tarball),
                    "."], check=True)
    from_dir = report_of(root, tmp_path)
    assert from_dir["architecture"] == FOREIGN_ARCHITECTURE
    assert report_of(tarball, tmp_path)["architecture"] == FOREIGN_ARCHITECTURE


# --- images ---------------------------------------------------------------------------------


def run(*cmd: str, stdin: str | None = None) -> None:
    subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True)


def test_esp_binaries(tmp_path: Path) -> None:
    """Each *.efi file's machine, from the raw image through mtools; other files are not listed."""
    image = tmp_path / "in" / "esp.img"
    image.parent.mkdir()
    run("truncate", "-s", "20M", str(image))
    run("sfdisk", "-q", str(image), stdin=f"label: gpt\nstart=2048, size=32768, type={ESP_TYPE}\n")
    run("mkfs.fat", "-F", "16", "-n", "ESP", "--offset", "2048", str(image), str(16 * 1024))
    target = f"{image}@@{MIB}"
    env = ["env", "MTOOLS_SKIP_CHECK=1"]
    for directory in ("::/EFI", "::/EFI/BOOT", "::/EFI/debian"):
        run(*env, "mmd", "-i", target, directory)
    files = {
        "/EFI/BOOT/BOOTAA64.EFI": pe_image(0xAA64),
        "/EFI/debian/grubriscv64.efi": pe_image(0x5064),
        "/EFI/debian/shimx64.efi": pe_image(0x8664),
        "/EFI/debian/broken.efi": b"MZ but nothing more",
        "/EFI/debian/grub.cfg": b"configfile /boot/grub/grub.cfg\n",
    }
    for path, data in files.items():
        source = tmp_path / "payload"
        source.write_bytes(data)
        run(*env, "mcopy", "-i", target, str(source), f"::{path}")
    [esp] = report_of(image, tmp_path)["esp"]
    assert esp["efi-binaries"] == {
        "/EFI/BOOT/BOOTAA64.EFI": "aarch64",
        "/EFI/debian/broken.efi": None,
        "/EFI/debian/grubriscv64.efi": "riscv64",
        "/EFI/debian/shimx64.efi": "x86_64",
    }
    assert set(esp["files"]) == set(files)


@pytest.fixture
def foreign_ext4(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    foreign_tree(root)
    image = tmp_path / "in" / "root.ext4"
    image.parent.mkdir()
    run("mkfs.ext4", "-q", "-d", str(root), str(image), "16M")
    return image


@needs_root
def test_foreign_file_system_image_with_loop(foreign_ext4: Path, tmp_path: Path) -> None:
    r = report_of(foreign_ext4, tmp_path, "--backend", "loop")
    assert r["architecture"] == FOREIGN_ARCHITECTURE


@pytest.mark.slow
@needs_guestfs
def test_foreign_file_system_image_with_guestfs(foreign_ext4: Path, tmp_path: Path) -> None:
    r = report_of(foreign_ext4, tmp_path, "--backend", "guestfs")
    assert r["architecture"] == FOREIGN_ARCHITECTURE
