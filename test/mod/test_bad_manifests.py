"""Hostile input: every malformed manifest in test/data/bad/ is refused before anything runs.

Each case runs the real `osbuild` command with an output directory and the
export it names (default `os`). It must exit 2 with exactly one line on stderr,
naming where in the manifest the problem is, and nothing else may happen: no
store is opened (so no stage ran and no source was fetched), nothing lands in
the output directory, and nothing appears beside it, where the path cases aim
(`../canary/...`). test/data/bad/expected.json maps each file to the expected
error (a substring of the line) and, optionally, the exports to ask for.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness import Osbuild

BAD = Path(__file__).resolve().parent.parent / "data" / "bad"
INDEX: dict[str, dict] = json.loads((BAD / "expected.json").read_text())


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below `root` with its mode and size: what a stray write would change."""
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_size)
            for p in sorted(root.rglob("*"))}


def test_the_index_lists_every_case() -> None:
    files = {p.name for p in BAD.iterdir()} - {"expected.json"}
    assert files == set(INDEX)
    assert len(INDEX) >= 60
    assert all(set(case) <= {"error", "export"} and case["error"] for case in INDEX.values())


@pytest.mark.parametrize("name", sorted(INDEX))
def test_bad_manifest_is_refused_before_anything_runs(osbuild: Osbuild, name: str) -> None:
    case = INDEX[name]
    canary = osbuild.workdir / "canary"
    canary.mkdir()
    (canary / "keep").write_text("canary\n")
    osbuild.output.mkdir()
    before = listing(osbuild.workdir)
    exports = [arg for export in case.get("export", ["os"]) for arg in ("--export", export)]

    proc = osbuild.run(BAD / name, "--output-directory", str(osbuild.output), *exports,
                       check=False)

    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("osbuild: error: ") and case["error"] in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not osbuild.store.exists(), "the store was opened: something ran before validation"
    assert listing(osbuild.workdir) == before  # output, canary and all else untouched


def test_manifest_from_stdin_is_refused_the_same_way(osbuild: Osbuild) -> None:
    text = (BAD / "truncate-filename-parent.json").read_text()
    proc = osbuild.run("-", "--output-directory", str(osbuild.output), "--export", "os",
                       stdin=text, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "osbuild: error: pipelines[0].stages[0].options.filename: '../../canary/pwned' "
        "does not match ")
    assert not osbuild.store.exists() and not osbuild.output.exists()


def test_wide_objects_are_checked_in_linear_time(osbuild: Osbuild) -> None:
    """Duplicate keys were once found by counting each key among all the others."""
    keys = ", ".join(f'"k{i}": {i}' for i in range(200_000))
    path = osbuild.workdir / "wide.json"
    path.write_text('{"version": "2", "pipelines": [{"name": "os", "stages": [{"type": '
                    f'"org.osbuild.noop", "options": {{{keys}, "k7": 0}}}}]}}]}}')
    cmd = [sys.executable, "-m", "osbuild", "--libdir", str(osbuild.libdir),
           "--store", str(osbuild.store), str(path)]
    # Quadratic takes minutes here, linear well under a second.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr == "osbuild: error: pipelines[0].stages[0].options: duplicate key 'k7'\n"


def test_debug_keeps_user_errors_to_one_line(osbuild: Osbuild) -> None:
    """--debug shows tracebacks of internal errors only; a bad manifest is not one."""
    proc = osbuild.run(BAD / "v2-self-build.json", "--debug", check=False)
    assert proc.returncode == 2
    assert proc.stderr == ("osbuild: error: pipelines[0]: pipelines depend on each other: "
                           "os -> os\n")
