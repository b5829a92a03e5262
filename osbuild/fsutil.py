"""File-system helpers the engine shares: copying, measuring and removing trees."""

import ctypes
import errno
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import interrupts
from .errors import OsbuildError
from .toolkit.stagelib import disk_usage  # noqa: F401  (one implementation, shared with stages)


def copy_tree(source: Path, target: Path) -> None:
    """Copy a tree's content into `target`, keeping owners, modes, xattrs, hardlinks and
    sparseness, with reflinks where the file system has them."""
    target.mkdir(parents=True, exist_ok=True)
    proc = interrupts.popen(["cp", "-a", "--reflink=auto", "--", f"{source}/.", str(target)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            on_interrupt=interrupts.kill_and_wait)
    try:
        _, stderr = proc.communicate()
    except BaseException:
        # Waited for, not just killed: a cp still in a system call would race the
        # removal of the half-copied target that follows an interrupt.
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        lines = stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise OsbuildError(f"copying {source} to {target} failed: {lines[-1]}")


RENAME_EXCHANGE = 2
AT_FDCWD = -100


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step; False where the file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second),
                 RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def replace_tree(new: Path, target: Path) -> None:
    """Rename the directory `new` to `target`, replacing whatever is there, also while
    another process does the same (two builds exporting into one output directory).

    An existing target is swapped with `new` in one step and the old tree, now at
    `new`'s name, removed after: `target` holds a whole tree at every moment, and an
    interrupt leaves the old one at most at `new`, which the caller removes anyway.
    """
    while True:
        try:
            os.rename(new, target)  # replaces a missing or empty directory atomically
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        try:
            if exchange(new, target):
                remove_tree(new)
                return
        except FileNotFoundError:
            continue  # another process moved it away first
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        try:
            os.rename(target, old)
        except FileNotFoundError:
            continue
        try:
            remove_tree(old)
        except BaseException:
            remove_tree(old)  # interrupted: finish it on the way out, the next signal is ignored
            raise


REMOVE_TRIES = 3


def remove_tree(path: Path) -> None:
    """Remove a file or a tree, also one with read-only directories; a missing path is fine."""

    def retry(func: Any, failed: str, exc: Any) -> None:
        error = exc[1] if isinstance(exc, tuple) else exc
        if isinstance(error, FileNotFoundError):
            return
        if not isinstance(error, PermissionError):
            raise error
        parent = os.path.dirname(failed)
        os.chmod(parent, os.lstat(parent).st_mode | stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, os.lstat(failed).st_mode | stat.S_IRWXU)
            remove_tree(Path(failed))
        else:
            os.unlink(failed)

    for attempt in range(REMOVE_TRIES):
        try:
            if path.is_dir() and not path.is_symlink():
                handler = {"onexc" if sys.version_info >= (3, 12) else "onerror": retry}
                shutil.rmtree(path, **handler)  # type: ignore[arg-type]
            else:
                path.unlink()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # A process that was just killed may finish one last system call in the tree.
            if e.errno != errno.ENOTEMPTY or attempt == REMOVE_TRIES - 1:
                raise
            time.sleep(0.05)


def clamp_mtimes(tree: Path, epoch: int) -> None:
    """Set every mtime newer than `epoch` to it, so trees are reproducible."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames + ["."]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
