"""The default sample, end to end: pinned from its template, built from an empty
store and again from the cache, booted by osbuild-boot-test to a login prompt that
shows its hostname, and checked from inside through the serial console (root's
documented password)."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vmkit import SAMPLE_LOGIN, VMImage, with_options

from osbuild.fsutil import remove_tree
from verify.cli import PROG

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample(default_sample: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    """The run's default sample, plus a second build of it from the same store (exported
    aside: other tests use the first build's image)."""
    out = tmp_path_factory.mktemp("second-build")
    try:
        second = default_sample["build"](default_sample["pinned"], out)
    finally:
        remove_tree(out)  # its result is all that is looked at
    return {**default_sample, "first": default_sample["result"], "second": second}


@pytest.fixture
def renamed_sample(default_sample: dict[str, Any], tmp_path: Path) -> Iterator[Path]:
    """The default sample with another hostname and the very same packages, built in its
    store: everything before the hostname stage comes from the cache."""
    manifest = with_options(json.loads(default_sample["pinned"].read_text()),
                            {"org.osbuild.hostname": {"hostname": "renamed-host"}})
    pinned = tmp_path / "renamed.json"
    pinned.write_text(json.dumps(manifest, indent=2))
    try:
        default_sample["build"](pinned, tmp_path / "out")
        yield tmp_path / "out/qcow2/debian13.qcow2"
    finally:
        remove_tree(tmp_path / "out")


def printed(stderr: str, command: str) -> str:
    """What osbuild-boot-test --json printed on stderr for `--run command`: the lines
    after `$ command`, up to the next command or its own next message."""
    lines = stderr.splitlines()
    if f"$ {command}" not in lines:
        return "(not run)"
    output = []
    for line in lines[lines.index(f"$ {command}") + 1:]:
        if line.startswith(("$ ", f"{PROG}: ")):
            break
        output.append(line)
    return "\n".join(output).strip()


def test_sample_boots_to_login_keeps_its_promises_and_reports_its_metrics(
        default_image: VMImage, vm_artifacts: Path) -> None:
    """What a user runs, once: osbuild-boot-test logged in on the console with --json,
    --require-running and --expect-hostname (the login prompt's). Its --run commands
    check from inside what the manifest promises: the hostname, the root file system's
    UUID and type, each enabled service active and each disabled one not, and a boot
    through BIOS. Its metrics: every milestone in boot order, the system's state, its
    failed units and systemd-analyze's slowest units."""
    image, root = default_image, default_image.root_fs
    services = image.services + image.disabled_services
    # Each prints one line and exits 0 (a command that fails fails the run before the
    # checks below can say what was seen). The first waits for start-up to end, so the
    # services have settled; the metrics' `system-running` then counts the commands too.
    commands = {
        "state": "systemctl is-system-running --wait || true",
        "hostname": "hostname",
        "uuid": "findmnt -no UUID /",
        "fstype": "findmnt -no FSTYPE /",
        "firmware": "test -d /sys/firmware/efi && echo uefi || echo bios",
        **{service: f"systemctl is-active {service} || true" for service in services},
    }
    proc = subprocess.run(
        [sys.executable, "-m", "verify.cli", str(image.path), "--login", ":".join(SAMPLE_LOGIN),
         "--expect-hostname", image.hostname, "--json", "--require-running",
         "--artifacts", str(vm_artifacts)]
        + [arg for command in commands.values() for arg in ("--run", command)],
        capture_output=True, text=True, cwd=ROOT)
    # The login prompt's hostname and a running system: checked by osbuild-boot-test.
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {name: printed(proc.stderr, command) for name, command in commands.items()}
    problems = []
    if seen["state"] != "running":
        problems.append(f"systemctl is-system-running: {seen['state']}")
    if seen["hostname"] != image.hostname:
        problems.append(f"hostname {seen['hostname']!r}, manifest says {image.hostname!r}")
    if seen["uuid"].lower() != root["uuid"].lower():
        problems.append(f"root file system UUID {seen['uuid']}, manifest says {root['uuid']}")
    if seen["fstype"] != root["vfs_type"]:
        problems.append(f"root file system is {seen['fstype']}, manifest says "
                        f"{root['vfs_type']}")
    for service in image.services:
        if seen[service] != "active":
            problems.append(f"{service} is {seen[service] or 'nothing'}, manifest enables it")
    for service in image.disabled_services:
        if seen[service] == "active":
            problems.append(f"{service} is active, manifest disables it")
    if seen["firmware"] != "bios":
        problems.append(f"the BIOS sample booted through {seen['firmware']} firmware")
    assert not problems, "; ".join(problems) + f"\n--- {PROG} ---\n{proc.stderr[-3000:]}"

    found = json.loads(proc.stdout)
    times = found["seconds"]
    order = ["firmware-handoff", "boot-loader", "kernel", "login", "system-running"]
    assert list(times) == order, times
    assert [times[k] for k in order] == sorted(times[k] for k in order)
    assert found["hostname"] == image.hostname
    assert (found["system-state"], found["failed-units"]) == ("running", [])
    assert f"{PROG}: system running\n" in proc.stderr
    assert found["startup"].startswith("Startup finished in ")
    assert 1 <= len(found["blame"]) <= 10
    assert all(b["unit"] and b["seconds"] >= 0 for b in found["blame"])


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
        default_image: VMImage, renamed_sample: Path) -> None:
    """What a user runs to see what a manifest change did: here, exactly the hostname."""
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--diff",
                           str(default_image.path), str(renamed_sample), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"changes": [
        {"path": "hostname", "change": "changed", "old": default_image.hostname,
         "new": "renamed-host"}]}
    # File by file (through loop devices): /etc/hostname's content and nothing else.
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--diff",
                           str(default_image.path), str(renamed_sample), "--files", "--json"],
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
