"""Partition tables (dos and gpt): checked against the disk, written with sfdisk, read back.

A table that does not fit the disk is refused in words before sfdisk says "no
free sectors"; GPT partitions without a UUID get one derived from the disk's,
so the same request writes the same table. Stdlib only, like osbuild.api: it
runs on the build root's Python.
"""

import json
import re
import sys
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from osbuild.api import fail
from osbuild.toolkit import tool
from osbuild.toolkit.disk.blockdev import sector_size_of, size_of

BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"
GPT_ENTRIES = 128  # what sfdisk writes: 128 entries of 128 bytes
GPT_ENTRY_SIZE = 128
MBR_PRIMARY_MAX = 4
MBR_LIMIT = 2**32  # MBR start and size fields are 32-bit sector counts

# Namespace for the GPT partition UUIDs derived from the disk's UUID.
PARTITION_NS = uuidlib.UUID("0b7e4c5e-3d1a-4f4e-9f1c-6f73626c6464")

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
    tool.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "always",
              target], "sfdisk", stdin=script)
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
    proc = tool.run(["sfdisk", "--json", target], f"reading the partition table of {target}",
                    check=False, quiet=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return json.loads(proc.stdout)["partitiontable"]


def partition_number(entry: dict[str, Any]) -> int:
    """The number of a partition in `sfdisk --json` output (the digits its node ends with)."""
    match = re.search(r"(\d+)$", entry["node"])
    return int(match.group(1)) if match else 0

