"""Every sample template pins and validates: a stage change cannot silently break one.

The boot tests' templates (test/data/vm) share one build pipeline, so a test
session builds one build root for all of them.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATES = sorted((ROOT / "samples/src").glob("*.yaml"))
VM_TEMPLATES = sorted((ROOT / "test/data/vm").glob("*.yaml"))


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


def test_boot_test_images_share_one_build_root() -> None:
    builds = {t.name: yaml.safe_load(t.read_text())["pipelines"][0] for t in VM_TEMPLATES}
    assert len(builds) >= 2 and all(b["name"] == "build" for b in builds.values())
    first = next(iter(builds.values()))
    assert {name for name, build in builds.items() if build != first} == set()
