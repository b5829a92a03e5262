"""The root backend: one read-only loop device per file system, read-only mounts.

Build hosts have no udev, so partition nodes never appear: each file system
gets its own loop device with --offset/--sizelimit, as the engine does. The
devices are attached --read-only, so not even a journal replay can write to
the image (the user's own raw file is used in place). Every device and mount
is a context manager in the caller's ExitStack: released on success, on
errors and on Ctrl-C alike.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from osbuild.devices import _detach, _identity, one_line, run_to_end
from osbuild.errors import OsbuildError
from osbuild.image_info.backends import MountFailed, Unmount
from osbuild.image_info.disk import Partition
from osbuild.image_info.source import scratch_dir, signals_deferred
from osbuild.image_info.treeview import Tree
from osbuild.mounts import _mounted

ATTACH_TRIES = 10


@contextlib.contextmanager
def read_only_loop(image: Path, offset: int, size: int | None) -> Iterator[str]:
    """/dev/loopN for `size` bytes (None: to the end) of `image` from `offset`, read-only."""
    cmd = ["losetup", "--find", "--show", "--read-only", "--offset", str(offset)]
    if size is not None:
        cmd += ["--sizelimit", str(size)]
    cmd.append(str(image))
    device = ""
    for _ in range(ATTACH_TRIES):
        result, interrupt = run_to_end(cmd)
        device = result.stdout.strip() if result.returncode == 0 else ""
        if interrupt is not None:
            if device:
                _detach(device, _identity(device), strict=False)
            raise interrupt
        # --find may offer a device another process takes first: ask again.
        if device or "busy" not in result.stderr:
            break
    if not device:
        raise OsbuildError(f"cannot attach {image} to a loop device: {one_line(result.stderr)}")
    identity = _identity(device)
    try:
        yield device
    except BaseException:
        _detach(device, identity, strict=False)
        raise
    _detach(device, identity, strict=True)


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
        mounted = contextlib.ExitStack()
        # Attaching and mounting take milliseconds; held together they cannot be cut
        # between a device appearing and its cleanup being registered.
        with signals_deferred():
            self.stack.enter_context(mounted)
            try:
                device = mounted.enter_context(read_only_loop(self.image, offset, size))
                mounted.enter_context(_mounted(target, fstype, device, path, options))
            except OsbuildError as exc:
                mounted.close()
                raise MountFailed(str(exc)) from None
            except BaseException:
                mounted.close()
                raise
        return mounted.close

    def exists(self, path: str) -> bool:
        return self.view.exists(path)

    def read_text(self, path: str) -> str | None:
        return self.view.read_text(path)

    def tree(self) -> Tree:
        return self.view
