"""Golden cases: build every case's a and b with the real engine and compare with its goldens.

One test per case directory (see casekit.py for the layout). A failure lists
every difference as `golden: json.path: expected ... but got ...`, naming the
files that changed. Goldens are refreshed only with tools/gen-golden.

MATRIX (cell names, see test/matrix.py) keeps the cases of those cells: a case
without a cell is the default cell's. Under pytest-xdist (`--dist loadgroup`,
set in pyproject.toml) each other cell's cases go to one worker, one after
another: they share that cell's base tree and build root in the store instead
of building them side by side.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import casekit  # noqa: E402

sys.path.insert(0, str(casekit.ROOT / "test"))

from matrix import DEFAULT_CELL, selected  # noqa: E402


def chosen_cases() -> list[casekit.Case]:
    cases = casekit.discover()
    names = os.environ.get("CASES", "").replace(",", " ").split()
    if names:
        cases = casekit.select(cases, names)
    cells = {cell.name for cell in selected()}
    cases = [c for c in cases if (c.cell or DEFAULT_CELL) in cells]
    # The archive cases take longest: started first, they overlap the rest under xdist.
    return sorted(cases, key=lambda c: not c.network)


def params() -> list:
    found = []
    for case in chosen_cases():
        marks = [pytest.mark.golden]
        if case.network:
            marks += [pytest.mark.network, pytest.mark.slow]
        if case.cell:
            marks.append(pytest.mark.xdist_group(case.cell))
        found.append(pytest.param(case, id=case.name, marks=marks))
    return found


@pytest.mark.parametrize("case", params())
def test_case(case: casekit.Case, cases_store: Path, cases_libdir: Path, tmp_path: Path,
              record_property) -> None:
    record_property("golden_case", case.name)
    if case.network and os.environ.get("CASES_OFFLINE"):
        pytest.skip("needs the Debian archive (CASES_OFFLINE is set)")
    try:
        run = casekit.run_case(case, cases_libdir, cases_store, tmp_path / "work")
    except casekit.CaseError as e:
        pytest.fail(str(e), pytrace=False)
    record_property("golden_built", "cached" if run.cached else "built")
    record_property("golden_seconds", run.seconds)
    found = casekit.problems(run)
    if found:
        pytest.fail(f"{case.name} differs from its goldens in {case.path}:\n  "
                    + "\n  ".join(found)
                    + f"\n(intended? refresh with: tools/gen-golden {case.name})", pytrace=False)
