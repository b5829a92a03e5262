"""The suite's guards (test/guards.py): a hang fails as that test; CI sees when nothing ran.

Each check runs pytest in a subprocess on a few tiny test files made here,
with the plugin loaded as the suite loads it, and under pytest-xdist as
`make test` runs it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_pytest(workdir: Path, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """pytest with test/guards.py on `workdir`, which holds its own pytest.ini."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYTEST_", "MATRIX", "CASES"))}
    clean["PYTHONPATH"] = str(ROOT / "test")
    if not (workdir / "pytest.ini").exists():
        (workdir / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "guards", "-p",
                           "no:cacheprovider", "-p", "no:hypothesispytest", "-q", *args],
                          cwd=workdir, env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=300)


def outcome(workdir: Path, *args: str) -> dict[str, int]:
    path = workdir / "outcome"
    run_pytest(workdir, *args, env={"PYTEST_OUTCOME": str(path)})
    return {k: int(v) for k, v in (line.split("=") for line in path.read_text().splitlines())}


HANGS = '''
import os
import subprocess
from pathlib import Path

import pytest

import guards

guards.UNIT_LIMIT = 3  # the suite's limit, low enough to wait for


@pytest.fixture
def cleaned_up():
    yield
    Path(os.environ["MARKS"], "teardown").write_text("ran")


def test_hangs(cleaned_up):
    pidfile = Path(os.environ["MARKS"], "child")
    subprocess.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 600"])


def test_goes_on():
    pass
'''


def test_a_hanging_test_fails_as_itself_with_its_stack_and_leaves_nothing(tmp_path: Path
                                                                          ) -> None:
    work, marks = tmp_path / "work", tmp_path / "marks"
    work.mkdir()
    marks.mkdir()
    (work / "test_hang.py").write_text(HANGS)
    proc = run_pytest(work, "-n", "2", env={"MARKS": str(marks)})
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "FAILED test_hang.py::test_hangs - Failed: Timeout (>3.0s)" in out, out
    assert 'subprocess.run(["sh", "-c"' in out, out  # the test's own line, in its stack
    assert "1 failed, 1 passed" in out and "crashed" not in out, out
    assert (marks / "teardown").read_text() == "ran"
    pid = int((marks / "child").read_text())
    with pytest.raises(ProcessLookupError):  # subprocess.run killed and reaped it
        os.kill(pid, 0)


def test_a_tests_own_timeout_marker_wins(tmp_path: Path) -> None:
    (tmp_path / "test_own.py").write_text(
        "import time\nimport pytest\n\n"
        "@pytest.mark.timeout(2)\ndef test_sleeps():\n    time.sleep(600)\n")
    proc = run_pytest(tmp_path)
    assert "Timeout (>2.0s)" in proc.stdout and proc.returncode == 1, proc.stdout


def test_without_pytest_timeout_the_suite_refuses_to_run(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    proc = run_pytest(tmp_path, "-p", "no:timeout")
    assert proc.returncode != 0
    assert "pytest-timeout is missing (every test's hang guard): run ci/setup" in proc.stderr


LIMITS_PRINTER = '''
def pytest_collection_finish(session):
    for item in session.items:
        marker = item.get_closest_marker("timeout")
        print("LIMIT", item.nodeid, marker.args[0] if marker else None)
'''


def test_the_suites_tests_get_their_limits_by_kind(tmp_path: Path) -> None:
    (tmp_path / "limits_printer.py").write_text(LIMITS_PRINTER)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "MATRIX", "CASES"))}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "limits_printer",
         "-p", "no:cacheprovider", "test/vm/test_matrix.py", "test/vm/test_harness.py",
         "test/cases/test_cases.py", "test/mod/test_layers.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    limits = {}
    for line in proc.stdout.splitlines():
        if line.startswith("LIMIT "):
            nodeid, limit = line.removeprefix("LIMIT ").rsplit(" ", 1)
            limits[nodeid] = limit
    cases = "test/cases/test_cases.py::test_case"
    cell = "test/vm/test_matrix.py::test_cell_builds_inspects_and_boots"
    expected = {
        f"{cell}[debian13-arm64]": "3600",  # boot
        f"{cases}[org.osbuild.grub2[debian13-riscv64]]": "3600",  # foreign cell
        f"{cases}[org.osbuild.debs]": "1800",  # slow: the Debian archive
        f"{cases}[org.osbuild.hostname]": "300",
        "test/mod/test_layers.py::test_osbuild_never_imports_verify": "300",
    }
    assert {k: limits.get(k) for k in expected} == expected
    assert None not in limits.values() and "None" not in limits.values()
    unit = [k for k in limits if k.startswith("test/vm/test_harness.py")]
    assert unit and all(limits[k] == "300" for k in unit)


def test_this_test_has_the_unit_limit(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("timeout")
    assert marker.args == (300,) and marker.kwargs == {"method": "signal"}


OUTCOMES = '''
import pytest

def test_a():
    pass

def test_b():
    pass

def test_c():
    pass

def test_d():
    assert False

@pytest.mark.skip(reason="not here")
def test_e():
    pass
'''


def test_outcome_counts_every_worker_once(tmp_path: Path) -> None:
    (tmp_path / "test_mixed.py").write_text(OUTCOMES)
    assert outcome(tmp_path, "-n", "2") == {
        "exitstatus": 1, "ran": 4, "passed": 3, "failed": 1, "skipped": 1, "errors": 0,
        "xfailed": 0, "xpassed": 0}


def test_outcome_says_nothing_ran_when_every_test_skipped(tmp_path: Path) -> None:
    (tmp_path / "test_skipped.py").write_text(
        "import pytest\n\n@pytest.mark.skip(reason='x')\ndef test_a():\n    pass\n\n"
        "def test_b():\n    pytest.skip('y')\n")
    found = outcome(tmp_path, "-n", "2")
    assert (found["exitstatus"], found["ran"], found["skipped"]) == (0, 0, 2)


def test_outcome_of_nothing_collected(tmp_path: Path) -> None:
    (tmp_path / "test_empty.py").write_text("")
    found = outcome(tmp_path)
    assert (found["exitstatus"], found["ran"]) == (5, 0)
