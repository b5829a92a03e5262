"""The default sample, end to end: pinned from its template, built from an empty
store and again from the cache, booted under qemu to a login prompt that shows
its hostname, and checked from inside through the serial console (root's
documented password)."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vmkit import VMImage

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


def test_sample_boots_to_login_and_keeps_its_promises(default_image: VMImage, boot_vm) -> None:
    # The same template as `sample`, built in the boot tests' shared store.
    hostname = stage_options(default_image.manifest, "org.osbuild.hostname")["hostname"]
    vm, guest = boot_vm(default_image, forwards=())
    assert guest.boot.hostname == hostname, "the login prompt shows the hostname"
    guest.check_manifest()
    if guest.output("test -d /sys/firmware/efi && echo uefi || echo bios") != "bios":
        guest.fail(["the BIOS sample booted through UEFI firmware"])


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


def test_image_info_diff_of_the_sample_and_another_hostname_is_that_change(
        default_image: VMImage, vm_builder) -> None:
    """What a user runs to see what a manifest change did: here, exactly the hostname."""
    other = vm_builder.build(ROOT / "samples/src/debian13-qcow2.yaml", variant="renamed",
                             options={"org.osbuild.hostname": {"hostname": "renamed-host"}})
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--diff",
                           str(default_image.path), str(other.path), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"changes": [
        {"path": "hostname", "change": "changed", "old": default_image.hostname,
         "new": "renamed-host"}]}
    # File by file (through loop devices): /etc/hostname's content and nothing else.
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--diff",
                           str(default_image.path), str(other.path), "--files", "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["files"]
    assert (found["added_files"], found["deleted_files"], list(found["differences"])) == \
        ([], [], ["/etc/hostname"]), found


def test_sbom_of_the_sample_is_valid_spdx_with_every_package_and_its_deb(
        default_sample: dict[str, Any], tmp_path: Path) -> None:
    """image-info --sbom spdx: SPDX 2.3 by its schema, one package per dpkg package,
    each with the sha256 of the .deb the build installed (from osbuild --json)."""
    import jsonschema

    result = tmp_path / "build.json"
    result.write_text(json.dumps(default_sample["result"]))
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--sbom", "spdx",
                           str(default_sample["image"]), "--build-metadata", str(result)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    schema = json.loads((ROOT / "test/data/spdx/spdx-2.3-schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(document)
    built = default_sample["result"]["metadata"]["os"]["org.osbuild.debs"]["packages"]
    debs = [p for p in document["packages"] if p["SPDXID"] != "SPDXRef-Image"]
    assert sorted((p["name"], p["versionInfo"], p["checksums"][0]["checksumValue"])
                  for p in debs) == sorted((p["name"], p["version"], p["sha256"]) for p in built)
    systemd = next(p for p in debs if p["name"] == "systemd")
    assert "LGPL-2.1-or-later" in systemd["licenseDeclared"]
    assert systemd["externalRefs"][0]["referenceLocator"].startswith(
        f"pkg:deb/debian/systemd@{systemd['versionInfo']}?arch=amd64&distro=debian-13")
    # CycloneDX (checked against its schema by image-info): the same packages and .debs.
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--sbom", "cyclonedx",
                           str(default_sample["image"]), "--build-metadata", str(result)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    components = json.loads(proc.stdout)["components"]
    assert sorted((c["name"], c["version"], c["hashes"][0]["content"]) for c in components) == \
        sorted((p["name"], p["version"], p["sha256"]) for p in built)


def test_packages_verify_finds_the_samples_packages_intact(default_image: VMImage) -> None:
    """No stage changes a file a package installed (conffiles aside), none is missing."""
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--packages-verify",
                           str(default_image.path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["packages-verify"]
    assert found["files-checked"] > 5000
    assert (found["changed"], found["missing"]) == ([], [])


def test_boot_metrics_of_the_sample(default_image: VMImage) -> None:
    """osbuild-boot-test --json, logged in on the console: every milestone in boot order,
    the system's state, its failed units and systemd-analyze's slowest units."""
    proc = subprocess.run([sys.executable, "-m", "verify.cli", str(default_image.path),
                           "--login", "root:debian", "--json", "--require-running"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    times = found["seconds"]
    order = ["firmware-handoff", "boot-loader", "kernel", "login", "system-running"]
    assert list(times) == order, times
    assert [times[k] for k in order] == sorted(times[k] for k in order)
    assert found["hostname"] == default_image.hostname
    assert (found["system-state"], found["failed-units"]) == ("running", [])
    assert "osbuild-boot-test: system running\n" in proc.stderr
    assert found["startup"].startswith("Startup finished in ")
    assert 1 <= len(found["blame"]) <= 10
    assert all(b["unit"] and b["seconds"] >= 0 for b in found["blame"])
