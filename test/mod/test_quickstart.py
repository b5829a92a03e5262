"""The README's two newcomer commands work as root without sudo, and for a user with sudo.

A fresh Debian server or container may have no sudo at all; a developer's
machine has it. `ci/setup` and the Makefile decide by the user id: root runs
everything directly, a user goes through sudo. sudo is not installed here,
so the user case puts a recording stand-in for it on PATH.
"""

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
BASE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^    (ci/setup && make \S+)$", text, re.M)


def test_readme_gives_the_two_commands_without_sudo() -> None:
    assert readme_commands() == ["ci/setup && make sample", "ci/setup && make test"]


def dry_run(target: str, env: dict[str, str], user: list[str] | None = None) -> str:
    proc = subprocess.run([*(user or []), "make", "-n", "-C", str(ROOT), target],
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("target", ["sample", "test"])
def test_as_root_nothing_goes_through_sudo(target: str) -> None:
    assert os.geteuid() == 0, "the test suite runs as root"
    out = dry_run(target, {"PATH": BASE_PATH})
    assert "osbuild" in out or "pytest" in out
    assert "sudo" not in out


def test_setup_as_root_without_sudo_runs() -> None:
    proc = subprocess.run([str(ROOT / "ci/setup")], env={"PATH": BASE_PATH},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "setup: done" in proc.stdout


def test_setup_as_a_user_without_sudo_says_so() -> None:
    proc = subprocess.run([*NOBODY, str(ROOT / "ci/setup")], env={"PATH": BASE_PATH},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "ci/setup: needs root: run it as root (sudo is not installed)"]


@pytest.fixture
def fake_sudo() -> Iterator[tuple[Path, Path]]:
    """A directory with a `sudo` that records its arguments and exits 0.

    Not under pytest's tmp_path, whose parents only root may enter.
    """
    with tempfile.TemporaryDirectory(prefix="fake-sudo-") as tmp:
        yield make_fake_sudo(Path(tmp))


def make_fake_sudo(tmp_path: Path) -> tuple[Path, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "sudo-args"
    sudo = bindir / "sudo"
    sudo.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {record}\n')
    sudo.chmod(0o755)
    for path in (tmp_path, bindir):
        path.chmod(0o755)
    record.touch()
    record.chmod(0o666)
    return bindir, record


def test_as_a_user_builds_and_setup_go_through_sudo(fake_sudo: tuple[Path, Path]) -> None:
    bindir, record = fake_sudo
    env = {"PATH": f"{bindir}:{BASE_PATH}", "HOME": "/tmp"}
    out = dry_run("sample", env, NOBODY)
    assert re.search(r"^sudo -E \S+/osbuild --store", out, re.M), out
    proc = subprocess.run([*NOBODY, str(ROOT / "ci/setup")], env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert record.read_text() == f"{ROOT / 'ci/setup'}\n"
