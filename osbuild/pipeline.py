"""Build the pipelines of a manifest: plan, fetch, run stages, commit, export.

Every resource a build takes (temp dirs, object locks, loop devices, mounts,
sandboxes) is entered into one ExitStack, so failures and interrupts clean
up structurally.
"""

import fnmatch
import functools
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import devices, inputs, mounts, sources
from .buildroot import MOUNTS, Bind, BuildRoot
from .errors import OsbuildError, StageFailed, StoreError
from .fsutil import clamp_mtimes, copy_tree, remove_tree
from .meta import load_meta
from .model import Manifest, Pipeline, Stage
from .monitor import Monitor, StageResult
from .objectstore import ObjectStore
from .prefetch import Prefetcher

# A stage that ran this long is kept in the store even without --checkpoint:
# copying its tree costs far less than running it again after a later change.
AUTO_CHECKPOINT_SECONDS = 10.0


@dataclass
class BuildResult:
    success: bool
    results: dict[str, list[StageResult]] = field(default_factory=dict)
    error: OsbuildError | None = None


class Builder:
    """Builds the pipelines an export needs, resuming at the first uncached stage."""

    def __init__(self, manifest: Manifest, store: ObjectStore, libdir: Path, monitor: Monitor,
                 checkpoints: list[str] | None = None):
        self.manifest = manifest
        self.store = store
        self.libdir = libdir
        self.monitor = monitor
        self.checkpoints = checkpoints or []
        self.trees: dict[str, Path] = {}
        self.results: dict[str, list[StageResult]] = {}
        self.used: set[str] = set()

    def build(self, exports: list[str], output_dir: Path | None) -> BuildResult:
        plan = self.manifest.order(exports or None)
        self.monitor.begin(plan)
        try:
            with ExitStack() as stack:
                self.stack = stack
                self.workdir = stack.enter_context(self.store.tempdir("build"))
                self.prefetch = Prefetcher(self.libdir, self.store.source_dir(),
                                           self.plan_sources(plan), self.monitor.source_progress,
                                           self.monitor.message).start()
                stack.callback(self.prefetch.stop)
                for pipeline in plan:
                    self.build_pipeline(pipeline)
                for name in exports:
                    assert output_dir is not None
                    self.export(name, output_dir)
        except OsbuildError as error:
            return BuildResult(False, self.results, error)
        finally:
            self.store.evict(keep=self.used)
        return BuildResult(True, self.results)

    # -- pipelines ---------------------------------------------------------

    def build_pipeline(self, pipeline: Pipeline) -> None:
        self.monitor.pipeline_start(pipeline)
        results = self.results.setdefault(pipeline.name, [])
        if not pipeline.stages:
            empty = self.workdir / f"empty-{pipeline.name}"
            empty.mkdir(mode=0o755)
            self.trees[pipeline.name] = empty
            return
        base, chain = self.cached_base(pipeline)
        for stage in pipeline.stages[:base + 1]:
            result = StageResult(stage.id, stage.name, pipeline.name, True, True,
                                 metadata=chain.get(stage.id))
            results.append(result)
            self.monitor.stage_result(stage, result)
        if base == len(pipeline.stages) - 1:
            return
        tree = self.workdir / f"tree-{pipeline.name}"
        tree.mkdir(mode=0o755)
        if base >= 0:
            copy_tree(self.trees.pop(pipeline.name), tree)
        self.prefetch.wait(pipeline.name)
        self.fetch_sources(pipeline.stages[base + 1:])
        root = Path("/") if pipeline.build is None else self.trees[pipeline.build]
        buildroot = BuildRoot(root, pipeline.runner or "org.osbuild.linux", self.libdir,
                              pipeline.source_epoch)
        for stage in pipeline.stages[base + 1:]:
            result = self.run_stage(pipeline, stage, buildroot, tree)
            results.append(result)
            chain[stage.id] = result.metadata
            last = stage is pipeline.stages[-1]
            if last or self.wants_checkpoint(pipeline, stage, result.duration):
                self.store.commit(stage.id, tree, {"stages": dict(chain)}, copy=not last)
                self.used.add(stage.id)
        self.hold(pipeline.stages[-1].id, pipeline.name)

    def cached_base(self, pipeline: Pipeline) -> tuple[int, dict[str, Any]]:
        """Index of the last stage whose tree is in the store, and the metadata so far."""
        for index in range(len(pipeline.stages) - 1, -1, -1):
            obj = self.hold(pipeline.stages[index].id, pipeline.name, required=False)
            if obj is not None:
                return index, dict(obj.get("stages", {}))
        return -1, {}

    def hold(self, object_id: str, name: str, required: bool = True) -> dict[str, Any] | None:
        """Lock a stored object for the rest of the build and note its tree."""
        obj = self.stack.enter_context(self.store.get(object_id))
        if obj is None:
            if required:
                raise StoreError(f"object {object_id[:12]} of pipeline '{name}' "
                                 "vanished from the store")
            return None
        self.used.add(object_id)
        self.trees[name] = obj.tree
        return obj.metadata

    def wants_checkpoint(self, pipeline: Pipeline, stage: Stage, duration: float) -> bool:
        names = (pipeline.name, stage.id, stage.name)
        if any(fnmatch.fnmatchcase(n, p) for p in self.checkpoints for n in names):
            return True
        return duration >= AUTO_CHECKPOINT_SECONDS

    def pipeline_tree(self, name: str) -> Path:
        return self.trees[name]

    # -- sources -----------------------------------------------------------

    def wanted_sources(self, stages: list[Stage]) -> set[str]:
        """Checksums the stages about to run read; v1 stages name no inputs, so: all."""
        wanted = {c for s in stages for i in s.inputs.values() for c in inputs.source_checksums(i)}
        if self.manifest.version == "1" and stages:
            wanted |= {c for items in self.manifest.sources.values() for c in items}
        return wanted

    def missing_sources(self, wanted: set[str]) -> dict[str, dict[str, Any]]:
        """source type -> the wanted items not yet in the store's source cache."""
        cache = self.store.source_dir()
        missing: dict[str, dict[str, Any]] = {}
        for kind, items in self.manifest.sources.items():
            for checksum in sorted(wanted & set(items)):
                if not (cache / checksum).exists():
                    missing.setdefault(kind, {})[checksum] = items[checksum]
        return missing

    def plan_sources(self, plan: list[Pipeline]) -> dict[str, dict[str, dict[str, Any]]]:
        """What each pipeline will need downloaded, judged by what the store holds now."""
        batches = {}
        for pipeline in plan:
            cached = [self.store.contains(s.id) for s in pipeline.stages]
            base = max((i for i, hit in enumerate(cached) if hit), default=-1)
            if batch := self.missing_sources(self.wanted_sources(pipeline.stages[base + 1:])):
                batches[pipeline.name] = batch
        count = sum(len(items) for b in batches.values() for items in b.values())
        if count:
            self.monitor.message(f"fetching {count} files in the background")
        return batches

    def fetch_sources(self, stages: list[Stage]) -> None:
        """Make sure what the stages need is cached (the prefetch normally did it already)."""
        wanted = self.wanted_sources(stages)
        unknown = wanted - {c for items in self.manifest.sources.values() for c in items}
        if unknown:
            raise OsbuildError(f"no source provides {sorted(unknown)[0]}")
        self.used |= wanted
        missing = self.missing_sources(wanted)
        for checksum in wanted - {c for items in missing.values() for c in items}:
            self.store.touch_source(checksum)
        for kind, items in missing.items():
            self.monitor.message(f"fetching {len(items)} files ({kind})")
            sources.fetch(self.libdir, kind, items, self.store.source_dir(),
                          on_progress=functools.partial(self.monitor.source_progress, kind))

    # -- stages ------------------------------------------------------------

    def run_stage(self, pipeline: Pipeline, stage: Stage, buildroot: BuildRoot,
                  tree: Path) -> StageResult:
        self.monitor.stage_start(pipeline, stage)
        start = time.monotonic()
        with ExitStack() as stack:
            stage_dir = Path(tempfile.mkdtemp(prefix="stage-", dir=self.workdir))
            stack.callback(remove_tree, stage_dir)
            binds: list[Bind] = []
            args: dict[str, Any] = {
                "options": stage.options, "inputs": {}, "devices": {}, "mounts": {},
                "paths": {"inputs": inputs.INPUTS, "mounts": MOUNTS, "devices": "/dev"},
                "meta": {"id": stage.id},
            }
            for name, inp in stage.inputs.items():
                bind, data = inputs.prepare(name, inp, self.pipeline_tree,
                                            self.store.source_dir(), stage_dir)
                binds.append(bind)
                args["inputs"][name] = {"path": bind.target, "data": data}
            nodes: dict[str, str] = {}
            if stage.devices:
                raw = {n: {"type": d.type, "options": d.options, "parent": d.parent}
                       for n, d in stage.devices.items()}
                nodes = devices.open_devices(raw, tree, stack)
                args["devices"] = {n: {"path": p} for n, p in nodes.items()}
            if stage.mounts:
                mount_root = stage_dir / "mounts"
                mount_root.mkdir()
                raw_mounts = [{"name": m.name, "type": m.type, "source": m.source,
                               "target": m.target, "options": m.options} for m in stage.mounts]
                mounts.mount_all(raw_mounts, nodes, mount_root, stack)
                binds.append(Bind(mount_root, MOUNTS, readonly=False))
                args["mounts"] = {m.name: {"path": MOUNTS + m.target.rstrip("/")}
                                  for m in stage.mounts}
            # Only stages whose .meta.json says "network": true get it (unpinned installers).
            meta = load_meta(self.libdir, stage.kind, stage.name) or {}
            run = buildroot.run(f"{stage.kind}/{stage.name}", args, tree, stage_dir, binds,
                                list(nodes.values()),
                                on_output=lambda line: self.monitor.stage_output(stage, line),
                                network=bool(meta.get("network")))
        result = StageResult(stage.id, stage.name, pipeline.name, run.returncode == 0, False,
                             time.monotonic() - start, run.metadata, run.tail)
        self.monitor.stage_result(stage, result)
        if not result.success:
            self.results.setdefault(pipeline.name, []).append(result)
            raise StageFailed(pipeline.name, stage.name, stage.id, run.returncode, run.tail)
        if pipeline.source_epoch is not None:
            clamp_mtimes(tree, pipeline.source_epoch)
        return result

    # -- exports -----------------------------------------------------------

    def export(self, name: str, output_dir: Path) -> None:
        """Copy a pipeline's tree to output_dir/name; a partial export is never left."""
        output_dir.mkdir(parents=True, exist_ok=True)
        target = output_dir / name
        partial = output_dir / f".{name}.partial-{os.getpid()}"
        self.stack.callback(remove_tree, partial)
        copy_tree(self.trees[name], partial)
        if os.path.lexists(target):
            old = output_dir / f".{name}.old-{os.getpid()}"
            os.rename(target, old)
            remove_tree(old)
        os.rename(partial, target)
        self.monitor.exported(name, str(target))
