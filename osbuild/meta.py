"""Find modules (stages, assemblers, sources, runners) in the libdir, read their
.meta.json into a typed ModuleInfo, and validate options against its schemas.

Every problem is reported as one line that starts with its JSON path in the
manifest, e.g. `pipelines[1].stages[3].options.size: 'x' is not of type 'integer'`.
"""

import functools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from .capabilities import KNOWN_CAPABILITIES
from .errors import ManifestError, ModuleMetaError, one_line

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


@dataclass(frozen=True)
class ModuleInfo:
    """A module and what its .meta.json says, read once: the one place metadata is parsed."""

    kind: str  # the libdir folder: stages, assemblers, sources or runners
    name: str
    path: Path  # the executable
    summary: str
    description: str
    schema: dict[str, Any] | None  # v1: the options, as an object-level fragment
    schema_2: dict[str, Any]  # v2: "options", "inputs", "devices", "mounts"
    # What the module may do beyond the default sandbox (see osbuild/capabilities.py).
    capabilities: frozenset[str]
    # v1 stages name source files in an option: input name -> option name.
    v1_inputs: dict[str, str]

    def options_schema(self) -> dict[str, Any]:
        """The whole schema of the module's options (a stage's, or a source's section)."""
        return options_schema(self.schema_2.get("options", self.schema))


@functools.cache
def module_info(libdir: Path, kind: str, name: str) -> ModuleInfo | None:
    """The module `kind/name` in `libdir`, or None when there is no such module."""
    if "/" in name or name.startswith("."):
        return None
    exe = libdir / kind / name
    meta_path = libdir / kind / f"{name}.meta.json"
    if not exe.is_file() or not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    where = f"{kind}/{meta_path.name}"
    if "network" in meta:
        raise ModuleMetaError(f'{where}: "network" is not a key any more; '
                              'list "network" under "capabilities"')
    capabilities = meta.get("capabilities", [])
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise ModuleMetaError(f"{where}: capabilities must be a list of names")
    for capability in capabilities:
        if capability not in KNOWN_CAPABILITIES:
            raise ModuleMetaError(f"{where}: unknown capability {capability!r} "
                                  '(known: "network" and the Linux CAP_* names)')
    description = meta.get("description", "")
    if isinstance(description, list):
        description = "\n".join(description)
    return ModuleInfo(kind, name, exe, meta.get("summary", ""), description,
                      meta.get("schema"), meta.get("schema_2", {}), frozenset(capabilities),
                      meta.get("v1_inputs", {}))


def json_path(base: str, parts: Iterable[Any]) -> str:
    path = base
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        part = str(part)
        if not part.isprintable():
            # A key with a newline or escape codes must not break the one-line error.
            path += f"[{json.dumps(part)}]"
        elif path:
            path += f".{part}"
        else:
            path = part
    return path or "manifest"


def ecma_pattern(pattern: str) -> str:
    """`pattern` with JSON Schema's (ECMA-262) meaning of `$` under Python's re.search.

    Python's `$` also matches before a final newline, so `^[a-z]+$` would let a
    name with a trailing newline through, into a file or a command line. `\\Z`
    is the end of the string only; `$` inside a class or escaped is left alone.
    """
    out, in_class, i = [], False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A `]` first in a class (also after `^`) is a literal.
            start = i + 2 if pattern[i + 1:i + 2] == "^" else i + 1
            if pattern[start:start + 1] == "]":
                out.append(pattern[i:start + 1])
                i = start + 1
                continue
        elif char == "$":
            char = "\\Z"
        out.append(char)
        i += 1
    return "".join(out)


# Keywords whose values are data, not subschemas: never rewritten.
DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "description", "title"})
# Keywords whose values map names to subschemas: the names are not keywords.
SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "dependentSchemas"})


def ecma_schema(schema: Any) -> Any:
    """A copy of `schema` whose patterns (and patternProperties) use ecma_pattern."""
    if isinstance(schema, list):
        return [ecma_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DATA_KEYWORDS:
            result[key] = value
        elif key == "pattern" and isinstance(value, str):
            result[key] = ecma_pattern(value)
        elif key == "patternProperties" and isinstance(value, dict):
            result[key] = {ecma_pattern(p): ecma_schema(s) for p, s in value.items()}
        elif key in SCHEMA_MAPS and isinstance(value, dict):
            result[key] = {name: ecma_schema(s) for name, s in value.items()}
        else:
            result[key] = ecma_schema(value)
    return result


def _is_integer(_checker: Any, instance: Any) -> bool:
    # jsonschema counts 3.0 and 1e300 as integers; stages would get a float and
    # fail (or worse, succeed differently) at run time, so only real ints count.
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@functools.lru_cache(maxsize=512)
def _validator(schema_json: str) -> tuple[Validator, tuple[tuple[str, str], ...]]:
    """A validator for the schema, and (rewritten, original) reprs of changed patterns.

    Messages quote patterns; users should see the ones they can find in the schema.
    """
    schema = ecma_schema(json.loads(schema_json))
    renames = {}
    for pattern in _patterns(json.loads(schema_json)):
        if ecma_pattern(pattern) != pattern:
            renames[repr(ecma_pattern(pattern))] = repr(pattern)
    return StrictValidator(schema), tuple(renames.items())


def _patterns(schema: Any) -> Iterable[str]:
    if isinstance(schema, list):
        for item in schema:
            yield from _patterns(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            if key in DATA_KEYWORDS:
                continue
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from value
            yield from _patterns(value)


def schema_errors(instance: Any, schema: dict[str, Any], base: str) -> list[str]:
    """All violations of `schema`, one line each, prefixed with their JSON path."""
    validator, renames = _validator(json.dumps(schema, sort_keys=True))
    problems = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        message = error.message
        for rewritten, original in renames:
            message = message.replace(rewritten, original)
        message = one_line(message)
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
        raise ManifestError([one_line(p) for p in problems])
