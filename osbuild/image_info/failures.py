"""The report's "errors": where a reader could not look, kept apart from where it found nothing.

A key that is absent means "not there"; when a reader's tool fails (mdir on a
corrupt FAT, rpm on a broken rpmdb, rpm not installed here) or a file of the
tree cannot be read (EACCES, EIO), the reader raises CouldNotLook with what it
did find, and the report assembly (`gather`) records each problem as
{"reader": <report key>, "error": <the tool's last line, or the reason>}
under "errors". The key exists only when something failed, so the report of
an image read in full is unchanged.
"""

import subprocess
from collections.abc import Callable
from typing import Any

from osbuild.image_info import ImageInfoError
from osbuild.image_info.treeview import Tree

ERRORS = "errors"


class CouldNotLook(ImageInfoError):
    """A reader could not look (its tool failed, or was not there): `problems` are one line
    each, `found` what it read nonetheless, `reader` the report key when not the caller's."""

    def __init__(self, problems: list[str], found: dict[str, Any] | None = None,
                 reader: str | None = None):
        super().__init__("; ".join(problems))
        self.problems = problems
        self.found = found or {}
        self.reader = reader


def last_line(stderr: str, fallback: str) -> str:
    """A tool's last non-empty line of stderr: where tools say what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else fallback


def run(cmd: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """Run a reader's tool; a failure (not installed, non-zero exit) is CouldNotLook.

    `what` says what the tool was reading, appended to its own line."""
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False, **kwargs)
    except FileNotFoundError:
        raise CouldNotLook([f"{cmd[0]} is not installed on this host ({what})"]) from None
    if proc.returncode != 0:
        stderr = proc.stderr if isinstance(proc.stderr, str) else \
            proc.stderr.decode("utf-8", errors="replace")
        line = last_line(stderr, f"{cmd[0]} exited with status {proc.returncode}")
        raise CouldNotLook([f"{line} ({what})"])
    return proc


def record(report: dict[str, Any], reader: str, error: str) -> None:
    report.setdefault(ERRORS, []).append({"reader": reader, "error": error})


def merge(report: dict[str, Any], found: dict[str, Any]) -> None:
    """`found` into `report`, the errors of both kept."""
    errors = found.get(ERRORS, [])
    report.update({k: v for k, v in found.items() if k != ERRORS})
    if errors:
        report.setdefault(ERRORS, []).extend(errors)


def gather(report: dict[str, Any], reader: str, read: Callable[[], dict[str, Any]],
           view: Tree | None = None) -> None:
    """Run one reader into `report`: what it found, and under "errors" what it could not
    look at: its CouldNotLook, and the files of `view` it could not read."""
    before = len(view.failures) if view is not None else 0
    try:
        merge(report, read())
    except CouldNotLook as exc:
        merge(report, exc.found)
        for problem in dict.fromkeys(exc.problems):
            record(report, exc.reader or reader, problem)
    if view is not None:
        for failure in dict.fromkeys(view.failures[before:]):  # once each, in order
            record(report, reader, failure)


def of_view(report: dict[str, Any], reader: str) -> list[str]:
    """The errors of one reader (a view the user asked for: --packages-verify, --sbom)."""
    return [e["error"] for e in report.get(ERRORS, []) if e["reader"] == reader]
