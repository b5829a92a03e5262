""".deb files rewritten for a foreign install: the same package, its data uncompressed.

A .deb is an ar archive of debian-binary, control.tar.* and data.tar.*, and
dpkg reads a data.tar member compressed or not. Under qemu-user, dpkg's own
decompression of a foreign tree's packages is about five times slower than
the host's; org.osbuild.debs rewrites each package here, natively, so that
the emulated dpkg-deb only copies a tar stream. The files dpkg installs are
the same.

Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import gzip
import hashlib
import io
import lzma
import os
import shutil
from collections.abc import Iterator

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60
DATA_SUFFIXES = (".xz", ".gz")


def _ar_members(f: io.BufferedReader) -> Iterator[tuple[bytes, int, int]]:
    """(header, offset of the content, size) of each member of an ar archive."""
    if f.read(len(AR_MAGIC)) != AR_MAGIC:
        raise ValueError("not an ar archive")
    while header := f.read(AR_HEADER):
        if len(header) != AR_HEADER or header[58:60] != b"`\n":
            raise ValueError("a truncated ar member header")
        size = int(header[48:58])
        yield header, f.tell(), size
        f.seek(size + size % 2, os.SEEK_CUR)


def _member_name(header: bytes) -> str:
    return header[:16].decode("ascii", "replace").strip().rstrip("/")


def _ar_header(header: bytes, name: str, size: int) -> bytes:
    slash = "/" if header[:16].strip().endswith(b"/") else ""
    return f"{name}{slash}".ljust(16).encode() + header[16:48] + f"{size}".ljust(10).encode() \
        + b"`\n"


def uncompressed(source: str, target: str) -> str | None:
    """Write `source` to `target` with its data.tar uncompressed; the new file's sha256.

    None, and no file, when there is nothing to gain (the data is not xz or gzip).
    """
    with open(source, "rb") as f:
        members = list(_ar_members(f))
        data = [m for m in members if _member_name(m[0]).startswith("data.tar")]
        suffix = os.path.splitext(_member_name(data[0][0]))[1] if len(data) == 1 else ""
        if suffix not in DATA_SUFFIXES:
            return None
        with open(target, "wb") as out:
            out.write(AR_MAGIC)
            for header, offset, size in members:
                f.seek(offset)
                if (header, offset, size) != data[0]:
                    out.write(header + f.read(size) + (b"\n" if size % 2 else b""))
                    continue
                start = out.tell()
                out.write(_ar_header(header, "data.tar", 0))  # its size is known at the end
                compressed = io.BufferedReader(_Slice(f, size))
                with (lzma.open(compressed) if suffix == ".xz" else
                      gzip.open(compressed)) as tar:
                    shutil.copyfileobj(tar, out, 1 << 20)
                length = out.tell() - start - AR_HEADER
                if length % 2:
                    out.write(b"\n")
                end = out.tell()
                out.seek(start)
                out.write(_ar_header(header, "data.tar", length))
                out.seek(end)
    with open(target, "rb") as written:
        return hashlib.file_digest(written, "sha256").hexdigest()


class _Slice(io.RawIOBase):
    """`size` bytes of an open file from its current position, as a stream."""

    def __init__(self, f: io.BufferedReader, size: int):
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = self.f.readinto(memoryview(buffer)[:self.left]) if self.left else 0
        self.left -= n or 0
        return n or 0

