"""bench/results.py: the goals, the results file of `make bench` and the README's table.

Fast: no builds, only runs made up here, a throwaway git repository and the
committed results file and README.
"""

import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_results", ROOT / "bench/results.py")
assert _spec and _spec.loader
results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results)

ARM64 = "cold build debian13-arm64-qcow2"
RISCV64 = "cold build debian13-riscv64-qcow2"


def run_of(figures: dict[str, float], commit: str = "a" * 40) -> Any:
    return results.Run(commit=commit, date="2026-12-08T10:00:00+00:00",
                       machine={"nproc": 2, "kernel": "6.1.0"}, figures=figures,
                       ratios=results.derive_ratios(figures))


def verdicts(run: Any) -> dict[str, str]:
    return {row.name: row.verdict for row in results.rows(run)}


def table_line(table: str, name: str) -> list[str]:
    """The cells of the table's line for `name` (cells are two or more spaces apart)."""
    for line in table.splitlines():
        if line.startswith(name + "  "):
            return [name, *re.split(r"\s{2,}", line[len(name):].strip())]
    raise AssertionError(f"no line for {name!r} in:\n{table}")


def test_appended_runs_are_read_back_and_the_last_is_compared_with_the_one_before(
        tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    assert results.last_run(path) is None
    first = run_of({"fully cached rebuild": 2.3}, commit="1" * 40)
    second = run_of({"fully cached rebuild": 0.6}, commit="2" * 40 + "-dirty")
    results.append(first, path)
    results.append(second, path)
    assert results.read_runs(path) == [first, second]
    assert results.last_run(path) == second
    assert len(path.read_text().splitlines()) == 2  # one line per run, appended

    table = results.format_table(second, first)
    assert "previous run (1111111)" in table
    assert "this run: commit 2222222-dirty" in table
    assert table_line(table, "fully cached rebuild") == [
        "fully cached rebuild", "0.6 s", "<= 1 s", "met", "2.3 s"]


def test_a_file_that_is_not_runs_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"commit": "x", "date": "d", "machine": {}, "figures": {}}\nnot json\n')
    with pytest.raises(results.ResultsError, match=r"results.jsonl:2:"):
        results.read_runs(path)


def test_a_missed_goal_reads_not_met_and_a_kept_one_met() -> None:
    run = run_of({"fully cached rebuild": 0.5, "rebuild after hostname change": 7.9,
                  "image-info (root, loop)": 1.2, "make test": 1300, ".ci/run": 2000})
    found = verdicts(run)
    assert found["fully cached rebuild"] == "met"
    assert found["rebuild after hostname change"] == "not met"
    assert found["make test"] == "not met"  # 20 min at most
    assert found[".ci/run"] == "met"  # 45 min at most
    assert found["image-info (root, loop)"] == "-"  # judged only against virt-inspector
    table = results.format_table(run)
    assert table_line(table, "rebuild after hostname change")[1:4] == [
        "7.9 s", "<= 4 s", "not met"]
    assert table_line(table, "make test")[2] == "<= 20 min"


def test_ratio_goals_compare_figures_of_the_same_run() -> None:
    before = run_of({"cold build": 30.0, "baseline script": 100.0})
    run = run_of({"cold build": 40.0, "baseline script": 40.0,
                  "image-info (root, loop)": 1.0, "virt-inspector (libguestfs)": 24.0,
                  ARM64: 130.0, RISCV64: 100.0,
                  "check-images -n 1": 100.0, "check-images -n 2": 50.0})
    assert run.ratios == pytest.approx({
        "cold build / baseline script": 1.0,
        "virt-inspector (libguestfs) / image-info (root, loop)": 24.0,
        f"{ARM64} / cold build": 3.25,
        f"{RISCV64} / cold build": 2.5,
        "check-images -n 1 / check-images -n 2": 2.0,
    })
    found = {row.name: row for row in results.rows(run, before)}
    assert found["cold build / baseline script"].verdict == "not met"  # 1.0x, goal 0.8x
    assert found["cold build / baseline script"].previous == pytest.approx(0.3)
    assert found["virt-inspector (libguestfs) / image-info (root, loop)"].verdict == "not met"
    assert found[f"{ARM64} / cold build"].verdict == "not met"
    assert found[f"{RISCV64} / cold build"].verdict == "met"
    assert found["check-images -n 1 / check-images -n 2"].verdict == "met"
    assert found["cold build"].verdict == "-"  # in seconds it has no goal of its own
    faster = run_of({"cold build": 30.0, "baseline script": 40.0})
    assert verdicts(faster)["cold build / baseline script"] == "met"  # 0.75x


def test_a_run_without_the_other_figure_has_no_ratio() -> None:
    assert results.derive_ratios({"cold build": 40.0, ARM64: 100.0}) == {
        f"{ARM64} / cold build": 2.5}
    assert results.derive_ratios({"cold build": 40.0}) == {}


def test_every_goal_names_a_figure_bench_measures() -> None:
    bench = (ROOT / "bench/bench.py").read_text()
    measured = set(re.findall(r'figures\["([^"]+)"\]', bench))
    measured |= {results.check_images_figure(1), results.check_images_figure(2)}
    assert 'figures[f"cold build {sample.stem}"]' in bench  # what "cold build ?*" means
    for goal in results.GOALS:
        if goal.given:
            continue
        names = [goal.over] if "*" in goal.figure else [goal.figure, goal.over]
        assert set(filter(None, names)) <= measured, goal


README = """# Title

## Performance

Some words kept as they are.

<!-- bench:begin -->
| old | table |
| --- | --- |
<!-- bench:end -->

More words after.
"""


def test_the_readme_block_is_replaced_and_nothing_else(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    path = tmp_path / "results.jsonl"
    results.append(run_of({"cold build": 99.0}), path)
    run = run_of({"fully cached rebuild": 3.0, "cold build": 30.0, "baseline script": 40.0})
    results.append(run, path)
    assert results.update_readme(readme, path) == run
    text = readme.read_text()
    before, block, after = re.split(r"<!-- bench:begin -->|<!-- bench:end -->", text)
    head, _, tail = re.split(r"(<!-- bench:begin -->[\s\S]*<!-- bench:end -->)", README)
    assert (before, after) == (head, tail)
    assert "| old | table |" not in block
    assert "| fully cached rebuild | 3.0 s | ≤ 1 s | not met |" in block
    assert "| cold build / baseline script | 0.75x | ≤ 0.8x | met |" in block
    assert "99.0" not in block  # the last run only
    assert "commit aaaaaaa on 2026-12-08" in block
    results.update_readme(readme, path)
    assert readme.read_text() == text  # a second rewrite changes nothing


@pytest.mark.parametrize("text", [
    "# no markers\n",
    "<!-- bench:begin -->\nonly the beginning\n",
    "<!-- bench:end -->\n<!-- bench:begin -->\n",
    "<!-- bench:begin -->\n<!-- bench:end -->\n<!-- bench:begin -->\n<!-- bench:end -->\n",
])
def test_a_readme_without_one_marked_block_is_left_alone_and_named(
        tmp_path: Path, text: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text)
    path = tmp_path / "results.jsonl"
    results.append(run_of({"cold build": 30.0}), path)
    with pytest.raises(results.ResultsError, match=r"README.md: no single <!-- bench:begin "):
        results.update_readme(readme, path)
    assert readme.read_text() == text


def test_the_readme_needs_a_recorded_run(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    with pytest.raises(results.ResultsError, match="no run recorded"):
        results.update_readme(readme, tmp_path / "results.jsonl")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_commit_is_marked_dirty_only_for_changed_code(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "bench").mkdir()
    for name in ("code.py", "bench/results.jsonl", "README.md"):
        (tmp_path / name).write_text("one\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("new\n")
    assert results.current_commit(tmp_path) == head
    (tmp_path / "bench/results.jsonl").write_text("one\ntwo\n")  # what a run rewrites
    (tmp_path / "README.md").write_text("two\n")
    assert results.current_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("two\n")
    assert results.current_commit(tmp_path) == head + "-dirty"
    assert results.current_commit(tmp_path / "nothing") == "unknown"


def test_the_committed_readme_shows_the_last_recorded_run() -> None:
    run = results.last_run()
    assert run is not None, "bench/results.jsonl records no run"
    text = (ROOT / "README.md").read_text()
    assert results.replace_block(text, results.markdown(run)) == text, (
        "README.md's bench table is not the last run of bench/results.jsonl: "
        "run `python3 bench/results.py --readme`")
