"""Small file-system helpers the engine shares: copying and cleaning trees."""

import os
import shutil
import subprocess
from pathlib import Path

from .errors import OsbuildError


def copy_tree(source: Path, target: Path) -> None:
    """Copy a tree with owners, modes, links, xattrs and sparseness; reflink when possible."""
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["cp", "-a", "--reflink=auto", f"{source}/.", f"{target}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
    )
    if result.returncode != 0:
        raise OsbuildError(f"copying {source} to {target} failed: {result.stdout.strip()}")


def remove_tree(path: Path) -> None:
    """Remove a tree even when stages left read-only directories in it."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return

    def make_writable(func, failed, _exc):  # type: ignore[no-untyped-def]
        parent = os.path.dirname(failed)
        os.chmod(parent, 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
        func(failed)

    shutil.rmtree(path, onerror=make_writable)


def clamp_mtimes(tree: Path, epoch: int) -> None:
    """Set every mtime newer than `epoch` to it, so trees are reproducible."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames + ["."]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
