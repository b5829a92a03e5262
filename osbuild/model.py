"""The format-independent model of a manifest, and the ids that key the cache.

Both manifest loaders (formats/v1.py, formats/v2.py) produce this model; the
rest of the engine never looks at raw manifest JSON again.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ManifestError


@dataclass
class Input:
    type: str
    origin: str
    # Pipeline references are "name:<pipeline>"; source references are checksums.
    references: dict[str, dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    # Where the references are written in the manifest, when that is not
    # `<stage>.inputs.<name>.references` (v1 stages name their files in an option).
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The input as a v2 manifest writes it, for the stage's `inputs` schema."""
        return {"type": self.type, "origin": self.origin, "references": self.references,
                **({"options": self.options} if self.options else {})}


@dataclass
class Device:
    type: str
    options: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The device as the manifest writes it, for the stage's `devices` schema."""
        return {"type": self.type, **({"options": self.options} if self.options else {}),
                **({"parent": self.parent} if self.parent else {})}


@dataclass
class Mount:
    name: str
    type: str
    source: str | None
    target: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The mount as the manifest writes it, for the stage's `mounts` schema."""
        return {"name": self.name, "type": self.type, "target": self.target,
                **({"source": self.source} if self.source else {}),
                **({"options": self.options} if self.options else {})}


@dataclass
class Stage:
    name: str
    options: dict[str, Any]
    path: str  # where it sits in the manifest, for error messages
    kind: str = "stages"  # or "assemblers": the libdir folder of its executable
    inputs: dict[str, Input] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    id: str = ""


@dataclass
class Pipeline:
    name: str
    path: str
    build: str | None = None  # name of the pipeline whose tree is the build root
    runner: str | None = None
    source_epoch: int | None = None
    stages: list[Stage] = field(default_factory=list)

    @property
    def id(self) -> str | None:
        """A pipeline is its last stage; an empty pipeline is the empty tree."""
        return self.stages[-1].id if self.stages else None

    def dependencies(self) -> list[str]:
        """Pipelines that must be built first: the build root and tree inputs."""
        deps = [self.build] if self.build else []
        for stage in self.stages:
            for inp in stage.inputs.values():
                if inp.origin == "org.osbuild.pipeline":
                    deps += [pipeline_name(ref) for ref in inp.references]
        return list(dict.fromkeys(deps))


@dataclass
class Manifest:
    version: str
    pipelines: dict[str, Pipeline]
    # source type -> {checksum: item}, already unwrapped from "items"/"urls"
    sources: dict[str, dict[str, Any]]
    raw: dict[str, Any]

    def order(self, wanted: list[str] | None = None) -> list[Pipeline]:
        """Pipelines in build order: each after everything it depends on."""
        names = depth_first(self.pipelines, list(wanted if wanted is not None else self.pipelines))
        return [self.pipelines[name] for name in names]

    def compute_ids(self) -> None:
        for pipeline in self.order():
            compute_stage_ids(pipeline, self.pipelines)


def source_items(section: dict[str, Any]) -> dict[str, Any]:
    """checksum -> item of one source section ("items", or v1's "urls").

    Runs before the section is validated (validate.py reports what is wrong
    with it), so anything that is not a mapping counts as no items.
    """
    items = section.get("items", section.get("urls"))
    return dict(items) if isinstance(items, dict) else {}


def pipeline_name(reference: str) -> str:
    return reference[len("name:"):] if reference.startswith("name:") else reference


def canonical_hash(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def compute_stage_ids(pipeline: Pipeline, pipelines: dict[str, Pipeline]) -> None:
    """Chain each stage's id to everything that can change its output."""
    build_id = pipelines[pipeline.build].id if pipeline.build else None
    previous: str | None = None
    for stage in pipeline.stages:
        inputs = {}
        for name, inp in stage.inputs.items():
            refs = {}
            for ref, opts in inp.references.items():
                key = ref
                if inp.origin == "org.osbuild.pipeline":
                    key = pipelines[pipeline_name(ref)].id or "empty"
                refs[key] = opts
            inputs[name] = {"type": inp.type, "origin": inp.origin,
                            "references": refs, "options": inp.options}
        stage.id = canonical_hash({
            "name": stage.name,
            "options": stage.options,
            "build": build_id,
            "base": previous,
            "runner": pipeline.runner,
            "source-epoch": pipeline.source_epoch,
            "inputs": inputs,
            "devices": {n: vars(d) for n, d in stage.devices.items()},
            "mounts": [vars(m) for m in stage.mounts],
        })
        previous = stage.id


def check_graph(pipelines: dict[str, Pipeline]) -> None:
    """Reject references to unknown pipelines and cycles, naming where they are."""
    problems = []
    for pipeline in pipelines.values():
        if pipeline.build and pipeline.build not in pipelines:
            problems.append(f"{pipeline.path}.build: unknown pipeline '{pipeline.build}'")
        for stage in pipeline.stages:
            for name, inp in stage.inputs.items():
                if inp.origin != "org.osbuild.pipeline":
                    continue
                for ref in inp.references:
                    if pipeline_name(ref) not in pipelines:
                        problems.append(f"{stage.path}.inputs.{name}.references: "
                                        f"unknown pipeline '{pipeline_name(ref)}'")
    if problems:
        raise ManifestError(problems)
    depth_first(pipelines, list(pipelines))


def depth_first(pipelines: dict[str, Pipeline], roots: list[str]) -> list[str]:
    """Names of `roots` and all they depend on, dependencies first; a cycle is an error.

    Iterative: a chain of thousands of build pipelines must not hit Python's
    recursion limit.
    """
    done: dict[str, None] = {}
    for root in roots:
        if root in done:
            continue
        chain = [root]
        todo = [iter(pipelines[root].dependencies())]
        while todo:
            dep = next(todo[-1], None)
            if dep is None:
                todo.pop()
                done[chain.pop()] = None
            elif dep in chain:
                cycle = chain[chain.index(dep):] + [dep]
                shown = " -> ".join(cycle) if len(cycle) <= 8 else \
                    f"{' -> '.join(cycle[:4])} -> ... -> {' -> '.join(cycle[-2:])} " \
                    f"({len(cycle) - 1} pipelines)"
                raise ManifestError(f"{pipelines[dep].path}: pipelines depend on each other: "
                                    f"{shown}")
            elif dep not in done:
                chain.append(dep)
                todo.append(iter(pipelines[dep].dependencies()))
    return list(done)


def finish_manifest(version: str, pipelines: dict[str, Pipeline],
                    description: dict[str, Any]) -> Manifest:
    """What both format loaders end with: a checked graph, the sources, the ids."""
    check_graph(pipelines)
    sources = {kind: source_items(section)
               for kind, section in description.get("sources", {}).items()}
    manifest = Manifest(version, pipelines, sources, description)
    manifest.compute_ids()
    return manifest
