"""A build's sources: which files each pipeline reads, fetched and verified on the host.

Stages have no network, so everything they need from outside comes first from
a source executable in `sources/` (osbuild/sourcelib.py is what it runs) into
a cache where a file is named after its checksum (osbuild/checksums.py). The
invariant the whole engine relies on: a file in the cache has that name only
after its checksum was verified, and partial or wrong files never carry one.

A build's sources go plan -> pin -> fetch -> publish here (`build_sources`):
what each pipeline will need downloaded is planned when the build starts and
fetched in the background (`Prefetcher`), so the OS pipeline's packages
download while the build root's are installed; before a pipeline's stages
run, `BuildSources.provide` waits for its batch, pins the files its stages
read, fetches what is still missing and publishes the downloads to the store.
`fetch` runs one source executable and turns its failures into SourceError.
"""

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from . import inputs, interrupts
from .checksums import TEMP_PREFIX, InvalidChecksum, parse_checksum, verify_file
from .errors import ModuleNotFound, OsbuildError, SourceError
from .model import Manifest, Pipeline, Stage
from .monitor import Monitor
from .objectstore import ObjectStore, SourcePins

# pipeline name -> source type -> {checksum: item}
Batches = dict[str, dict[str, dict[str, Any]]]


# --- a build's sources -------------------------------------------------------


@contextmanager
def build_sources(manifest: Manifest, store: ObjectStore, libdir: Path, monitor: Monitor,
                  plan: list[Pipeline], used: set[str]) -> Iterator["BuildSources"]:
    """The sources of a build that runs `plan`: pinned for it, fetched ahead while it runs.

    `used` is the build's set of what the store's eviction must keep: every file
    a pipeline reads is added to it.
    """
    with ExitStack() as stack:
        pins = stack.enter_context(store.source_pins())
        sources = BuildSources(manifest, store, libdir, monitor, pins, used)
        batches = sources.plan(plan)
        with interrupts.deferred():  # a started prefetch is always stopped
            sources.prefetch = Prefetcher(libdir, pins.path, batches, monitor.source_progress,
                                          monitor.message).start()
            stack.callback(sources.prefetch.stop)
        yield sources


class BuildSources:
    """The source files of one build: planned, fetched ahead, pinned, published.

    Stages read them from `path`, where the build's pins (SourcePins: hard links
    another build's eviction cannot take) and its downloads are.
    """

    prefetch: "Prefetcher"

    def __init__(self, manifest: Manifest, store: ObjectStore, libdir: Path, monitor: Monitor,
                 pins: SourcePins, used: set[str]):
        self.manifest, self.store, self.libdir = manifest, store, libdir
        self.monitor, self.pins, self.used = monitor, pins, used

    @property
    def path(self) -> Path:
        return self.pins.path

    def wanted(self, stages: list[Stage]) -> set[str]:
        """Checksums the stages about to run read; v1 stages name no inputs, so: all."""
        wanted = {c for s in stages for i in s.inputs.values() for c in inputs.source_checksums(i)}
        if self.manifest.version == "1" and stages:
            wanted |= {c for items in self.manifest.sources.values() for c in items}
        return wanted

    def missing(self, wanted: set[str], cache: Path | None = None) -> dict[str, dict[str, Any]]:
        """source type -> the wanted items not yet in `cache` (the store's source cache)."""
        cache = cache or self.store.source_dir()
        missing: dict[str, dict[str, Any]] = {}
        for kind, items in self.manifest.sources.items():
            for checksum in sorted(wanted & set(items)):
                if not (cache / checksum).exists():
                    missing.setdefault(kind, {})[checksum] = items[checksum]
        return missing

    def plan(self, plan: list[Pipeline]) -> Batches:
        """What each pipeline will need downloaded, judged by what the store holds now."""
        batches = {}
        for pipeline in plan:
            cached = [self.store.contains(s.id) for s in pipeline.stages]
            base = max((i for i, hit in enumerate(cached) if hit), default=-1)
            if batch := self.missing(self.wanted(pipeline.stages[base + 1:])):
                batches[pipeline.name] = batch
        count = sum(len(items) for b in batches.values() for items in b.values())
        if count:
            self.monitor.message(f"fetching {count} files in the background")
        return batches

    def provide(self, pipeline: str, stages: list[Stage]) -> None:
        """Pin what the stages of `pipeline` about to run read, fetching what is missing.

        Waits for the pipeline's batch of the prefetch first, which did most already;
        downloads land among the pins and are published to the store once verified.
        """
        self.prefetch.wait(pipeline)
        wanted = self.wanted(stages)
        unknown = wanted - {c for items in self.manifest.sources.values() for c in items}
        if unknown:
            raise OsbuildError(f"no source provides {sorted(unknown)[0]}")
        self.used |= wanted
        # Hashed before they are pinned: a store file changed on disk is removed
        # and fetched again below (check_cached says why).
        check_cached(self.store.source_dir(), [c for c in wanted if c not in self.pins],
                     self.monitor.message)
        for checksum in sorted(wanted):
            self.pins.pin(checksum)  # what is not in the store is fetched below
        for kind, items in self.missing(wanted, self.pins.path).items():
            self.monitor.message(f"fetching {len(items)} files ({kind})")
            fetch(self.libdir, kind, items, self.pins.path,
                  on_progress=functools.partial(self.monitor.source_progress, kind))
        self.pins.publish()


# --- fetching ahead ----------------------------------------------------------


class Prefetcher:
    """Fetches a build's batches in a background thread, pipeline by pipeline.

    Each pipeline waits only for its own batch. Cancelling (on failure or Ctrl-C)
    kills the running source and leaves no partial file.
    """

    def __init__(self, libdir: Path, cache: Path, batches: Batches,
                 on_progress: Callable[[str, dict[str, Any]], None],
                 on_message: Callable[[str], None]):
        self.libdir = libdir
        self.cache = cache
        self.batches = batches
        self.on_progress = on_progress
        self.on_message = on_message
        self.done = {name: threading.Event() for name in batches}
        self.errors: dict[str, OsbuildError] = {}
        self.cancel = threading.Event()
        self.thread = threading.Thread(target=self.run, name="prefetch", daemon=True)

    def start(self) -> "Prefetcher":
        self.thread.start()
        return self

    def run(self) -> None:
        try:
            for name, by_type in self.batches.items():
                try:
                    for kind, items in by_type.items():
                        if self.cancel.is_set():
                            return
                        fetch(self.libdir, kind, items, self.cache,
                              on_progress=functools.partial(self.on_progress, kind),
                              cancel=self.cancel)
                        files = f"{len(items)} file" + ("s" if len(items) != 1 else "")
                        self.on_message(f"fetched {files} for pipeline {name} ({kind})")
                except OsbuildError as error:
                    self.errors[name] = error
                except Exception as error:
                    # Anything else (an OSError from the cache) would end this thread
                    # with a traceback nobody sees while the build waits for it.
                    self.errors[name] = SourceError(
                        f"fetching the sources of pipeline {name} failed: {error}")
                finally:
                    self.done[name].set()
        finally:
            # Cancelled or crashed: no pipeline may wait for a batch that never comes.
            for event in self.done.values():
                event.set()

    def wait(self, pipeline: str) -> None:
        """Block until `pipeline`'s files are in the cache; raise what went wrong."""
        if pipeline not in self.done:
            return
        self.done[pipeline].wait()
        if pipeline in self.errors:
            raise self.errors[pipeline]

    def stop(self) -> None:
        self.cancel.set()
        self.thread.join()


# --- the cache ---------------------------------------------------------------


# Files this process hashed itself, by (device, inode, size): each file is hashed
# once per build, however many pipelines read it. A file replaced or truncated
# since is hashed again.
_verified: dict[Path, tuple[int, int, int]] = {}
_verified_lock = threading.Lock()


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size)


def _remember(path: Path, st: os.stat_result) -> None:
    with _verified_lock:
        _verified[path] = _identity(st)


def _hashed_before(path: Path, st: os.stat_result) -> bool:
    with _verified_lock:
        return _verified.get(path) == _identity(st)


def check_cached(
    cache: Path, checksums: Iterable[str], on_message: Callable[[str], None] | None = None
) -> list[str]:
    """Hash the cached files among `checksums` again; remove those that do not match.

    The cache is a plain directory that a disk error, a tool or a person can change
    after a source verified a file, and a stage gets the file itself (a hard link),
    so the engine does not trust the name: every file is hashed before the first
    stage of a build that reads it runs (about a second per 300 MB; fully cached
    builds read nothing). Returns the removed checksums: they count as missing.
    """
    cache = Path(cache)
    removed = []
    for checksum in sorted(checksums):
        path = cache / checksum
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            if _hashed_before(path, st):
                continue
            if verify_file(path, checksum):
                _remember(path, st)
                continue
        _discard(path)
        removed.append(checksum)
        if on_message:
            on_message(f"source file {checksum} in {cache} does not match its checksum "
                       "(changed on disk): removed, fetching it again")
    return removed


def _discard(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


# --- running a source executable ---------------------------------------------


def fetch(
    libdir: Path,
    source_type: str,
    items: dict[str, Any],
    cache: Path,
    options: dict[str, Any] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Make sure every item ends up in `cache` as the file named by its checksum.

    Runs `<libdir>/sources/<source_type>` on the host's Python and forwards its
    progress records to `on_progress`. Items already cached are not handed to
    the source at all. On any failure, also Ctrl-C, the child is killed and its
    temporary files are removed, so the cache holds only verified files. The
    source's word is not taken for it: cached items and whatever the source
    stored are hashed here too (check_cached).
    """
    executable = Path(libdir) / "sources" / source_type
    if "/" in source_type or source_type.startswith(".") or not executable.is_file():
        raise ModuleNotFound(f"source {source_type} not found in {Path(libdir) / 'sources'}")
    for checksum in items:
        try:
            parse_checksum(checksum)
        except InvalidChecksum as e:
            raise SourceError(f"{source_type}: {e}") from None
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    check_cached(cache, items)
    missing = {c: item for c, item in items.items() if not (cache / c).is_file()}
    if not missing:
        return

    request = {"items": missing, "options": options or {}, "cache": str(cache)}
    errors: list[str] = []
    with tempfile.TemporaryFile() as stderr:
        # A process group of its own keeps the terminal's Ctrl-C away from
        # the child: the engine decides when and how it ends.
        # Started through interrupts.popen: an interrupt that lands while the
        # child starts stops it instead of orphaning the download.
        proc = interrupts.popen(
            [sys.executable, str(executable)],
            on_interrupt=_kill,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            process_group=0,
        )
        try:
            with _killed_on(cancel, proc):
                _talk(proc, request, errors, on_progress)
                returncode = proc.wait()
        except BaseException:
            _kill(proc)
            _remove_temps(cache, proc.pid)
            raise
        if cancel is not None and cancel.is_set():
            _remove_temps(cache, proc.pid)
            raise SourceError(f"{source_type}: cancelled")
        if returncode != 0:
            _remove_temps(cache, proc.pid)
            stderr.seek(0)
            raise SourceError(_failure_message(source_type, returncode, errors, stderr))

    for checksum in missing:
        if not (cache / checksum).is_file():
            raise SourceError(f"{source_type} finished but did not provide {checksum}")
        if check_cached(cache, [checksum]):
            raise SourceError(f"{source_type} stored {checksum} with content that does not "
                              "match the checksum: removed it")


@contextmanager
def _killed_on(cancel: threading.Event | None, proc: subprocess.Popen) -> Iterator[None]:
    """Kill `proc` as soon as `cancel` is set (fetches in a background thread use this)."""
    if cancel is None:
        yield
        return
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(0.1):
            if cancel.is_set():
                _kill(proc)
                return

    watchdog = threading.Thread(target=watch, daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        finished.set()
        watchdog.join()


def _talk(
    proc: subprocess.Popen,
    request: dict[str, Any],
    errors: list[str],
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(request).encode("utf-8"))
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died early; its exit status tells why
    for raw in proc.stdout:
        try:
            record = json.loads(raw)
        except ValueError:
            continue  # stray output is not part of the protocol
        if not isinstance(record, dict):
            continue
        if record.get("type") == "error":
            errors.append(str(record.get("message", "")).strip())
        elif record.get("type") == "progress" and on_progress:
            on_progress(record)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _remove_temps(cache: Path, pid: int) -> None:
    for stale in cache.glob(f"{TEMP_PREFIX}{pid}-*"):
        try:
            stale.unlink()
        except FileNotFoundError:
            pass


def _failure_message(
    source_type: str, returncode: int, errors: list[str], stderr: IO[bytes]
) -> str:
    reason = next((e for e in errors if e), "")
    if not reason:
        # No error record: the source crashed; its last stderr line says why.
        lines = stderr.read().decode("utf-8", "replace").splitlines()
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        reason = f"exited with status {returncode}" + (f": {last}" if last else "")
    return f"{source_type}: {' '.join(reason.split())}"
