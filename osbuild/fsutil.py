"""File-system helpers the engine shares: copying, measuring and removing trees."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import OsbuildError
from .stagelib import disk_usage  # noqa: F401  (one implementation, shared with stages)


def copy_tree(source: Path, target: Path) -> None:
    """Copy a tree's content into `target`, keeping owners, modes, xattrs, hardlinks and
    sparseness, with reflinks where the file system has them."""
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["cp", "-a", "--reflink=auto", "--", f"{source}/.", str(target)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise OsbuildError(f"copying {source} to {target} failed: {lines[-1]}")


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

    try:
        if path.is_dir() and not path.is_symlink():
            handler = {"onexc" if sys.version_info >= (3, 12) else "onerror": retry}
            shutil.rmtree(path, **handler)  # type: ignore[arg-type]
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def clamp_mtimes(tree: Path, epoch: int) -> None:
    """Set every mtime newer than `epoch` to it, so trees are reproducible."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames + ["."]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
