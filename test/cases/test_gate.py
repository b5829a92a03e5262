"""ci/stage-gate picks the right cases for a git range, and refuses a stage without a case.

Runs the gate (--dry-run: nothing is built) in a throwaway clone whose
history gets commits made here, so the real repository is never touched.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
COPIED = ("ci", "stages", "assemblers", "osbuild", "test/cases", "verify", "test/matrix.py",
          "test/elfprog.py", "test/importgraph.py")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=gate", "-c",
                           "user.email=gate@example.invalid", *args],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding the current files (committed or not) as its one commit."""
    repo = tmp_path_factory.mktemp("gate") / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for part in COPIED:
        if (ROOT / part).is_file():
            shutil.copy2(ROOT / part, repo / part)
            continue
        shutil.copytree(ROOT / part, repo / part, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def gate(repo: Path, commit_range: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(repo / "ci/stage-gate"), "--dry-run", commit_range],
                          capture_output=True, text=True, cwd=repo)


def change(repo: Path, message: str, edits: dict[str, str]) -> None:
    for path, text in edits.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def selected(proc: subprocess.CompletedProcess[str]) -> list[str]:
    line = [x for x in proc.stdout.splitlines() if "running" in x][-1]
    return line.split(": ", 2)[2].split()


def test_changed_stage_runs_its_case_and_the_smoke_set(clone: Path) -> None:
    stage = clone / "stages/org.osbuild.modprobe"
    change(clone, "modprobe", {"stages/org.osbuild.modprobe": stage.read_text() + "\n"})
    proc = gate(clone, "HEAD~1..HEAD")
    assert proc.returncode == 0, proc.stderr
    cases = selected(proc)
    assert "org.osbuild.modprobe" in cases and "org.osbuild.hostname" in cases
    assert "org.osbuild.locale" not in cases


def test_changed_stage_runs_its_case_in_every_cell(clone: Path) -> None:
    stage = clone / "stages/org.osbuild.grub2"
    change(clone, "grub2", {"stages/org.osbuild.grub2": stage.read_text() + "\n"})
    cases = selected(gate(clone, "HEAD~1..HEAD"))
    assert {"org.osbuild.grub2", "org.osbuild.grub2[debian13-arm64]",
            "org.osbuild.grub2[debian13-riscv64]"} <= set(cases)
    assert not any(c.startswith("org.osbuild.systemd[") for c in cases)


def test_stage_library_change_runs_its_importers(clone: Path) -> None:
    lib = clone / "osbuild/toolkit/tarlib.py"
    change(clone, "tarlib", {"osbuild/toolkit/tarlib.py": lib.read_text() + "\n"})
    cases = selected(gate(clone, "HEAD~1..HEAD"))
    assert {"org.osbuild.tar", "assemblers/org.osbuild.tar"} <= set(cases)
    assert "org.osbuild.locale" not in cases


def test_disk_module_change_runs_its_importers_also_through_other_modules(clone: Path) -> None:
    """grub2.inst imports osbuild.toolkit.disk.grub_bios, which imports
    osbuild.toolkit.disk.partition."""
    module = clone / "osbuild/toolkit/disk/partition.py"
    change(clone, "partition", {"osbuild/toolkit/disk/partition.py": module.read_text() + "\n"})
    cases = selected(gate(clone, "HEAD~1..HEAD"))
    assert {"org.osbuild.sfdisk", "org.osbuild.grub2.inst",
            "assemblers/org.osbuild.qemu"} <= set(cases)
    assert "org.osbuild.mkfs.fat" not in cases and "org.osbuild.mtools.copy" not in cases


@pytest.mark.parametrize("module", ["osbuild/toolkit/foreign.py", "osbuild/toolkit/debfile.py"])
def test_foreign_or_debfile_change_runs_the_debs_cases(clone: Path, module: str) -> None:
    """Found through the stages' imports, never a list; the debs cases in every cell."""
    text = (clone / module).read_text()
    change(clone, module, {module: text.replace("\n", "\n# changed\n", 1)})
    proc = gate(clone, "HEAD~1..HEAD")
    assert proc.returncode == 0, proc.stderr
    assert f"stage-gate: {module} changed: " in proc.stdout
    cases = selected(proc)
    assert {"org.osbuild.debs", "org.osbuild.debs[debian13-arm64]"} <= set(cases), cases
    assert "org.osbuild.locale" not in cases


def test_engine_module_change_runs_only_the_smoke_set(clone: Path) -> None:
    module = clone / "osbuild/pipeline.py"
    change(clone, "pipeline", {"osbuild/pipeline.py": module.read_text() + "\n"})
    proc = gate(clone, "HEAD~1..HEAD")
    assert "stage-gate: osbuild/pipeline.py changed: no stage imports it" in proc.stdout
    assert {c.split("[")[0] for c in selected(proc)} == {
        "org.osbuild.hostname", "org.osbuild.users", "org.osbuild.mkfs.ext4",
        "org.osbuild.qemu", "assemblers/org.osbuild.tar"}


def test_new_stage_without_a_case_fails(clone: Path) -> None:
    change(clone, "new stage", {
        "stages/org.osbuild.newthing": "#!/usr/bin/python3\n",
        "stages/org.osbuild.newthing.meta.json": '{"summary": "x"}\n'})
    proc = gate(clone, "HEAD~1..HEAD")
    assert proc.returncode == 1
    assert "org.osbuild.newthing has no golden case" in proc.stderr
