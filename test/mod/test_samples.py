"""Every sample template pins and validates: a stage change cannot silently break one."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATES = sorted((ROOT / "samples/src").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("template", TEMPLATES, ids=[t.stem for t in TEMPLATES])
def test_template_pins_to_a_valid_manifest(template: Path, tmp_path: Path) -> None:
    manifest = tmp_path / f"{template.stem}.json"
    pin = subprocess.run([sys.executable, "-m", "osbuild.mpp", str(template), str(manifest)],
                         capture_output=True, text=True)
    assert pin.returncode == 0, pin.stderr
    inspect = subprocess.run([sys.executable, "-m", "osbuild", "--inspect", str(manifest)],
                             capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr


def test_there_is_a_default_sample() -> None:
    assert (ROOT / "samples/src/debian13-qcow2.yaml") in TEMPLATES
