"""GRUB for BIOS without grub-install: boot.img in the MBR, core.img in the gap or partition.

grub-install wants the disk to be a device the running kernel knows, with
partition nodes; loop devices here have none. So this does what it would:
core.img is built with the build root's grub-mkimage, written at a checked
place, and boot.img's code and core.img's first sector are patched to find
the next. Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import os
import shutil
import struct
import tempfile

from osbuild.api import fail
from osbuild.toolkit import tool
from osbuild.toolkit.disk.blockdev import SECTOR, size_of
from osbuild.toolkit.disk.partition import (
    BIOS_BOOT_GUID,
    label_kind,
    partition_number,
    read_partition_table,
)

# Offsets in GRUB's i386-pc images (grub's boot.S and diskboot.S):
BOOT_CODE_END = 440  # boot.img code; from here on: disk signature and partition table
KERNEL_SECTOR = 0x5C  # boot.img: u64 LBA of core.img's first sector
BLOCKLIST = 0x1F4  # core.img's first sector: u64 start LBA, u16 sector count, u16 segment
CORE_SEGMENT = 0x820  # where diskboot loads the rest of core.img

GRUB_PART_NAMES = {"dos": "msdos", "mbr": "msdos", "gpt": "gpt"}
GRUB_FS_MODULES = {"ext4": "ext2", "xfs": "xfs", "btrfs": "btrfs"}


def grub_prefix(partlabel: str, number: int, path: str) -> str:
    """GRUB's prefix for `path` on partition `number` (counted from 0) of the boot disk.

    The disk is left out, "(,msdos1)": GRUB fills in the disk it booted from.
    """
    return f"(,{GRUB_PART_NAMES[partlabel]}{number + 1})/{path.lstrip('/')}"


def grub_core_modules(platform: str, partlabel: str, filesystem: str) -> list[str]:
    """What core.img needs to read its prefix: the disk driver, table and file system."""
    modules = ["biosdisk"] if platform == "i386-pc" else []
    return [*modules, f"part_{GRUB_PART_NAMES[partlabel]}", GRUB_FS_MODULES[filesystem]]


def make_core_image(platform: str, prefix: str, partlabel: str, filesystem: str,
                    binary: str, output: str) -> bytes:
    """Build GRUB's core.img with the build root's grub-mkimage and modules; return it."""
    directory = f"/usr/lib/grub/{platform}"
    if not os.path.isdir(directory):
        fail(f"the build root has no GRUB modules for {platform} ({directory}); "
             "install grub-pc-bin there")
    modules = grub_core_modules(platform, partlabel, filesystem)
    if binary == "grub2-mkimage" and shutil.which(binary) is None:
        binary = "grub-mkimage"  # upstream's default name; Debian calls it grub-mkimage
    tool.run([binary, "--directory", directory, "--prefix", prefix, "--format", platform,
              "--compression", "auto", "--output", output, *modules], binary)
    with open(output, "rb") as f:
        return f.read()


def core_span(core: bytes, sector_size: int) -> int:
    return -(-len(core) // sector_size)


def check_core_location(image: str, core: bytes, location: int, sector_size: int,
                        partlabel: str) -> None:
    """Refuse a core.img place that would overwrite the partition table or a partition.

    With a dos table core.img goes into the gap before the first partition;
    with gpt into a BIOS boot partition, since the gap holds the GPT itself.
    """
    count = core_span(core, sector_size)
    end = location + count - 1
    span = f"core.img ({len(core)} bytes, {count} sectors) at sector {location}"
    if location < 1:
        fail(f"location {location}: sector 0 holds the MBR; core.img goes at 1 or later")
    disk_sectors = size_of(image) // sector_size
    if end >= disk_sectors:
        fail(f"{span} does not fit into the image ({disk_sectors} sectors)")
    table = read_partition_table(image)
    if table is None:
        return
    label = label_kind(table["label"])
    if label != label_kind(partlabel):
        fail(f"the image has a {label} partition table, but core.partlabel is {partlabel}")
    parts = table.get("partitions", [])
    if label == "gpt":
        for part in parts:
            if part["start"] <= location < part["start"] + part["size"]:
                if part["type"].upper() != BIOS_BOOT_GUID:
                    fail(f"{span} would overwrite partition {partition_number(part)}, "
                         f"which is not a BIOS boot partition ({BIOS_BOOT_GUID})")
                if end >= part["start"] + part["size"]:
                    fail(f"{span} does not fit into the BIOS boot partition "
                         f"{partition_number(part)} ({part['size']} sectors from sector "
                         f"{part['start']})")
                return
        boot = [p for p in parts if p["type"].upper() == BIOS_BOOT_GUID]
        hint = (f"set location to {boot[0]['start']}, the start of the BIOS boot partition"
                if boot else f"add a BIOS boot partition ({BIOS_BOOT_GUID}) for it")
        fail(f"{span} would overwrite the GPT; {hint}")
    first = min((p["start"] for p in parts), default=disk_sectors)
    if end >= first:
        fail(f"{span} does not fit before the first partition, which starts at sector "
             f"{first}: the gap holds {first - location} sectors from the location")


def patch_core(core: bytes, location: int) -> bytes:
    """core.img with its blocklist naming where its second sector will be on disk."""
    start, count, segment = struct.unpack_from("<QHH", core, BLOCKLIST)
    if segment != CORE_SEGMENT or count != core_span(core, SECTOR) - 1:
        fail(f"core.img has an unexpected blocklist (start {start}, length {count}, "
             f"segment {segment:#x}): not an i386-pc core image of a known layout")
    patched = bytearray(core)
    struct.pack_into("<Q", patched, BLOCKLIST, location + 1)
    return bytes(patched)


def patch_boot(boot: bytes, location: int) -> bytes:
    """boot.img's code with the sector of core.img patched in."""
    if len(boot) != SECTOR or boot[510:512] != b"\x55\xaa":
        fail("boot.img is not a 512-byte boot sector")
    patched = bytearray(boot[:BOOT_CODE_END])
    struct.pack_into("<Q", patched, KERNEL_SECTOR, location)
    return bytes(patched)


def install_bios_boot(image: str, core: bytes, boot: bytes, location: int,
                      partlabel: str, sector_size: int = SECTOR) -> None:
    """Put GRUB's boot.img into the MBR and core.img at sector `location` of `image`.

    Only boot.img's code (bytes 0-439) is written: the disk signature and the
    partition table after it stay. boot.img learns where core.img is (its
    kernel sector field), and core.img's first sector where the rest of it is
    (its blocklist): this is what grub-install would do, without needing the
    disk to be a device the running kernel knows.
    """
    if sector_size != SECTOR:
        fail(f"sector size {sector_size}: BIOS boot supports only {SECTOR}-byte sectors")
    check_core_location(image, core, location, sector_size, partlabel)
    with open(image, "r+b") as f:
        f.seek(location * sector_size)
        f.write(patch_core(core, location))
        f.seek(0)
        f.write(patch_boot(boot, location))


# blkid's TYPE values that each core.img file system module reads.
GRUB_FS_TYPES = {"ext4": ("ext2", "ext3", "ext4"), "xfs": ("xfs",), "btrfs": ("btrfs",)}


def check_prefix_partition(image: str, number: int, filesystem: str,
                           sector_size: int = SECTOR) -> None:
    """Refuse a prefix on a partition that is missing or holds another file system.

    Either would give an image that stops at GRUB's rescue prompt. A partition
    without a file system yet is fine: it may be made later.
    """
    table = read_partition_table(image)
    if table is None:
        return
    parts = {partition_number(p): p for p in table.get("partitions", [])}
    part = parts.get(number + 1)
    if part is None:
        fail(f"prefix partition number {number} (GRUB's {number + 1}) is not in the image's "
             f"partition table (it has {', '.join(map(str, sorted(parts))) or 'none'})")
    proc = tool.run(["blkid", "-p", "-O", str(part["start"] * sector_size),
                     "-s", "TYPE", "-o", "value", image],
                    f"probing prefix partition {number + 1}", check=False, quiet=True)
    found = proc.stdout.strip()
    if proc.returncode == 0 and found and found not in GRUB_FS_TYPES[filesystem]:
        fail(f"prefix partition {number + 1} holds {found}, but core.filesystem is {filesystem}")


def grub_bios_install(image: str, platform: str, location: int, partlabel: str,
                      filesystem: str, prefix_number: int, prefix_path: str,
                      binary: str = "grub-mkimage", sector_size: int = SECTOR) -> None:
    """Make core.img for GRUB's directory `prefix_path` on partition `prefix_number`
    (counted from 0) and install it and boot.img into `image`."""
    if platform != "i386-pc":
        fail(f"platform {platform}: only i386-pc (BIOS) is supported")
    check_prefix_partition(image, prefix_number, filesystem, sector_size)
    prefix = grub_prefix(partlabel, prefix_number, prefix_path)
    with tempfile.TemporaryDirectory() as tmp:
        core = make_core_image(platform, prefix, partlabel, filesystem, binary,
                               os.path.join(tmp, "core.img"))
    with open(f"/usr/lib/grub/{platform}/boot.img", "rb") as f:
        boot = f.read()
    print(f"core.img: {len(core)} bytes at sector {location}, prefix {prefix}", flush=True)
    install_bios_boot(image, core, boot, location, partlabel, sector_size)

