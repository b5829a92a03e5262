"""The root backend: one read-only loop device per file system, read-only mounts.

Build hosts have no udev, so partition nodes never appear: each file system
gets its own loop device with --offset/--sizelimit, as the engine does. The
devices are attached --read-only, so not even a journal replay can write to
the image (the user's own raw file is used in place). Every device and mount
is a context manager in the caller's ExitStack: released on success, on
errors and on Ctrl-C alike.
"""

import contextlib
from pathlib import Path

from osbuild import interrupts
from osbuild.devices import loopback
from osbuild.errors import OsbuildError
from osbuild.image_info.backend_types import MountFailed, Unmount
from osbuild.image_info.disk import Partition
from osbuild.image_info.source import scratch_dir
from osbuild.image_info.treeview import Tree
from osbuild.mounts import mounted


class LoopBackend:
    name = "loop"

    def __init__(self, image: Path, stack: contextlib.ExitStack):
        self.image = image
        self.stack = stack
        self.root = scratch_dir(stack) / "root"
        self.root.mkdir()
        self.view = Tree(self.root)

    def _target(self, target: str) -> Path:
        if target == "/":
            return self.root
        # Resolved inside the mounted tree: a link there must not lead onto the host.
        path = self.view.resolve(target)
        if path is None or not path.is_dir() or path.is_symlink():
            raise MountFailed(f"mount point {target} does not exist in the tree")
        return path

    def mount(self, part: Partition | None, target: str, fstype: str,
              options: list[str]) -> Unmount:
        path = self._target(target)
        offset, size = (0, None) if part is None else (part.start, part.size)
        held = contextlib.ExitStack()
        # Attaching and mounting take milliseconds; held together they cannot be cut
        # between a device appearing and its cleanup being registered.
        with interrupts.deferred():
            self.stack.enter_context(held)
            try:
                device = held.enter_context(loopback(self.image, offset, size, read_only=True))
                held.enter_context(mounted(target, fstype, device, path, options))
            except OsbuildError as exc:
                held.close()
                raise MountFailed(str(exc)) from None
            except BaseException:
                held.close()
                raise
        return held.close

    def exists(self, path: str) -> bool:
        return self.view.exists(path)

    def read_text(self, path: str) -> str | None:
        return self.view.read_text(path)

    def tree(self, paths: tuple[str, ...] | None) -> Tree:
        return self.view  # live: every file is there
