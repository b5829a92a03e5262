"""Running the real `osbuild` command in tests (imported by tests and test/conftest.py).

Tests import it from here, never from a conftest: test/ and test/cases/ each have
a conftest.py, and which one `import conftest` finds depends on collection order.
"""

import json
import subprocess
import sys
from pathlib import Path


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
