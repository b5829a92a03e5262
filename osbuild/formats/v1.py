"""Manifest format v1: one pipeline, recursive build pipelines and an assembler.

It is loaded as pipelines named `build` (its build is `build-build`, ...),
`tree` and `assembler`, so v1 and v2 share one engine.
"""

import copy
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from ..meta import module_info, raise_if, schema_errors
from ..model import Input, Manifest, Pipeline, Stage, finish_manifest

MODULE = {"type": "string", "pattern": "^org\\.osbuild\\.[A-Za-z0-9_.-]+$", "maxLength": 256}

PIPELINE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "build": {"$ref": "#/$defs/build"},
        "stages": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"name": MODULE, "options": {"type": "object"}},
            },
        },
        "assembler": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {"name": MODULE, "options": {"type": "object"}},
        },
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sources": {"type": "object", "propertyNames": MODULE,
                    "additionalProperties": {"type": "object"}},
        "pipeline": {"$ref": "#/$defs/pipeline"},
    },
    "$defs": {
        "pipeline": PIPELINE,
        "build": {
            "type": "object",
            "additionalProperties": False,
            "required": ["pipeline"],
            "properties": {
                "pipeline": {"$ref": "#/$defs/pipeline"},
                # A null runner is what the seed bug's manifests had: treat as absent.
                "runner": {"anyOf": [MODULE, {"type": "null"}]},
            },
        },
    },
}


def stage_inputs(stage: Stage, libdir: Path | None) -> None:
    """Turn options that name source files into inputs, as the stage's meta says.

    v1 has no inputs; a stage like org.osbuild.debs lists its .debs in an option
    (".meta.json": {"v1_inputs": {"<input>": "<option>"}}). The option moves into
    an org.osbuild.files input, so the stage sees the same arguments as in v2.
    """
    info = module_info(libdir, "stages", stage.name) if libdir else None
    for input_name, option in (info.v1_inputs if info else {}).items():
        if option not in stage.options:
            continue
        value = stage.options.pop(option)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = {checksum: {} for checksum in value}
        if not isinstance(value, dict):
            raise ManifestError(f"{stage.path}.options.{option}: must be a list of checksums")
        stage.inputs[input_name] = Input("org.osbuild.files", "org.osbuild.source", value,
                                         path=f"{stage.path}.options.{option}")


def load_pipeline(desc: dict[str, Any], name: str, path: str, runner: str,
                  build: str | None, into: dict[str, Pipeline],
                  libdir: Path | None = None) -> Pipeline:
    stages = [Stage(s["name"], dict(s.get("options", {})), f"{path}.stages[{i}]")
              for i, s in enumerate(desc.get("stages", []))]
    for stage in stages:
        stage_inputs(stage, libdir)
    pipeline = Pipeline(name, path, build, runner, None, stages)
    into[name] = pipeline
    return pipeline


def load_chain(desc: dict[str, Any], name: str, path: str, host_runner: str,
               into: dict[str, Pipeline], libdir: Path | None) -> tuple[str | None, str]:
    """Load `desc`'s build chain (innermost first); return its build name and runner."""
    build = desc.get("build")
    if build is None:
        return None, host_runner
    build_name = f"build-{name}" if name != "tree" else "build"
    inner_build, inner_runner = load_chain(build["pipeline"], build_name,
                                           f"{path}.build.pipeline", host_runner, into, libdir)
    load_pipeline(build["pipeline"], build_name, f"{path}.build.pipeline",
                  inner_runner, inner_build, into, libdir)
    return build_name, build.get("runner") or "org.osbuild.linux"


def load(description: dict[str, Any], host_runner: str, libdir: Path | None = None) -> Manifest:
    raise_if(schema_errors(description, SCHEMA, ""))
    desc = description.get("pipeline", {})
    pipelines: dict[str, Pipeline] = {}
    build, runner = load_chain(desc, "tree", "pipeline", host_runner, pipelines, libdir)
    load_pipeline(desc, "tree", "pipeline", runner, build, pipelines, libdir)
    if "assembler" in desc:
        assembler = desc["assembler"]
        tree_input = Input("org.osbuild.tree", "org.osbuild.pipeline", {"name:tree": {}})
        stage = Stage(assembler["name"], assembler.get("options", {}), "pipeline.assembler",
                      kind="assemblers", inputs={"tree": tree_input})
        pipelines["assembler"] = Pipeline("assembler", "pipeline.assembler", build, runner,
                                          None, [stage])
    return finish_manifest("1", pipelines, description)


def describe(manifest: Manifest) -> dict[str, Any]:
    result = copy.deepcopy(manifest.raw)
    desc = result.setdefault("pipeline", {})
    name = "tree"
    while True:
        pipeline = manifest.pipelines[name]
        for stage_desc, stage in zip(desc.get("stages", []), pipeline.stages, strict=True):
            stage_desc["id"] = stage.id
        if "build" not in desc:
            break
        desc, name = desc["build"]["pipeline"], pipeline.build or ""
    if "assembler" in manifest.pipelines:
        result["pipeline"]["assembler"]["id"] = manifest.pipelines["assembler"].id
    result["tree_id"] = manifest.pipelines["tree"].id
    result["output_id"] = manifest.pipelines.get("assembler", manifest.pipelines["tree"]).id
    return result


def output(manifest: Manifest, results: dict[str, list[Any]], success: bool,
           error: dict[str, Any] | None) -> dict[str, Any]:
    """The v1 --json result: {success, build: {...}, stages: [...], assembler: {...}}."""

    def stage_json(r: Any) -> dict[str, Any]:
        return {"id": r.id, "name": r.name, "success": r.success, "cached": r.cached,
                "output": "\n".join(r.output), "metadata": r.metadata}

    def pipeline_json(name: str) -> dict[str, Any]:
        pipeline = manifest.pipelines[name]
        stage_results = results.get(name, [])
        doc: dict[str, Any] = {
            "success": bool(stage_results) and all(r.success for r in stage_results)
            or (not pipeline.stages and name in results),
            "stages": [stage_json(r) for r in stage_results],
        }
        if pipeline.build:
            doc["build"] = pipeline_json(pipeline.build)
        return doc

    result = pipeline_json("tree")
    result["success"] = success
    if "assembler" in manifest.pipelines and results.get("assembler"):
        result["assembler"] = stage_json(results["assembler"][0])
    if error:
        result["error"] = error
    return result
