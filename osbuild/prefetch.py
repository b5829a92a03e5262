"""Fetch a build's sources in the background, pipeline by pipeline.

The OS pipeline's packages download while the build root's are installed:
each pipeline waits only for its own batch. Cancelling (on failure or
Ctrl-C) kills the running source and leaves no partial file.
"""

import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import sources
from .errors import OsbuildError, SourceError

# pipeline name -> source type -> {checksum: item}
Batches = dict[str, dict[str, dict[str, Any]]]


class Prefetcher:
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
                        sources.fetch(self.libdir, kind, items, self.cache,
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
