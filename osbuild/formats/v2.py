"""Manifest format v2: named pipelines with explicit inputs, devices and mounts."""

import copy
from typing import Any

from ..meta import raise_if, schema_errors
from ..model import Device, Input, Manifest, Mount, Pipeline, Stage, finish_manifest

NAME = {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$", "maxLength": 256}
MODULE = {"type": "string", "pattern": "^org\\.osbuild\\.[A-Za-z0-9_.-]+$", "maxLength": 256}
REFERENCE = {"type": "string", "pattern": "^name:[A-Za-z0-9_][A-Za-z0-9_.-]*$"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "pipelines"],
    "properties": {
        "version": {"const": "2"},
        "metadata": {"type": "object"},
        "sources": {
            "type": "object",
            "propertyNames": MODULE,
            "additionalProperties": {"type": "object"},
        },
        "pipelines": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": NAME,
                    "build": REFERENCE,
                    "runner": MODULE,
                    "source-epoch": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    "stages": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type"],
                            "properties": {
                                "type": MODULE,
                                "options": {"type": "object"},
                                "inputs": {
                                    "type": "object",
                                    "propertyNames": NAME,
                                    "additionalProperties": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["type", "origin", "references"],
                                        "properties": {
                                            "type": MODULE,
                                            "origin": {"enum": ["org.osbuild.source",
                                                                "org.osbuild.pipeline"]},
                                            "references": {"type": ["array", "object"]},
                                            "options": {"type": "object"},
                                        },
                                    },
                                },
                                "devices": {
                                    "type": "object",
                                    "propertyNames": NAME,
                                    "additionalProperties": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["type"],
                                        "properties": {
                                            "type": MODULE,
                                            "parent": NAME,
                                            "options": {"type": "object"},
                                        },
                                    },
                                },
                                "mounts": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["name", "type", "target"],
                                        "properties": {
                                            "name": NAME,
                                            "type": MODULE,
                                            "source": NAME,
                                            "target": {"type": "string",
                                                       "pattern": "^/"},
                                            "options": {"type": "object"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def load_references(refs: list[Any] | dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    """References come as a list of ids, a list of {id, options} or a map id -> options."""
    if isinstance(refs, dict):
        problems = [f"{path}.{k}: must be an object" for k, v in refs.items()
                    if not isinstance(v, dict)]
        raise_if(problems)
        return {k: v for k, v in refs.items()}
    result: dict[str, dict[str, Any]] = {}
    for i, ref in enumerate(refs):
        if isinstance(ref, str):
            result[ref] = {}
        elif isinstance(ref, dict) and isinstance(ref.get("id"), str) \
                and isinstance(ref.get("options", {}), dict):
            result[ref["id"]] = ref.get("options", {})
        else:
            raise_if([f"{path}[{i}]: must be an id or an object with 'id' and 'options'"])
    return result


def load_stage(desc: dict[str, Any], path: str) -> Stage:
    inputs = {
        name: Input(i["type"], i["origin"],
                    load_references(i["references"], f"{path}.inputs.{name}.references"),
                    i.get("options", {}))
        for name, i in desc.get("inputs", {}).items()
    }
    devices = {name: Device(d["type"], d.get("options", {}), d.get("parent"))
               for name, d in desc.get("devices", {}).items()}
    mounts = [Mount(m["name"], m["type"], m.get("source"), m["target"], m.get("options", {}))
              for m in desc.get("mounts", [])]
    return Stage(desc["type"], desc.get("options", {}), path,
                 inputs=inputs, devices=devices, mounts=mounts)


def load(description: dict[str, Any], host_runner: str) -> Manifest:
    raise_if(schema_errors(description, SCHEMA, ""))
    pipelines: dict[str, Pipeline] = {}
    problems = []
    for i, desc in enumerate(description["pipelines"]):
        path = f"pipelines[{i}]"
        name = desc["name"]
        if name in pipelines:
            problems.append(f"{path}.name: duplicate pipeline name '{name}'")
            continue
        build = desc["build"][len("name:"):] if "build" in desc else None
        # Without a build pipeline the host is the build root and gets its own runner;
        # a build root made by a pipeline gets the generic runner unless one is named.
        runner = desc.get("runner") or ("org.osbuild.linux" if build else host_runner)
        stages = [load_stage(s, f"{path}.stages[{j}]")
                  for j, s in enumerate(desc.get("stages", []))]
        pipelines[name] = Pipeline(name, path, build, runner, desc.get("source-epoch"), stages)
    raise_if(problems)
    return finish_manifest("2", pipelines, description)


def describe(manifest: Manifest) -> dict[str, Any]:
    result = copy.deepcopy(manifest.raw)
    for desc in result["pipelines"]:
        pipeline = manifest.pipelines[desc["name"]]
        desc["id"] = pipeline.id
        for stage_desc, stage in zip(desc.get("stages", []), pipeline.stages, strict=True):
            stage_desc["id"] = stage.id
    return result


def output(manifest: Manifest, results: dict[str, list[Any]], success: bool,
           error: dict[str, Any] | None) -> dict[str, Any]:
    """The --json result: upstream's shape plus per-stage ids and cache state."""
    metadata: dict[str, dict[str, Any]] = {}
    pipelines: dict[str, Any] = {}
    for name, stage_results in results.items():
        stage_meta = {r.name: r.metadata for r in stage_results if r.metadata is not None}
        if stage_meta:
            metadata[name] = stage_meta
        pipelines[name] = {"id": manifest.pipelines[name].id,
                           "stages": [r.to_json() for r in stage_results]}
    log = {name: [line for r in rs for line in r.output] for name, rs in results.items()}
    result = {"type": "result", "success": success, "metadata": metadata,
              "pipelines": pipelines, "log": log}
    if error:
        result["error"] = error
    return result
