#!/usr/bin/env python3
"""The record of `make bench`: its goals, its results file and the README's table.

Each run of `make bench` appends one line to bench/results.jsonl: the commit it
measured, when, on which machine, its figures in seconds and the ratios its
goals compare within that run. GOALS below is the one list of what the figures
should be; the terminal table (each figure beside its goal and the previous
run) and the README's table are both made from it and from the file.

    bench/results.py            the last run beside the one before it
    bench/results.py --readme   rewrite README.md's table from the last run

Standard library only: the README can be regenerated without the venv.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results.jsonl"
README = ROOT / "README.md"
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
# Files a run rewrites: a change to them leaves the measured code as it was committed.
NOT_CODE = ("bench/results.jsonl", "README.md")


class ResultsError(Exception):
    """A results file or README that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Goal:
    """What a figure should be: in seconds, or (with `over`) as a ratio to another
    figure of the same run, so that the machine's speed of the day cancels out.

    `figure` may be an fnmatch pattern: the foreign samples' cold builds are named
    after their sample ("cold build debian13-arm64-qcow2"). A `given` figure is not
    measured by bench: it is recorded only when given (bench.py --figure NAME=SECONDS).
    """

    figure: str
    limit: float
    at_most: bool = True
    over: str | None = None
    given: bool = False

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit

    def text(self) -> str:
        limit = f"{self.limit:g}x" if self.over else seconds_text(self.limit, exact=False)
        return f"{'<=' if self.at_most else '>='} {limit}"


def check_images_figure(workers: int) -> str:
    """The name of bench/check-images-parallel's wall time with `workers` workers."""
    return f"check-images -n {workers}"


GOALS = (
    Goal("cold build", 0.8, over="baseline script"),
    Goal("fully cached rebuild", 1),
    Goal("rebuild after hostname change", 4),
    Goal("virt-inspector (libguestfs)", 25, at_most=False, over="image-info (root, loop)"),
    Goal("cold build ?*", 3, over="cold build"),
    Goal(check_images_figure(1), 1.8, at_most=False, over=check_images_figure(2)),
    Goal("make test", 20 * 60, given=True),
    Goal(".ci/run", 45 * 60, given=True),
)


def ratio_name(figure: str, over: str) -> str:
    return f"{figure} / {over}"


def derive_ratios(figures: dict[str, float]) -> dict[str, float]:
    """The ratios the goals compare, each from two figures of the same run."""
    ratios: dict[str, float] = {}
    for goal in GOALS:
        if goal.over is None or not figures.get(goal.over):
            continue
        for name, seconds in figures.items():
            if name != goal.over and fnmatchcase(name, goal.figure):
                ratios[ratio_name(name, goal.over)] = seconds / figures[goal.over]
    return ratios


def goal_of(name: str, ratio: bool) -> Goal | None:
    """The goal a figure (in seconds) or a ratio (named by ratio_name) is held to."""
    for goal in GOALS:
        if not ratio and goal.over is None and fnmatchcase(name, goal.figure):
            return goal
        if ratio and goal.over is not None:
            figure, sep, over = name.rpartition(" / ")
            if sep and over == goal.over and fnmatchcase(figure, goal.figure):
                return goal
    return None


@dataclass
class Run:
    """One line of the results file."""

    commit: str
    date: str
    machine: dict[str, Any]
    figures: dict[str, float]
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def short_commit(self) -> str:
        match = re.fullmatch(r"([0-9a-f]{40})(-dirty)?", self.commit)
        return match.group(1)[:7] + (match.group(2) or "") if match else self.commit

    def describe(self) -> str:
        cores = self.machine.get("nproc")
        kernel = self.machine.get("kernel")
        where = ", ".join(filter(None, [f"{cores} cores" if cores else "",
                                        f"kernel {kernel}" if kernel else ""]))
        return f"commit {self.short_commit} on {self.date[:10]}" + (f", {where}" if where else "")


def current_commit(root: Path = ROOT) -> str:
    """HEAD's id, "-dirty" when tracked code differs from it; "unknown" without git."""
    git = ["git", "-C", str(root), "-c", f"safe.directory={root}"]
    # Under sudo, a refreshed index written by git status would belong to root.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ".",
             *(f":(exclude){path}" for path in NOT_CODE)],
            capture_output=True, text=True, check=True, env=env).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if status.strip() else "")


def new_run(figures: dict[str, float], root: Path = ROOT) -> Run:
    return Run(commit=current_commit(root),
               date=datetime.now(UTC).isoformat(timespec="seconds"),
               machine={"nproc": os.cpu_count(), "kernel": platform.release()},
               figures={name: round(seconds, 2) for name, seconds in figures.items()},
               ratios={name: round(ratio, 3) for name, ratio in derive_ratios(figures).items()})


def read_runs(path: Path = RESULTS) -> list[Run]:
    if not path.exists():
        return []
    runs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            runs.append(Run(**json.loads(line)))
        except (ValueError, TypeError) as e:
            raise ResultsError(f"{path}:{number}: not a run of bench ({e})") from None
    return runs


def last_run(path: Path = RESULTS) -> Run | None:
    runs = read_runs(path)
    return runs[-1] if runs else None


def append(run: Run, path: Path = RESULTS) -> None:
    with path.open("a") as results:  # appending keeps the committed file's owner
        results.write(json.dumps(asdict(run)) + "\n")


def seconds_text(seconds: float, exact: bool = True) -> str:
    if not exact and seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:.1f} s" if exact else f"{seconds:g} s"


@dataclass(frozen=True)
class Row:
    name: str
    ratio: bool
    value: float | None
    previous: float | None
    goal: Goal | None

    def text(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}x" if self.ratio else seconds_text(value)

    @property
    def verdict(self) -> str:
        if self.goal is None or self.value is None:
            return "-"
        return "met" if self.goal.met(self.value) else "not met"


def rows(run: Run, previous: Run | None = None) -> list[Row]:
    """Every figure, then every ratio, of this run and the previous one."""
    found = []
    for ratio, attribute in ((False, "figures"), (True, "ratios")):
        this: dict[str, float] = getattr(run, attribute)
        before: dict[str, float] = getattr(previous, attribute) if previous else {}
        for name in [*this, *(name for name in before if name not in this)]:
            found.append(Row(name, ratio, this.get(name), before.get(name),
                             goal_of(name, ratio)))
    return found


def format_table(run: Run, previous: Run | None = None) -> str:
    """The terminal table: figure | this run | goal | met? | previous run."""
    header = ["figure", "this run", "goal", "met?",
              f"previous run ({previous.short_commit})" if previous else "previous run"]
    lines = [header] + [[row.name, row.text(row.value), row.goal.text() if row.goal else "-",
                         row.verdict, row.text(row.previous)] for row in rows(run, previous)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    table = []
    for name, *cells in lines:  # names to the left, numbers and words to the right
        table.append("  ".join([name.ljust(widths[0]),
                                *(cell.rjust(width) for cell, width in
                                  zip(cells, widths[1:], strict=True))]))
    before = previous.describe() if previous else "none recorded"
    return "\n".join([f"this run: {run.describe()}", f"previous: {before}", "", *table])


def markdown(run: Run) -> str:
    """The README's table, made from one run (the last of the results file)."""
    lines = [f"Last recorded run of `make bench` ({run.describe()}; every run is a line of "
             "`bench/results.jsonl`):", "",
             "| measurement | this run | goal | met? |", "| --- | --- | --- | --- |"]
    for row in rows(run):
        goal = row.goal.text().replace("<=", "≤").replace(">=", "≥") if row.goal else "-"
        lines.append(f"| {row.name} | {row.text(row.value)} | {goal} | {row.verdict} |")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """`text` with what lies between the bench markers replaced by `block`."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(END) < text.index(BEGIN):
        raise ResultsError(f"no single {BEGIN} ... {END} block to put the table in")
    start = text.index(BEGIN) + len(BEGIN)
    return f"{text[:start]}\n\n{block.strip()}\n\n{text[text.index(END):]}"


def update_readme(readme: Path = README, results: Path = RESULTS) -> Run:
    """Rewrite the README's table from the last run of `results`; return that run."""
    run = last_run(results)
    if run is None:
        raise ResultsError(f"{results}: no run recorded")
    text = readme.read_text()
    try:
        updated = replace_block(text, markdown(run))
    except ResultsError as e:
        raise ResultsError(f"{readme}: {e}") from None
    if updated != text:
        readme.write_text(updated)  # in place: keeps the file's owner under sudo
    return run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/results.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, nargs="?", const=README, metavar="README",
                        help="rewrite the table between the bench markers from the last run")
    args = parser.parse_args(argv)
    try:
        if args.readme:
            run = update_readme(args.readme, args.results)
            print(f"{args.readme}: table of {run.describe()}")
            return 0
        runs = read_runs(args.results)
    except (ResultsError, OSError) as e:
        raise SystemExit(f"bench/results.py: {e}") from None
    if not runs:
        raise SystemExit(f"bench/results.py: {args.results}: no run recorded")
    print(format_table(runs[-1], runs[-2] if len(runs) > 1 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
