"""Shared fixtures: every test gets private temp dirs; nothing touches the host."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

pytest_plugins = ["fileserver"]  # the `server` fixture: a local HTTP server

LIBDIR_PARTS = ("osbuild", "stages", "assemblers", "sources", "runners")


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
    (lib / "stages").mkdir(exist_ok=True)
    for stage in (ROOT / "test/data/stages").iterdir():
        shutil.copy2(stage, lib / "stages" / stage.name)
    return lib


class Osbuild:
    """Runs the real `osbuild` command against a private store."""

    def __init__(self, libdir: Path, workdir: Path):
        self.libdir = libdir
        self.workdir = workdir
        self.store = workdir / "store"
        self.output = workdir / "output"

    def run(self, manifest: dict | str | Path, *args: str, stdin: str | None = None,
            check: bool | None = True) -> subprocess.CompletedProcess[str]:
        if isinstance(manifest, dict):
            path = self.workdir / "manifest.json"
            path.write_text(json.dumps(manifest))
            manifest = path
        cmd = [sys.executable, "-m", "osbuild", "--libdir", str(self.libdir),
               "--store", str(self.store), str(manifest), *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=self.workdir)
        if check and proc.returncode != 0:
            raise AssertionError(f"osbuild failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def build_json(self, manifest: dict, *args: str) -> dict:
        proc = self.run(manifest, "--json", *args)
        return json.loads(proc.stdout)


@pytest.fixture
def osbuild(libdir: Path, tmp_path: Path) -> Osbuild:
    return Osbuild(libdir, tmp_path)


@pytest.fixture(scope="session")
def default_sample(tmp_path_factory: pytest.TempPathFactory) -> dict:
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
    return {"manifest": json.loads(manifest.read_text()), "result": json.loads(proc.stdout),
            "image": work / "out/qcow2/debian13.qcow2", "store": work / "store",
            "command": cmd}
