"""What every image-info backend is: the Backend protocol, its mount error and unmount callback.

Kept apart from backends.py, which picks and opens the backends, so that the
backends and their chooser all import this and not each other.
"""

from collections.abc import Callable
from typing import Protocol

from osbuild.image_info import ImageInfoError
from osbuild.image_info.disk import Partition
from osbuild.image_info.treeview import Tree

Unmount = Callable[[], None]


class MountFailed(ImageInfoError):
    """A file system could not be mounted (the caller decides whether that matters)."""


class Backend(Protocol):
    """What a backend offers: mounts, a few reads while mounting, and the tree at the end."""

    name: str

    def mount(self, part: Partition | None, target: str, fstype: str,
              options: list[str]) -> Unmount:
        """Mount `part` (None: the whole image) read-only at `target` of the tree."""
        ...

    def exists(self, path: str) -> bool: ...

    def read_text(self, path: str) -> str | None: ...

    def tree(self, paths: tuple[str, ...] | None) -> Tree:
        """The mounted tree as a local Tree: live, or a copy of `paths`, what the report
        reads (None: of every file, for a report that reads them all)."""
        ...
