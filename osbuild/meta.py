"""Find modules (stages, assemblers, sources, runners) in the libdir and validate
options against the schemas in their .meta.json files.

Every problem is reported as one line that starts with its JSON path in the
manifest, e.g. `pipelines[1].stages[3].options.size: 'x' is not of type 'integer'`.
"""

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema

from .errors import ManifestError

KINDS = ("stages", "assemblers", "sources", "runners")
MESSAGE_LIMIT = 200


def default_libdir() -> Path:
    """The checkout or installed tree that holds stages/, runners/ and friends."""
    env = os.environ.get("OSBUILD_LIBDIR")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "stages").is_dir():
        return here
    return Path("/usr/lib/osbuild")


@functools.cache
def load_meta(libdir: Path, kind: str, name: str) -> dict[str, Any] | None:
    """The .meta.json of a module, or None when the module does not exist."""
    if "/" in name or name.startswith("."):
        return None
    exe = libdir / kind / name
    meta = libdir / kind / f"{name}.meta.json"
    if not exe.is_file() or not meta.is_file():
        return None
    return json.loads(meta.read_text(encoding="utf-8"))


def json_path(base: str, parts: Iterable[Any]) -> str:
    path = base
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{part}"
        else:
            path = str(part)
    return path or "manifest"


def schema_errors(instance: Any, schema: dict[str, Any], base: str) -> list[str]:
    """All violations of `schema`, one line each, prefixed with their JSON path."""
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        message = " ".join(error.message.split())
        if len(message) > MESSAGE_LIMIT:
            message = message[:MESSAGE_LIMIT] + "..."
        problems.append(f"{json_path(base, error.absolute_path)}: {message}")
    return problems


def options_schema(fragment: dict[str, Any] | None) -> dict[str, Any]:
    """Stage schemas are object-level fragments; make them a whole schema."""
    schema = {"type": "object"}
    schema.update(fragment or {"additionalProperties": False})
    return schema


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ManifestError(problems)
