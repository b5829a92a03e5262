"""The default sample, end to end: pinned from its template, built from an empty
store, booted under qemu (TCG) to a login prompt that shows its hostname."""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from verify.boot import boot

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.slow


def stage_options(manifest: dict[str, Any], stage_type: str) -> dict[str, Any]:
    for pipeline in manifest["pipelines"]:
        for stage in pipeline.get("stages", []):
            if stage["type"] == stage_type:
                return stage["options"]
    raise AssertionError(f"no {stage_type} in the sample")


@pytest.fixture(scope="module")
def sample(default_sample: dict[str, Any]) -> dict[str, Any]:
    """The session's default sample, plus a second build of it from the same store."""
    second = subprocess.run(default_sample["command"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    return {**default_sample, "first": default_sample["result"],
            "second": json.loads(second.stdout)}


def test_sample_boots_to_login_with_its_hostname(sample: dict[str, Any]) -> None:
    hostname = stage_options(sample["manifest"], "org.osbuild.hostname")["hostname"]
    result = boot(sample["image"], timeout=300)
    assert result.success, f"{result.reason}\n{result.tail()}"
    assert result.hostname == hostname


def test_second_build_is_cached_with_the_same_packages(sample: dict[str, Any]) -> None:
    first, second = sample["first"], sample["second"]
    assert all(not s["cached"] for p in first["pipelines"].values() for s in p["stages"])
    assert all(s["cached"] for p in second["pipelines"].values() for s in p["stages"])
    packages = first["metadata"]["os"]["org.osbuild.debs"]["packages"]
    assert packages == second["metadata"]["os"]["org.osbuild.debs"]["packages"]
    names = {p["name"] for p in packages}
    assert {"systemd-sysv", "openssh-server", "linux-image-amd64"} <= names
    pinned = sample["manifest"]["pipelines"][1]["stages"][0]["inputs"]["packages"]["references"]
    assert {p["sha256"] for p in packages} == {c.removeprefix("sha256:") for c in pinned}
