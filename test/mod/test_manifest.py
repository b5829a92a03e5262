"""Loaders, ids and validation: manifests in, model or one-line errors out."""

from pathlib import Path

import pytest

from osbuild import formats
from osbuild.errors import ManifestError
from osbuild.meta import default_libdir
from osbuild.validate import validate

LIBDIR = default_libdir()
HOST = "org.osbuild.debian12"


def v2(*pipelines: dict, **extra: object) -> dict:
    return {"version": "2", "pipelines": list(pipelines), **extra}


def noop(**options: object) -> dict:
    return {"type": "org.osbuild.noop", "options": options}


def load_valid(description: dict) -> object:
    manifest = formats.load(description, HOST)
    validate(manifest, LIBDIR)
    return manifest


def problems(description: object) -> list[str]:
    with pytest.raises(ManifestError) as info:
        manifest = formats.load(description, HOST)
        validate(manifest, LIBDIR)
    return info.value.problems


def test_v2_loads_pipelines_in_dependency_order() -> None:
    m = load_valid(v2({"name": "os", "build": "name:build", "stages": [noop(a=1)]},
                      {"name": "build", "stages": [noop()]}))
    assert [p.name for p in m.order()] == ["build", "os"]
    assert m.pipelines["os"].runner == "org.osbuild.linux"
    assert m.pipelines["build"].runner == HOST


def test_v1_becomes_build_tree_assembler() -> None:
    m = load_valid({"pipeline": {
        "build": {"pipeline": {"build": {"pipeline": {"stages": [noop_v1()]},
                                         "runner": "org.osbuild.debian13"},
                               "stages": [noop_v1()]},
                  "runner": "org.osbuild.debian12"},
        "stages": [noop_v1(x=1)],
        "assembler": {"name": "org.osbuild.noop"}}})
    assert [p.name for p in m.order()] == ["build-build", "build", "tree", "assembler"]
    assert m.pipelines["build"].runner == "org.osbuild.debian13"
    assert m.pipelines["tree"].runner == "org.osbuild.debian12"
    assert m.pipelines["assembler"].build == "build"
    assert m.pipelines["build-build"].runner == HOST


def noop_v1(**options: object) -> dict:
    return {"name": "org.osbuild.noop", "options": options}


@pytest.mark.parametrize("runner", [None, "absent"])
def test_v1_build_without_runner_uses_generic_runner(runner: object) -> None:
    build: dict = {"pipeline": {"stages": [noop_v1()]}}
    if runner != "absent":
        build["runner"] = runner
    m = load_valid({"pipeline": {"build": build, "stages": [noop_v1()]}})
    assert m.pipelines["tree"].runner == "org.osbuild.linux"


def test_ids_chain_over_options_build_and_position() -> None:
    base = load_valid(v2({"name": "b", "stages": [noop()]},
                         {"name": "os", "build": "name:b", "stages": [noop(a=1), noop(b=2)]}))
    ids = [s.id for s in base.pipelines["os"].stages]
    same = load_valid(v2({"name": "b", "stages": [noop()]},
                         {"name": "os", "build": "name:b", "stages": [noop(a=1), noop(b=2)]}))
    assert [s.id for s in same.pipelines["os"].stages] == ids
    other_first = load_valid(v2({"name": "b", "stages": [noop()]},
                                {"name": "os", "build": "name:b",
                                 "stages": [noop(a=2), noop(b=2)]}))
    assert other_first.pipelines["os"].stages[1].id != ids[1]
    other_build = load_valid(v2({"name": "b", "stages": [noop(z=1)]},
                                {"name": "os", "build": "name:b",
                                 "stages": [noop(a=1), noop(b=2)]}))
    assert other_build.pipelines["os"].stages[0].id != ids[0]
    epoch = load_valid(v2({"name": "b", "stages": [noop()]},
                          {"name": "os", "build": "name:b", "source-epoch": 1,
                           "stages": [noop(a=1), noop(b=2)]}))
    assert epoch.pipelines["os"].stages[0].id != ids[0]
    assert base.pipelines["os"].id == ids[-1]


def test_tree_input_id_follows_referenced_pipeline() -> None:
    def manifest(option: int) -> dict:
        return v2({"name": "os", "stages": [noop(a=option)]},
                   {"name": "img", "stages": [{
                       "type": "org.osbuild.noop",
                       "inputs": {"tree": {"type": "org.osbuild.tree",
                                           "origin": "org.osbuild.pipeline",
                                           "references": ["name:os"]}}}]})
    ids = [load_valid(manifest(n)).pipelines["img"].id for n in (1, 2)]
    assert ids[0] != ids[1]


def test_option_type_error_names_json_path() -> None:
    found = problems(v2({"name": "a", "stages": [noop(), {"type": "org.osbuild.noop",
                                                          "options": "x"}]}))
    assert found == ["pipelines[0].stages[1].options: 'x' is not of type 'object'"]


def test_stage_schema_error_names_option_path(tmp_path: Path) -> None:
    found = problems(v2({"name": "a", "stages": [
        {"type": "org.osbuild.test.missing"},
    ]}))
    assert found == ["pipelines[0].stages[0].type: unknown stage 'org.osbuild.test.missing'"]


@pytest.mark.parametrize("description, expected", [
    (v2({"name": "a"}, {"name": "a"}), "pipelines[1].name: duplicate pipeline name 'a'"),
    (v2({"name": "a", "build": "name:nope"}), "pipelines[0].build: unknown pipeline 'nope'"),
    (v2({"name": "a", "build": "name:b"}, {"name": "b", "build": "name:a"}),
     "pipelines[0]: pipelines depend on each other: a -> b -> a"),
    (v2({"name": "a", "stages": [{"type": "org.osbuild.noop", "bogus": 1}]}),
     "pipelines[0].stages[0]: Additional properties are not allowed ('bogus' was unexpected)"),
    (v2({"name": "a", "runner": "org.osbuild.nope"}),
     "pipelines[0].runner: unknown runner 'org.osbuild.nope'"),
    (v2({"name": "a"}, sources={"org.osbuild.nope": {}}),
     "sources.org.osbuild.nope: unknown source 'org.osbuild.nope'"),
    (v2({"name": "a/../b"}),
     "pipelines[0].name: 'a/../b' does not match '^[A-Za-z0-9_][A-Za-z0-9_.-]*$'"),
    ({"version": "3"}, "version: unsupported manifest version '3' (known: '2', or none for v1)"),
    ([], "manifest: must be a JSON object"),
    ({"pipeline": {"stages": [{"name": "org.osbuild.nope"}]}},
     "pipeline.stages[0].name: unknown stage 'org.osbuild.nope'"),
    ({"pipeline": {"assembler": {"name": "org.osbuild.nope"}}},
     "pipeline.assembler.name: unknown assembler 'org.osbuild.nope'"),
    ({"pipeline": {"stages": [{"name": "org.osbuild.noop"}], "extra": 1}},
     "pipeline: Additional properties are not allowed ('extra' was unexpected)"),
])
def test_bad_manifests_are_one_line_problems(description: object, expected: str) -> None:
    found = problems(description)
    assert expected in found
    assert all("\n" not in line for line in found)


def test_inputs_on_a_stage_without_inputs_schema_are_rejected() -> None:
    found = problems(v2({"name": "os"}, {"name": "x", "stages": [{
        "type": "org.osbuild.mkdir" if (LIBDIR / "stages/org.osbuild.mkdir").exists()
        else "org.osbuild.noop",
        "options": {"paths": [{"path": "/a"}]},
        "inputs": {"t": {"type": "org.osbuild.nope", "origin": "org.osbuild.pipeline",
                         "references": ["name:os"]}}}]}))
    assert any(p.startswith("pipelines[1].stages[0].inputs") for p in found)


def test_unknown_input_reference_is_rejected() -> None:
    found = problems(v2({"name": "x", "stages": [{
        "type": "org.osbuild.noop",
        "inputs": {"t": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                         "references": ["name:ghost"]}}}]}))
    assert found == ["pipelines[0].stages[0].inputs.t.references: unknown pipeline 'ghost'"]


def test_describe_adds_ids() -> None:
    m = load_valid(v2({"name": "a", "stages": [noop()]}))
    doc = formats.describe(m)
    assert doc["pipelines"][0]["id"] == m.pipelines["a"].id
    assert doc["pipelines"][0]["stages"][0]["id"] == m.pipelines["a"].stages[0].id


def test_v1_source_options_become_inputs() -> None:
    checksums = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    m = formats.load({"sources": {"org.osbuild.files": {"urls": {
                          checksums[0]: "http://127.0.0.1/a.deb",
                          checksums[1]: "http://127.0.0.1/b.deb"}}},
                      "pipeline": {"stages": [{"name": "org.osbuild.debs",
                                               "options": {"packages": checksums}}]}},
                     HOST, LIBDIR)
    validate(m, LIBDIR)
    stage = m.pipelines["tree"].stages[0]
    assert "packages" not in stage.options
    assert list(stage.inputs["packages"].references) == checksums
    bad = {"pipeline": {"stages": [{"name": "org.osbuild.debs", "options": {"packages": 3}}]}}
    with pytest.raises(ManifestError) as info:
        formats.load(bad, HOST, LIBDIR)
    assert info.value.problems == ["pipeline.stages[0].options.packages: "
                                   "must be a list of checksums"]
