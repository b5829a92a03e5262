"""Broken images must fail the harness on a sign of their own and say why, never hang.

Each is the default sample, broken in a raw copy by a plain script: a root
UUID on the kernel command line that no file system has (grub.cfg and
grubenv, bytes replaced in place); MBR boot code zeroed (the partition table
and the boot signature stay, so the firmware still jumps into it); and, with
debugfs on the root file system (no mount), GRUB without its module lists or
without its modules, no kernel, and an initramfs without the ext4 driver.
Where GRUB fails before it has read grub.cfg (which turns on its serial
terminal) only the VGA screen shows why: the harness reads it too. One more
image puts GRUB on the screen only and must get to its kernel (the rest of that
boot is the sample's, booted in test_sample.py): silence on the serial console
is not a failure while the screen shows a boot loader at work.
Each must be told by its sign, not by the boot timeout (the hang guard).
"""

import json
import mmap
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from vmkit import VMImage

from verify import bootlog, qemu
from verify.boot import boot

pytestmark = pytest.mark.slow
WRONG_UUID = "deadbeef-0000-4000-8000-00000000dead"
# How wait_boot words its timeout: a broken image must never end that way.
TIMED_OUT = re.compile(r"no (boot marker|login prompt|boot marker or login prompt) after ")


@pytest.fixture
def raw_copy(default_image: VMImage, tmp_path: Path) -> Iterator[Path]:
    """A raw copy of the default sample, removed after the test (it is 3 GiB, sparse)."""
    raw = tmp_path / "debian13.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(default_image.path), str(raw)],
                   check=True)
    yield raw
    raw.unlink()


class RootFS:
    """The ext4 root file system inside a raw image, read and changed with debugfs."""

    def __init__(self, image: Path, work: Path):
        table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], check=True,
                                          capture_output=True, text=True).stdout)
        part = max(table["partitiontable"]["partitions"], key=lambda p: p["size"])
        self.device = f"{image}?offset={part['start'] * 512}"
        self.work = work

    def run(self, *requests: str, write: bool = False) -> str:
        script = self.work / "debugfs.cmds"
        script.write_text("".join(f"{r}\n" for r in requests))
        proc = subprocess.run(["debugfs", *(["-w"] if write else []), "-f", str(script),
                               self.device], check=True, capture_output=True, text=True)
        return proc.stdout

    def names(self, directory: str) -> list[str]:
        """The entries of `directory` (ls -p: /inode/mode/uid/gid/name/size/)."""
        rows = self.run(f"ls -p {directory}").splitlines()
        return [row.split("/")[5] for row in rows
                if row.startswith("/") and row.split("/")[5] not in (".", "..")]

    def remove(self, paths: list[str]) -> None:
        assert paths
        self.run(*(f"rm {shlex.quote(p)}" for p in paths), write=True)

    def read(self, path: str) -> bytes:
        local = self.work / "dumped"
        self.run(f"dump {path} {local}")
        return local.read_bytes()

    def replace(self, path: str, content: bytes) -> None:
        local = self.work / "new"
        local.write_bytes(content)
        directory, name = path.rsplit("/", 1)
        self.run(f"rm {path}", f"cd {directory}", f"write {local} {name}", write=True)


@pytest.fixture
def root_fs(raw_copy: Path, tmp_path: Path) -> RootFS:
    return RootFS(raw_copy, tmp_path)


def kernel(root_fs: RootFS) -> str:
    [name] = [n for n in root_fs.names("/boot") if n.startswith("vmlinuz-")]
    return name.removeprefix("vmlinuz-")


def without_members(cpio: bytes, at: int, drop: str) -> tuple[bytes, int]:
    """The newc cpio archive at `at` without the members whose path contains `drop`,
    and where the archive ends."""
    out = bytearray()
    while True:
        header = cpio[at:at + 110]
        assert header[:6] == b"070701", f"not a newc member at {at}"
        size, name_size = int(header[54:62], 16), int(header[94:102], 16)
        name_end = at + 110 + name_size
        data = (name_end + 3) & ~3
        end = (data + size + 3) & ~3
        name = cpio[at + 110:name_end - 1].decode()
        if drop not in name:
            out += cpio[at:end]
        at = end
        if name == "TRAILER!!!":
            return bytes(out), at


def initrd_without(initrd: bytes, drop: str) -> bytes:
    """Debian's initrd without the members whose path contains `drop`: its uncompressed
    archives (microcode, and the kernel modules, which are compressed themselves), then
    the zstd-compressed one."""
    out, at = bytearray(), 0
    while initrd[at:at + 6] == b"070701":
        archive, at = without_members(initrd, at, drop)
        out += archive
        while at < len(initrd) and initrd[at] == 0:  # padding between the archives
            out.append(0)
            at += 1
    if at < len(initrd):
        assert initrd[at:at + 4] == b"\x28\xb5\x2f\xfd", "the compressed archive is zstd"
        main = subprocess.run(["zstd", "-dc"], input=initrd[at:], capture_output=True,
                              check=True).stdout
        archive, _ = without_members(main, 0, drop)
        out += subprocess.run(["zstd", "-q", "-c"], input=archive, capture_output=True,
                              check=True).stdout
    assert drop.encode() not in out and drop.encode() in initrd, f"{drop} was in the initrd"
    return bytes(out)


def failed_boot(raw: Path, tmp_path: Path) -> bootlog.BootResult:
    result = boot(raw, artifacts=tmp_path / "artifacts")  # its timeout is the hang guard
    assert not result.success, result.report()
    assert not TIMED_OUT.match(result.reason), f"told only by the timeout: {result.report()}"
    assert result.artifacts and (result.artifacts / "screen.png").exists()
    assert qemu.leftovers() == []
    return result


def test_wrong_root_uuid_fails_in_the_initramfs(raw_copy: Path, default_image: VMImage,
                                                tmp_path: Path) -> None:
    right = f"root=UUID={default_image.root_fs['uuid']}".encode()
    with open(raw_copy, "r+b") as f, mmap.mmap(f.fileno(), 0) as image:
        at = image.find(right)
        patched = 0
        while at != -1:
            image[at:at + len(right)] = f"root=UUID={WRONG_UUID}".encode()
            patched += 1
            at = image.find(right, at)
    assert patched >= 2, "grub.cfg's entries and grubenv's kernelopts"
    result = failed_boot(raw_copy, tmp_path)
    assert result.reason.startswith("the initramfs did not find the root file system"), \
        result.report()
    assert WRONG_UUID in result.reason
    assert result.artifacts is not None
    assert "Gave up waiting for root" in (result.artifacts / "serial.log").read_text()


def test_zeroed_mbr_boot_code_fails_the_command(raw_copy: Path, tmp_path: Path) -> None:
    with open(raw_copy, "r+b") as f:
        f.write(bytes(440))  # the boot code; the disk signature and partitions stay
    artifacts = tmp_path / "artifacts"
    proc = subprocess.run([sys.executable, "-m", "verify.cli", str(raw_copy),
                           "--artifacts", str(artifacts)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "FAILED" in proc.stderr
    assert "no boot loader ran" in proc.stderr
    assert "the screen shows 'Booting from Hard Disk...'" in proc.stderr  # SeaBIOS's last word
    [saved] = artifacts.iterdir()
    assert f"artifacts: {saved}" in proc.stderr
    assert "Booting from Hard Disk" in (saved / "firmware.log").read_text()
    assert (saved / "serial.log").read_text() == ""
    assert (saved / "screen.png").exists()
    assert "Booting from Hard Disk..." in (saved / "screen.txt").read_text()


def _no_module_lists(root_fs: RootFS) -> None:
    root_fs.remove([f"/boot/grub/i386-pc/{n}" for n in root_fs.names("/boot/grub/i386-pc")
                    if n.endswith(".lst")])


def _no_modules(root_fs: RootFS) -> None:
    root_fs.remove([f"/boot/grub/i386-pc/{n}" for n in root_fs.names("/boot/grub/i386-pc")])


# (how the image is broken, the reason's start, what the screen shows). Both fail before
# grub.cfg's `serial` command has run: the serial console stays empty.
GRUB_BREAKS: dict[str, tuple[Callable[[RootFS], None], str, str]] = {
    # Without command.lst, normal mode does not know which module has `serial`, `search`
    # or `linux`.
    "no-module-lists": (_no_module_lists,
                        "GRUB could not find the module of a command: error: can't find "
                        "command `", "can't find command"),
    "no-modules": (_no_modules, "GRUB could not find its modules or config: grub rescue>",
                   "normal.mod' not found"),
}


@pytest.mark.parametrize("break_it", GRUB_BREAKS)
def test_broken_grub_fails_on_the_screen(break_it: str, raw_copy: Path, root_fs: RootFS,
                                         tmp_path: Path) -> None:
    breaker, reason, screen = GRUB_BREAKS[break_it]
    breaker(root_fs)
    result = failed_boot(raw_copy, tmp_path)
    assert result.reason.startswith(reason), result.report()
    assert result.artifacts is not None
    assert (result.artifacts / "serial.log").read_text() == ""
    assert screen in (result.artifacts / "screen.txt").read_text()


def test_missing_kernel_fails_in_grub(raw_copy: Path, root_fs: RootFS, tmp_path: Path) -> None:
    version = kernel(root_fs)
    root_fs.remove([f"/boot/vmlinuz-{version}"])
    result = failed_boot(raw_copy, tmp_path)
    assert result.reason == ("GRUB could not load the kernel: error: file "
                             f"`/boot/vmlinuz-{version}' not found"), result.report()


def test_initramfs_without_the_root_fs_driver(raw_copy: Path, root_fs: RootFS,
                                               tmp_path: Path) -> None:
    initrd = f"/boot/initrd.img-{kernel(root_fs)}"
    root_fs.replace(initrd, initrd_without(root_fs.read(initrd), "/kernel/fs/ext4/"))
    result = failed_boot(raw_copy, tmp_path)
    assert result.reason.startswith("the initramfs has no driver for the root file system"), \
        result.report()


def test_grub_on_the_screen_only_still_gets_to_the_kernel(raw_copy: Path, root_fs: RootFS,
                                             tmp_path: Path) -> None:
    config = root_fs.read("/boot/grub/grub.cfg").decode()
    serial = [line for line in config.splitlines() if line.startswith(("serial", "terminal_"))]
    assert serial, "the sample's GRUB uses the serial console"
    for line in serial:
        config = config.replace(line + "\n", "")
    root_fs.replace("/boot/grub/grub.cfg", config.encode())
    with qemu.VM(raw_copy, forwards=(), artifacts=tmp_path / "artifacts") as vm:
        result = vm.wait_boot(until="kernel")
        assert result.success, result.report()
        assert "Loading Linux" in vm.screen  # what GRUB showed while the serial console was silent
    assert "GNU GRUB" not in result.log  # nothing of GRUB on the serial console
    assert "boot-loader" in result.milestones and "kernel" in result.milestones
