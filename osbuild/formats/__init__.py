"""Manifest formats: each loader turns one format's JSON into the model."""

import math
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from ..meta import json_path, raise_if
from ..model import Manifest
from . import v1, v2

# Far beyond any real manifest (the samples nest 10 deep and hold ~2000 values),
# and low enough that nothing recursive downstream (schemas, ids, --inspect's
# deepcopy) can reach Python's recursion limit.
MAX_DEPTH = 200
# YAML aliases can make a small document stand for an exponential number of values.
MAX_VALUES = 1_000_000
# Stage options end up in C integers (sizes, offsets, ids): 64 bits is the widest.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
# Longer numbers are never parsed, so a 100000-digit one costs nothing.
MAX_NUMBER_TEXT = 40


# json.loads hooks (used by the CLI) do not raise: they leave markers that
# check_values reports with the JSON path where they are.


class OversizedNumber(str):
    """A JSON number too large to be a value here, kept as its text to be reported."""


class NotANumber(str):
    """NaN, Infinity or -Infinity: Python's json reads them, JSON has no such numbers."""


class DuplicateKeys(dict[str, Any]):
    """An object in which a key occurs twice: JSON parsers disagree on which one wins."""

    def __init__(self, pairs: list[tuple[str, Any]], duplicate: str):
        super().__init__(pairs)
        self.duplicate = duplicate


def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook for json.loads: a duplicate key is marked, not silently dropped."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return DuplicateKeys(pairs, key)
        seen.add(key)
    return dict(pairs)


def json_int(text: str) -> int | OversizedNumber:
    """parse_int for json.loads: huge integers are reported, not converted."""
    return OversizedNumber(text) if len(text) > MAX_NUMBER_TEXT else int(text)


def json_float(text: str) -> float | OversizedNumber:
    """parse_float for json.loads: 1e400 is not infinity but an error."""
    value = float(text)
    return value if math.isfinite(value) else OversizedNumber(text)


def json_constant(name: str) -> NotANumber:
    """parse_constant for json.loads."""
    return NotANumber(name)


def value_problem(value: Any) -> str | None:
    """Why a scalar cannot stand in a manifest, or None when it is a plain JSON value."""
    if isinstance(value, OversizedNumber):
        text = value if len(value) <= MAX_NUMBER_TEXT else f"{value[:20]}... ({len(value)} chars)"
        return f"number out of range: {text}"
    if isinstance(value, NotANumber):
        return f"{value} is not a valid JSON number"
    if isinstance(value, str):
        if "\0" in value:
            return "must not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode (a lone surrogate escape)"
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            return f"number out of range: {value} (integers must fit in 64 bits)"
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return f"{value} is not a valid JSON number"
        return None if math.isfinite(value) else f"number out of range: {value}"
    return f"{type(value).__name__} is not a JSON value"


def check_values(document: Any) -> None:
    """Refuse anything that is not plain, finite, bounded JSON, naming where it is.

    JSON parsers and YAML loaders accept more than the engine can hash, pass to
    stages or validate without crashing: 1e400, lone surrogates, NUL bytes in
    paths, YAML dates, sets, binary, non-string keys and self-referencing aliases.
    Iterative, so deep nesting cannot crash the check itself.
    """
    problems: list[str] = []
    count = 0
    # (value, path parts, ids of the containers above it)
    todo: list[tuple[Any, tuple[Any, ...], frozenset[int]]] = [(document, (), frozenset())]
    while todo and len(problems) < 10:
        value, parts, above = todo.pop()
        count += 1
        if count > MAX_VALUES:
            problems.append(f"{json_path('', parts)}: manifest too large "
                            f"(more than {MAX_VALUES} values)")
            break
        if not isinstance(value, dict | list):
            if (problem := value_problem(value)) is not None:
                problems.append(f"{json_path('', parts)}: {problem}")
            continue
        if id(value) in above:
            problems.append(f"{json_path('', parts)}: refers to itself (a YAML alias loop)")
            continue
        if len(parts) >= MAX_DEPTH:
            problems.append(f"{json_path('', parts[:10])}...: nests too deeply "
                            f"(more than {MAX_DEPTH} levels)")
            break
        if isinstance(value, DuplicateKeys):
            problems.append(f"{json_path('', parts)}: duplicate key {value.duplicate!r}")
        inside = above | {id(value)}
        if isinstance(value, list):
            todo.extend((item, (*parts, i), inside) for i, item in reversed(list(enumerate(value))))
            continue
        for key, item in reversed(list(value.items())):
            if not isinstance(key, str):
                problems.append(f"{json_path('', parts)}: key {key!r} is not a string")
                continue
            if (problem := value_problem(key)) is not None:
                problems.append(f"{json_path('', parts)}: key {key!r} {problem}")
                continue
            todo.append((item, (*parts, key), inside))
    raise_if(problems)


def load(description: Any, host_runner: str, libdir: Path | None = None) -> Manifest:
    """Pick the loader by the manifest's `version` and load it.

    v1 stages get their source files as options; with `libdir` their .meta.json
    says which options become inputs (see v1.stage_inputs).
    """
    if not isinstance(description, dict):
        raise ManifestError("manifest: must be a JSON object")
    check_values(description)
    version = description.get("version", "1")
    if version == "2":
        return v2.load(description, host_runner)
    if version == "1" and "version" not in description:
        return v1.load(description, host_runner, libdir)
    raise ManifestError(f"version: unsupported manifest version {version!r} "
                        "(known: '2', or none for v1)")


def describe(manifest: Manifest) -> dict[str, Any]:
    """The manifest with every pipeline's and stage's id, for --inspect."""
    return (v2 if manifest.version == "2" else v1).describe(manifest)


def output(manifest: Manifest, results: dict[str, list[Any]], success: bool,
           error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine-readable result of a build, in the manifest's own format."""
    return (v2 if manifest.version == "2" else v1).output(manifest, results, success, error)
