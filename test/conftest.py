"""Shared fixtures: every test gets private temp dirs; nothing touches the host."""

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

# fileserver: the `server` fixture, a local HTTP server; guards: every test's hang
# limit (by the markers set below) and the session's outcome for CI.
pytest_plugins = ["fileserver", "guards"]

import corpus  # noqa: E402  (after the sys.path set-up above)
from harness import Osbuild  # noqa: E402
from matrix import CELLS  # noqa: E402

from osbuild.fsutil import remove_tree  # noqa: E402

LIBDIR_PARTS = ("osbuild", "stages", "assemblers", "sources", "runners")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark boots and foreign builds: their hang limit is longer (test/guards.py)."""
    for item in items:
        if item.get_closest_marker("slow") and ROOT / "test/vm" in item.path.parents:
            item.add_marker(pytest.mark.boot)
        group = item.get_closest_marker("xdist_group")  # a golden case's matrix cell
        cell = CELLS.get(str(group.args[0])) if group and group.args else None
        if cell and cell.machine != platform.machine():
            item.add_marker(pytest.mark.foreign)


@pytest.fixture(scope="session")
def libdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's libdir plus the test-only stages of test/data/stages.

    A copy, not symlinks: the libdir is bind-mounted into sandboxes, where
    host symlinks would dangle.
    """
    lib = tmp_path_factory.mktemp("libdir")
    for part in LIBDIR_PARTS:
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, lib / part, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
    for kind in ("stages", "assemblers"):  # test-only modules beside the real ones
        (lib / kind).mkdir(exist_ok=True)
        for module in (ROOT / "test/data" / kind).iterdir():
            shutil.copy2(module, lib / kind / module.name)
    return lib


@pytest.fixture
def osbuild(libdir: Path, tmp_path: Path) -> Osbuild:
    return Osbuild(libdir, tmp_path)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """image-info's corpus (test/corpus.py): built once, shared by the xdist workers."""
    return corpus.build(Path(os.environ.get("CORPUS_STORE", corpus.DEFAULT_STORE)))


@pytest.fixture(scope="session")
def default_sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The default sample, pinned from its template and built once per session.

    Under pytest-xdist each worker builds its own (they share no session);
    tests that use it are marked slow.
    """
    work = tmp_path_factory.mktemp("default-sample")
    manifest = work / "debian13-qcow2.json"
    subprocess.run([sys.executable, "-m", "osbuild.mpp",
                    str(ROOT / "samples/src/debian13-qcow2.yaml"), str(manifest)], check=True)
    cmd = [sys.executable, "-m", "osbuild", "--json", "--store", str(work / "store"),
           "--output-directory", str(work / "out"), "--export", "qcow2", str(manifest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield {"manifest": json.loads(manifest.read_text()), "result": json.loads(proc.stdout),
           "image": work / "out/qcow2/debian13.qcow2", "store": work / "store",
           "command": cmd}
    # Some 2 GB per worker: pytest keeps its last three runs' temp dirs.
    remove_tree(work)
