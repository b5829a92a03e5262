"""Debian installer and apt stages: debs, mmdebstrap, apt.sources, apt.config, debconf.

The installs are real: pinned .debs from the Debian archive (the mirror of the
host's apt configuration, read at run time), resolved by osbuild.depsolve and
fetched by the engine, or mmdebstrap with the network. Error paths that need
no archive use small .debs built here with dpkg-deb.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from harness import Osbuild
from stagetest import load_meta, run_stage

from osbuild.buildroot import StageRun
from osbuild.depsolve import DEFAULT_KEYRING, Solution, depsolve, host_mirror

SUITE = "trixie"
EPOCH = 1_700_000_000
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def validator(name: str) -> jsonschema.Draft202012Validator:
    meta = load_meta(f"org.osbuild.{name}")
    schema = meta.get("schema_2", {}).get("options", meta["schema"])
    return jsonschema.Draft202012Validator({"type": "object", **schema})


def accepts(name: str, options: dict[str, Any]) -> None:
    validator(name).validate(options)


def rejects(name: str, options: dict[str, Any]) -> None:
    assert not validator(name).is_valid(options), f"{name} accepted {options}"


def run(name: str, options: dict[str, Any], tree: Path, tmp_path: Path, **kw: Any) -> StageRun:
    """Run a stage after checking its options against its schema, as the engine does."""
    accepts(name, options)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return run_stage(f"org.osbuild.{name}", options, tree, work, **kw)


def ok(result: StageRun) -> None:
    assert result.returncode == 0, "\n".join(result.tail)


def failed_with(result: StageRun, text: str) -> None:
    assert result.returncode != 0
    assert text in result.tail[-1], result.tail
    assert "Traceback" not in "\n".join(result.tail)


def native_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def dpkg_status(tree: Path) -> list[tuple[str, str, str]]:
    out = subprocess.run(
        ["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "--show",
         "--showformat=${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"],
        capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert all(row[0].strip() == "ii" for row in rows), [r for r in rows if r[0] != "ii "]
    return sorted((name, version, arch) for _, name, version, arch in rows)


@pytest.fixture(scope="module")
def mirror() -> str:
    return host_mirror()


@pytest.fixture(scope="module")
def minbase(mirror: str) -> Solution:
    """trixie's minbase plus a few packages, pinned: what the archive holds today.

    initramfs-tools without a kernel exercises the initramfs options cheaply.
    """
    return depsolve(SUITE, native_arch(), mirror, [DEFAULT_KEYRING],
                    ["hostname", "initramfs-tools", "zstd"])


def debs_stage(references: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"type": "org.osbuild.debs", "options": options,
            "inputs": {"packages": {"type": "org.osbuild.files",
                                    "origin": "org.osbuild.source",
                                    "references": references}}}


def pinned_manifest(solution: Solution, stages: list[dict[str, Any]],
                    **options: Any) -> dict[str, Any]:
    references = solution.references()
    return {"version": "2",
            "sources": {"org.osbuild.curl": {"items": solution.sources()}},
            "pipelines": [{"name": "os", "source-epoch": EPOCH,
                           "stages": [debs_stage(references, **options), *stages]}]}


# --- org.osbuild.debs through the engine, from the real archive ------------------------


@pytest.mark.slow
def test_debs_installs_exactly_the_pinned_set_and_rebuilds_from_cache(
        osbuild: Osbuild, minbase: Solution, mirror: str) -> None:
    sources = {"sources": [{"uris": [mirror], "suites": [SUITE, f"{SUITE}-updates"],
                            "components": ["main"], "signed_by": KEYRING}]}
    config = {"filename": "99osbuild", "config": {"APT": {"Install-Recommends": False}}}
    selections = {"selections": [{"package": "tzdata", "question": "tzdata/Areas",
                                  "type": "select", "value": "Europe"}]}
    accepts("apt.sources", sources)
    accepts("apt.config", config)
    accepts("debconf", selections)
    accepts("debs", {"exclude_docs": True, "initramfs_compress": "zstd"})
    manifest = pinned_manifest(minbase, [
        {"type": "org.osbuild.apt.sources", "options": sources},
        {"type": "org.osbuild.apt.config", "options": config},
        {"type": "org.osbuild.debconf", "options": selections},
    ], exclude_docs=True, initramfs_compress="zstd")
    first = osbuild.build_json(manifest, "--export", "os", "--output-directory",
                               str(osbuild.output))
    tree = osbuild.output / "os"
    pinned = sorted((p["name"], p["version"], p["architecture"]) for p in minbase.packages)
    assert "hostname" in {name for name, _, _ in pinned}
    assert dpkg_status(tree) == pinned

    metadata = first["metadata"]["os"]["org.osbuild.debs"]["packages"]
    expected = sorted(({"name": p["name"], "version": p["version"],
                        "architecture": p["architecture"], "sha256": p["sha256"]}
                       for p in minbase.packages), key=lambda p: p["name"])
    assert metadata == expected

    # The build's repository and the build root's files are gone; apt's state is clean.
    assert (tree / "etc/apt/sources.list").read_bytes() == b""
    assert not (tree / "tmp/osbuild-debs").exists()
    assert os.listdir(tree / "tmp") == []
    assert not list((tree / "var/cache/apt/archives").glob("*.deb"))
    assert not [p for p in (tree / "var/lib/apt/lists").iterdir() if p.is_file()
                and p.name != "lock"]
    assert not (tree / "etc/hostname").exists() and not (tree / "etc/resolv.conf").exists()
    assert not (tree / "etc/apt/apt.conf.d/99mmdebstrap").exists()

    # exclude_docs: no manuals or changelogs, copyrights kept, and so for later installs.
    assert os.listdir(tree / "etc/dpkg/dpkg.cfg.d") == ["99mmdebstrap"]
    assert "path-exclude=/usr/share/man/*\n" in \
        (tree / "etc/dpkg/dpkg.cfg.d/99mmdebstrap").read_text()
    assert (tree / "usr/share/doc/dpkg/copyright").is_file()
    assert not list((tree / "usr/share/doc/dpkg").glob("changelog*"))
    assert not [p for p in (tree / "usr/share/man").rglob("*") if p.is_file()]
    # initramfs_compress is configured; with no kernel there is no initrd to make.
    assert (tree / "etc/initramfs-tools/conf.d/osbuild-compress").read_text() == \
        "COMPRESS=zstd\n"
    assert not list((tree / "boot").iterdir())

    # The image's apt reads what the apt stages wrote, as they wrote it.
    assert (tree / "etc/apt/sources.list.d/debian.sources").read_text() == (
        f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
        f"Signed-By: {KEYRING}\n")
    targets = subprocess.run(["chroot", str(tree), "apt-get", "indextargets",
                              "--no-release-info", "--format", "$(SITE) $(RELEASE)"],
                             capture_output=True, text=True, check=True).stdout
    assert f"{mirror.rstrip('/')} {SUITE}-updates" in targets
    assert (tree / "etc/apt/apt.conf.d/99osbuild").read_text() == \
        'APT::Install-Recommends "false";\n'
    dump = subprocess.run(["chroot", str(tree), "apt-config", "dump",
                           "APT::Install-Recommends"], capture_output=True, text=True,
                          check=True).stdout
    assert dump == 'APT::Install-Recommends "false";\n'
    db = (tree / "var/cache/debconf/config.dat").read_text()
    assert "Name: tzdata/Areas\nTemplate: tzdata/Areas\nValue: Europe\n" in db

    second = osbuild.build_json(manifest)
    assert all(s["cached"] for s in second["pipelines"]["os"]["stages"])
    assert second["metadata"] == first["metadata"]


def test_debs_with_a_dependency_missing_fails_naming_it(osbuild: Osbuild,
                                                        minbase: Solution) -> None:
    # hostname alone: a real .deb whose libc6 is not pinned.
    alone = Solution(SUITE, minbase.architecture,
                     [p for p in minbase.packages if p["name"] == "hostname"])
    proc = osbuild.run(pinned_manifest(alone, []), check=False)
    assert proc.returncode == 1
    assert "the pinned package set is incomplete: hostname needs libc6" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupted_deb_is_rejected_before_the_stage(osbuild: Osbuild,
                                                    minbase: Solution) -> None:
    by_name = {p["name"]: p for p in minbase.packages}
    wanted, other = by_name["hostname"], by_name["base-files"]
    checksum = f"sha256:{wanted['sha256']}"
    manifest = {"version": "2",
                "sources": {"org.osbuild.curl": {"items": {checksum: {"url": other["url"]}}}},
                "pipelines": [{"name": "os", "stages": [debs_stage({checksum: {}})]}]}
    proc = osbuild.run(manifest, check=False)
    assert proc.returncode == 1
    assert other["url"] in proc.stderr and "Traceback" not in proc.stderr
    assert "org.osbuild.debs" not in proc.stdout
    assert not list((osbuild.store / "objects").iterdir())


# --- org.osbuild.debs: bad input, with .debs made here --------------------------------


def make_deb(directory: Path, name: str, version: str = "1.0", depends: str = "") -> str:
    """Build a tiny .deb into `directory` under its checksum, as a source input holds it."""
    root = directory / f"build-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    control = (f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
               "Maintainer: osbuild tests <test@example.org>\nDescription: test package\n")
    if depends:
        control += f"Depends: {depends}\n"
    (root / "DEBIAN/control").write_text(control)
    deb = directory / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    checksum = "sha256:" + hashlib.sha256(deb.read_bytes()).hexdigest()
    deb.rename(directory / checksum)
    shutil.rmtree(root)
    return checksum


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


def run_debs(tmp_path: Path, files: Path, references: dict[str, Any],
             **options: Any) -> StageRun:
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    return run("debs", options, tree, tmp_path,
               inputs={"packages": {"path": files, "data": {"files": references}}})


def test_debs_names_a_dependency_that_is_not_pinned(tmp_path: Path, files: Path) -> None:
    a = make_deb(files, "osbuild-test-a", depends="osbuild-test-b (>= 1), libc6 | musl")
    failed_with(run_debs(tmp_path, files, {a: {}}),
                "the pinned package set is incomplete: osbuild-test-a needs "
                "osbuild-test-b (>= 1); osbuild-test-a needs libc6 | musl")


def test_debs_refuses_a_file_that_is_not_referenced(tmp_path: Path, files: Path) -> None:
    a = make_deb(files, "osbuild-test-a")
    b = make_deb(files, "osbuild-test-b")
    failed_with(run_debs(tmp_path, files, {a: {}}),
                f"input file {b} is not among the input's references")


def test_debs_refuses_a_reference_without_a_file(tmp_path: Path, files: Path) -> None:
    a = make_deb(files, "osbuild-test-a")
    missing = "sha256:" + "0" * 64
    failed_with(run_debs(tmp_path, files, {a: {}, missing: {}}),
                f"input reference {missing} has no file in the input")


def test_debs_checks_reference_metadata_against_the_file(tmp_path: Path, files: Path) -> None:
    a = make_deb(files, "osbuild-test-a", version="2.0")
    failed_with(run_debs(tmp_path, files, {a: {"metadata": {"name": "osbuild-test-a",
                                                            "version": "1.0"}}}),
                f"{a} is osbuild-test-a 2.0, but its reference says version '1.0'")


def test_debs_refuses_a_package_pinned_twice(tmp_path: Path, files: Path) -> None:
    one = make_deb(files, "osbuild-test-a", version="1.0")
    two = make_deb(files, "osbuild-test-a", version="2.0")
    failed_with(run_debs(tmp_path, files, {one: {}, two: {}}),
                "osbuild-test-a:all is pinned twice (1.0 and 2.0)")


def test_debs_refuses_a_file_that_is_not_a_deb(tmp_path: Path, files: Path) -> None:
    data = b"not a debian package"
    checksum = "sha256:" + hashlib.sha256(data).hexdigest()
    (files / checksum).write_bytes(data)
    failed_with(run_debs(tmp_path, files, {checksum: {}}),
                f"{checksum} is not a Debian package")


def test_debs_needs_an_empty_tree(tmp_path: Path, files: Path) -> None:
    a = make_deb(files, "osbuild-test-a")
    (tmp_path / "tree/etc").mkdir(parents=True)
    failed_with(run_debs(tmp_path, files, {a: {}}),
                "org.osbuild.debs installs into an empty tree, but the tree has etc")


def test_debs_initramfs_compressor_must_be_pinned(tmp_path: Path, files: Path) -> None:
    a = make_deb(files, "osbuild-test-a")
    failed_with(run_debs(tmp_path, files, {a: {}}, initramfs_compress="zstd"),
                "initramfs_compress zstd needs package zstd in the pinned set")


def test_debs_schema() -> None:
    accepts("debs", {})
    accepts("debs", {"architecture": "amd64", "exclude_docs": True,
                     "initramfs_compress": "zstd"})
    rejects("debs", {"variant": "minbase"})
    rejects("debs", {"initramfs_compress": "brotli"})
    rejects("debs", {"architecture": "AMD64"})
    rejects("debs", {"exclude_docs": "yes"})
    inputs = jsonschema.Draft202012Validator(load_meta("org.osbuild.debs")["schema_2"]["inputs"])
    good = {"packages": {"type": "org.osbuild.files", "origin": "org.osbuild.source",
                         "references": {"sha256:" + "a" * 64: {}}}}
    assert inputs.is_valid(good)
    assert not inputs.is_valid({})
    assert not inputs.is_valid({"packages": {**good["packages"], "references": {}}})
    assert not inputs.is_valid({"packages": {**good["packages"],
                                             "references": {"md5:" + "a" * 32: {}}}})
    assert not inputs.is_valid({"packages": {**good["packages"],
                                             "origin": "org.osbuild.pipeline"}})


# --- org.osbuild.mmdebstrap -------------------------------------------------------------


@pytest.mark.slow
def test_mmdebstrap_bootstraps_from_the_archive(osbuild: Osbuild, mirror: str) -> None:
    options = {"suite": SUITE, "mirror": mirror, "variant": "essential",
               "include": ["less"], "keyrings": [KEYRING]}
    accepts("mmdebstrap", options)
    manifest = {"version": "2", "pipelines": [{"name": "os", "source-epoch": EPOCH, "stages": [
        {"type": "org.osbuild.mmdebstrap", "options": options}]}]}
    result = osbuild.build_json(manifest, "--export", "os", "--output-directory",
                                str(osbuild.output))
    tree = osbuild.output / "os"
    packages = result["metadata"]["os"]["org.osbuild.mmdebstrap"]["packages"]
    assert [(p["name"], p["version"], p["architecture"]) for p in packages] == dpkg_status(tree)
    names = {p["name"] for p in packages}
    assert {"dpkg", "less", "base-files"} <= names and "apt" not in names
    assert packages == sorted(packages, key=lambda p: (p["name"], p["architecture"]))
    assert (tree / "etc/apt/sources.list").read_bytes() == b""
    assert not (tree / "etc/hostname").exists() and not (tree / "etc/resolv.conf").exists()
    assert os.listdir(tree / "etc/dpkg/dpkg.cfg.d") == []
    assert not list((tree / "var/cache/apt/archives").glob("*.deb"))


def test_mmdebstrap_fails_cleanly_on_an_unknown_package(osbuild: Osbuild, mirror: str) -> None:
    # custom: apt resolves the include before anything is installed, so this fails fast.
    options = {"suite": SUITE, "mirror": mirror, "variant": "custom",
               "include": ["osbuild-no-such-package"]}
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        {"type": "org.osbuild.mmdebstrap", "options": options}]}]}
    proc = osbuild.run(manifest, check=False)
    assert proc.returncode == 1
    assert "osbuild-no-such-package" in proc.stderr + proc.stdout
    assert "mmdebstrap failed: " in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_mmdebstrap_schema() -> None:
    meta = load_meta("org.osbuild.mmdebstrap")
    assert meta["capabilities"] == ["network", "emulation"]  # a foreign tree runs via qemu-user
    accepts("mmdebstrap", {"suite": "trixie", "mirror": "http://mirror.example/debian"})
    accepts("mmdebstrap", {"suite": "bookworm", "mirrors": ["http://a.example/debian",
                                                            "http://b.example/debian"],
                           "variant": "minbase", "components": ["main", "contrib"],
                           "architectures": ["amd64", "i386"], "include": ["systemd=257-1"],
                           "apt_options": ['Acquire::Retries "3"'],
                           "dpkg_options": ["path-exclude=/usr/share/man/*"],
                           "exclude_docs": True})
    rejects("mmdebstrap", {"suite": "trixie"})
    rejects("mmdebstrap", {"mirror": "http://mirror.example/debian"})
    rejects("mmdebstrap", {"suite": "trixie", "mirror": "http://x.example/d",
                           "mirrors": ["http://x.example/d"]})
    rejects("mmdebstrap", {"suite": "trixie", "mirror": "deb.example.org"})
    rejects("mmdebstrap", {"suite": "trixie", "mirror": "http://x.example/d",
                           "variant": "extract"})
    rejects("mmdebstrap", {"suite": "trixie", "mirror": "http://x.example/d",
                           "include": ["a,b"]})
    rejects("mmdebstrap", {"suite": "trixie", "mirror": "http://x.example/d",
                           "include": ["./local.deb"]})
    rejects("mmdebstrap", {"suite": "trixie", "mirror": "http://x.example/d",
                           "keyrings": ["/usr/share/../../etc/key.gpg"]})
    # A leading '/' would make mmdebstrap read a build root file as the option.
    rejects("mmdebstrap", {"suite": "trixie", "mirror": "http://x.example/d",
                           "dpkg_options": ["/etc/passwd"]})


# --- org.osbuild.apt.sources ------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    path = tmp_path / "tree"
    (path / "etc").mkdir(parents=True)
    return path


def test_apt_sources_writes_deb822_stanzas(tree: Path, tmp_path: Path) -> None:
    options = {"sources": [
        {"uris": ["http://deb.example.org/debian"], "suites": ["trixie", "trixie-updates"],
         "components": ["main", "non-free-firmware"], "signed_by": KEYRING},
        {"types": ["deb", "deb-src"], "uris": ["http://security.example.org/debian-security"],
         "suites": ["trixie-security"], "components": ["main"], "architectures": ["amd64"],
         "signed_by": [KEYRING, "/etc/apt/keyrings/extra.gpg"], "enabled": False},
        {"uris": ["file:/srv/repo"], "suites": ["./"]},
    ]}
    ok(run("apt.sources", options, tree, tmp_path))
    path = tree / "etc/apt/sources.list.d/debian.sources"
    assert path.read_text() == (
        "Types: deb\nURIs: http://deb.example.org/debian\nSuites: trixie trixie-updates\n"
        f"Components: main non-free-firmware\nSigned-By: {KEYRING}\n"
        "\n"
        "Types: deb deb-src\nURIs: http://security.example.org/debian-security\n"
        "Suites: trixie-security\nComponents: main\nArchitectures: amd64\n"
        f"Signed-By: {KEYRING} /etc/apt/keyrings/extra.gpg\nEnabled: no\n"
        "\n"
        "Types: deb\nURIs: file:/srv/repo\nSuites: ./\n")
    assert path.stat().st_mode & 0o7777 == 0o644


def test_apt_sources_filename_and_replacing_a_symlink(tree: Path, tmp_path: Path) -> None:
    (tree / "etc/apt/sources.list.d").mkdir(parents=True)
    (tree / "outside").write_text("untouched\n")
    (tree / "etc/apt/sources.list.d/local.sources").symlink_to("../../../outside")
    ok(run("apt.sources", {"filename": "local.sources", "sources": [
        {"uris": ["http://deb.example.org/debian"], "suites": ["trixie"],
         "components": ["main"]}]}, tree, tmp_path))
    path = tree / "etc/apt/sources.list.d/local.sources"
    assert not path.is_symlink()
    assert path.read_text() == ("Types: deb\nURIs: http://deb.example.org/debian\n"
                                "Suites: trixie\nComponents: main\n")
    assert (tree / "outside").read_text() == "untouched\n"


def test_apt_sources_checks_flat_repositories_at_run_time(tree: Path, tmp_path: Path) -> None:
    # Stages may be run on unchecked options: the stage's own check, not the schema's.
    source = {"uris": ["file:/srv/repo"], "suites": ["./"], "components": ["main"]}
    work = tmp_path / "work"
    work.mkdir()
    result = run_stage("org.osbuild.apt.sources", {"sources": [source]}, tree, work)
    failed_with(result, "sources[0]: a flat repository has no components")


@pytest.mark.parametrize("options", [
    {},
    {"sources": []},
    {"sources": [{"uris": ["http://d.example/debian"], "suites": ["trixie"]}]},
    {"sources": [{"uris": ["http://d.example/debian"], "suites": ["./"],
                  "components": ["main"]}]},
    {"sources": [{"uris": ["http://d.example/debian"], "suites": ["trixie"],
                  "components": ["main contrib"]}]},
    {"sources": [{"uris": ["deb.example.org"], "suites": ["trixie"], "components": ["main"]}]},
    {"sources": [{"uris": ["http://d.example/debian"], "suites": ["trixie"],
                  "components": ["main"], "types": ["rpm"]}]},
    {"sources": [{"uris": ["http://d.example/debian"], "suites": ["trixie"],
                  "components": ["main"], "signed_by": "keyring.gpg"}]},
    {"sources": [{"uris": ["http://d.example/debian"], "suites": ["trixie"],
                  "components": ["main"], "trusted": True}]},
    {"filename": "../../evil.sources", "sources": [
        {"uris": ["http://d.example/debian"], "suites": ["trixie"], "components": ["main"]}]},
    {"filename": "debian.list", "sources": [
        {"uris": ["http://d.example/debian"], "suites": ["trixie"], "components": ["main"]}]},
])
def test_apt_sources_schema_rejects(options: dict[str, Any]) -> None:
    rejects("apt.sources", options)


# --- org.osbuild.apt.config -------------------------------------------------------------


def test_apt_config_renders_scopes_lists_and_scalars(tree: Path, tmp_path: Path) -> None:
    options = {"filename": "90osbuild.conf", "config": {
        "APT": {"Install-Recommends": False, "Install-Suggests": False},
        "Acquire": {"Retries": 3, "http": {"Proxy": "http://proxy.example:3128/"}},
        "DPkg": {"Pre-Invoke": ["echo one", "echo two"]},
    }}
    ok(run("apt.config", options, tree, tmp_path))
    path = tree / "etc/apt/apt.conf.d/90osbuild.conf"
    assert path.read_text() == (
        'APT::Install-Recommends "false";\n'
        'APT::Install-Suggests "false";\n'
        'Acquire::Retries "3";\n'
        'Acquire::http::Proxy "http://proxy.example:3128/";\n'
        'DPkg::Pre-Invoke { "echo one"; "echo two"; };\n')
    assert path.stat().st_mode & 0o7777 == 0o644
    # The host's apt (the build root's) parses it to the same values.
    dump = subprocess.run(["apt-config", "-c", str(path), "dump", "DPkg::Pre-Invoke"],
                          capture_output=True, text=True, check=True).stdout
    assert 'DPkg::Pre-Invoke:: "echo one";\nDPkg::Pre-Invoke:: "echo two";' in dump


def test_apt_config_refuses_a_bad_value_at_run_time(tree: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = run_stage("org.osbuild.apt.config", {"filename": "x", "config": {
        "APT": {"Bad": 'quote " inside'}}}, tree, work)
    failed_with(result, "cannot be written as an apt value")
    assert not (tree / "etc/apt").exists()


@pytest.mark.parametrize("options", [
    {"filename": "99x"},
    {"config": {"APT": {"Install-Recommends": False}}},
    {"filename": "99x", "config": {}},
    {"filename": "99x", "config": {"APT": {}}},
    {"filename": "99x", "config": {"APT::Install-Recommends": False}},
    {"filename": "99x", "config": {"APT": {"Bad": 'a "quoted" value'}}},
    {"filename": "99x", "config": {"APT": {"Bad": "two\nlines"}}},
    {"filename": "99x", "config": {"APT": {"Bad": 1.5}}},
    {"filename": "99x", "config": {"APT": {"Bad": None}}},
    {"filename": "99x", "config": {"APT": {"List": [{"nested": "object"}]}}},
    {"filename": "99x.list", "config": {"APT": {"Install-Recommends": False}}},
    {"filename": "../99x", "config": {"APT": {"Install-Recommends": False}}},
    {"filename": "99x", "config": {"APT": {"Install-Recommends": False}}, "mode": "0644"},
])
def test_apt_config_schema_rejects(options: dict[str, Any]) -> None:
    rejects("apt.config", options)


# --- org.osbuild.debconf ----------------------------------------------------------------


def test_debconf_needs_debconf_in_the_tree(tree: Path, tmp_path: Path) -> None:
    failed_with(run("debconf", {"selections": [
        {"package": "tzdata", "question": "tzdata/Areas", "type": "select",
         "value": "Europe"}]}, tree, tmp_path),
        "the tree has no /usr/bin/debconf-set-selections: install debconf first")


@pytest.mark.parametrize("options", [
    {},
    {"selections": []},
    {"selections": [{"package": "tzdata", "question": "tzdata/Areas", "type": "select"}]},
    {"selections": [{"package": "tzdata", "question": "tzdata Areas", "type": "select",
                     "value": "Europe"}]},
    {"selections": [{"package": "tzdata", "question": "tzdata/Areas", "type": "choice",
                     "value": "Europe"}]},
    {"selections": [{"package": "tzdata", "question": "tzdata/Areas", "type": "select",
                     "value": "Europe\ntzdata tzdata/Zones/Europe select Berlin"}]},
])
def test_debconf_schema_rejects(options: dict[str, Any]) -> None:
    rejects("debconf", options)


def test_meta_files_are_valid_json_with_strict_schemas() -> None:
    for name in ("debs", "mmdebstrap", "apt.sources", "apt.config", "debconf"):
        meta = load_meta(f"org.osbuild.{name}")
        assert meta["schema"]["additionalProperties"] is False
        jsonschema.Draft202012Validator.check_schema({"type": "object", **meta["schema"]})
        json.dumps(meta)


# -- native stand-ins (osbuild.toolkit.foreign.STANDINS) for a foreign tree's slow programs


def fake_programs(bin_dir: Path, log: Path) -> None:
    """depmod and systemd-hwdb that log how they were called: the tree's and the build root's."""
    bin_dir.mkdir()
    for name in ("depmod", "systemd-hwdb"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        (bin_dir / name).chmod(0o755)


def test_standins_note_the_scripts_calls_and_pass_others_on(tmp_path: Path) -> None:
    from osbuild.toolkit import foreign

    log, native = tmp_path / "log", tmp_path / "native"
    fake_programs(tmp_path / "bin", log)
    native.mkdir()
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    for name in foreign.STANDINS:
        (native / name).write_text(foreign.noting_script(name, str(native)))
        (native / name).chmod(0o755)
    env["PATH"] = f"{native}:{env['PATH']}"
    calls = [["depmod", "6.12.27-arm64"], ["depmod", "-a", "-b", "/tmp/x", "6.12.27-arm64"],
             ["systemd-hwdb", "--usr", "update"], ["systemd-hwdb", "query", "usb:v1D6B"],
             ["depmod", "6.12.27-arm64"]]
    for call in calls:
        subprocess.run(call, env=env, check=True)
    # The scripts' own calls are noted, not run; every other call reaches the program.
    assert log.read_text().splitlines() == ["depmod -a -b /tmp/x 6.12.27-arm64",
                                            "systemd-hwdb query usb:v1D6B"]
    assert (native / "depmod.todo").read_text() == "6.12.27-arm64\n6.12.27-arm64\n"
    # The hook then does each noted piece of work once, on the tree, from outside.
    log.unlink()
    hook = foreign.native_standins_hook(str(native), list(foreign.STANDINS))
    subprocess.run(["sh", "-c", hook, "hook", "/target"], env=env, check=True)
    assert log.read_text().splitlines() == ["depmod -b /target 6.12.27-arm64",
                                            "systemd-hwdb --root /target --usr update"]


def test_standins_hook_fails_when_the_native_program_does(tmp_path: Path) -> None:
    from osbuild.toolkit import foreign

    native = tmp_path / "native"
    native.mkdir()
    (native / "depmod.todo").write_text("6.12.27-arm64\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/depmod").write_text("#!/bin/sh\nexit 3\n")
    (tmp_path / "bin/depmod").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    hook = foreign.native_standins_hook(str(native), ["depmod"])
    assert subprocess.run(["sh", "-c", hook, "hook", "/target"], env=env).returncode != 0


def test_a_tree_without_a_qemu_user_handler_fails_in_one_line() -> None:
    """s390x is in the archive but not in osbuild.toolkit.architectures: the engine registers
    no handler."""
    from osbuild.toolkit import debian

    if os.path.exists("/proc/sys/fs/binfmt_misc/qemu-s390x"):
        pytest.skip("this host registers its own qemu-s390x handler")
    code = "from osbuild.toolkit import debian; debian.check_can_run('s390x')"
    proc = subprocess.run([sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=Path(debian.__file__).parents[2])
    assert proc.returncode == 1
    assert proc.stderr == (f"error: an s390x tree needs qemu-user on this "
                           f"{debian.native_architecture()} host, and binfmt_misc has no "
                           "qemu-s390x handler: install qemu-user-static on the host\n")
    # Natively run architectures need no handler at all.
    debian.check_can_run("i386")
    debian.check_can_run("all")


@pytest.mark.skipif(os.geteuid() != 0, reason="registering binfmt_misc handlers needs root")
def test_qemu_user_emulates_arm64_with_its_fast_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a stage knows it can run an arm64 tree, every program it starts runs on
    osbuild.toolkit.architectures' CPU (QEMU_CPU); riscv64 keeps qemu's default."""
    from osbuild import binfmt
    from osbuild.toolkit import debian

    if debian.native_architecture() != "amd64":
        pytest.skip("an amd64 host emulates arm64 and riscv64")
    monkeypatch.delenv("QEMU_CPU", raising=False)
    with binfmt.emulation():
        debian.check_can_run("riscv64")
        assert "QEMU_CPU" not in os.environ
        debian.check_can_run("arm64")
        assert os.environ["QEMU_CPU"] == "max,pauth-impdef=on"


@pytest.mark.parametrize("compression", ["xz", "gzip"])
def test_decompressed_deb_installs_the_same_files(tmp_path: Path, compression: str) -> None:
    """A foreign install's packages are handed to dpkg uncompressed: same control, same data."""
    from osbuild.toolkit import debfile

    root = tmp_path / "root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: odd\nVersion: 1\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: members of odd sizes\n")
    (root / "usr/share/odd").mkdir(parents=True)
    (root / "usr/share/odd/data").write_bytes(os.urandom(12345))  # an odd-sized member
    (root / "usr/share/odd/link").symlink_to("data")
    deb, out = tmp_path / "odd.deb", tmp_path / "plain.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build",
                    str(root), str(deb)], check=True, capture_output=True)
    digest = debfile.uncompressed(str(deb), str(out))
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()

    def members(path: Path) -> list[str]:
        return subprocess.run(["ar", "t", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()

    assert members(out) == [*members(deb)[:2], "data.tar"]
    for query in (["--fsys-tarfile"], ["--ctrl-tarfile"], ["--field"]):
        before = subprocess.run(["dpkg-deb", *query, str(deb)], capture_output=True, check=True)
        after = subprocess.run(["dpkg-deb", *query, str(out)], capture_output=True, check=True)
        assert before.stdout == after.stdout, query
    # Nothing to gain from a package whose data is not compressed.
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(root),
                    str(deb)], check=True, capture_output=True)
    assert debfile.uncompressed(str(deb), str(tmp_path / "none.deb")) is None
    assert not (tmp_path / "none.deb").exists()


def test_callouts_run_the_trees_script_with_dpkg_root(tmp_path: Path) -> None:
    """A stand-in's call reaches the tree's script, run outside with DPKG_ROOT; output and
    status come back to the caller, one call after another."""
    from osbuild.toolkit import callserver

    tree, native = tmp_path / "tree", tmp_path / "native"
    (tree / "usr/bin").mkdir(parents=True)
    native.mkdir()
    (tree / "usr/bin/deb-systemd-helper").write_text(
        '#!/usr/bin/perl\nprint "out: $ENV{DPKG_ROOT} @ARGV\\n";\n'
        'print STDERR "err: $ENV{DPKG_MAINTSCRIPT_PACKAGE} ",'
        ' defined $ENV{_DEB_SYSTEMD_HELPER_DEBUG} ? "set" : "unset", "\\n";\n'
        'exit((grep { $_ eq "was-enabled" } @ARGV) ? 1 : 0);\n')
    env = dict(os.environ, PATH=f"{native}:/usr/bin:/bin", DPKG_MAINTSCRIPT_PACKAGE="util-linux")
    env.pop("_DEB_SYSTEMD_HELPER_DEBUG", None)
    with callserver.serving(str(tree), str(native), ["deb-systemd-helper"]):
        calls = [["deb-systemd-helper", "--quiet", "was-enabled", "fstrim.timer"],
                 ["deb-systemd-helper", "enable", "fstrim timer"]]
        results = [subprocess.run(c, env=env, capture_output=True, text=True) for c in calls]
    assert [r.returncode for r in results] == [1, 0]
    assert results[0].stdout == f"out: {tree} --quiet was-enabled fstrim.timer\n"
    assert results[1].stdout == f"out: {tree} enable fstrim timer\n"
    assert results[0].stderr == "err: util-linux unset\n"
    assert sorted(p.name for p in native.iterdir()) == ["deb-systemd-helper", "requests"]
    # A tree without the script: the caller gets what a shell says of a missing program.
    (tree / "usr/bin/deb-systemd-helper").unlink()
    again = tmp_path / "again"
    again.mkdir()
    env["PATH"] = f"{again}:/usr/bin:/bin"
    with callserver.serving(str(tree), str(again), ["deb-systemd-helper"]):
        missing = subprocess.run(["deb-systemd-helper", "enable", "x"], env=env,
                                 capture_output=True, text=True)
    assert (missing.returncode, missing.stderr) == (127, "deb-systemd-helper: not found\n")


def test_native_path_hooks_put_the_stand_ins_first_for_dpkg_and_take_it_back(
        tmp_path: Path) -> None:
    """apt gives dpkg its own PATH (DPkg::Path): the tree's apt is told, for the install only."""
    from osbuild.toolkit import foreign

    setup, cleanup = foreign.native_path_hooks("/tmp/osbuild-debs/native")
    subprocess.run(["sh", "-c", setup, "hook", str(tmp_path)], check=True)
    cfg = tmp_path / foreign.NATIVE_PATH_CFG.lstrip("/")
    conf = subprocess.run(["apt-config", "-c", str(cfg), "shell", "p", "DPkg::Path"],
                          capture_output=True, text=True, check=True).stdout
    assert conf == "p='/tmp/osbuild-debs/native:/usr/sbin:/usr/bin:/sbin:/bin'\n"
    subprocess.run(["sh", "-c", cleanup, "hook", str(tmp_path)], check=True)
    assert not cfg.exists()


def fake_dracut_install(tree: Path, bin_dir: Path, log: Path) -> Path:
    """A build root's dracut-install and the tree's own (at the same path in the tree):
    each logs who ran it, with its umask and arguments; "fail" makes it exit 3."""
    program = bin_dir / "dracut-install"
    for path, who in ((program, "root"), (tree / program.relative_to("/"), "own")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\necho "{who} $(umask) $*" >> {log}\n'
                        '[ "${*##* }" != fail ] || exit 3\n')
        path.chmod(0o755)
    return program


def test_dracut_install_callout_copies_modules_from_outside_and_keeps_other_calls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """initramfs-tools' module calls run the build root's dracut-install on the tree's
    paths (with the caller's umask and status); calls that read ELF dependencies or have
    no module list run the tree's own."""
    import dataclasses

    from osbuild.toolkit import callserver, foreign

    tree, native, log = tmp_path / "tree", tmp_path / "native", tmp_path / "log"
    native.mkdir()
    program = fake_dracut_install(tree, tmp_path / "bin", log)
    callout = dataclasses.replace(foreign.CALLOUTS["dracut-install"],
                                  program=str(program), needs=(str(program),))
    monkeypatch.setitem(foreign.CALLOUTS, "dracut-install", callout)
    # What the bind hook leaves for the stand-in: the tree's own program beside it.
    shutil.copy(tree / program.relative_to("/"), foreign.trees_own("dracut-install",
                                                                      str(native)))
    standin = str(native / "dracut-install")
    modules = ["-D", "/var/tmp/mkinitramfs_Ab12", "--kerneldir", "/lib/modules/6.12.41-arm64",
               "--firmwaredirs", "/lib/firmware/updates/6.12.41-arm64:/lib/firmware", "-o",
               "-m", "-s", "register_virtio_device|usbnet_open", "=drivers/net", "ext4"]
    with callserver.serving(str(tree), str(native), ["dracut-install"]):
        ok = subprocess.run([standin, *modules], preexec_fn=lambda: os.umask(0o027))
        failed = subprocess.run([standin, "--destrootdir=/var/tmp/x", "-m", "fail"])
        subprocess.run([standin, "-D", "/var/tmp/x", "-l", "-m", "ext4"], check=True)
        subprocess.run([standin, "-D", "/var/tmp/x", "/usr/bin/busybox"], check=True)
        missing_value = subprocess.run([standin, "-m", "ext4", "--kerneldir"],
                                       capture_output=True, text=True)
    assert (ok.returncode, failed.returncode, missing_value.returncode) == (0, 3, 2)
    assert missing_value.stderr.startswith("dracut-install: an option without its value")
    t = str(tree)
    for name in foreign.CALLOUTS:
        script = foreign.standin_script(name, str(native))
        assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0, name
    assert log.read_text().splitlines() == [
        f"root 0027 --sysrootdir {t} -D {t}/var/tmp/mkinitramfs_Ab12 --kerneldir "
        f"{t}/lib/modules/6.12.41-arm64 --firmwaredirs {t}/lib/firmware/updates/6.12.41-arm64:"
        f"{t}/lib/firmware -o -m -s register_virtio_device|usbnet_open =drivers/net ext4",
        f"root 0022 --sysrootdir {t} --destrootdir {t}/var/tmp/x -m fail",
        "own 0022 -D /var/tmp/x -l -m ext4",
        "own 0022 -D /var/tmp/x /usr/bin/busybox"]


@pytest.mark.skipif(os.geteuid() != 0, reason="binds a file (mount needs root)")
def test_dracut_install_is_bound_over_the_trees_only_with_the_same_modprobe_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kmod's modprobe.d decides which modules (softdeps) go in: where the build root's
    differs from the tree's, the tree's own dracut-install makes the initrd."""
    import dataclasses

    from osbuild.toolkit import foreign

    tree, native, log = tmp_path / "tree", tmp_path / "native", tmp_path / "log"
    native.mkdir()
    program = fake_dracut_install(tree, tmp_path / "bin", log)
    conf = tmp_path / "modprobe.d"
    for root in (tmp_path, tree / tmp_path.relative_to("/")):
        (root / "modprobe.d").mkdir(parents=True, exist_ok=True)
        (root / "modprobe.d/blacklist.conf").write_text("blacklist floppy\n")
    callout = dataclasses.replace(foreign.CALLOUTS["dracut-install"], program=str(program),
                                  needs=(str(program),), same_dirs=(str(conf), "/nonexistent"))
    monkeypatch.setitem(foreign.CALLOUTS, "dracut-install", callout)
    (native / "dracut-install").write_text("#!/bin/sh\necho standin\n")
    (native / "dracut-install").chmod(0o755)
    bind, unbind = foreign.bind_hooks(str(native), ["deb-systemd-helper", "dracut-install"])
    script = f'{bind} && "$1"{program} && {unbind} && "$1"{program} -m x'
    bound = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            script, "hook", str(tree)], capture_output=True, text=True)
    assert (bound.returncode, bound.stdout) == (0, "standin\n"), bound.stderr
    assert sorted(p.name for p in native.iterdir()) == ["dracut-install"]
    (tree / tmp_path.relative_to("/") / "modprobe.d/blacklist.conf").write_text("\n")
    kept = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script, "hook", str(tree)], capture_output=True, text=True)
    assert (kept.returncode, kept.stdout) == (0, ""), kept.stderr
    assert log.read_text().splitlines() == ["own 0022 -m x", "own 0022 ", "own 0022 -m x"]


def test_callouts_need_the_build_roots_programs_and_the_trees_package_versions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A call-out is used only where the build root has its programs and, of the packages
    that decide its result, the very versions the tree installs (read with dpkg-query)."""
    import dataclasses

    from osbuild.toolkit import foreign

    dpkg = subprocess.run(["dpkg-query", "-W", "--showformat=${Version}", "dpkg"],
                          capture_output=True, text=True, check=True).stdout
    base = foreign.CALLOUTS["dracut-install"]
    monkeypatch.setattr(foreign, "CALLOUTS", {
        "same": dataclasses.replace(base, needs=("sh",), same_versions=("dpkg",)),
        "absent": dataclasses.replace(base, needs=("sh", "/nonexistent/program")),
        "any": dataclasses.replace(base, needs=("sh",), same_versions=())})
    assert foreign.usable({"dpkg": dpkg}) == ["same", "any"]
    assert foreign.usable({"dpkg": dpkg + "+1"}) == ["any"]
    assert foreign.usable({}) == ["any"]
