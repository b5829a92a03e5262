"""The shared toolkit of the disk stages and the qemu assembler.

Partition tables (sfdisk), file systems (mkfs.*), FAT content without mounting
(mtools: this kernel has no vfat driver), GRUB for BIOS without grub-install,
and image format conversion (qemu-img). The stages are thin wrappers around
these functions; the v1 qemu assembler makes a whole image with the same ones,
so both write the same bytes for the same request.

Everything here is deterministic where the tools allow it: ids that tools
would pick at random are derived from the request or the image's content, and
timestamps come from SOURCE_DATE_EPOCH. User errors end the stage with one
line (osbuild.api.fail). Stdlib only, like osbuild.api: it runs on the build
root's Python.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import osbuild.api

SECTOR = 512
BLKSSZGET = 0x1268  # ioctl: logical sector size of a block device

BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"
GPT_ENTRIES = 128  # what sfdisk writes: 128 entries of 128 bytes
GPT_ENTRY_SIZE = 128
MBR_PRIMARY_MAX = 4
MBR_LIMIT = 2**32  # MBR start and size fields are 32-bit sector counts

# Namespace for the GPT partition UUIDs derived from the disk's UUID.
PARTITION_NS = uuidlib.UUID("0b7e4c5e-3d1a-4f4e-9f1c-6f73626c6464")


def fail(message: str) -> NoReturn:
    osbuild.api.fail(message)


def first_error(text: str) -> str:
    """The line of a tool's output that says what went wrong.

    Tools follow their error with usage text or detail, so the first line that
    mentions an error wins, else the first line; the whole output is in the log.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if "error" in line.lower()),
                lines[0] if lines else "no error output")


def run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; a failure ends the stage with `what` and the tool's own words."""
    try:
        proc = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True,
                              env=env, check=False)
    except FileNotFoundError:
        fail(f"{what}: {cmd[0]} is not installed in the build root")
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        fail(f"{what} failed: {first_error(proc.stderr or proc.stdout)}")
    return proc


def size_of(path: str) -> int:
    """Size in bytes of a file or block device."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def sector_size_of(path: str) -> int:
    """Logical sector size of a block device; 512 for a plain file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4)
        return struct.unpack("i", raw)[0]
    except OSError:
        return SECTOR
    finally:
        os.close(fd)


# --- partition tables ------------------------------------------------------------


@dataclass
class Partition:
    """One entry of a partition table; start and size are in sectors."""

    start: int | None = None
    size: int | None = None
    type: str | None = None
    bootable: bool = False
    uuid: str | None = None
    name: str | None = None
    attrs: Sequence[int] = ()
    partnum: int | None = None

    @classmethod
    def from_options(cls, opts: dict[str, Any]) -> "Partition":
        return cls(opts.get("start"), opts.get("size"), opts.get("type"),
                   opts.get("bootable", False), opts.get("uuid"), opts.get("name"),
                   opts.get("attrs", ()), opts.get("partnum"))


def label_kind(label: str) -> str:
    """sfdisk's name of a table type: upstream also says "mbr" for "dos"."""
    return "dos" if label in ("dos", "mbr") else label


# GPT attribute bits sfdisk can set, by name; 48-63 are "type-specific".
GPT_ATTR_NAMES = {0: "RequiredPartition", 1: "NoBlockIOProtocol", 2: "LegacyBIOSBootable"}


def gpt_attrs(bits: Sequence[int], index: int) -> str:
    """sfdisk's spelling of GPT attribute bits (it ignores bare numbers silently)."""
    words = []
    for bit in sorted(set(bits)):
        if bit in GPT_ATTR_NAMES:
            words.append(GPT_ATTR_NAMES[bit])
        elif 48 <= bit <= 63:
            words.append(f"GUID:{bit}")
        else:
            fail(f"partition {index + 1}: GPT attribute bit {bit} is reserved; "
                 "only bits 0-2 and 48-63 can be set")
    return " ".join(words)


def usable_range(label: str, disk_sectors: int, sector_size: int) -> tuple[int, int]:
    """First and last sector a partition may use on a disk of this size."""
    if label == "gpt":
        entries = -(-GPT_ENTRIES * GPT_ENTRY_SIZE // sector_size)
        # Protective MBR, header, entries at the start; entries, header at the end.
        return 2 + entries, disk_sectors - 2 - entries
    return 1, disk_sectors - 1


def check_layout(label: str, partitions: Sequence[Partition], disk_sectors: int,
                 sector_size: int) -> None:
    """Refuse a table that does not fit the disk, in words, before sfdisk says "no space"."""
    first, last = usable_range(label, disk_sectors, sector_size)
    disk = f"the disk ({disk_sectors} sectors of {sector_size} bytes)"
    if label == "dos" and len(partitions) > MBR_PRIMARY_MAX:
        fail(f"a dos partition table holds at most {MBR_PRIMARY_MAX} partitions, "
             f"not {len(partitions)}")
    if last < first:
        fail(f"the partition table does not fit: {disk} is too small for a {label} table")
    placed = []
    for i, part in enumerate(partitions):
        where = f"partition {i + 1}"
        if part.start is not None and part.start < first:
            fail(f"the partition table does not fit: {where} starts at sector {part.start}, "
                 f"before the first usable sector {first} of a {label} table")
        if part.start is not None and part.start > last:
            fail(f"the partition table does not fit: {where} starts at sector {part.start}, "
                 f"beyond the end of {disk}; the last usable sector is {last}")
        if part.start is not None and part.size is not None:
            end = part.start + part.size - 1
            if end > last:
                fail(f"the partition table does not fit: {where} (start {part.start}, "
                     f"size {part.size}) ends at sector {end}, beyond the end of {disk}; "
                     f"the last usable sector is {last}")
            if label == "dos" and (part.start >= MBR_LIMIT or part.size >= MBR_LIMIT):
                fail(f"{where}: start and size must be below 2^32 sectors in a dos table")
            placed.append((part.start, end, i))
    placed.sort()
    for (s1, e1, i1), (s2, _e2, i2) in zip(placed, placed[1:], strict=False):
        if s2 <= e1:
            fail(f"partition {i2 + 1} (from sector {s2}) overlaps partition {i1 + 1} "
                 f"(sectors {s1}-{e1})")


def check_uuid(label: str, value: str, what: str) -> None:
    if label == "gpt":
        try:
            uuidlib.UUID(value)
        except ValueError:
            fail(f"{what} {value!r} is not a UUID, as a gpt table needs")
    elif not re.fullmatch(r"(0x)?[0-9a-fA-F]{1,8}", value):
        fail(f"{what} {value!r} is not a dos disk id (up to 8 hex digits, e.g. 0x1a2b3c4d)")


def partition_uuid(disk_uuid: str, index: int) -> str:
    """A GPT partition's UUID when none is given: derived, so the table is reproducible."""
    return str(uuidlib.uuid5(PARTITION_NS, f"{disk_uuid.lower()}/{index + 1}"))


def sfdisk_script(label: str, disk_uuid: str, partitions: Sequence[Partition],
                  target: str) -> str:
    lines = [f"label: {label}", f"label-id: {disk_uuid}"]
    for i, part in enumerate(partitions):
        fields = []
        if part.start is not None:
            fields.append(f"start={part.start}")
        if part.size is not None:
            fields.append(f"size={part.size}")
        if part.type:
            fields.append(f"type={part.type}")
        if label == "gpt":
            fields.append(f"uuid={part.uuid or partition_uuid(disk_uuid, i)}")
            if part.name:
                fields.append(f'name="{part.name}"')
            if part.attrs:
                fields.append(f'attrs="{gpt_attrs(part.attrs, i)}"')
        if part.bootable and label == "dos":
            fields.append("bootable")
        # sfdisk takes the partition number from a partition's device name before ":",
        # named as the kernel would: with a "p" after a name that ends in a digit.
        sep = "p" if target[-1:].isdigit() else ""
        prefix = f"{target}{sep}{part.partnum} : " if part.partnum else ""
        lines.append(prefix + ", ".join(fields))
    return "\n".join(lines) + "\n"


def check_fields(label: str, disk_uuid: str, partitions: Sequence[Partition]) -> None:
    """Refuse malformed ids; warn about fields the table type has no place for.

    sfdisk silently drops those (a name in a dos table, the boot flag in a gpt
    one), so upstream manifests with them are valid: they are dropped here too,
    but visibly.
    """
    check_uuid(label, disk_uuid, "the disk id")
    for i, part in enumerate(partitions):
        if part.uuid is not None and label == "gpt":
            check_uuid(label, part.uuid, f"partition {i + 1}: uuid")
        if label == "gpt" and part.name is not None and ('"' in part.name or "\n" in part.name):
            fail(f"partition {i + 1}: the name must not contain '\"' or a newline")
        if label == "dos":
            ignored = [k for k in ("uuid", "name") if getattr(part, k) is not None]
            ignored += ["attrs"] if part.attrs else []
        else:
            ignored = ["bootable"] if part.bootable else []
        for key in ignored:
            hint = " (use attrs [2], LegacyBIOSBootable)" if key == "bootable" else ""
            print(f"warning: partition {i + 1}: '{key}' has no place in a {label} table and "
                  f"is ignored{hint}", file=sys.stderr, flush=True)


def write_partition_table(target: str, label: str, disk_uuid: str,
                          partitions: Sequence[Partition]) -> dict[str, Any]:
    """Write a new partition table onto `target` (a device or an image file).

    Checked first, so a table that does not fit is a clear error rather than
    sfdisk's "no free sectors". Old signatures are wiped (a stale GPT backup at
    the end would confuse tools) and the kernel is not asked to re-read the
    table: loop devices here have no partition nodes. Returns the table as
    sfdisk reads it back.
    """
    label = label_kind(label)
    check_fields(label, disk_uuid, partitions)
    sector_size = sector_size_of(target)
    check_layout(label, partitions, size_of(target) // sector_size, sector_size)
    script = sfdisk_script(label, disk_uuid, partitions, target)
    print(script, end="", flush=True)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "always", target],
        "sfdisk", stdin=script)
    table = read_partition_table(target)
    if table is None:
        fail(f"sfdisk wrote no partition table onto {target}")
    got = table.get("partitions", [])
    if len(got) != len(partitions):
        fail(f"sfdisk wrote {len(got)} partitions instead of {len(partitions)}")
    sizes = {entry["start"]: entry["size"] for entry in got}
    for i, want in enumerate(partitions):
        if want.start is None:
            continue
        if want.start not in sizes:
            fail(f"partition {i + 1}: sfdisk did not place it at sector {want.start}")
        if want.size is not None and sizes[want.start] != want.size:
            fail(f"partition {i + 1}: sfdisk made it {sizes[want.start]} sectors, "
                 f"not {want.size}")
    return table


def read_partition_table(target: str) -> dict[str, Any] | None:
    """The partition table of a device or image file as `sfdisk --json` has it, or None."""
    proc = subprocess.run(["sfdisk", "--json", target], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return json.loads(proc.stdout)["partitiontable"]


def partition_number(entry: dict[str, Any]) -> int:
    """The number of a partition in `sfdisk --json` output (the digits its node ends with)."""
    match = re.search(r"(\d+)$", entry["node"])
    return int(match.group(1)) if match else 0


# --- file systems ----------------------------------------------------------------


def source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else None


def feature(name: str, on: bool | None) -> list[str]:
    """mke2fs -O syntax: a feature on, or "^feature" off; nothing when not asked."""
    if on is None:
        return []
    return [name if on else f"^{name}"]


def mkfs_ext4(device: str, uuid: str, label: str | None = None, lazy_init: bool | None = None,
              verity: bool | None = None, orphan_file: bool | None = None,
              metadata_csum_seed: bool | None = None) -> None:
    """mkfs.ext4, reproducibly: the directory hash seed is the UUID, time is SOURCE_DATE_EPOCH."""
    cmd = ["mkfs.ext4", "-q", "-F", "-U", uuid]
    if label is not None:
        cmd += ["-L", label]
    extended = [f"hash_seed={uuid}"]
    if lazy_init is not None:
        flag = int(lazy_init)
        extended += [f"lazy_itable_init={flag}", f"lazy_journal_init={flag}"]
    cmd += ["-E", ",".join(extended)]
    features = (feature("verity", verity) + feature("orphan_file", orphan_file)
                + feature("metadata_csum_seed", metadata_csum_seed))
    if features:
        cmd += ["-O", ",".join(features)]
    env = dict(os.environ)
    epoch = source_date_epoch()
    if epoch is not None:
        env["E2FSPROGS_FAKE_TIME"] = str(epoch)
    run([*cmd, device], "mkfs.ext4", env=env)


def mkfs_xfs(device: str, uuid: str, label: str | None = None,
             agcount: int | None = None) -> None:
    cmd = ["mkfs.xfs", "-q", "-f", "-m", f"uuid={uuid}"]
    if label is not None:
        cmd += ["-L", label]
    if agcount is not None:
        cmd += ["-d", f"agcount={agcount}"]
    run([*cmd, device], "mkfs.xfs")


def mkfs_btrfs(device: str, uuid: str, label: str | None = None,
               metadata: str | None = None) -> None:
    cmd = ["mkfs.btrfs", "-q", "-f", "-U", uuid]
    if label is not None:
        cmd += ["-L", label]
    if metadata is not None:
        cmd += ["-m", metadata]
    run([*cmd, device], "mkfs.btrfs")


def mkfs_fat(device: str, volid: str, label: str | None = None, fat_size: int | None = None,
             geometry: dict[str, int] | None = None) -> None:
    """mkfs.fat with --invariant: fixed timestamps; the volume id is the given one."""
    cmd = ["mkfs.fat", "-I", "--invariant", "-i", volid]
    if label is not None:
        cmd += ["-n", label]
    if fat_size is not None:
        cmd += ["-F", str(fat_size)]
    if geometry is not None:
        cmd += ["-g", f"{geometry['heads']}/{geometry['sectors-per-track']}"]
    run([*cmd, device], "mkfs.fat")


# --- FAT content with mtools ---------------------------------------------------------


def mtools_env() -> dict[str, str]:
    """mtools settings that do not depend on the build root's configuration or clock zone.

    FAT stores local time, so the zone is fixed to UTC; mtools itself honours
    SOURCE_DATE_EPOCH for what it creates. The geometry check is skipped since
    images need not have a "standard" floppy or disk geometry.
    """
    env = dict(os.environ)
    env.update({"TZ": "UTC", "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0",
                "MTOOLS_LOWER_CASE": "0", "MTOOLSRC": "/dev/null"})
    return env


def fat_target(path: str, offset: int = 0) -> str:
    """mtools' name of a FAT file system at byte `offset` of an image or device."""
    return f"{path}@@{offset}" if offset else path


def fat_path(path: str) -> str:
    return "::" + ("/" + path.strip("/") if path.strip("/") else "/")


def fat_walk(source: str) -> Iterator[tuple[str, list[str]]]:
    """(directory relative to `source`, its files) for every directory, sorted, parents first."""
    for here, dirs, files in os.walk(source):
        dirs.sort()
        rel = os.path.relpath(here, source)
        rel = "" if rel == "." else rel
        for name in dirs + files:
            full = os.path.join(here, name)
            if os.path.islink(full):
                fail(f"{os.path.join(rel, name)}: FAT cannot hold symlinks")
            if name in files and not os.path.isfile(full):
                fail(f"{os.path.join(rel, name)}: FAT can hold only regular files and "
                     "directories")
        yield rel, sorted(files)


class FatFs:
    """A FAT file system that mtools writes to: `target` is an image@@offset or a device."""

    def __init__(self, target: str):
        self.target = target
        self.env = mtools_env()
        self.dirs: set[str] = {""}  # directories known to exist

    def mkdirs(self, path: str) -> None:
        """Make directory `path` and its missing parents; existing ones stay."""
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            here = "/".join(parts[:i])
            if here in self.dirs:
                continue
            # mmd fails on an existing directory, even with "-D s": look first.
            probe = subprocess.run(["mdir", "-b", "-i", self.target, fat_path(here)],
                                   capture_output=True, text=True, env=self.env, check=False)
            if probe.returncode != 0:
                run(["mmd", "-i", self.target, fat_path(here)],
                    f"making {here} in the FAT file system", env=self.env)
            self.dirs.add(here)

    def copy(self, source: str, dest: str) -> None:
        """Copy file or directory `source` (a host path) to path `dest` in the file system.

        A directory's content lands in `dest`, which is created with its parents;
        a file becomes `dest`. Everything is copied in sorted order with its
        modification time (mcopy -m), so the same tree gives the same bytes;
        existing files are overwritten.
        """
        if os.path.islink(source):
            fail(f"{source}: FAT cannot hold symlinks")
        if os.path.isdir(source):
            for rel, files in fat_walk(source):
                where = "/".join(p for p in (dest.strip("/"), rel) if p)
                self.mkdirs(where)
                if files:
                    srcs = [os.path.join(source, rel, f) for f in files]
                    self.mcopy(srcs, fat_path(where).rstrip("/") + "/")
            return
        if not os.path.isfile(source):
            fail(f"{source}: FAT can hold only regular files and directories")
        self.mkdirs(os.path.dirname(dest.strip("/")))
        self.mcopy([source], fat_path(dest))

    def mcopy(self, sources: list[str], dest: str) -> None:
        run(["mcopy", "-m", "-p", "-Q", "-D", "o", "-i", self.target, *sources, dest],
            f"copying to {dest}", env=self.env)


# --- GRUB for BIOS, without grub-install ---------------------------------------------

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
    run([binary, "--directory", directory, "--prefix", prefix, "--format", platform,
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
    proc = subprocess.run(["blkid", "-p", "-O", str(part["start"] * sector_size),
                           "-s", "TYPE", "-o", "value", image],
                          capture_output=True, text=True, check=False)
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


# --- image formats ------------------------------------------------------------------

VPC_EPOCH = 946684800  # VHD timestamps count from 2000-01-01 00:00 UTC


def qemu_img_args(fmt: dict[str, Any]) -> list[str]:
    """qemu-img convert arguments for a format option object (upstream's defaults)."""
    kind = fmt["type"]
    args: list[str] = []
    opts: list[str] = []
    if kind == "qcow2":
        if fmt.get("compression", True):
            args.append("-c")
        if "compat" in fmt:
            opts.append(f"compat={fmt['compat']}")
    elif kind == "vmdk":
        if fmt.get("compression", True):
            args.append("-c")
        if "adapter_type" in fmt:
            opts.append(f"adapter_type={fmt['adapter_type']}")
        if fmt.get("compat6", False):
            opts.append("compat6")
        if "subformat" in fmt:
            opts.append(f"subformat={fmt['subformat']}")
    elif kind == "vpc":
        opts.append(f"subformat={fmt.get('subformat', 'fixed')}")
        if fmt.get("force_size", True):
            opts.append("force_size")
    return [*args, *(["-o", ",".join(opts)] if opts else [])]


def data_digest(path: str) -> bytes:
    """sha256 over the data of a (sparse) file: only its data extents are read."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        pos = 0
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # only a hole is left
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            digest.update(struct.pack("<QQ", pos, hole))
            os.lseek(fd, pos, os.SEEK_SET)
            while pos < hole:
                chunk = os.read(fd, min(1 << 20, hole - pos))
                if not chunk:
                    break
                digest.update(chunk)
                pos += len(chunk)
        digest.update(struct.pack("<Q", end))
    finally:
        os.close(fd)
    return digest.digest()


def convert_image(source: str, target: str, fmt: dict[str, Any]) -> None:
    """Convert the raw image `source` into `target` in format `fmt` with qemu-img.

    qemu-img gives vmdk, vdi and vpc images random ids (and vpc a timestamp);
    they are replaced by ids derived from the image's content and the format,
    and SOURCE_DATE_EPOCH (or 0), so the same image converts to the same bytes.
    """
    kind = fmt["type"]
    cmd = ["qemu-img", "convert", "-f", "raw", "-O", kind, *qemu_img_args(fmt), source, target]
    run(cmd, f"qemu-img convert to {kind}")
    seed = hashlib.sha256(data_digest(source) + json.dumps(fmt, sort_keys=True).encode())
    if kind == "vmdk":
        reproducible_vmdk(target, seed.digest())
    elif kind == "vdi":
        reproducible_vdi(target, seed.digest())
    elif kind == "vpc":
        reproducible_vpc(target, seed.digest())


# VMDK sparse extent header: magic, then the embedded descriptor's place (u64 sectors).
VMDK_MAGIC = b"KDMV"
VMDK_DESCRIPTOR = 28  # offset and size of the descriptor, in sectors


def reproducible_vmdk(path: str, seed: bytes) -> None:
    """Replace the random content id (CID) in the descriptor.

    qemu-img writes it in hex without leading zeros, so its length varies; the
    whole descriptor is rewritten with an 8-digit one. The descriptor is either
    embedded in a sparse extent (a zero-padded area) or a text file of its own.
    """
    cid = f"CID={seed[:4].hex()}\n".encode()
    with open(path, "r+b") as f:
        head = f.read(SECTOR)
        if head[:4] == VMDK_MAGIC:
            offset, size = struct.unpack_from("<QQ", head, VMDK_DESCRIPTOR)
            if not offset:
                return  # no embedded descriptor
            f.seek(offset * SECTOR)
            area = f.read(size * SECTOR)
        else:
            f.seek(0)
            area = f.read()
            offset, size = 0, 0
        text = area.split(b"\0", 1)[0]
        new = re.sub(rb"\nCID=[0-9a-f]{1,8}\n", b"\n" + cid, text, count=1)
        if size:
            if len(new) > len(area):
                fail(f"{path}: the VMDK descriptor does not fit its area")
            new = new.ljust(len(area), b"\0")
        f.seek(offset * SECTOR)
        f.write(new)
        if not size:
            f.truncate()  # a descriptor file may have become a byte longer


# VDI header (VirtualBox 1.1): the image and last-snapshot UUIDs.
VDI_UUID_IMAGE = 0x188
VDI_UUID_SNAP = 0x198


def reproducible_vdi(path: str, seed: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(VDI_UUID_IMAGE)
        f.write(uuidlib.UUID(bytes=seed[:16], version=4).bytes_le)
        f.seek(VDI_UUID_SNAP)
        f.write(uuidlib.UUID(bytes=seed[16:32], version=4).bytes_le)


# VHD footer: timestamp (u32 BE), disk type (u32 BE), checksum (u32 BE, ones' complement of
# the byte sum), UUID.
VPC_FOOTER = 512
VPC_TIMESTAMP = 24
VPC_DISK_TYPE = 60
VPC_CHECKSUM = 64
VPC_UUID = 68
VPC_FIXED = 2


def vpc_footer(footer: bytes, seed: bytes) -> bytes:
    patched = bytearray(footer)
    epoch = source_date_epoch()
    struct.pack_into(">I", patched, VPC_TIMESTAMP, max(0, (epoch or 0) - VPC_EPOCH))
    patched[VPC_UUID:VPC_UUID + 16] = uuidlib.UUID(bytes=seed[:16], version=4).bytes
    struct.pack_into(">I", patched, VPC_CHECKSUM, 0)
    struct.pack_into(">I", patched, VPC_CHECKSUM, ~sum(patched) & 0xFFFFFFFF)
    return bytes(patched)


def reproducible_vpc(path: str, seed: bytes) -> None:
    """Fix the footer's timestamp and UUID; dynamic images have a copy at the start."""
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(end - VPC_FOOTER)
        old = f.read(VPC_FOOTER)
        if old[:8] != b"conectix":
            fail(f"{path}: no VHD footer where qemu-img should have written it")
        footer = vpc_footer(old, seed)
        f.seek(end - VPC_FOOTER)
        f.write(footer)
        if struct.unpack_from(">I", old, VPC_DISK_TYPE)[0] != VPC_FIXED:
            f.seek(0)
            f.write(footer)
