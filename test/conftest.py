"""Shared fixtures: every test gets private temp dirs; nothing touches the host."""

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from runshare import LOCK, locked, shared_dir  # noqa: E402

from osbuild.depsolve import CACHE_ENV  # noqa: E402
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


@pytest.fixture(scope="session", autouse=True)
def depsolve_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The archive's package lists fetched once per run: every osbuild-mpp and
    osbuild-depsolve-deb the tests start keeps them here (the default of their --cache),
    unless the environment already names a cache."""
    if os.environ.get(CACHE_ENV):
        yield
        return
    with shared_dir(tmp_path_factory, "depsolve-cache") as cache:
        os.environ[CACHE_ENV] = str(cache)
        try:
            yield
        finally:
            os.environ.pop(CACHE_ENV, None)


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
def default_sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The default sample, pinned from its template and built from an empty store once
    per run: all pytest-xdist workers share it (the first to need it builds it, the
    others wait on the lock), and the last to leave removes it, some 2 GB (runshare).

    `build(pinned, out)` builds a manifest into the same store, one build at a time,
    exporting to `out`, and returns osbuild --json's result. Tests that use this are
    marked slow.
    """
    with shared_dir(tmp_path_factory, "default-sample") as work:
        yield from _default_sample(work)


def _default_sample(work: Path) -> Iterator[dict[str, Any]]:
    lock, failed = work / LOCK, work / "failed"
    store, out = work / "store", work / "out"
    pinned, first = work / "debian13-qcow2.json", work / "first-build.json"

    def osbuild(manifest: Path, output: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "osbuild", "--json", "--store", str(store),
                               "--output-directory", str(output), "--export", "qcow2",
                               str(manifest)], capture_output=True, text=True)

    def build(manifest: Path, output: Path) -> dict[str, Any]:
        with locked(lock):
            proc = osbuild(manifest, output)
        assert proc.returncode == 0, f"building {manifest.name}: {proc.stderr[-3000:]}"
        return dict(json.loads(proc.stdout))

    with locked(lock):
        # A failed first build fails every worker with its reason, not with a build each.
        assert not failed.exists(), f"building the default sample: {failed.read_text()}"
        if not first.exists():
            subprocess.run([sys.executable, "-m", "osbuild.mpp",
                            str(ROOT / "samples/src/debian13-qcow2.yaml"), str(pinned)],
                           check=True)
            proc = osbuild(pinned, out)
            if proc.returncode != 0:
                failed.write_text(proc.stderr[-3000:])
                remove_tree(store)
                remove_tree(out)
                raise AssertionError(f"building the default sample: {proc.stderr[-3000:]}")
            first.write_text(proc.stdout)
    yield {"manifest": json.loads(pinned.read_text()), "result": json.loads(first.read_text()),
           "image": out / "qcow2/debian13.qcow2", "pinned": pinned, "build": build}
