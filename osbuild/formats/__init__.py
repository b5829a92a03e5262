"""Manifest formats: each loader turns one format's JSON into the model."""

from pathlib import Path
from typing import Any

from ..errors import ManifestError
from ..model import Manifest
from . import v1, v2


def load(description: Any, host_runner: str, libdir: Path | None = None) -> Manifest:
    """Pick the loader by the manifest's `version` and load it.

    v1 stages get their source files as options; with `libdir` their .meta.json
    says which options become inputs (see v1.stage_inputs).
    """
    if not isinstance(description, dict):
        raise ManifestError("manifest: must be a JSON object")
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
