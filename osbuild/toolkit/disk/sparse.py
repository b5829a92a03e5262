"""Where a sparse file holds data: its extents, found with SEEK_DATA and SEEK_HOLE.

Images are mostly holes; reading, hashing or copying only their data extents
keeps that cheap and leaves holes as holes in a copy. Stdlib only, like
osbuild.api: it runs on the build root's Python.
"""

import os
from collections.abc import Iterator


def data_extents(fd: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each data extent of the open file `fd`, in order, up to its size.

    Everything between them is a hole and reads as zeros. A file system that
    does not track holes reports the whole file as one extent.
    """
    end = os.lseek(fd, 0, os.SEEK_END)
    pos = 0
    while pos < end:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return  # only a hole is left
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        yield pos, hole - pos
        pos = hole
