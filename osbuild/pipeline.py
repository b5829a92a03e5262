"""Build the pipelines of a manifest: plan, fetch, run stages, commit, export.

Every resource a build takes (temp dirs, object locks, loop devices, mounts,
sandboxes) is entered into one ExitStack, so failures and interrupts clean
up structurally.
"""

import errno
import fnmatch
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import binfmt, devices, inputs, mounts
from .buildroot import MOUNTS, Bind, BuildRoot
from .capabilities import EMULATION
from .errors import OsbuildError, Place, StageFailed, StageTimeout, StoreError
from .fetching import BuildSources, build_sources
from .fsutil import clamp_mtimes, copy_tree, remove_tree, replace_tree
from .meta import module_info
from .model import Manifest, Pipeline, Stage
from .monitor import Monitor, StageResult
from .objectstore import ObjectStore

# A stage that ran this long is kept in the store even without --checkpoint:
# copying its tree costs far less than running it again after a later change.
AUTO_CHECKPOINT_SECONDS = 10.0

# How tools say they ran out of space (ENOSPC, EDQUOT), in their output or our errors;
# matched without case: Go and Rust tools print strerror in lower case.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded")
# How often the store's free space is looked at while a stage runs and prints nothing.
SPACE_WATCH_SECONDS = 0.05


def after_interrupt(error: BaseException) -> bool:
    """Whether `error` was raised while an interrupt unwound the build, and replaced it."""
    seen: set[int] = set()
    context = error.__context__
    while context is not None and id(context) not in seen:
        if isinstance(context, KeyboardInterrupt):
            return True
        seen.add(id(context))
        context = context.__context__
    return False


@dataclass
class BuildResult:
    success: bool
    results: dict[str, list[StageResult]] = field(default_factory=dict)
    error: OsbuildError | None = None


class Builder:
    """Builds the pipelines an export needs, resuming at the first uncached stage."""

    def __init__(self, manifest: Manifest, store: ObjectStore, libdir: Path, monitor: Monitor,
                 checkpoints: list[str] | None = None, stage_timeout: float | None = None):
        self.manifest = manifest
        self.store = store
        self.libdir = libdir
        self.monitor = monitor
        self.checkpoints = checkpoints or []
        self.stage_timeout = stage_timeout

    def build(self, exports: list[str], output_dir: Path | None) -> BuildResult:
        plan = self.manifest.order(exports or None)
        self.monitor.begin(plan)
        build = Build(self)
        try:
            build.run(plan, exports, output_dir)
        except OsbuildError as error:
            if after_interrupt(error):
                raise  # a cleanup that failed after Ctrl-C: the CLI reports both
            return BuildResult(False, build.results, error)
        finally:
            self.store.evict(keep=build.used)
        return BuildResult(True, build.results)


class Build:
    """One run of `Builder.build()`: the resources it holds and what it has made so far.

    Every resource is entered into `stack`, which `run()` closes on success, failure
    and Ctrl-C alike; `results` and `used` outlive it, for the report and eviction.
    """

    workdir: Path  # private, in the store's tmp/: trees being built, stage dirs
    sources: BuildSources  # the source files this build reads, its downloads included

    def __init__(self, builder: Builder):
        self.manifest, self.store, self.libdir = builder.manifest, builder.store, builder.libdir
        self.monitor, self.checkpoints = builder.monitor, builder.checkpoints
        self.stage_timeout = builder.stage_timeout
        self.stack = ExitStack()
        self.trees: dict[str, Path] = {}
        self.results: dict[str, list[StageResult]] = {}
        self.used: set[str] = set()  # object ids and source checksums eviction must keep
        self.emulating = False  # qemu-user's binfmt_misc handlers are held (binfmt.py)

    def run(self, plan: list[Pipeline], exports: list[str], output_dir: Path | None) -> None:
        with self.stack as stack:
            self.workdir = stack.enter_context(self.store.tempdir("build"))
            self.sources = stack.enter_context(build_sources(
                self.manifest, self.store, self.libdir, self.monitor, plan, self.used))
            with out_of_space("store", self.store.path):
                for pipeline in plan:
                    self.build_pipeline(pipeline)
            for name in exports:
                assert output_dir is not None
                self.export(name, output_dir)

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
        self.sources.provide(pipeline.name, pipeline.stages[base + 1:])
        root = Path("/") if pipeline.build is None else self.trees[pipeline.build]
        buildroot = BuildRoot(root, pipeline.runner or "org.osbuild.linux", self.libdir,
                              pipeline.source_epoch)
        for stage in pipeline.stages[base + 1:]:
            result = self.run_stage(pipeline, stage, buildroot, tree)
            results.append(result)
            chain[stage.id] = result.metadata
            last = stage is pipeline.stages[-1]
            if last:
                # Held from its first moment: another build's eviction cannot take it.
                obj = self.stack.enter_context(
                    self.store.committed(stage.id, tree, {"stages": dict(chain)}))
                self.trees[pipeline.name] = obj.tree
                self.used.add(stage.id)
            elif self.wants_checkpoint(pipeline, stage, result.duration):
                self.store.commit(stage.id, tree, {"stages": dict(chain)}, copy=True)
                self.used.add(stage.id)

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
                                            self.sources.path, stage_dir)
                binds.append(bind)
                args["inputs"][name] = {"path": bind.target, "data": data}
            nodes: dict[str, str] = {}
            if stage.devices:
                nodes = devices.open_devices(stage.devices, tree, stack)
                args["devices"] = {n: {"path": p} for n, p in nodes.items()}
            if stage.mounts:
                mount_root = stage_dir / "mounts"
                mount_root.mkdir()
                mounts.mount_all(stage.mounts, nodes, mount_root, stack)
                binds.append(Bind(mount_root, MOUNTS, readonly=False))
                args["mounts"] = {m.name: {"path": MOUNTS + m.target.rstrip("/")}
                                  for m in stage.mounts}
            # Beyond the default sandbox, a stage gets what its .meta.json lists under
            # "capabilities" (the network, for unpinned installers).
            info = module_info(self.libdir, stage.kind, stage.name)
            if info and EMULATION in info.capabilities and not self.emulating:
                # Held to the end of the build: later stages may run the tree's programs too.
                self.stack.enter_context(binfmt.emulation())
                self.emulating = True
            space = stack.enter_context(SpaceWatch(self.workdir))

            def on_output(line: str) -> None:
                space.line(line)
                self.monitor.stage_output(stage, line)

            run = buildroot.run(f"{stage.kind}/{stage.name}", args, tree, stage_dir, binds,
                                list(nodes.values()), on_output=on_output,
                                capabilities=info.capabilities if info else frozenset(),
                                timeout=self.stage_timeout)
        result = StageResult(stage.id, stage.name, pipeline.name, run.returncode == 0, False,
                             time.monotonic() - start, run.metadata, run.tail)
        self.monitor.stage_result(stage, result)
        if not result.success:
            self.results.setdefault(pipeline.name, []).append(result)
            if run.timed_out:
                assert self.stage_timeout is not None
                raise StageTimeout(pipeline.name, stage.name, stage.id, run.returncode, run.tail,
                                   self.stage_timeout)
            if run.returncode > 0 and space.ran_short():
                raise StageFailed(pipeline.name, stage.name, stage.id, run.returncode, run.tail,
                                  f"failed with exit status {run.returncode}: no space left on "
                                  f"device in the store {self.store.path}", out_of_space="store")
            raise StageFailed(pipeline.name, stage.name, stage.id, run.returncode, run.tail)
        if pipeline.source_epoch is not None:
            clamp_mtimes(tree, pipeline.source_epoch)
        return result

    # -- exports -----------------------------------------------------------

    def export(self, name: str, output_dir: Path) -> None:
        """Copy a pipeline's tree to output_dir/name; a partial export is never left."""
        if not output_dir.exists():
            # Made by us, so a failed build leaves no empty output directory either.
            self.stack.callback(remove_if_empty, output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        target = output_dir / name
        partial = output_dir / f".{name}.partial-{os.getpid()}"
        self.stack.callback(remove_tree, partial)
        with out_of_space("output directory", output_dir):
            copy_tree(self.trees[name], partial)
        replace_tree(partial, target)  # another build may be exporting there too
        self.monitor.exported(name, str(target))


# -- running out of space ------------------------------------------------------


def says_no_space(text: str) -> bool:
    lowered = text.lower()
    return any(t in lowered for t in NO_SPACE_TEXTS)


class SpaceWatch:
    """The least free space and inodes the file system of `path` had while a stage ran.

    Looked at on every line of the stage's output and every SPACE_WATCH_SECONDS in
    between: a tool that hit ENOSPC may remove its partial files before the stage ends
    (dpkg rolls back the unpack of a package), so the space is free again by the time
    the stage has failed, and its own message may be far above the tail that is kept.
    """

    def __init__(self, path: Path):
        self.path = path
        self.said = False  # a line of the output said the tool ran out of space
        self.low_bytes: int | None = None
        self.low_inodes: int | None = None
        self.size = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, name="space-watch", daemon=True)

    def __enter__(self) -> "SpaceWatch":
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()

    def watch(self) -> None:
        while not self.stop.wait(SPACE_WATCH_SECONDS):
            self.sample()

    def line(self, text: str) -> None:
        """One line of the stage's output; a statvfs costs microseconds, so each is looked at."""
        if not self.said and says_no_space(text):
            self.said = True
        self.sample()

    def sample(self) -> None:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return
        free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use reserved blocks
        inodes = st.f_ffree if st.f_files > 0 else None  # some file systems count none
        with self.lock:
            self.size = st.f_blocks * st.f_frsize
            if self.low_bytes is None or free * st.f_frsize < self.low_bytes:
                self.low_bytes = free * st.f_frsize
            if inodes is not None and (self.low_inodes is None or inodes < self.low_inodes):
                self.low_inodes = inodes

    def ran_short(self) -> bool:
        """Whether the file system was out of space or inodes at some point of the run.

        When the output said so, nearly full counts (the tool wrote to that file system
        faster than it was looked at); otherwise only really full does: a stage may also
        run out of room inside an image it makes, which is not the store's fault.
        """
        with self.lock:
            if self.low_bytes is None:
                return False
            if self.low_bytes < 1024**2 or self.low_inodes == 0:
                return True
            return self.said and self.low_bytes < self.size // 20


@contextmanager
def out_of_space(place: Place, path: Path) -> Iterator[None]:
    """Turn running out of space under `path` into one line that names it, not a traceback.

    The error says which place filled up; the CLI adds the hint naming its option.
    """
    try:
        yield
    except StageFailed:
        raise  # it says which stage failed and why itself
    except (OSError, OsbuildError) as error:
        if isinstance(error, OSError) and error.errno not in NO_SPACE_ERRNOS:
            raise
        if isinstance(error, OsbuildError) and not says_no_space(str(error)):
            raise
        kind = StoreError if place == "store" else OsbuildError
        raise kind(f"no space left on device in the {place} {path}", out_of_space=place) from None


def remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
