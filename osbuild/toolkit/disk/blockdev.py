"""Small facts every disk module needs: how big an image or device is, and the clock.

Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import fcntl
import os
import struct

SECTOR = 512
BLKSSZGET = 0x1268  # ioctl: logical sector size of a block device


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


def source_date_epoch() -> int | None:
    """The build's clock for what tools would stamp with the current time, if it has one."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else None
