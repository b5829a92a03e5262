"""The suite's guards on itself: every test has a hang limit; CI learns whether any test ran.

A pytest plugin (test/conftest.py loads it; `-p guards` with test/ on the path
loads it elsewhere).

Hang guard: pytest-timeout with a limit per marker, the longest that applies
(a test's own `timeout` marker, or `--timeout`/PYTEST_TIMEOUT, wins; 0 switches
the guard off, e.g. under a debugger). The limit covers the test's fixtures
too, since boots happen there. A limit is a hang guard, never a speed
assertion: each is several times the slowest such test on a busy 2-core
machine. The method is `signal`: SIGALRM raises in the test itself, in the
xdist worker's main thread, so the hang fails as that test with its stack,
`subprocess.run` kills the child it waits for, the fixtures' teardown stops
qemu and detaches loop devices, and the session goes on. The `thread` method
would dump the stacks and `os._exit` the worker instead: its qemu and mounts
left behind, its session fixtures never finalized, xdist reporting only a
crashed worker.

Outcome: with PYTEST_OUTCOME=FILE, the controlling process writes pytest's
exit status and the counts of the session's tests to FILE as `key=value`
lines (`ran` counts the tests whose body ran), because `make test` turns every
failure into exit status 2 and CI must tell "nothing ran" apart.
"""

import os
from collections import Counter
from pathlib import Path

import pytest

# Seconds per marker; a test without one of these is a unit test.
HANG_LIMITS = {
    "boot": 3600,  # test/vm: builds its images and boots them under TCG
    "foreign": 3600,  # a golden case of an arm64/riscv64 cell: qemu-user builds
    "slow": 1800,  # a build or a libguestfs appliance
}
UNIT_LIMIT = 300
METHOD = "signal"


def hang_limit(item: pytest.Item) -> int:
    """The longest limit of the item's markers."""
    return max((seconds for marker, seconds in HANG_LIMITS.items()
                if item.get_closest_marker(marker)), default=UNIT_LIMIT)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "boot: boots an image (hang limit "
                            f"{HANG_LIMITS['boot']} s)")
    config.addinivalue_line("markers", "foreign: builds through qemu-user (hang limit "
                            f"{HANG_LIMITS['foreign']} s)")
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError("pytest-timeout is missing (every test's hang guard): "
                                "run ci/setup")
    path = os.environ.get("PYTEST_OUTCOME")
    if path and not hasattr(config, "workerinput"):  # the controller sees every report
        config.pluginmanager.register(Outcome(Path(path)), "guards-outcome")


@pytest.hookimpl(trylast=True)  # after the conftests have added their markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(hang_limit(item), method=METHOD))


class Outcome:
    """Counts the tests by result and writes them with the exit status at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            if hasattr(report, "wasxfail"):
                self.counts["xfailed" if report.skipped else "xpassed"] += 1
            else:
                self.counts[report.outcome] += 1
        elif report.skipped:
            self.counts["skipped"] += 1
        elif report.failed:
            self.counts["errors"] += 1

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        counts = self.counts
        ran = counts["passed"] + counts["failed"] + counts["xfailed"] + counts["xpassed"]
        fields = {"exitstatus": int(exitstatus), "ran": ran}
        for key in ("passed", "failed", "skipped", "errors", "xfailed", "xpassed"):
            fields[key] = counts[key]
        self.path.write_text("".join(f"{k}={v}\n" for k, v in fields.items()))
