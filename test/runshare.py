"""What the pytest-xdist workers of one run share: a directory, a lock, a user count.

Images that take minutes (the default sample, the boot tests' store) are built
once per run, not once per worker: the first worker that needs one builds it
under the directory's lock, the others wait and reuse it, and the last worker to
leave empties the directory (some GB), so nothing outlives the run.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from osbuild.fsutil import remove_tree

LOCK, USERS = "build.lock", "users"


def run_root(factory: pytest.TempPathFactory) -> Path:
    """The directory all xdist workers of this run share (basetemp's parent for a worker)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, across the processes of the run."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def shared_dir(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """The run's directory `name`, entered by each worker once (in a session fixture);
    its lock is `dir / LOCK`. When the last worker leaves, everything in it but the
    lock and the count is removed (a worker that comes later starts from empty)."""
    work = run_root(factory) / name
    work.mkdir(exist_ok=True)
    lock, users = work / LOCK, work / USERS
    with locked(lock):
        users.write_text(str(int(users.read_text() or 0) + 1 if users.exists() else 1))
    try:
        yield work
    finally:
        with locked(lock):
            left = int(users.read_text()) - 1
            users.write_text(str(left))
            if left == 0:
                for entry in work.iterdir():
                    if entry not in (lock, users):
                        remove_tree(entry)
