"""The shared toolkit of the disk stages and the qemu assembler.

Partition tables (sfdisk), file systems (mkfs.*), file systems filled from a
directory without loop devices or mounts (mkfs.ext4 -d, mkfs.btrfs --rootdir,
mkfs.xfs -p: what the v1 assemblers use, since their sandbox cannot attach
loop devices), FAT content without mounting (mtools: this kernel has no vfat
driver), GRUB for BIOS without grub-install, and image format conversion
(qemu-img). The stages are thin wrappers around these functions; the v1 qemu
and rawfs assemblers make whole images with the same ones.

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
import stat
import struct
import subprocess
import sys
import tempfile
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn

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
        # sfdisk skips an empty line; "," asks for a partition with every default.
        lines.append(prefix + (", ".join(fields) or ","))
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
             geometry: dict[str, int] | None = None, offset: int = 0,
             size: int | None = None) -> None:
    """mkfs.fat with --invariant: fixed timestamps; the volume id is the given one.

    With `offset` and `size` (bytes) the file system is made in that part of
    an image file, e.g. a partition, with no loop device.
    """
    cmd = ["mkfs.fat", "-I", "--invariant", "-i", volid]
    if label is not None:
        cmd += ["-n", label]
    if fat_size is not None:
        cmd += ["-F", str(fat_size)]
    if geometry is not None:
        cmd += ["-g", f"{geometry['heads']}/{geometry['sectors-per-track']}"]
    if offset:
        cmd += [f"--offset={offset // SECTOR}"]
    blocks = [str(size // 1024)] if size is not None else []  # mkfs.fat counts KiB
    run([*cmd, device, *blocks], "mkfs.fat")


# --- file systems made from a directory, without loop devices or mounts ---------------
#
# The sandbox of an assembler cannot attach loop devices or mount, so mkfs itself
# fills the file system from a directory: mkfs.ext4 -d (straight into an image
# file, at an offset), mkfs.btrfs --rootdir, and mkfs.xfs from a prototype file.

FS_BLOCK = 4096
FS_INODE = 256
# Up-front check: the file system's own structures (journal, inode tables,
# allocation groups, btrfs metadata copies) need room beyond the data.
FS_MARGIN = 1.05
MIN_XFS = 300 * 1024 * 1024  # mkfs.xfs 6.1 refuses smaller file systems

# Phrases mkfs tools use when the data does not fit.
NO_SPACE = ("could not allocate", "no space left", "not enough space", "enospc")


class TooSmall(Exception):
    """The content does not fit the file system's size; the caller names which size."""

    def __init__(self, need: int, tool: str | None = None):
        super().__init__(need, tool)
        self.need = need
        self.tool = tool

    def __str__(self) -> str:
        if self.tool:
            return (f"its data (about {self.need} bytes) and the structures of {self.tool} "
                    "do not fit")
        return f"it needs at least about {self.need} bytes"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    return next((line for line in reversed(lines) if line), "no error output")


def walk(path: str) -> Iterator[os.DirEntry]:
    """Every entry below `path`, depth first in name order, without following symlinks."""
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        yield entry
        if entry.is_dir(follow_symlinks=False):
            yield from walk(entry.path)


def round_up(n: int, to: int = FS_BLOCK) -> int:
    return (n + to - 1) // to * to


def tree_usage(tree: str) -> int:
    """Bytes the tree's content takes in a file system: blocks, inodes, directories."""
    seen: set[tuple[int, int]] = set()
    total = FS_BLOCK + FS_INODE  # the root directory
    for entry in walk(tree):
        st = entry.stat(follow_symlinks=False)
        if (st.st_dev, st.st_ino) in seen:
            continue  # another name of a hard-linked file
        seen.add((st.st_dev, st.st_ino))
        total += FS_INODE
        if stat.S_ISREG(st.st_mode):
            # Sparse files stay sparse; st_blocks counts what is really there.
            total += min(round_up(st.st_size), round_up(st.st_blocks * 512))
        elif stat.S_ISDIR(st.st_mode):
            total += FS_BLOCK
        elif stat.S_ISLNK(st.st_mode) and st.st_size >= 60:
            total += FS_BLOCK  # shorter targets live in the inode
    return total


def _capture(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def check_mkfs(proc: subprocess.CompletedProcess, tool: str, need: int) -> None:
    """A failed mkfs: TooSmall when it ran out of space, else its own last words."""
    if proc.returncode == 0:
        return
    output = proc.stderr + proc.stdout
    sys.stderr.write(output)
    if any(phrase in output.lower() for phrase in NO_SPACE):
        raise TooSmall(need, tool)
    fail(f"{tool} failed: {last_line(output)}")


def _header_number(text: str, name: str) -> int:
    match = re.search(rf"^{name}:\s+(\d+)", text, re.M)
    if match is None:
        fail(f"dumpe2fs did not report the {name.lower()}")
    return int(match.group(1))


def ext4_used_inodes(spec: str) -> list[int]:
    """The inodes in use in an ext4 file system, from its inode bitmaps (dumpe2fs)."""
    proc = _capture(["dumpe2fs", spec])
    if proc.returncode != 0:
        fail(f"dumpe2fs cannot read the new ext4 file system: {last_line(proc.stderr)}")
    count, per_group = (_header_number(proc.stdout, name)
                        for name in ("Inode count", "Inodes per group"))
    used = []
    for group, ranges in enumerate(re.findall(r"^\s+Free inodes: ?(.*)$", proc.stdout, re.M)):
        free: set[int] = set()
        for item in filter(None, (r.strip() for r in ranges.split(","))):
            first, _, last = item.partition("-")
            free.update(range(int(first), int(last or first) + 1))
        start = group * per_group + 1
        used += [i for i in range(start, min(start + per_group, count + 1)) if i not in free]
    return used


def ext4_from_dir(source: str, image: str, uuid: str, size: int, need: int,
                  label: str | None = None, offset: int = 0) -> None:
    """An ext4 file system of `size` bytes at byte `offset` of `image`, holding `source`.

    Deterministic settings: usage type "default" (not the size-dependent
    small/floppy types), the directory hash seed is the UUID, and
    SOURCE_DATE_EPOCH is mke2fs's clock. mke2fs -d copies access and change
    times from the source, which differ between two copies of the same tree,
    so with SOURCE_DATE_EPOCH every inode's atime and ctime become it. mke2fs
    does not copy the root directory's mode and mtime: debugfs sets them afterwards.
    """
    root = os.lstat(source)
    env = dict(os.environ)
    epoch = source_date_epoch()
    if epoch is not None:
        env["E2FSPROGS_FAKE_TIME"] = str(epoch)
    extended = f"hash_seed={uuid},root_owner={root.st_uid}:{root.st_gid}"
    if offset:
        extended += f",offset={offset}"
    cmd = ["mkfs.ext4", "-q", "-F", "-T", "default", "-U", uuid, "-E", extended, "-d", source]
    if label is not None:
        cmd += ["-L", label]
    check_mkfs(_capture([*cmd, image, f"{size // 1024}k"], env), "mkfs.ext4", need)
    spec = f"{image}?offset={offset}" if offset else image
    # mke2fs -d copies neither the root directory's mode nor its mtime.
    commands = [f"set_inode_field / mode 0{stat.S_IFDIR | stat.S_IMODE(root.st_mode):o}",
                f"set_inode_field / mtime @{int(root.st_mtime)}"]
    if epoch is not None:
        for ino in ext4_used_inodes(spec):
            if ino == 2 or ino >= 11:  # the root and what mke2fs made; not the reserved ones
                commands += [f"set_inode_field <{ino}> atime @{epoch}",
                             f"set_inode_field <{ino}> ctime @{epoch}"]
    with tempfile.NamedTemporaryFile("w", prefix="debugfs-", suffix=".txt") as script:
        script.write("\n".join(commands) + "\n")
        script.flush()
        proc = _capture(["debugfs", "-w", "-f", script.name, spec], env)
    # debugfs reports command errors on stderr but still exits 0.
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        fail("debugfs cannot set the root directory's mode and inode times: "
             f"{last_line(proc.stderr)}")


def btrfs_from_dir(source: str, image: str, uuid: str, size: int, need: int,
                   label: str | None = None) -> None:
    """A btrfs file system in the `size`-byte file `image`, holding `source`.

    mkfs.btrfs grows a too small image file instead of failing, so the size
    is checked afterwards; what btrfs-progs 6.2 drops is reported as warnings.
    """
    cmd = ["mkfs.btrfs", "-q", "-f", "-U", uuid, "--rootdir", source]
    if label is not None:
        cmd += ["-L", label]
    check_mkfs(_capture([*cmd, image]), "mkfs.btrfs", need)
    actual = os.stat(image).st_size
    if actual > size:
        raise TooSmall(actual)
    check_btrfs_inodes(source, image)


# An inode item in `btrfs inspect-internal dump-tree` output.
BTRFS_INODE = re.compile(
    r"key \((\d+) INODE_ITEM 0\).*?\n.*?\n\s*block group \d+ mode (\d+) links \d+ "
    r"uid (\d+) gid (\d+) rdev (\d+)"
)
BTRFS_ROOT_INODE = 256


def check_btrfs_inodes(tree: str, image: str) -> None:
    """Warn about what mkfs.btrfs --rootdir silently dropped.

    btrfs-progs 6.2 (Debian 12) stores every device node with device number
    0 and gives the root directory mode 0755 owned by root; nothing offline
    can fix that in the image. Device nodes in /dev are hidden by devtmpfs on
    a booted system, so this is a warning, not a failure.
    """
    proc = _capture(["btrfs", "inspect-internal", "dump-tree", "-t", "fs", image])
    if proc.returncode != 0:
        fail(f"cannot inspect the btrfs image: {last_line(proc.stderr)}")
    inodes = {int(m[0]): (int(m[1], 8), int(m[2]), int(m[3]), int(m[4]))
              for m in BTRFS_INODE.findall(proc.stdout)}
    root = os.lstat(tree)
    got = inodes.get(BTRFS_ROOT_INODE)
    if got and got[:3] != (root.st_mode, root.st_uid, root.st_gid):
        print(f"warning: mkfs.btrfs made the root directory {got[0]:o} {got[1]}:{got[2]} "
              f"instead of {root.st_mode:o} {root.st_uid}:{root.st_gid}", file=sys.stderr)
    wanted = sum(1 for e in walk(tree) if is_device(e.stat(follow_symlinks=False)))
    lost = sum(1 for mode, _uid, _gid, rdev in inodes.values()
               if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and rdev == 0)
    if wanted and lost:
        print(f"warning: mkfs.btrfs lost the device numbers of {lost} of {wanted} device "
              "nodes (they read as 0:0 in the image)", file=sys.stderr)


def is_device(st: os.stat_result) -> bool:
    return (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and st.st_rdev != 0


PROTO_TYPES = {
    stat.S_IFREG: "-",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFBLK: "b",
    stat.S_IFCHR: "c",
    stat.S_IFIFO: "p",
}


def proto_token(text: str, what: str, path: str, fs: str) -> str:
    # The prototype format is whitespace separated and ends directories with "$".
    if not text or text == "$" or any(c.isspace() for c in text):
        fail(f"{fs} cannot hold {path!r}: its {what} cannot be written in a mkfs.xfs "
             "prototype file")
    return text


def proto_mode(st: os.stat_result, path: str, fs: str) -> str:
    kind = PROTO_TYPES.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        fail(f"{fs} cannot hold {path!r}: mkfs.xfs prototype files cannot create sockets")
    suid = "u" if st.st_mode & stat.S_ISUID else "-"
    sgid = "g" if st.st_mode & stat.S_ISGID else "-"
    return f"{kind}{suid}{sgid}{st.st_mode & 0o777:03o}"


def write_proto(tree: str, out: IO[str], sticky: list[tuple[str, int]], fs: str) -> None:
    """Describe `tree` in mkfs.xfs's prototype format; collect sticky paths for later.

    `fs` names the file system in errors about what the format cannot hold.
    """
    root = os.lstat(tree)
    out.write("osbuild\n0 0\n")
    out.write(f"{proto_mode(root, '/', fs)} {root.st_uid} {root.st_gid}\n")
    if root.st_mode & stat.S_ISVTX:
        sticky.append(("/", root.st_mode))

    def directory(path: str, rel: str, depth: int) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name_rel = f"{rel}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            name = proto_token(entry.name, "name", name_rel, fs)
            line = f"{'  ' * depth}{name} {proto_mode(st, name_rel, fs)} {st.st_uid} {st.st_gid}"
            if st.st_mode & stat.S_ISVTX:
                sticky.append((name_rel, st.st_mode))
            if stat.S_ISREG(st.st_mode):
                line += f" {proto_token(entry.path, 'path', name_rel, fs)}"
            elif stat.S_ISLNK(st.st_mode):
                line += f" {proto_token(os.readlink(entry.path), 'symlink target', name_rel, fs)}"
            elif stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
                line += f" {os.major(st.st_rdev)} {os.minor(st.st_rdev)}"
            out.write(line + "\n")
            if stat.S_ISDIR(st.st_mode):
                directory(entry.path, name_rel, depth + 1)
                out.write(f"{'  ' * (depth + 1)}$\n")

    directory(tree, "", 1)
    out.write("$\n")


def xfs_from_dir(source: str, image: str, uuid: str, size: int, need: int,
                 label: str | None = None, fs: str = "the xfs file system") -> None:
    """An xfs file system in the `size`-byte file `image`, holding `source`.

    mkfs.xfs of Debian 12 (xfsprogs 6.1) cannot copy a directory, only a
    prototype file. Its limits: names and symlink targets with whitespace and
    sockets are refused; hard links become copies; extended attributes and
    timestamps are lost. The sticky bit, which it cannot carry, is set with
    xfs_db afterwards.
    """
    if size < MIN_XFS:
        raise TooSmall(max(need, MIN_XFS))
    sticky: list[tuple[str, int]] = []
    with tempfile.NamedTemporaryFile("w", prefix="proto-", suffix=".txt") as proto:
        write_proto(source, proto, sticky, fs)
        proto.flush()
        cmd = ["mkfs.xfs", "-q", "-f", "-m", f"uuid={uuid}", "-p", proto.name]
        if label is not None:
            cmd += ["-L", label]
        check_mkfs(_capture([*cmd, image]), "mkfs.xfs", need)
    # Batches keep the command line short however many sticky directories there are.
    for i in range(0, len(sticky), 100):
        cmd = ["xfs_db", "-x"]
        for path, mode in sticky[i : i + 100]:
            cmd += ["-c", f"path {path}", "-c", f"write core.mode 0{mode:o}"]
        proc = _capture(cmd + [image])
        if proc.returncode != 0 or proc.stderr.strip():
            fail(f"xfs_db cannot set the sticky bit: {last_line(proc.stderr)}")


def copy_sparse(source: str, target: str, offset: int) -> None:
    """Copy file `source` into file `target` at byte `offset`, only its data, not its holes.

    copy_file_range lets the kernel share or copy the blocks without passing
    them through here; holes stay holes in the (sparse) target.
    """
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    dst = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    try:
        end = os.lseek(src, 0, os.SEEK_END)
        pos = 0
        while pos < end:
            try:
                pos = os.lseek(src, pos, os.SEEK_DATA)
            except OSError:
                break  # only a hole is left
            hole = os.lseek(src, pos, os.SEEK_HOLE)
            while pos < hole:
                done = os.copy_file_range(src, dst, hole - pos, pos, offset + pos)
                if done == 0:
                    fail(f"{source} ended early while copying it into {target}")
                pos += done
    finally:
        os.close(src)
        os.close(dst)


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
