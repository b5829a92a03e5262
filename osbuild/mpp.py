"""osbuild-mpp: turn a manifest template into a pinned manifest.

osbuild-mpp INPUT.(json|yaml) OUTPUT.json     ("-" for stdin / stdout)

A v2 manifest template may hold, inside any stage input, an `mpp-depsolve`
directive with a depsolve request (suite, architecture, packages, exclude,
variant, components, mirror, keyrings, extra-repos; see osbuild.depsolve).
The directive is replaced by the input's "references": one entry per .deb,
keyed by its sha256, in install order (essential closure first), with
{name, version, essential} as metadata; the .debs' pool URLs join the
manifest's org.osbuild.curl source items. A top-level "mpp-vars" object gives
defaults for every directive (typically mirror and keyrings); it is dropped
from the output. The mirror otherwise defaults to the host's apt sources.

The output is deterministic for one archive state: pretty-printed JSON,
sources sorted by checksum, references in install order.
"""

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import cli
from .depsolve import (
    DEFAULT_KEYRING,
    REQUEST_SCHEMA,
    AptRoot,
    DepsolveError,
    Solution,
    add_cache_argument,
    host_mirror,
    load_document,
    repos_for,
    validate_request,
)
from .errors import ManifestError

PROG = "osbuild-mpp"
DIRECTIVE = "mpp-depsolve"
VARS = "mpp-vars"


class Depsolver:
    """Depsolves for one run, keeping one updated apt root per repository set."""

    def __init__(self, stack: ExitStack, cache: Path | None = None):
        self.stack = stack
        self.cache = cache
        self.roots: dict[tuple[Any, ...], AptRoot] = {}
        self._host_mirror: str | None = None

    def solve(self, request: dict[str, Any]) -> Solution:
        validate_request(request)
        mirror = request.get("mirror")
        if not mirror:
            self._host_mirror = self._host_mirror or host_mirror()
            mirror = self._host_mirror
        repos = repos_for(request["suite"], mirror,
                          [Path(k) for k in request.get("keyrings", [DEFAULT_KEYRING])],
                          request.get("components", ["main"]), request.get("extra-repos", []))
        foreign = tuple(request.get("foreign-architectures", []))
        key = (tuple(repos), request["architecture"], foreign)
        if key not in self.roots:
            self.roots[key] = self.stack.enter_context(
                AptRoot(repos, request["architecture"], foreign, self.cache))
        return self.roots[key].solve(request.get("packages", []), request.get("exclude", []),
                                     request.get("variant", "minbase"))


def _stray_directives(node: Any, where: str) -> list[str]:
    """Places of mpp-* keys left after processing: each one is unsupported there."""
    if isinstance(node, dict):
        found = [f"{where}.{k}" for k in node if isinstance(k, str) and k.startswith("mpp-")]
        for k, v in node.items():
            found += _stray_directives(v, f"{where}.{k}")
        return found
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _stray_directives(v, f"{where}[{i}]")]
    return []


def _v1_directives(pipeline: Any, where: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """v1 has no inputs: a directive stands for a stage option (a list of checksums)."""
    if not isinstance(pipeline, dict):
        return
    stages = pipeline.get("stages")
    for j, stage in enumerate(stages if isinstance(stages, list) else []):
        options = stage.get("options") if isinstance(stage, dict) else None
        if not isinstance(options, dict):
            continue
        for key, value in options.items():
            if isinstance(value, dict) and DIRECTIVE in value:
                yield f"{where}.stages[{j}].options.{key}", options, key
    build = pipeline.get("build")
    if isinstance(build, dict):
        yield from _v1_directives(build.get("pipeline"), f"{where}.build.pipeline")


def _directives(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(location, inputs object, input name) of every stage input holding a directive;
    in v1, (location, options object, option name)."""
    if manifest.get("version") != "2":
        yield from _v1_directives(manifest.get("pipeline"), "pipeline")
        return
    pipelines = manifest.get("pipelines")
    for i, pipeline in enumerate(pipelines if isinstance(pipelines, list) else []):
        stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
        for j, stage in enumerate(stages if isinstance(stages, list) else []):
            inputs = stage.get("inputs") if isinstance(stage, dict) else None
            if not isinstance(inputs, dict):
                continue
            for name, spec in inputs.items():
                if isinstance(spec, dict) and DIRECTIVE in spec:
                    yield f"pipelines[{i}].stages[{j}].inputs.{name}", inputs, name


def process(template: Any, depsolver: Depsolver) -> dict[str, Any]:
    """The manifest with every directive resolved (the template is not modified)."""
    v1 = isinstance(template, dict) and "version" not in template and "pipeline" in template
    if not isinstance(template, dict) or not (v1 or template.get("version") == "2"):
        raise ManifestError("version: osbuild-mpp takes v2 manifests (\"version\": \"2\") "
                            "or v1 manifests (a \"pipeline\")")
    manifest = json.loads(json.dumps(template))
    defaults = manifest.pop(VARS, {})
    if not isinstance(defaults, dict) or not set(defaults) <= set(REQUEST_SCHEMA["properties"]):
        raise ManifestError(f"{VARS}: must be an object with depsolve request keys only "
                            f"({', '.join(REQUEST_SCHEMA['properties'])})")
    directives = list(_directives(manifest))
    allowed = {f"manifest.{where}.{DIRECTIVE}" for where, _, _ in directives}
    if stray := [p for p in _stray_directives(manifest, "manifest") if p not in allowed]:
        raise ManifestError(f"{stray[0]}: unsupported here ({DIRECTIVE} goes in a stage's "
                            "inputs; other mpp-* directives are not implemented)")
    items: dict[str, Any] = {}
    for where, inputs, name in directives:
        spec = inputs[name]
        if v1:
            directive = spec[DIRECTIVE]
            if set(spec) != {DIRECTIVE} or not isinstance(directive, dict):
                raise ManifestError(f"{where}: must be just {{\"{DIRECTIVE}\": {{...}}}}")
            try:
                solution = depsolver.solve({**defaults, **directive})
            except DepsolveError as e:
                raise type(e)(f"{where}: {e}") from e
            inputs[name] = list(solution.references())
            items.update(solution.sources())
            continue
        if "references" in spec:
            raise ManifestError(f"{where}: has both {DIRECTIVE} and references")
        directive = spec[DIRECTIVE]
        if not isinstance(directive, dict):
            raise ManifestError(f"{where}.{DIRECTIVE}: must be an object")
        try:
            solution = depsolver.solve({**defaults, **directive})
        except DepsolveError as e:
            raise type(e)(f"{where}: {e}") from e
        # the references take the directive's place, so the key order stays
        inputs[name] = {("references" if k == DIRECTIVE else k):
                        (solution.references() if k == DIRECTIVE else v)
                        for k, v in spec.items()}
        items.update(solution.sources())
    if items and v1:
        sources = manifest.setdefault("sources", {})
        files = sources.setdefault("org.osbuild.files", {}) if isinstance(sources, dict) else None
        urls = files.setdefault("urls", {}) if isinstance(files, dict) else None
        if not isinstance(urls, dict):
            raise ManifestError("sources: org.osbuild.files must hold a \"urls\" object")
        for checksum, item in items.items():
            urls.setdefault(checksum, item["url"])
        manifest["sources"] = {name: ({**source, "urls": dict(sorted(source["urls"].items()))}
                                      if isinstance(source, dict) and "urls" in source
                                      else source)
                               for name, source in sorted(sources.items())}
        return manifest
    if items:
        sources = manifest.setdefault("sources", {})
        curl = sources.setdefault("org.osbuild.curl", {}) if isinstance(sources, dict) else None
        merged = curl.setdefault("items", {}) if isinstance(curl, dict) else None
        if not isinstance(merged, dict):
            raise ManifestError("sources: org.osbuild.curl must hold an \"items\" object")
        for checksum, item in items.items():
            merged.setdefault(checksum, item)  # an item the template already has stays
    if "sources" in manifest:
        manifest["sources"] = {
            name: ({**source, "items": dict(sorted(source["items"].items()))}
                   if isinstance(source, dict) and isinstance(source.get("items"), dict)
                   else source)
            for name, source in sorted(manifest["sources"].items())
        }
    return manifest


def write_output(text: str, output: str) -> None:
    """Replace OUTPUT atomically, so a failed run leaves the old file (or none)."""
    if output == "-":
        sys.stdout.write(text)
        return
    path = Path(output)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(prog=PROG, description="Resolve mpp-depsolve directives in a manifest.")
    parser.add_argument("input", help="manifest template, JSON or YAML ('-' for stdin)")
    parser.add_argument("output", help="pinned manifest to write ('-' for stdout)")
    add_cache_argument(parser)

    def body() -> None:
        args = parser.parse_args(argv)
        name, text = cli.read_input(args.input)
        with ExitStack() as stack:
            manifest = process(load_document(text, name), Depsolver(stack, args.cache))
        write_output(json.dumps(manifest, indent=2) + "\n", args.output)

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
