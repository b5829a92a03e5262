"""Broken images must fail the harness quickly and say why, never hang.

Both are the default sample, patched in a raw copy: one with a root UUID on the
kernel command line that no file system has (grub.cfg and grubenv, bytes
replaced in place), one whose MBR boot code is zeroed (the partition table and
the boot signature stay, so the firmware still jumps into it).
"""

import mmap
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmkit import VMImage

from verify import qemu
from verify.boot import boot

pytestmark = pytest.mark.slow
WRONG_UUID = "deadbeef-0000-4000-8000-00000000dead"


@pytest.fixture
def raw_copy(default_image: VMImage, tmp_path: Path) -> Iterator[Path]:
    """A raw copy of the default sample, removed after the test (it is 3 GiB, sparse)."""
    raw = tmp_path / "debian13.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(default_image.path), str(raw)],
                   check=True)
    yield raw
    raw.unlink()


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
    result = boot(raw_copy, artifacts=tmp_path / "artifacts")
    assert not result.success
    assert result.reason.startswith("the initramfs did not find the root file system"), \
        result.report()
    assert WRONG_UUID in result.reason
    assert result.seconds < qemu.BOOT_SECONDS / 2, "it failed early, not at the timeout"
    assert result.artifacts and (result.artifacts / "screen.png").exists()
    assert "Gave up waiting for root" in (result.artifacts / "serial.log").read_text()
    assert qemu.leftovers() == []


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
    [saved] = artifacts.iterdir()
    assert f"artifacts: {saved}" in proc.stderr
    assert "Booting from Hard Disk" in (saved / "firmware.log").read_text()
    assert (saved / "serial.log").read_text() == ""
    assert (saved / "screen.png").exists()
