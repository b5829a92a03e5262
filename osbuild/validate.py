"""Validate a loaded manifest against the schemas of the modules it uses.

Runs before anything is fetched or built: an invalid manifest builds nothing.
This is the only check of the manifest's devices and mounts: the engine hands
the model on to osbuild.devices and osbuild.mounts, which check only what can
be known at run time (files in the tree, sizes, what the kernel mounts).
"""

import base64
import binascii
import hashlib
import lzma
from pathlib import Path
from typing import Any

from . import devices, inputs, mounts
from .checksums import InvalidChecksum, parse_checksum
from .meta import json_path, module_info, raise_if, schema_errors
from .model import Manifest, Stage

# Inline data is hashed as it is decompressed: an lzma bomb costs time, not memory.
INLINE_CHUNK = 1 << 20


def stage_problems(stage: Stage, libdir: Path, checksums: set[str] | None = None) -> list[str]:
    kind = "assembler" if stage.kind == "assemblers" else "stage"
    name_path = f"{stage.path}.{'type' if stage.path.startswith('pipelines[') else 'name'}"
    info = module_info(libdir, stage.kind, stage.name)
    if info is None:
        return [f"{name_path}: unknown {kind} '{stage.name}'"]
    problems = schema_errors(stage.options, info.options_schema(), f"{stage.path}.options")
    if stage.kind == "stages":
        problems += section_problems(stage, info.schema_2, checksums or set())
    return problems


def section_problems(stage: Stage, schema_2: dict[str, Any], checksums: set[str]) -> list[str]:
    """Inputs, devices and mounts: each known, each allowed by the stage."""
    problems = []
    # The stage's schemas describe these sections as the manifest writes them.
    sections = {"inputs": {n: i.to_json() for n, i in stage.inputs.items()},
                "devices": {n: d.to_json() for n, d in stage.devices.items()},
                "mounts": [m.to_json() for m in stage.mounts]}
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
        if inp.origin == "org.osbuild.source" and inp.origin in spec["origins"] and \
                not any(p.startswith(f"{path}.references") for p in problems):
            problems += reference_problems(inp.references, checksums, f"{path}.references")
    for name, dev in stage.devices.items():
        path = f"{stage.path}.devices.{name}"
        problems += typed_options("device", dev.type, dev.options, devices.SCHEMAS, path)
        if dev.parent and dev.parent not in stage.devices:
            problems.append(f"{path}.parent: unknown device '{dev.parent}'")
    problems += parent_loops(stage)
    seen = set()
    for i, mount in enumerate(stage.mounts):
        path = f"{stage.path}.mounts[{i}]"
        if mount.name in seen:
            problems.append(f"{path}.name: duplicate mount name '{mount.name}'")
        seen.add(mount.name)
        problems += typed_options("mount", mount.type, mount.options, mounts.SCHEMAS, path)
        if mount.source and mount.source not in stage.devices:
            problems.append(f"{path}.source: unknown device '{mount.source}'")
        if ".." in mount.target.split("/"):
            problems.append(f"{path}.target: must not contain '..'")
    # v1 stages name their source files in an option: report them there.
    for name, inp in stage.inputs.items():
        if inp.path:
            written = f"{stage.path}.inputs.{name}.references"
            problems = [inp.path + p[len(written):] if p.startswith(written) else p
                        for p in problems]
    return problems


def typed_options(kind: str, type_: str, options: Any, schemas: dict[str, Any],
                  path: str) -> list[str]:
    """Devices and mounts: a known type, and options its schema accepts."""
    if type_ not in schemas:
        return [f"{path}.type: unknown {kind} type '{type_}'"]
    return schema_errors(options, schemas[type_], f"{path}.options")


def parent_loops(stage: Stage) -> list[str]:
    """Devices whose parents lead back to themselves, each loop named once."""
    problems = []
    for name in sorted(stage.devices):
        chain = [name]
        parent = stage.devices[name].parent
        while parent in stage.devices and parent not in chain:
            chain.append(parent)
            parent = stage.devices[parent].parent
        if parent == name:  # `name` is on the loop; name it from its smallest member
            if name == min(chain):
                problems.append(f"{stage.path}.devices.{name}.parent: devices are each "
                                f"other's parents: {' -> '.join(chain + [name])}")
    return problems


def checksum_problem(checksum: str) -> str | None:
    try:
        parse_checksum(checksum)
    except InvalidChecksum as e:
        return str(e)
    return None


def reference_problems(references: dict[str, Any], checksums: set[str], path: str) -> list[str]:
    """Source files a stage reads must be well-formed checksums some source provides."""
    problems = []
    for checksum in references:
        where = json_path(path, [checksum])  # a key with a newline stays on one line
        if (problem := checksum_problem(checksum)) is not None:
            problems.append(f"{where}: {problem}")
        elif checksum not in checksums:
            problems.append(f"{where}: no source provides this checksum")
    return problems


def inline_problem(checksum: str, item: dict[str, Any]) -> str | None:
    """Inline data is in the manifest: a wrong checksum is known before anything runs."""
    encoding = item.get("encoding", "base64")
    algorithm, digest = parse_checksum(checksum)
    hasher = hashlib.new(algorithm)
    try:
        data = base64.b64decode("".join(item["data"].split()), validate=True)
        if encoding == "lzma+base64":
            hash_lzma(data, hasher)
        else:
            hasher.update(data)
    except (binascii.Error, lzma.LZMAError, EOFError) as e:
        return f"data is not valid {encoding}: {e}"
    if hasher.hexdigest() != digest:
        return f"data does not match its checksum (it is {algorithm}:{hasher.hexdigest()})"
    return None


def hash_lzma(data: bytes, hasher: Any) -> None:
    """Feed the decompressed `data` to `hasher` like lzma.decompress would decode it."""
    if not data:
        raise EOFError("no compressed data")
    streams = 0
    while data:
        decompressor = lzma.LZMADecompressor()
        try:
            while not decompressor.eof:
                chunk = decompressor.decompress(data, max_length=INLINE_CHUNK)
                data = b""
                hasher.update(chunk)
                if not chunk and decompressor.needs_input:
                    raise EOFError("compressed data ended before the end-of-stream marker")
        except lzma.LZMAError:
            if streams:
                return  # like lzma.decompress: trailing garbage after a stream is ignored
            raise
        streams += 1
        data = decompressor.unused_data


def source_problems(manifest: Manifest, libdir: Path) -> list[str]:
    """Each source known, its section valid, every checksum well-formed, inline data right."""
    problems: list[str] = []
    for kind, section in manifest.raw.get("sources", {}).items():
        info = module_info(libdir, "sources", kind)
        if info is None:
            problems.append(f"sources.{kind}: unknown source '{kind}'")
            continue
        found = schema_errors(section, info.options_schema(), f"sources.{kind}")
        if found:
            problems += found
            continue
        for key in ("items", "urls"):
            for checksum, item in section.get(key, {}).items():
                path = json_path(f"sources.{kind}.{key}", [checksum])
                if (problem := checksum_problem(checksum)) is not None:
                    problems.append(f"{path}: {problem}")
                elif kind == "org.osbuild.inline" and \
                        (problem := inline_problem(checksum, item)) is not None:
                    problems.append(f"{path}: {problem}")
    return problems


def validate(manifest: Manifest, libdir: Path) -> None:
    """Raise ManifestError listing every problem, or return when all is valid."""
    problems: list[str] = []
    checksums = {c for items in manifest.sources.values() for c in items}
    for pipeline in manifest.pipelines.values():
        if not (libdir / "runners" / (pipeline.runner or "")).is_file():
            where = f"{pipeline.path}.runner" if manifest.version == "2" \
                else f"{pipeline.path}.build.runner"
            problems.append(f"{where}: unknown runner '{pipeline.runner}'")
        for stage in pipeline.stages:
            problems += stage_problems(stage, libdir, checksums)
    problems += source_problems(manifest, libdir)
    raise_if(problems)
