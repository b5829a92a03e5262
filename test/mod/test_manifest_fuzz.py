"""Property-based hostile input: mutated valid manifests, each with a known verdict.

Hypothesis mutates small valid v1 and v2 manifests in two families, and each
family has one outcome it must have:

- refused: a value of the wrong JSON type, an unknown key, a reference to a
  pipeline, device, checksum or module that does not exist (or a pipeline
  that needs itself), a path with a `..` component, a malformed name, UUID or
  checksum, or a value no manifest can hold (NaN, 1e400, NUL, lone
  surrogates). Loading and validating must raise ManifestError, every
  problem one line starting with its JSON path, and one of them naming the
  place of the mutation (or up to two levels above it: "pipelines[1]: pipelines
  depend on each other").
- kept valid: keys in another order (stage ids unchanged), another value
  where the schema takes it (noop's options, free text, numbers within their
  documented range, hostnames), a stage repeated. These must load, and the
  stage that changed gets another id.

Both go in process and as JSON text through read_manifest (the CLI's parser).
A sample also goes through the real `osbuild` command: refused ones exit 2
with one `osbuild: error:` line per problem and open no store; kept-valid ones
build and export. Nothing is written outside the store and output directory.

Derandomized, without an example database: CI runs the same examples each time.
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
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


# What the command sample runs: path-taking stages that build in a second, as they are
# and after any kept-valid mutation (truncate is left out: a valid 8 EiB sparse file
# would be exported; the link is symbolic, a hard link to a directory fails at run time).
CLI_STAGES = [
    stage("mkdir", paths=[{"path": "/srv/data", "parents": True, "exist_ok": True,
                           "mode": 0o750}]),
    stage("chmod", items={"/srv/data": {"mode": "u+rwx,go-w"}}),
    stage("ln", paths=[{"target": "data", "link_name": "/srv/link", "symbolic": True}]),
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


# Examples per in-process property (four of them: refused and kept-valid, v1 and v2)
# and through the command (refused, kept-valid). The README quotes the totals, and
# test_the_readme_quotes_the_counts keeps it doing so.
EXAMPLES = 200
COMMAND_REFUSED = 16
COMMAND_VALID = 4
IN_PROCESS_TOTAL = 4 * EXAMPLES
COMMAND_TOTAL = COMMAND_REFUSED + COMMAND_VALID

Path_ = tuple[Any, ...]

# -- values ----------------------------------------------------------------------------

PLAIN_TEXT = ["", " ", "\n", "a\nb", "\r\n", "\u202e", "\ufeff", "\u2028", "é" * 300,
              "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\x7f", "name:", "org.osbuild.", "sha256:" + "0" * 64, "$ref",
              "__proto__", "..", "/", "../x", "/proc/self/root/etc/shadow", "C:\\x"]
# What no manifest may hold, wherever it is (formats.check_values).
IMPURE = [float("nan"), float("inf"), float("-inf"), 2**64, 2**70, -(2**63) - 1, 10**30,
          10**400, "\x00", "a\x00b", "\ud800", "x\udfff", "/srv/\x00/x"]

plain_text = st.one_of(
    st.sampled_from(PLAIN_TEXT),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8))
plain_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), plain_text)
plain_values = st.recursive(plain_scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(plain_text, inner, max_size=3), max_leaves=6)
impure_text = st.one_of(
    st.sampled_from([v for v in IMPURE if isinstance(v, str)]),
    st.builds(lambda a, b: a + b, plain_text, st.sampled_from(["\x00", "\ud800", "\udfff"])))
impure = st.one_of(st.sampled_from(IMPURE), impure_text)

# Names a schema never has: inserted where a schema lists its keys.
UNKNOWN_KEYS = ["bogus", "Options", "Type", "__proto__", "$ref", "name:", "x" * 80, "é",
                "sha256", "/srv/data"]
# Every one has a `..` component, with or without a scheme in front.
ESCAPES = ["..", "../x", "../../canary/pwned", "/../../canary/pwned", "a/../../b",
           "/etc/../../x", "/srv/data/../../../canary", "tree:///../canary",
           "tree:///srv/../..", "input://tree/../..", "mount://root/../..", "/a/.."]
escaping = st.builds(lambda a, b: a + b, st.sampled_from(ESCAPES),
                     st.sampled_from(["", "/", "/x", "/..", "/x/y"]))
# Characters no name, checksum or UUID takes, and near misses of each.
BAD_CHARS = [" ", "/", "\n", "\t", "é", ":", "$", "*", "\\", "%"]
NEAR_MISSES = {
    "name": ["", "-a", ".a", "a" * 300, "name:os"],
    "checksum": ["sha256:" + "0" * 63, "sha256:" + "0" * 65, "sha256:" + "A" * 64, "0" * 64,
                 "sha256-" + "0" * 64, "SHA256:" + "0" * 64, "sha256:"],
    "uuid": ["", "6e4ff95f-f662-45ee-a82a-bdf44a2d0b7", "6e4ff95ff66245eea82abdf44a2d0b75",
             "{6e4ff95f-f662-45ee-a82a-bdf44a2d0b75}", "6e4ff95f-f662-45ee-a82a-bdf44a2d0b7g"],
}
missing_name = st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True).filter(
    lambda n: n not in ("build", "os", "image", "device", "root"))
hexdigest = st.text("0123456789abcdef", min_size=64, max_size=64)


def bad_id(kind: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NEAR_MISSES[kind]),
        st.builds(lambda a, b, c: a + b + c,
                  st.sampled_from(["", "a", "sha256:", "6e4ff95f-f662-45ee-a82a-"]),
                  st.sampled_from(BAD_CHARS), st.sampled_from(["", "x", "0" * 64])))


def jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "number", float: "number", str: "string", list: "array",
            dict: "object"}[type(value)]


# -- where things are in the seeds -------------------------------------------------------


def nodes(doc: Any, at: Path_ = ()) -> list[Path_]:
    """Paths to every value in `doc`, the document itself first."""
    found = [at]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += nodes(value, (*at, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += nodes(value, (*at, index))
    return found


def get(doc: Any, path: Path_) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def where(path: Path_) -> str:
    """A JSON path as the engine's problems spell it."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not part.isprintable():
            text += f"[{json.dumps(part)}]"
        else:
            text += f".{part}" if text else part
    return text or "manifest"


def owner(seed: Any, path: Path_) -> tuple[str, Path_]:
    """The module (stage, assembler, device, mount, input) whose options hold `path`."""
    for cut in range(len(path), -1, -1):
        node = get(seed, path[:cut])
        if isinstance(node, dict):
            name = node.get("type", node.get("name"))
            if isinstance(name, str) and name.startswith("org.osbuild."):
                return name, path[cut:]
    return "", path


def free_form(seed: Any, path: Path_) -> bool:
    """Inside noop's options, which take anything."""
    module, inner = owner(seed, path)
    return module == "org.osbuild.noop" and inner[:1] == ("options",)


def allowed_types(seed: Any, path: Path_) -> set[str]:
    """The JSON types the schemas take at `path`: the seed's own, and the documented others."""
    types = {jtype(get(seed, path))}
    module, inner = owner(seed, path)
    if path[-1:] == ("references",):
        types |= {"array", "object"}  # v2 inputs: a list of names or a map of options
    if path[-2:] == ("build", "runner"):
        types.add("null")  # v1: no runner named, the host's
    if module == "org.osbuild.truncate" and inner == ("options", "size"):
        types.add("string")  # "1G" or a number
    if len(path) > 1 and path[-2] == "urls":
        types |= {"string", "object"}  # a URL, or {"url": ...}
    return types


PATH_KEYS = {"path", "link_name", "filename", "from", "to", "home", "target"}


def path_option(seed: Any, path: Path_) -> bool:
    """A string naming a file in a tree, a mount or an output: never with `..`."""
    module, inner = owner(seed, path)
    if not (path and path[-1] in PATH_KEYS and isinstance(get(seed, path), str)):
        return False
    if module == "org.osbuild.ln" and path[-1] == "target":
        return False  # a symbolic link's target is its text, never resolved by the stage
    return module != "org.osbuild.test.metadata"


def id_kind(seed: Any, path: Path_) -> str | None:
    """What grammar the value (or, for map keys, the key) at `path` follows."""
    if path[:1] == ("pipelines",) and len(path) == 3 and path[2] == "name":
        return "name"
    if len(path) > 2 and path[-3] == "mounts" and path[-1] == "name":
        return "name"
    module, inner = owner(seed, path)
    if module == "org.osbuild.mkfs.ext4" and inner == ("options", "uuid"):
        return "uuid"
    last = path[-1] if path else None
    if isinstance(last, str) and last.startswith("sha256:"):
        return "checksum"  # a key of sources' items or urls, or of references
    if isinstance(get(seed, path), str) and get(seed, path).startswith("sha256:"):
        return "checksum"  # v1 debs: packages
    return None


def pipeline_names(seed: Any) -> list[str]:
    return [p["name"] for p in seed.get("pipelines", []) if isinstance(p, dict)]


# -- mutations -------------------------------------------------------------------------


@dataclass
class Mutation:
    kind: str
    seed: dict[str, Any]
    doc: Any
    at: Path_  # where the refusal must be reported (there, below, or up to two levels up)
    changed: Path_ | None = None  # kept valid: the stage whose id must change


def setting(doc: Any, path: Path_, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return value
    get(doc, path[:-1])[path[-1]] = value
    return doc


def renaming(doc: Any, path: Path_, key: str) -> Any:
    """`doc` with the map key at `path` renamed to `key`, its place kept."""
    doc = copy.deepcopy(doc)
    parent = get(doc, path[:-1])
    items = [(key if k == path[-1] else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
    return doc


@st.composite
def refused(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> Mutation:
    """A seed with one mutation that the engine must refuse."""
    seed = draw(st.sampled_from(seeds))
    all_nodes = nodes(seed)
    kinds = ["type", "key", "reference", "path", "impure"]
    kind = draw(st.sampled_from(kinds + ["id"] * any(id_kind(seed, p) for p in all_nodes)))
    if kind == "type":
        path = draw(st.sampled_from([p for p in all_nodes if not free_form(seed, p)]))
        types = allowed_types(seed, path) if path else {"object"}
        value = draw(plain_values.filter(lambda v: jtype(v) not in types))
        return Mutation(kind, seed, setting(seed, path, value), path)
    if kind == "key":
        maps = ("inputs", "devices", "users")  # names chosen by the manifest's author
        path = draw(st.sampled_from([
            p for p in all_nodes if isinstance(get(seed, p), dict)
            and p[-1:] not in [(m,) for m in maps] and not free_form(seed, p)]))
        key = draw(st.sampled_from([k for k in UNKNOWN_KEYS if k not in get(seed, path)]))
        doc = copy.deepcopy(seed)
        get(doc, path)[key] = draw(plain_values)
        return Mutation(kind, seed, doc, (*path, key))
    if kind == "reference":
        return draw(broken_reference(seed))
    if kind == "path":
        places = [p for p in all_nodes if path_option(seed, p)]
        keys = [p for p in all_nodes if len(p) > 1 and p[-2] == "items"
                and owner(seed, p)[0] == "org.osbuild.chmod"]
        path = draw(st.sampled_from(places + keys))
        value = draw(escaping)
        if path in keys:
            return Mutation(kind, seed, renaming(seed, path, value), (*path[:-1], value))
        return Mutation(kind, seed, setting(seed, path, value), path)
    if kind == "id":
        path = draw(st.sampled_from([p for p in all_nodes if id_kind(seed, p)]))
        value = draw(bad_id(id_kind(seed, path) or ""))
        if isinstance(path[-1], str) and path[-1].startswith("sha256:"):  # a map's key
            return Mutation(kind, seed, renaming(seed, path, value), (*path[:-1], value))
        return Mutation(kind, seed, setting(seed, path, value), path)
    path = draw(st.sampled_from(all_nodes))
    if path and isinstance(path[-1], str) and draw(st.booleans()):
        key = draw(impure_text)
        if key not in get(seed, path[:-1]):
            return Mutation(kind, seed, renaming(seed, path, key), (*path[:-1], key))
    return Mutation(kind, seed, setting(seed, path, draw(impure)), path)


@st.composite
def broken_reference(draw: st.DrawFn, seed: dict[str, Any]) -> Mutation:
    """A reference to something the manifest does not have, or a pipeline needing itself."""
    choices: list[tuple[str, Path_]] = []
    for path in nodes(seed):
        value = get(seed, path)
        last = path[-1] if path else None
        if isinstance(value, str) and value.startswith("name:"):
            choices.append(("pipeline", path))
        elif isinstance(last, str) and last.startswith("name:"):
            choices.append(("pipeline key", path))
        elif last == "source" and len(path) > 2 and path[-3] == "mounts":
            choices.append(("device", path))
        elif isinstance(value, str) and value.startswith("sha256:") and path[0] != "sources":
            choices.append(("checksum", path))
        elif isinstance(last, str) and last.startswith("sha256:") and path[0] != "sources":
            choices.append(("checksum key", path))
        elif last in ("type", "name", "runner") and isinstance(value, str) \
                and value.startswith("org.osbuild."):
            choices.append(("module", path))
        elif path[:-1] == ("sources",):
            choices.append(("source", path))
    kind = draw(st.sampled_from(sorted({k for k, _ in choices})))
    path = draw(st.sampled_from([p for k, p in choices if k == kind]))
    if kind in ("pipeline", "pipeline key"):
        own = path[:2] if path[:1] == ("pipelines",) else path
        names = [n for n in pipeline_names(seed) if n != get(seed, (*own, "name"))] \
            if path[:1] == ("pipelines",) else []
        name = draw(missing_name.filter(lambda n: n not in names))
        if path[:1] == ("pipelines",) and draw(st.booleans()):
            name, at = get(seed, (*own, "name")), own  # itself: a loop, reported at its pipeline
        else:
            at = path if kind == "pipeline" else path[:-1]
        ref = f"name:{name}"
        doc = setting(seed, path, ref) if kind == "pipeline" else renaming(seed, path, ref)
        return Mutation(f"reference to {kind}", seed, doc, at)
    if kind == "device":
        name = draw(missing_name)
        return Mutation("reference to a device", seed, setting(seed, path, name), path)
    if kind in ("checksum", "checksum key"):
        digest = "sha256:" + draw(hexdigest.filter(lambda h: h != EMPTY[7:]))
        if kind == "checksum":
            return Mutation("reference to a checksum", seed, setting(seed, path, digest),
                            path[:-1])
        return Mutation("reference to a checksum", seed, renaming(seed, path, digest),
                        (*path[:-1], digest))
    name = "org.osbuild.nope-" + draw(missing_name)
    if kind == "source":
        return Mutation("reference to a source", seed, renaming(seed, path, name),
                        ("sources", name))
    return Mutation("reference to a module", seed, setting(seed, path, name), path)


def stage_of(path: Path_) -> Path_ | None:
    """The stage (v1 or v2) a path is in, as a path."""
    for cut in range(len(path), 0, -1):
        if isinstance(path[cut - 1], int) and path[cut - 2:cut - 1] == ("stages",):
            return path[:cut]
        if path[cut - 1] == "assembler":
            return path[:cut]
    return None


hostnames = st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True),
                     min_size=1, max_size=4).map(".".join)


@st.composite
def kept_valid(draw: st.DrawFn, seeds: list[dict[str, Any]], command: bool = False) -> Mutation:
    """A seed with one mutation the schemas allow; `command`: one that also builds."""
    seed = draw(st.sampled_from(seeds))
    kinds = ["order", "value", "repeat"]
    kind = draw(st.sampled_from(kinds))
    if kind == "order":
        shuffle = draw(st.randoms(use_true_random=False))

        def reordered(node: Any) -> Any:
            if isinstance(node, list):
                return [reordered(v) for v in node]
            if isinstance(node, dict):
                items = list(node.items())
                shuffle.shuffle(items)
                return {k: reordered(v) for k, v in items}
            return node

        return Mutation(kind, seed, reordered(seed), ())
    if kind == "value":
        places: list[tuple[Path_, st.SearchStrategy[Any]]] = []
        for path in nodes(seed):
            module, inner = owner(seed, path)
            if module == "org.osbuild.noop" and inner == ("options",):
                places.append(((*path, "seed"), plain_values))
            elif (module, inner[-1:]) == ("org.osbuild.mkdir", ("mode",)):
                places.append((path, st.integers(0, 0o7777)))
            elif command:
                continue
            elif (module, inner) == ("org.osbuild.test.metadata", ("options", "content")):
                places.append((path, plain_text))
            elif (module, inner) == ("org.osbuild.hostname", ("options", "hostname")):
                places.append((path, hostnames))
            elif (module, inner) == ("org.osbuild.truncate", ("options", "size")):
                places.append((path, st.integers(0, 2**63 - 1)))
            elif module == "org.osbuild.users" and inner[-1:] == ("uid",):
                places.append((path, st.integers(0, 4294967294)))
            elif path[-1:] == ("source-epoch",):
                places.append((path, st.integers(0, 2**63 - 1)))
        path, values = draw(st.sampled_from(places))
        value = draw(values)
        return Mutation(kind, seed, setting(seed, path, value), (),
                        stage_of(path) if value != get(seed, path) else None)
    repeatable = ["org.osbuild.noop", "org.osbuild.chmod", "org.osbuild.hostname",
                  "org.osbuild.mkdir", "org.osbuild.test.metadata"]
    path = draw(st.sampled_from([
        p for p in nodes(seed) if len(p) > 1 and p[-2] == "stages" and isinstance(p[-1], int)
        and owner(seed, p)[0] in repeatable]))
    doc = copy.deepcopy(seed)
    get(doc, path[:-1]).insert(path[-1], copy.deepcopy(get(seed, path)))
    return Mutation(kind, seed, doc, (), (*path[:-1], path[-1] + 1))


# -- the properties ----------------------------------------------------------------------


def loaded(description: Any, libdir: Path) -> dict[str, str]:
    """Load and validate; the stage ids by where each stage is in the manifest."""
    manifest = formats.load(description, HOST, libdir)
    validate(manifest, libdir)
    ids = {s.path: s.id for p in manifest.pipelines.values() for s in p.stages}
    assert all(re.fullmatch(r"[0-9a-f]{64}", i) for i in ids.values())
    json.dumps(formats.describe(manifest))
    return ids


def names_the_place(problem: str, at: Path_) -> bool:
    """The problem is at `at`, below it, or at one of the two places above it."""
    here = where(at)
    above = {where(at[:cut]) for cut in range(max(0, len(at) - 2), len(at))}
    return problem.startswith((f"{here}: ", f"{here}.", f"{here}[")) or \
        any(problem.startswith(f"{place}: ") for place in above)


def check_refused(mutation: Mutation, description: Any, libdir: Path) -> list[str]:
    try:
        loaded(description, libdir)
    except ManifestError as error:
        problems = error.problems
    else:
        raise AssertionError(f"{mutation.kind} at {where(mutation.at)} was accepted")
    assert problems
    for problem in problems:
        assert PROBLEM.match(problem), repr(problem)
    assert any(names_the_place(p, mutation.at) for p in problems), \
        (mutation.kind, where(mutation.at), problems)
    return problems


def check_kept_valid(mutation: Mutation, description: Any, seed_ids: dict[str, str],
                     libdir: Path) -> None:
    ids = loaded(description, libdir)
    if mutation.kind == "order":
        assert ids == seed_ids  # ids hash the options, not how they were written
    elif mutation.changed is not None:
        place = where(mutation.changed)
        assert ids[place] != seed_ids.get(place), place


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
        assert loaded(seed, libdir) == loaded(parsed(seed, scratch), libdir)


def test_a_mutation_the_engine_accepted_fails_the_property(libdir: Path) -> None:
    """The refusal check is not vacuous: an accepted manifest, or a refusal elsewhere, fails."""
    with pytest.raises(AssertionError, match="was accepted"):
        check_refused(Mutation("type", V2, V2, ("version",)), V2, libdir)
    elsewhere = setting(V2, ("pipelines", 1, "stages", 5, "options", "hostname"), "-")
    with pytest.raises(AssertionError):
        check_refused(Mutation("type", V2, elsewhere, ("pipelines", 0, "name")), elsewhere,
                      libdir)
    check_refused(Mutation("type", V2, elsewhere, ("pipelines", 1, "stages", 5, "options")),
                  elsewhere, libdir)


IN_PROCESS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.filter_too_much])


@IN_PROCESS
@given(mutation=refused([V1, CLI_V1]))
def test_v1_manifests_mutated_to_be_invalid_are_refused(mutation: Mutation, libdir: Path,
                                                        scratch: Path) -> None:
    event(mutation.kind)
    check_refused(mutation, mutation.doc, libdir)
    check_refused(mutation, parsed(mutation.doc, scratch), libdir)


@IN_PROCESS
@given(mutation=refused([V2, CLI_V2]))
def test_v2_manifests_mutated_to_be_invalid_are_refused(mutation: Mutation, libdir: Path,
                                                        scratch: Path) -> None:
    event(mutation.kind)
    check_refused(mutation, mutation.doc, libdir)
    check_refused(mutation, parsed(mutation.doc, scratch), libdir)


@IN_PROCESS
@given(mutation=kept_valid([V1, CLI_V1]))
def test_v1_manifests_mutated_within_their_schemas_load(mutation: Mutation, libdir: Path,
                                                        scratch: Path) -> None:
    event(mutation.kind)
    before = loaded(mutation.seed, libdir)
    check_kept_valid(mutation, mutation.doc, before, libdir)
    check_kept_valid(mutation, parsed(mutation.doc, scratch), before, libdir)


@IN_PROCESS
@given(mutation=kept_valid([V2, CLI_V2]))
def test_v2_manifests_mutated_within_their_schemas_load(mutation: Mutation, libdir: Path,
                                                        scratch: Path) -> None:
    event(mutation.kind)
    before = loaded(mutation.seed, libdir)
    check_kept_valid(mutation, mutation.doc, before, libdir)
    check_kept_valid(mutation, parsed(mutation.doc, scratch), before, libdir)


def test_the_readme_quotes_the_counts() -> None:
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert f"({IN_PROCESS_TOTAL} examples in process, {COMMAND_TOTAL} through the command)" \
        in readme


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mode for p in sorted(root.rglob("*"))}


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    export: str
    exported: list[str]  # what the output directory holds
    store_opened: bool


def run_command(doc: Any, libdir: Path, base: Path) -> Run:
    """`osbuild` on `doc` in a fresh directory beside a canary; checks nothing strays."""
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
        assert "Traceback" not in proc.stderr, proc.stderr
        assert listing(canary) == before
        assert set(os.listdir(work)) <= {"canary", "manifest.json", "output", "store"}
        exported = sorted(os.listdir(output)) if output.exists() else []
        return Run(proc, export, exported, store.exists())


# Builds take seconds: no explain phase, which reruns a failure dozens of times.
COMMAND = dict(derandomize=True, deadline=None, database=None,
               phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])


@settings(max_examples=COMMAND_REFUSED, **COMMAND)  # type: ignore[arg-type]
@given(mutation=refused([CLI_V1, CLI_V2]))
def test_invalid_manifests_through_the_command_exit_2(
        mutation: Mutation, libdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    run = run_command(mutation.doc, libdir, tmp_path_factory.getbasetemp())
    proc = run.proc
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines and all(line.startswith("osbuild: error: ") for line in lines), proc.stderr
    problems = [line.removeprefix("osbuild: error: ") for line in lines]
    assert all(PROBLEM.match(p) for p in problems), proc.stderr
    assert any(names_the_place(p, mutation.at) for p in problems), \
        (mutation.kind, where(mutation.at), proc.stderr)
    assert not run.store_opened and run.exported == []


@settings(max_examples=COMMAND_VALID, **COMMAND)  # type: ignore[arg-type]
@given(mutation=kept_valid([CLI_V1, CLI_V2], command=True))
def test_valid_mutations_through_the_command_build(
        mutation: Mutation, libdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    run = run_command(mutation.doc, libdir, tmp_path_factory.getbasetemp())
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.exported == [run.export]
