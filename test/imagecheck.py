"""Reading disk images the way a user would, for the disk stage and assembler tests.

Tests check images with the tools a user has (sfdisk, blkid, debugfs, mtools,
qemu) rather than with the engine's own code, so a bug there cannot hide
itself. GRUB's BIOS install is compared byte for byte with boot.img and a
core.img made here independently. Imported like harness.py: test/ is on
sys.path, and a conftest would be ambiguous (see harness.py).
"""

import json
import os
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SECTOR = 512
GRUB_I386 = Path("/usr/lib/grub/i386-pc")


def sh(*cmd: str) -> str:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=True).stdout


def leaks(workdir: Path) -> list[str]:
    """Loop devices and mounts that still refer to `workdir` (tests run in parallel)."""
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET,SOURCE"], capture_output=True,
                            text=True).stdout
    return [line for line in (loops + mounts).splitlines() if str(workdir) in line]


def table(image: Path) -> dict[str, Any]:
    """The partition table as `sfdisk --json` reports it."""
    return json.loads(sh("sfdisk", "--json", str(image)))["partitiontable"]


def probe(image: Path, start: int) -> dict[str, str]:
    """blkid's low-level probe of the file system at sector `start`."""
    out = sh("blkid", "-p", "-O", str(start * SECTOR), "-o", "export", str(image))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def debugfs(image: Path, start: int, command: str) -> str:
    """A debugfs request (`cat /etc/hostname`, `stat ...`) on the ext4 at sector `start`."""
    return sh("debugfs", "-R", command, f"{image}?offset={start * SECTOR}")


def fat(image: Path, start: int) -> str:
    """mtools' name for the FAT file system at sector `start` of `image`."""
    return f"{image}@@{start * SECTOR}"


def mdir(image: Path, start: int, path: str) -> list[str]:
    """Sorted entry names of directory `path` on the FAT at sector `start`."""
    out = sh("mdir", "-b", "-i", fat(image, start), f"::{path}")
    return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines())


def mtype(image: Path, start: int, path: str) -> bytes:
    return subprocess.run(["mtype", "-i", fat(image, start), f"::{path}"], capture_output=True,
                          check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout


def expected_grub(prefix: str, modules: list[str], location: int) -> tuple[bytes, bytes]:
    """(MBR boot code, core.img) as they must be on disk with core.img at sector `location`."""
    with tempfile.TemporaryDirectory() as tmp:
        core_path = Path(tmp) / "core.img"
        sh("grub-mkimage", "-O", "i386-pc", "-d", str(GRUB_I386), "-p", prefix,
           "-C", "auto", "-o", str(core_path), *modules)
        core = bytearray(core_path.read_bytes())
    boot = bytearray((GRUB_I386 / "boot.img").read_bytes()[:440])
    # boot.img's kernel sector (0x5c) and core.img's blocklist start (0x1f4): 8 bytes LE.
    assert struct.unpack_from("<Q", boot, 0x5C)[0] == 1
    struct.pack_into("<Q", boot, 0x5C, location)
    start, count, segment = struct.unpack_from("<QHH", core, 0x1F4)
    assert (start, count, segment) == (2, -(-len(core) // SECTOR) - 1, 0x820)
    struct.pack_into("<Q", core, 0x1F4, location + 1)
    return bytes(boot), bytes(core)


def check_grub(image: Path, prefix: str, modules: list[str], location: int) -> None:
    """GRUB for BIOS is in `image`: boot code in the MBR, core.img at sector `location`."""
    boot, core = expected_grub(prefix, modules, location)
    with open(image, "rb") as f:
        data = f.read(location * SECTOR + len(core))
    assert data[:440] == boot
    assert data[location * SECTOR:] == core
    assert data[510:512] == b"\x55\xaa"


def boot_until(image: Path, log: Path, wanted: str, firmware: list[str] | None = None,
               timeout: float = 120) -> bool:
    """Boot qemu (TCG) on a snapshot of `image` until `wanted` is on the serial console."""
    cmd = ["qemu-system-x86_64", "-machine", "accel=tcg", "-m", "256", "-nodefaults",
           "-display", "none", "-serial", f"file:{log}", *(firmware or []),
           "-drive", f"file={image},format=raw,snapshot=on"]
    # stderr is not read: a pipe could fill and stall qemu.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and wanted in log.read_text(errors="replace"):
                return True
            time.sleep(0.5)
        return log.exists() and wanted in log.read_text(errors="replace")
    finally:
        proc.kill()
        proc.wait()
