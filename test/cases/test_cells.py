"""The golden cases run in other cells of the matrix only where the cell changes something.

Fast (nothing is built). casedefs.CELL_DEPENDENT says why a stage has cell
cases; these tests hold the committed goldens to it, so a stage whose cell
goldens are byte-identical to each other cannot sit in the matrix as if it
added coverage.
"""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import casekit  # noqa: E402
from casedefs import CELL_CASES, CELL_DEPENDENT  # noqa: E402
from matrix import CELLS, DEFAULT_CELL  # noqa: E402

REASONS = ("output", "foreign-run")


def goldens(directory: Path) -> dict[str, bytes]:
    """The case's golden files, by name, as committed."""
    return {name: (directory / name).read_bytes()
            for name in casekit.GOLDENS if (directory / name).exists()}


def cells_of(stage: str) -> list[str]:
    return [c.cell for c in casekit.discover() if c.module == stage and c.cell is not None]


def test_every_stage_with_cell_cases_says_why() -> None:
    assert set(CELL_CASES) == set(CELL_DEPENDENT)
    assert set(CELL_DEPENDENT.values()) <= set(REASONS)
    with_cells = {c.module for c in casekit.discover() if c.cell is not None}
    assert with_cells == set(CELL_CASES), "cell case directories casedefs does not make"


@pytest.mark.parametrize("stage", [s for s, why in CELL_DEPENDENT.items() if why == "output"])
def test_output_dependent_stage_goldens_differ_between_cells(stage: str) -> None:
    """No two of its cells (the default one included) have the same goldens: each is seen.

    Every cell has the default cell's kinds of golden, so that none differs only
    by checking less.
    """
    seen: dict[tuple[tuple[str, bytes], ...], str] = {}
    same = []
    kinds = set(goldens(HERE / stage))
    for cell in [DEFAULT_CELL, *cells_of(stage)]:
        directory = HERE / stage if cell == DEFAULT_CELL else HERE / stage / cell
        assert set(goldens(directory)) == kinds, f"{stage}[{cell}] has other goldens"
        key = tuple(sorted(goldens(directory).items()))
        if key in seen:
            same.append(f"{cell} = {seen[key]}")
        seen.setdefault(key, cell)
    assert same == [], f"{stage}: cells whose goldens are the same, byte for byte"


@pytest.mark.parametrize("stage",
                         [s for s, why in CELL_DEPENDENT.items() if why == "foreign-run"])
def test_foreign_run_stage_runs_once_per_foreign_architecture(stage: str) -> None:
    """Its cells are there for the foreign path: one per architecture, the default's result."""
    native = CELLS[DEFAULT_CELL].architecture
    architectures = [CELLS[cell].architecture for cell in cells_of(stage)]
    assert native not in architectures
    assert len(architectures) == len(set(architectures))
    default = goldens(HERE / stage)
    for cell in cells_of(stage):
        assert goldens(HERE / stage / cell) == default, f"{stage}[{cell}]"


def test_identical_goldens_are_caught(tmp_path: Path) -> None:
    """The comparison the tests above rely on sees one changed golden byte."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "diff.json").write_text('{"x": 1}\n')
    assert goldens(tmp_path / "a") == goldens(tmp_path / "b")
    (tmp_path / "b" / "diff.json").write_text('{"x": 2}\n')
    assert goldens(tmp_path / "a") != goldens(tmp_path / "b")
