"""Image format, partition table, partitions and the file systems on them.

Everything here reads a raw image file with userspace tools (qemu-img, sfdisk,
blkid -p), so it needs neither root nor loop devices nor mounts.
"""

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osbuild.image_info import ImageInfoError

SECTOR = 512
# blkid's exit statuses that are an answer: found (0), nothing there (2). 4 is an error,
# 8 "ambivalent" (two superblocks): the file system is then unknown, not absent.
BLKID_ANSWERS = (0, 2)
# What `image-info` can read through qemu-img; anything else is not a disk image.
IMAGE_FORMATS = ("raw", "qcow2", "qcow", "vmdk", "vpc", "vdi", "vhdx")


def run(cmd: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool; a failure (with `check`) becomes one line naming `what`."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ImageInfoError(f"{what}: {cmd[0]} is not installed") from None
    if check and proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        raise ImageInfoError(f"{what}: {lines[-1] if lines else f'{cmd[0]} failed'}")
    return proc


def image_format(path: Path) -> dict[str, Any]:
    """{type, compat} as qemu-img sees the file (compat only where the format has one)."""
    proc = run(["qemu-img", "info", "--output=json", "-U", str(path)], f"{path}")
    info = json.loads(proc.stdout)
    fmt: dict[str, Any] = {"type": info.get("format")}
    data = info.get("format-specific", {}).get("data", {})
    if "compat" in data:
        fmt["compat"] = data["compat"]
    if "create-type" in data:  # vmdk: monolithicSparse, streamOptimized, ...
        fmt["subformat"] = data["create-type"]
    fmt["virtual-size"] = info.get("virtual-size")
    return fmt


@dataclass
class Filesystem:
    """What blkid finds at one place of the image."""

    fstype: str | None
    uuid: str | None
    label: str | None

    def report(self) -> dict[str, Any]:
        return {"fstype": self.fstype, "uuid": self.uuid, "label": self.label}


@dataclass
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str
    partuuid: str | None
    bootable: bool
    name: str | None
    fs: Filesystem
    attrs: str = ""  # GPT attributes as sfdisk prints them ("RequiredPartition GUID:60,63")

    def report(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "start": self.start,
            "size": self.size,
            "type": self.type,
            "partuuid": self.partuuid,
            "bootable": self.bootable,
            "name": self.name,
            **self.fs.report(),
        }


@dataclass
class Layout:
    """A partitioned disk (`pttype` set) or a bare file system (`filesystem` set)."""

    size: int
    pttype: str | None = None
    ptid: str | None = None
    partitions: list[Partition] | None = None
    filesystem: Filesystem | None = None
    # Where blkid could not tell what a partition holds (the report's "errors").
    problems: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        if self.pttype is None:
            return {"filesystem": self.filesystem.report() if self.filesystem else None}
        return {
            "partition-table": self.pttype,
            "partition-table-id": self.ptid,
            "partitions": [p.report() for p in self.partitions or []],
        }


def _unescape_export(value: str) -> str:
    # `blkid -o export` escapes shell-special characters with a backslash.
    return re.sub(r"\\(.)", r"\1", value)


def _blkid(image: Path, offset: int = 0, size: int | None = None
           ) -> tuple[dict[str, str], str | None]:
    """What blkid's low-level probe finds at `offset` (for `size` bytes) of `image`, and
    why it could not tell (None when it could)."""
    cmd = ["blkid", "-p", "-o", "export", "-O", str(offset)]
    if size is not None:
        cmd += ["-S", str(size)]
    proc = run([*cmd, str(image)], f"{image}", check=False)
    values: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = _unescape_export(value)
    if proc.returncode in BLKID_ANSWERS:
        return values, None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    return values, lines[-1] if lines else f"blkid exited with status {proc.returncode}"


def _filesystem(values: dict[str, str]) -> Filesystem:
    # blkid says USAGE=filesystem for file systems, other (swap), raid, crypto.
    return Filesystem(values.get("TYPE"), values.get("UUID"), values.get("LABEL"))


def probe(image: Path, offset: int = 0, size: int | None = None) -> Filesystem:
    """The file system at `offset` (for `size` bytes) of `image`, by its superblock."""
    return _filesystem(_blkid(image, offset, size)[0])


def _number(node: str, device: str) -> int:
    # sfdisk names partitions <device>N, or <device>pN when the name ends in a digit.
    tail = node[len(device):] if node.startswith(device) else node
    match = re.search(r"(\d+)$", tail)
    if not match:
        raise ImageInfoError(f"cannot tell the number of partition {node}")
    return int(match.group(1))


def _dos_partuuid(ptid: str, number: int) -> str:
    # What the kernel and blkid call PARTUUID on a dos label: <disk id>-<nn>.
    return f"{int(ptid, 16):08x}-{number:02x}"


def layout(image: Path, name: Path | None = None) -> Layout:
    """The partition table of a raw image, or the file system it holds as a whole.

    `name` is what errors call the image (the user's file, not a converted copy).
    """
    name = name or image
    size = os.stat(image).st_size
    whole, unclear = _blkid(image)
    fs = _filesystem(whole)
    # A FAT boot sector ends in 0x55AA like an MBR, so sfdisk takes a bare FAT file
    # system for an empty dos table; blkid tells the two apart.
    if fs.fstype is not None and "PTTYPE" not in whole:
        return Layout(size=size, filesystem=fs)
    proc = run(["sfdisk", "--json", str(image)], f"{name}", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        if fs.fstype is None:
            # Say why, where a tool said so: a table sfdisk cannot read, two superblocks.
            why = [line.strip() for line in proc.stderr.splitlines() if line.strip()] \
                if "PTTYPE" in whole else [unclear] if unclear else []
            raise ImageInfoError(f"{name}: {why[-1]}" if why else
                                 f"{name}: no partition table and no file system found "
                                 "(unknown format)")
        return Layout(size=size, filesystem=fs)
    table = json.loads(proc.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    label, ptid = table["label"], table.get("id")
    parts, problems = [], []
    for entry in table.get("partitions", []):
        number = _number(entry["node"], table.get("device", str(image)))
        start, length = entry["start"] * sector, entry["size"] * sector
        if label == "dos":
            partuuid = _dos_partuuid(ptid, number) if ptid else None
        else:
            partuuid = entry.get("uuid", "").lower() or None
        # An extended partition is a container, not a file system.
        extended = label == "dos" and entry["type"] in ("5", "f", "85")
        values, unclear = ({}, None) if extended else _blkid(image, start, length)
        if unclear is not None:
            problems.append(f"{unclear} (partition {number})")
        fs = _filesystem(values)
        parts.append(
            Partition(
                number=number,
                start=start,
                size=length,
                type=entry["type"],
                partuuid=partuuid,
                bootable=bool(entry.get("bootable", False))
                or "LegacyBIOSBootable" in entry.get("attrs", ""),
                name=entry.get("name"),
                fs=fs,
                attrs=entry.get("attrs", ""),
            )
        )
    return Layout(size=size, pttype=label, ptid=ptid, partitions=parts, problems=problems)
