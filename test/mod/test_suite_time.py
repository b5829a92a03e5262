"""bench/suite_time.py: a JUnit report summed per test file, the costliest first."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="test.mod.test_suite_time" name="test_a" time="1.5"/>
<testcase classname="test.mod.test_suite_time" name="test_b" time="2.5"/>
<testcase classname="test.vm.test_boot.TestBoots" name="test_c[x]" time="12.0"/>
<testcase classname="test.vm.test_boot" name="test_d" time="8.0"><failure/></testcase>
</testsuite></testsuites>
"""


def suite_time(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "bench/suite_time.py", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_times_are_summed_per_file_costliest_first(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    report.write_text(REPORT)
    proc = suite_time(str(report))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "test time per file (sum over its tests: 24 s in all, 4 tests)",
        "    20.0 s  83.3%     2  test/vm/test_boot.py",
        "     4.0 s  16.7%     2  test/mod/test_suite_time.py",
    ]


def test_an_unreadable_report_is_said_so(tmp_path: Path) -> None:
    proc = suite_time(str(tmp_path / "missing.xml"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"suite_time: cannot read {tmp_path / 'missing.xml'}: ")
