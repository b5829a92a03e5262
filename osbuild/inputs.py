"""Inputs: what a stage may read besides its own tree, bound read-only.

`org.osbuild.tree` is another pipeline's tree; `org.osbuild.files` is a set of
downloaded source files (or a file out of a pipeline's tree).
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .buildroot import INPUTS, Bind
from .errors import OsbuildError
from .model import Input, pipeline_name

CHECKSUM = "^(md5|sha1|sha256|sha384|sha512):[0-9a-f]{32,128}$"
RELATIVE_PATH = "^(?!/)(?!.*(^|/)\\.\\.(/|$)).+$"

SCHEMAS: dict[str, dict[str, Any]] = {
    "org.osbuild.tree": {
        "origins": ["org.osbuild.pipeline"],
        "references": {"type": "object", "minProperties": 1, "maxProperties": 1,
                       "additionalProperties": {"type": "object", "additionalProperties": False}},
        "options": {"type": "object", "additionalProperties": False},
    },
    "org.osbuild.files": {
        "origins": ["org.osbuild.source", "org.osbuild.pipeline"],
        "references": {"type": "object",
                       "additionalProperties": {
                           "type": "object", "additionalProperties": False,
                           "properties": {"file": {"type": "string", "pattern": RELATIVE_PATH},
                                          "metadata": {"type": "object"}}}},
        "options": {"type": "object", "additionalProperties": False},
    },
}


def source_checksums(inp: Input) -> list[str]:
    return list(inp.references) if inp.origin == "org.osbuild.source" else []


def prepare(
    name: str,
    inp: Input,
    pipeline_tree: Callable[[str], Path],
    sources: Path,
    workdir: Path,
) -> tuple[Bind, dict[str, Any]]:
    """Make the input's host directory and return its bind and stage data."""
    target = f"{INPUTS}/{name}"
    if inp.origin == "org.osbuild.pipeline":
        # Validation allows exactly one pipeline per input: one tree to bind.
        (ref, opts), = inp.references.items()
        data: dict[str, Any] = {}
        if inp.type == "org.osbuild.files":
            data = {"files": {opts.get("file", ""): {}}}
        return Bind(pipeline_tree(pipeline_name(ref)), target), data
    # Hard links give the stage exactly the files it asked for, at no cost.
    directory = workdir / f"input-{name}"
    directory.mkdir()
    for checksum in inp.references:
        source = sources / checksum
        if not source.exists():
            raise OsbuildError(f"input '{name}': source file {checksum} was not fetched")
        os.link(source, directory / checksum)
    return Bind(directory, target), {"files": {k: v for k, v in inp.references.items()}}
