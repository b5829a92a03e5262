"""image-info --sbom spdx|cyclonedx: the installed packages as SPDX 2.3 and CycloneDX 1.6."""

import datetime
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import jsonschema
import pytest
from imagemaker import mk

ROOT = Path(__file__).resolve().parent.parent.parent
SCHEMA = json.loads((ROOT / "test/data/spdx/spdx-2.3-schema.json").read_text())

STATUS = """Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.37-2+b5
Source: bash (5.2.37-2)
Homepage: https://tiswww.case.edu/php/chet/bash/bashtop.html

Package: libstdc++6
Status: install ok installed
Architecture: i386
Version: 14.2.0-19
Source: gcc-14

Package: gone
Status: deinstall ok config-files
Architecture: all
Version: 1

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2025b-4
Homepage: not a url
"""
BASH_COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: bash

Files: *
Copyright: 1987-2024 Free Software Foundation, Inc.
License: GPL-3+

Files: lib/readline/*
Copyright: 1987-2024 Free Software Foundation, Inc.
License: GPL-3+ with Bison exception

Files: debian/*
License: GPL-1+ or Artistic, and Powell-BSD-style

License: Powell-BSD-style
 Free as in free beer,
 .
 and speech.
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    mk.populate_tree(root)
    mk.write(root, "var/lib/dpkg/status", STATUS)
    mk.write(root, "usr/share/doc/bash/copyright", BASH_COPYRIGHT)
    mk.write(root, "usr/share/doc/tzdata/copyright", "This is not machine-readable.\n")
    return root


def sbom(*args: str, epoch: str | None = "1735689600", kind: str = "spdx"
         ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    return subprocess.run([sys.executable, "-m", "osbuild.image_info", "--sbom", kind, *args],
                          capture_output=True, text=True, cwd=ROOT, env=env)


def test_sbom_has_each_installed_package_with_its_license_source_and_purl(
        tree: Path, tmp_path: Path) -> None:
    metadata = tmp_path / "build.json"
    metadata.write_text(json.dumps({"success": True, "metadata": {"os": {"org.osbuild.debs": {
        "packages": [{"name": "bash", "version": "5.2.37-2+b5", "architecture": "amd64",
                      "sha256": "ab" * 32}]}}}}))
    proc = sbom(str(tree), "--build-metadata", str(metadata))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    jsonschema.Draft7Validator(SCHEMA).validate(doc)
    assert doc["spdxVersion"] == "SPDX-2.3"
    assert doc["creationInfo"]["created"] == "2025-01-01T00:00:00Z"
    by_name = {p["name"]: p for p in doc["packages"]}
    assert sorted(by_name) == ["bash", "libstdc++6", "tree", "tzdata"]  # "tree": the image
    bash = by_name["bash"]
    assert bash["licenseDeclared"] == ("GPL-3.0-or-later AND LicenseRef-bash-GPL-3-plus-with-"
                                       "Bison-exception AND ((GPL-1.0-or-later OR "
                                       "Artistic-1.0-Perl) AND LicenseRef-bash-Powell-BSD-style)")
    assert bash["sourceInfo"] == "built from the source package bash 5.2.37-2"
    assert bash["checksums"] == [{"algorithm": "SHA256", "checksumValue": "ab" * 32}]
    assert bash["homepage"] == "https://tiswww.case.edu/php/chet/bash/bashtop.html"
    assert bash["externalRefs"] == [{
        "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
        "referenceLocator": "pkg:deb/testos/bash@5.2.37-2%2Bb5?arch=amd64&distro=testos-1.2"}]
    refs = {e["licenseId"]: e for e in doc["hasExtractedLicensingInfos"]}
    assert refs["LicenseRef-bash-Powell-BSD-style"]["extractedText"] == (
        "Free as in free beer,\n\nand speech.")
    assert refs["LicenseRef-bash-GPL-3-plus-with-Bison-exception"]["extractedText"] == (
        "See /usr/share/doc/bash/copyright")
    # No DEP-5 file, no homepage that is a URL, no checksum known: nothing asserted.
    tz = by_name["tzdata"]
    assert tz["licenseDeclared"] == "NOASSERTION" and "homepage" not in tz
    assert "checksums" not in tz
    assert by_name["libstdc++6"]["sourceInfo"] == "built from the source package gcc-14 14.2.0-19"
    contains = {r["relatedSpdxElement"] for r in doc["relationships"]
                if r["relationshipType"] == "CONTAINS"}
    assert contains == {p["SPDXID"] for p in doc["packages"]} - {"SPDXRef-Image"}


def test_sbom_is_the_same_for_the_same_tree_and_epoch_and_reads_tarballs(
        tree: Path, tmp_path: Path) -> None:
    first, second = sbom(str(tree)), sbom(str(tree))
    assert first.returncode == 0 and first.stdout == second.stdout
    tarball = tmp_path / "tree.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(tree, arcname=".")
    from_tar = json.loads(sbom(str(tarball)).stdout)
    licenses = {p["name"]: p.get("licenseDeclared") for p in from_tar["packages"]}
    assert licenses == {p["name"]: p.get("licenseDeclared")
                        for p in json.loads(first.stdout)["packages"]
                        if p["name"] != "tree"} | {"tree.tar": None}
    # Without SOURCE_DATE_EPOCH the document is dated now: within the run, to the second.
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    created = json.loads(sbom(str(tree), epoch=None).stdout)["creationInfo"]["created"]
    end = datetime.datetime.now(datetime.UTC)
    assert start <= datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z") <= end, created


@pytest.mark.slow
@pytest.mark.skipif(subprocess.run(["/usr/bin/python3", "-c", "import guestfs"],
                                   capture_output=True).returncode != 0,
                    reason="python3-guestfs is not installed")
def test_sbom_through_libguestfs_reads_the_copyright_files(tree: Path, tmp_path: Path) -> None:
    """The guestfs backend copies out only what the report reads: with --sbom, the
    copyright files too, so the licenses are those of the tree itself."""
    image = tmp_path / "root.ext4"
    mk.run("truncate", "-s", "64M", str(image))
    mk.run("mkfs.ext4", "-q", "-U", mk.ROOT_UUID, "-d", str(tree), str(image))
    env = {**os.environ, "LIBGUESTFS_BACKEND": "direct",
           "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg", "LIBGUESTFS_CACHEDIR": "/var/tmp"}
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--sbom", "spdx",
                           "--backend", "guestfs", str(image)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    licenses = {p["name"]: p.get("licenseDeclared") for p in json.loads(proc.stdout)["packages"]}
    assert licenses == {p["name"]: p.get("licenseDeclared")
                        for p in json.loads(sbom(str(tree)).stdout)["packages"]
                        if p["name"] != "tree"} | {"root.ext4": None}
    assert licenses["bash"].startswith("GPL-3.0-or-later AND ")


def test_sbom_errors_are_one_line(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "garbled.json").write_text("{")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [((str(tree), "--build-metadata", str(tmp_path / "garbled.json")),
              f"{tmp_path / 'garbled.json'}: not what osbuild --json printed"),
             ((str(empty),), f"{empty}: no OS tree with a dpkg database to list")]
    for args, message in cases:
        proc = sbom(*args)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.startswith(f"image-info: error: {message}"), proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    bad_epoch = sbom(str(tree), epoch="soon")
    assert bad_epoch.stderr == "image-info: error: SOURCE_DATE_EPOCH='soon' is not a time\n"
    for args in (("--diff", str(tree), str(tree)), ()):
        assert sbom(*args).returncode == 2
    usage = subprocess.run([sys.executable, "-m", "osbuild.image_info", str(tree),
                            "--build-metadata", "x.json"], capture_output=True, text=True,
                           cwd=ROOT)
    assert usage.returncode == 2 and "--build-metadata goes with --sbom" in usage.stderr


def test_cyclonedx_says_the_same_with_purls_licenses_hashes_and_sources(
        tree: Path, tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    metadata = tmp_path / "build.json"
    metadata.write_text(json.dumps({"metadata": {"os": {"org.osbuild.debs": {"packages": [
        {"name": "bash", "version": "5.2.37-2+b5", "architecture": "amd64",
         "sha256": "ab" * 32}]}}}}))
    proc = sbom(str(tree), "--build-metadata", str(metadata), kind="cyclonedx")
    assert proc.returncode == 0, proc.stderr
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(proc.stdout) is None
    doc = json.loads(proc.stdout)
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.6")
    assert doc["metadata"]["timestamp"].startswith("2025-01-01T00:00:00")
    assert doc["metadata"]["component"]["type"] == "operating-system"
    by_name = {c["name"]: c for c in doc["components"]}
    assert sorted(by_name) == ["bash", "libstdc++6", "tzdata"]
    bash = by_name["bash"]
    assert bash["purl"] == "pkg:deb/testos/bash@5.2.37-2%2Bb5?arch=amd64&distro=testos-1.2"
    assert bash["licenses"] == [{"expression": (
        "GPL-3.0-or-later AND LicenseRef-bash-GPL-3-plus-with-Bison-exception AND "
        "((GPL-1.0-or-later OR Artistic-1.0-Perl) AND LicenseRef-bash-Powell-BSD-style)")}]
    assert bash["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert bash["properties"] == [{"name": "debian:source-package", "value": "bash 5.2.37-2"}]
    assert "licenses" not in by_name["tzdata"] and "hashes" not in by_name["tzdata"]
    [image] = [d for d in doc["dependencies"] if d["ref"] == "image"]
    assert sorted(image["dependsOn"]) == sorted(c["bom-ref"] for c in doc["components"])
    # The same tree and epoch: the same document, serial number included.
    again = sbom(str(tree), "--build-metadata", str(metadata), kind="cyclonedx")
    assert again.stdout == proc.stdout


def test_sbom_of_a_tree_it_cannot_read_in_full_is_refused() -> None:
    """A copyright file the user may not read: no SBOM that says "no license", one line."""
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))  # where another user may look
    try:
        base.chmod(0o755)
        tree = base / "tree"
        mk.write(tree, "etc/os-release", "ID=testos\n")
        mk.write(tree, "var/lib/dpkg/status", STATUS)
        mk.write(tree, "usr/share/doc/bash/copyright", BASH_COPYRIGHT, 0o600)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "osbuild.image_info", "--sbom", "spdx", str(tree)],
            capture_output=True, text=True, cwd=ROOT)
    finally:
        shutil.rmtree(base)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"image-info: error: {tree}: --sbom could not read everything: "
                           "/usr/share/doc/bash/copyright: Permission denied\n")
