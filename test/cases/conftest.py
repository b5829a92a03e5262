"""The golden-case runner's session: which cases, which libdir, one store for all workers.

Chosen through the environment, so pytest-xdist workers see the same thing
(`make check-images` sets these from its variables):

    CASES="org.osbuild.hostname assemblers/org.osbuild.qemu"   only these cases
    CASES_OFFLINE=1       skip the cases that need the Debian archive (network)
    CASES_LIBDIR=DIR      build with this libdir (default: the repository)
    CASES_STORE=DIR       keep the store in DIR/<libdir fingerprint> across runs;
                          default: a fresh store per session, removed at its end

Every worker shares the session's store (the store takes concurrent builds),
so the base tree is built once; the last worker to finish removes it. A
persistent store is keyed by a hash of the libdir's code, because stage ids
hash options, not code: without the key, a changed stage would be answered
from the cache and its case could not fail.

When this conftest is loaded by the controlling process (pytest is pointed at
test/cases, as `make check-images` does), it also prints a summary table:
case, whether b was built or fully cached, seconds, and the result.
"""

import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import casekit  # noqa: E402

STORE_DIRNAME = "cases-store"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "network: needs the Debian archive (golden cases)")
    config.addinivalue_line("markers", "golden: a golden case built by the real engine")
    if not os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("CASES_STORE"):
        prune_old_stores(Path(os.environ["CASES_STORE"]), libdir())


def libdir() -> Path:
    return Path(os.environ.get("CASES_LIBDIR") or casekit.ROOT).resolve()


def prune_old_stores(root: Path, lib: Path) -> None:
    """A persistent store root keeps only the store of the current libdir fingerprint."""
    if not root.is_dir():
        return
    current = casekit.libdir_fingerprint(lib)
    for child in root.iterdir():
        if child.is_dir() and child.name != current and len(child.name) == len(current):
            shutil.rmtree(child, ignore_errors=True)


def session_root(factory: pytest.TempPathFactory) -> Path:
    """The directory all xdist workers of this session share (their basetemps' parent)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def cases_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    persistent = os.environ.get("CASES_STORE")
    if persistent:
        yield Path(persistent).resolve() / casekit.libdir_fingerprint(libdir())
        return
    root = session_root(tmp_path_factory)
    with store_users(root, +1):
        pass
    try:
        yield root / STORE_DIRNAME
    finally:
        with store_users(root, -1) as remaining:
            if remaining == 0:  # the last worker out removes the shared store
                shutil.rmtree(root / STORE_DIRNAME, ignore_errors=True)


@contextmanager
def store_users(root: Path, delta: int) -> Iterator[int]:
    """Count the workers using the session store, under a lock held while the caller acts."""
    with open(root / f"{STORE_DIRNAME}.users", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        count = int(f.read().strip() or 0) + delta
        f.seek(0)
        f.truncate()
        f.write(str(count))
        f.flush()
        yield count


@pytest.fixture(scope="session")
def cases_libdir() -> Path:
    return libdir()


ROWS: list[tuple[str, str, float | None, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the table's rows; under xdist the controller gets every worker's reports."""
    props = dict(report.user_properties)
    if "golden_case" not in props or report.when != "call":
        return
    outcome = "skipped" if report.skipped else "pass" if report.passed else "FAIL"
    ROWS.append((str(props["golden_case"]), str(props.get("golden_built", "-")),
                 props.get("golden_seconds"), outcome))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = ROWS
    if not rows:
        return
    width = max(len("case"), *(len(r[0]) for r in rows))
    terminalreporter.section("golden cases")
    terminalreporter.write_line(f"{'case':<{width}}  {'b':<7}  {'seconds':>7}  result")
    for name, built, seconds, outcome in sorted(rows):
        shown = f"{seconds:7.1f}" if isinstance(seconds, float) else f"{'-':>7}"
        terminalreporter.write_line(f"{name:<{width}}  {built:<7}  {shown}  {outcome}")
    failed = sum(1 for r in rows if r[3] == "FAIL")
    total = sum(r[2] for r in rows if isinstance(r[2], float))
    terminalreporter.write_line(f"{len(rows)} cases, {failed} failed, "
                                f"{total:.1f} s of case time")
