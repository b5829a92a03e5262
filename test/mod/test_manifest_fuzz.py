"""Property-based hostile input: mutated valid manifests are accepted or refused cleanly.

Hypothesis mutates small valid v1 and v2 manifests (values of other types,
unknown keys, dropped keys, `..` and absolute paths, huge numbers, odd
Unicode, duplicated list items). Loading and validating any of them either
succeeds or raises ManifestError whose problems are single lines that start
with a JSON path; nothing else may escape. A small sample also goes through the
real `osbuild` command and must end with exit status 0 or 2 (or 1 for a stage
that refuses valid but unworkable options at run time), one-line errors, and
no file written outside the store and the output directory.

Derandomized, without an example database: CI runs the same examples each time.
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from osbuild import formats
from osbuild.errors import ManifestError
from osbuild.main_cli import read_manifest
from osbuild.validate import validate

# Hypothesis keeps a cache (of constants it collects from the code) in the current
# directory by default: keep it out of the checkout. Set on import, before it is used.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "osbuild-test-hypothesis")

HOST = "org.osbuild.debian12"
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UUID = "6e4ff95f-f662-45ee-a82a-bdf44a2d0b75"
# Every problem starts with where it is: a JSON path, then ": ".
PROBLEM = re.compile(r"^(manifest|version|sources|pipelines?)([.\[][^\n]*)?: \S[^\n]*$")


def stage(name: str, **options: Any) -> dict[str, Any]:
    return {"type": f"org.osbuild.{name}", "options": options}


def v1_stage(name: str, **options: Any) -> dict[str, Any]:
    return {"name": f"org.osbuild.{name}", "options": options}


# What the CLI sample runs: path-taking stages that are quick whatever their valid
# options say (truncate is left out: a valid 8 EiB sparse file would be exported).
CLI_STAGES = [
    stage("mkdir", paths=[{"path": "/srv/data", "parents": True, "exist_ok": True,
                           "mode": 0o750}]),
    stage("chmod", items={"/srv/data": {"mode": "u+rwx,go-w"}}),
    stage("ln", paths=[{"target": "data", "link_name": "/srv/link"}]),
]
PATH_STAGES = [*CLI_STAGES, stage("truncate", filename="/srv/disk.img", size=65536)]
CLI_V2 = {"version": "2", "pipelines": [
    {"name": "os", "stages": [stage("noop", seed=1), *CLI_STAGES]}]}
CLI_V1 = {"pipeline": {
    "stages": [v1_stage("noop", seed=1),
               *({"name": s["type"], "options": s["options"]} for s in CLI_STAGES)],
    "assembler": {"name": "org.osbuild.tar", "options": {"filename": "tree.tar"}}}}

LOOP = {"device": {"type": "org.osbuild.loopback",
                   "options": {"filename": "disk.img", "start": 2048, "size": 4096}}}
V2 = {
    "version": "2",
    "sources": {"org.osbuild.inline": {"items": {EMPTY: {"encoding": "base64", "data": ""}}}},
    "pipelines": [
        {"name": "build", "source-epoch": 1700000000, "stages": [
            stage("test.metadata", file="meta", content="x"),
            {"type": "org.osbuild.noop", "inputs": {"files": {
                "type": "org.osbuild.files", "origin": "org.osbuild.source",
                "references": {EMPTY: {}}}}}]},
        {"name": "os", "build": "name:build", "runner": "org.osbuild.linux", "stages": [
            {"type": "org.osbuild.copy", "options": {"paths": [
                {"from": "input://tree/", "to": "tree:///"}]},
             "inputs": {"tree": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                                 "references": ["name:build"]}}},
            *PATH_STAGES,
            stage("hostname", hostname="fuzz"),
            stage("users", users={"alice": {"uid": 1000, "home": "/home/alice"}})]},
        {"name": "image", "stages": [
            stage("truncate", filename="disk.img", size=4194304),
            {"type": "org.osbuild.mkfs.ext4", "options": {"uuid": UUID}, "devices": LOOP},
            {"type": "org.osbuild.copy", "options": {"paths": [
                {"from": "input://tree/", "to": "mount://root/"}]},
             "inputs": {"tree": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                                 "references": {"name:os": {}}}},
             "devices": LOOP,
             "mounts": [{"name": "root", "type": "org.osbuild.ext4", "source": "device",
                         "target": "/"}]}]},
    ],
}
V1 = {
    "sources": {"org.osbuild.files": {"urls": {EMPTY: "http://127.0.0.1:9/empty"}}},
    "pipeline": {
        "build": {"pipeline": {"stages": [v1_stage("test.metadata", file="meta")]},
                  "runner": "org.osbuild.linux"},
        "stages": [v1_stage("debs", packages=[EMPTY]), v1_stage("hostname", hostname="fuzz"),
                   *({"name": s["type"], "options": s["options"]} for s in PATH_STAGES)],
        "assembler": {"name": "org.osbuild.qemu", "options": {
            "format": "qcow2", "filename": "disk.qcow2", "size": 1073741824,
            "ptuuid": "0x14fc63d2", "partitions": [{"start": 2048, "size": 2095104,
                                                    "filesystem": {"type": "ext4", "uuid": UUID,
                                                                   "mountpoint": "/"}}]}}},
}

ODD_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "\n", "a\nb", "\r\n", "\u202e",
            "\ufeff", "\u2028", "é" * 300, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\x7f", "name:", "org.osbuild.",
            "sha256:" + "0" * 64, "$ref", "__proto__"]
PATHS = ["..", ".", "/", "//", "../x", "/../../canary/pwned", "../../canary/pwned",
         "a/../../b", "/etc/../../x", "tree:///../canary", "tree:///", "input://tree/../..",
         "input://../x", "mount://root/../..", "mount://../", "/proc/self/root/etc/shadow",
         "/dev/sda", "~/x", "C:\\x", "/srv/data/../../../canary"]
HUGE = [2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**64 - 1, -(2**63) - 1, 2**70,
        10**30, 10**400, -1, 1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan")]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
    st.sampled_from(ODD_TEXT + PATHS), st.sampled_from(HUGE),
    st.text(st.characters(exclude_categories=()), max_size=6),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
odd_strings = st.one_of(
    st.sampled_from(ODD_TEXT + PATHS),
    st.builds(lambda a, b: a + b, st.sampled_from(PATHS), st.sampled_from(ODD_TEXT)),
    st.text(st.characters(exclude_categories=()), min_size=1, max_size=12),
)


def nodes(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value in `doc`, the document itself first."""
    found = [at]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += nodes(value, (*at, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += nodes(value, (*at, index))
    return found


def get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> Any:
    """A seed with one to three mutations, each at a node anywhere in it."""
    doc: Any = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(nodes(doc)))
        node = get(doc, path)
        kind = draw(st.sampled_from(["replace", "string", "number", "insert", "drop",
                                     "duplicate", "rename"]))
        if kind in ("replace", "string", "number"):
            new = draw({"replace": values, "string": odd_strings,
                        "number": st.sampled_from(HUGE)}[kind])
            if not path:
                doc = new
            else:
                get(doc, path[:-1])[path[-1]] = new
        elif kind == "insert" and isinstance(node, dict):
            key = draw(st.one_of(st.sampled_from(["bogus", "", "options", "type", "name"]),
                                 odd_strings))
            node[key] = draw(values)
        elif kind == "drop" and isinstance(node, dict) and node:
            del node[draw(st.sampled_from(sorted(node)))]
        elif kind == "duplicate" and isinstance(node, list) and node:
            node.append(copy.deepcopy(draw(st.sampled_from(node))))
        elif kind == "rename" and isinstance(node, dict) and node:
            old = draw(st.sampled_from(sorted(node)))
            node[draw(odd_strings)] = node.pop(old)
    return doc


def check_loads_or_refuses(description: Any, libdir: Path) -> bool:
    """The property: accepted (with ids and --inspect output) or refused in one-line problems."""
    try:
        manifest = formats.load(description, HOST, libdir)
        validate(manifest, libdir)
    except ManifestError as error:
        assert error.problems
        for problem in error.problems:
            assert PROBLEM.match(problem), repr(problem)
        return False
    assert all(re.fullmatch(r"[0-9a-f]{64}", s.id)
               for p in manifest.pipelines.values() for s in p.stages)
    json.dumps(formats.describe(manifest))
    return True


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def parsed(doc: Any, scratch: Path) -> Any:
    """`doc` as the CLI reads it: JSON text through read_manifest and its hooks."""
    path = scratch / "manifest.json"
    path.write_text(json.dumps(doc), encoding="utf-8")  # ensure_ascii: surrogates stay escapes
    return read_manifest(str(path))


def test_the_seeds_are_valid(libdir: Path, scratch: Path) -> None:
    for seed in (V1, V2, CLI_V1, CLI_V2):
        assert check_loads_or_refuses(seed, libdir)
        assert check_loads_or_refuses(parsed(seed, scratch), libdir)


FAST = settings(max_examples=350, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(doc=mutated([V1, CLI_V1]))
def test_mutated_v1_manifests_load_or_are_refused(doc: Any, libdir: Path, scratch: Path) -> None:
    check_loads_or_refuses(doc, libdir)
    check_loads_or_refuses(parsed(doc, scratch), libdir)


@FAST
@given(doc=mutated([V2, CLI_V2]))
def test_mutated_v2_manifests_load_or_are_refused(doc: Any, libdir: Path, scratch: Path) -> None:
    check_loads_or_refuses(doc, libdir)
    check_loads_or_refuses(parsed(doc, scratch), libdir)


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mode for p in sorted(root.rglob("*"))}


@settings(max_examples=20, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=mutated([CLI_V1, CLI_V2]))
def test_mutated_manifests_through_the_command(doc: Any, libdir: Path,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        work = Path(tmp)
        canary = work / "canary"
        canary.mkdir()
        (canary / "keep").write_text("canary\n")
        before = listing(canary)
        manifest, output, store = work / "manifest.json", work / "output", work / "store"
        manifest.write_text(json.dumps(doc))
        export = "assembler" if isinstance(doc, dict) and "pipeline" in doc else "os"
        proc = subprocess.run(
            [sys.executable, "-m", "osbuild", "--libdir", str(libdir), "--store", str(store),
             "--output-directory", str(output), "--export", export, str(manifest)],
            capture_output=True, text=True, cwd=work, env={**os.environ, "TMPDIR": str(work)})
        lines = [line for line in proc.stderr.splitlines()
                 if not line.startswith(("osbuild: hint: ", "osbuild: last lines", "    "))]
        assert "Traceback" not in proc.stderr, proc.stderr
        assert listing(canary) == before
        assert set(os.listdir(work)) <= {"canary", "manifest.json", "output", "store"}
        if proc.returncode == 0:
            assert os.listdir(output) == [export]
            return
        assert proc.returncode in (1, 2), proc.stderr
        assert lines and all(line.startswith("osbuild: error: ") for line in lines)
        assert not output.exists() or os.listdir(output) == []
        if proc.returncode == 2:
            assert all(PROBLEM.match(line.removeprefix("osbuild: error: ")) or "--export" in line
                       for line in lines), proc.stderr
            assert not store.exists()
        else:  # valid options the stage cannot carry out: its one-line refusal
            assert re.match(r"osbuild: error: stage org\.osbuild\.[a-z.]+ \([0-9a-f]{12}\) in "
                            r"pipeline '\w+' failed with exit status 1$", lines[0]), proc.stderr
            assert not (store / "tmp").exists() or not os.listdir(store / "tmp")
