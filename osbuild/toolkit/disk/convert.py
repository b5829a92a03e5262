"""Raw disk images converted to other formats with qemu-img, reproducibly.

qemu-img gives vmdk, vdi and vpc images random ids (and vpc a timestamp);
they are replaced by ids derived from the image's content and the format, and
SOURCE_DATE_EPOCH (or 0), so the same image converts to the same bytes.
Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import hashlib
import json
import os
import re
import struct
import uuid as uuidlib
from typing import Any

from osbuild.api import fail
from osbuild.toolkit import tool
from osbuild.toolkit.disk.blockdev import SECTOR, source_date_epoch
from osbuild.toolkit.disk.sparse import data_extents

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


DIGEST_BLOCK = 1 << 20


def data_digest(path: str) -> bytes:
    """sha256 of a (sparse) file's content, reading only its data extents.

    Only the bytes count, never where the holes are: the same image may be
    written with more or fewer holes (a copy, another file system, zeros that
    mkfs wrote out), so the digest is over the 1 MiB blocks that are not all
    zeros, each with its index, and the file's length.
    """
    digest = hashlib.sha256()
    zero = bytes(DIGEST_BLOCK)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0  # the blocks before it are hashed
        for data, length in data_extents(fd):
            # An extent may begin in the last block hashed: each block counts once.
            last = (data + length - 1) // DIGEST_BLOCK
            for index in range(max(data // DIGEST_BLOCK, done), last + 1):
                chunk = os.pread(fd, DIGEST_BLOCK, index * DIGEST_BLOCK)
                if chunk != zero[:len(chunk)]:
                    digest.update(struct.pack("<Q", index) + chunk)
            done = max(done, last + 1)
        digest.update(struct.pack("<Q", os.lseek(fd, 0, os.SEEK_END)))
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
    tool.run(cmd, f"qemu-img convert to {kind}")
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
