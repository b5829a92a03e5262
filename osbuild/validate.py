"""Validate a loaded manifest against the schemas of the modules it uses.

Runs before anything is fetched or built: an invalid manifest builds nothing.
"""

from pathlib import Path
from typing import Any

from . import devices, inputs, mounts
from .meta import load_meta, options_schema, raise_if, schema_errors
from .model import Manifest, Stage


def stage_problems(stage: Stage, libdir: Path) -> list[str]:
    kind = "assembler" if stage.kind == "assemblers" else "stage"
    name_path = f"{stage.path}.{'type' if stage.path.startswith('pipelines[') else 'name'}"
    meta = load_meta(libdir, stage.kind, stage.name)
    if meta is None:
        return [f"{name_path}: unknown {kind} '{stage.name}'"]
    schema_2 = meta.get("schema_2", {})
    schema = options_schema(schema_2.get("options", meta.get("schema")))
    problems = schema_errors(stage.options, schema, f"{stage.path}.options")
    if stage.kind == "stages":
        problems += section_problems(stage, schema_2)
    return problems


def section_problems(stage: Stage, schema_2: dict[str, Any]) -> list[str]:
    """Inputs, devices and mounts: each known, each allowed by the stage."""
    problems = []
    raw_inputs = {n: {"type": i.type, "origin": i.origin, "references": i.references,
                      **({"options": i.options} if i.options else {})}
                  for n, i in stage.inputs.items()}
    raw_devices = {n: {"type": d.type, **({"options": d.options} if d.options else {}),
                       **({"parent": d.parent} if d.parent else {})}
                   for n, d in stage.devices.items()}
    raw_mounts = [{"name": m.name, "type": m.type, "target": m.target,
                   **({"source": m.source} if m.source else {}),
                   **({"options": m.options} if m.options else {})} for m in stage.mounts]
    sections = {"inputs": raw_inputs, "devices": raw_devices, "mounts": raw_mounts}
    for section, value in sections.items():
        if not value:
            continue
        if section not in schema_2:
            problems.append(f"{stage.path}.{section}: stage {stage.name} takes no {section}")
        else:
            problems += schema_errors(value, schema_2[section], f"{stage.path}.{section}")
    for name, inp in stage.inputs.items():
        path = f"{stage.path}.inputs.{name}"
        spec = inputs.SCHEMAS.get(inp.type)
        if spec is None:
            problems.append(f"{path}.type: unknown input type '{inp.type}'")
            continue
        if inp.origin not in spec["origins"]:
            problems.append(f"{path}.origin: {inp.type} cannot come from {inp.origin}")
        elif inp.origin == "org.osbuild.pipeline" and len(inp.references) != 1:
            problems.append(f"{path}.references: name exactly one pipeline")
        problems += schema_errors(inp.references, spec["references"], f"{path}.references")
        problems += schema_errors(inp.options, spec["options"], f"{path}.options")
    for name, dev in stage.devices.items():
        path = f"{stage.path}.devices.{name}"
        if dev.type not in devices.SCHEMAS:
            problems.append(f"{path}.type: unknown device type '{dev.type}'")
        else:
            problems += schema_errors(dev.options, devices.SCHEMAS[dev.type], f"{path}.options")
        if dev.parent and dev.parent not in stage.devices:
            problems.append(f"{path}.parent: unknown device '{dev.parent}'")
    seen = set()
    for i, mount in enumerate(stage.mounts):
        path = f"{stage.path}.mounts[{i}]"
        if mount.name in seen:
            problems.append(f"{path}.name: duplicate mount name '{mount.name}'")
        seen.add(mount.name)
        if mount.type not in mounts.SCHEMAS:
            problems.append(f"{path}.type: unknown mount type '{mount.type}'")
        else:
            problems += schema_errors(mount.options, mounts.SCHEMAS[mount.type], f"{path}.options")
        if mount.source and mount.source not in stage.devices:
            problems.append(f"{path}.source: unknown device '{mount.source}'")
        if ".." in mount.target.split("/"):
            problems.append(f"{path}.target: must not contain '..'")
    return problems


def validate(manifest: Manifest, libdir: Path) -> None:
    """Raise ManifestError listing every problem, or return when all is valid."""
    problems: list[str] = []
    for pipeline in manifest.pipelines.values():
        if not (libdir / "runners" / (pipeline.runner or "")).is_file():
            where = f"{pipeline.path}.runner" if manifest.version == "2" \
                else f"{pipeline.path}.build.runner"
            problems.append(f"{where}: unknown runner '{pipeline.runner}'")
        for stage in pipeline.stages:
            problems += stage_problems(stage, libdir)
    raw_sources = manifest.raw.get("sources", {})
    for kind, section in raw_sources.items():
        meta = load_meta(libdir, "sources", kind)
        if meta is None:
            problems.append(f"sources.{kind}: unknown source '{kind}'")
            continue
        problems += schema_errors(section, options_schema(meta.get("schema")), f"sources.{kind}")
    raise_if(problems)
