"""Progress reporting: a human log by default, RFC 7464 JSON records for machines.

The engine calls the same hooks on every monitor; a monitor only formats.
"""

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from .model import Pipeline, Stage
from .sizes import format_size


@dataclass
class StageResult:
    """One stage's outcome; identical for a fresh run and a cache hit but for `cached`."""

    id: str
    name: str
    pipeline: str
    success: bool
    cached: bool
    duration: float = 0.0
    metadata: dict[str, Any] | None = None
    output: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.name, "success": self.success, "cached": self.cached,
                "duration": round(self.duration, 3), "metadata": self.metadata}


class Monitor:
    """The hooks the engine calls; the base class ignores them all."""

    def begin(self, pipelines: list[Pipeline]) -> None: ...
    def pipeline_start(self, pipeline: Pipeline) -> None: ...
    def stage_start(self, pipeline: Pipeline, stage: Stage) -> None: ...
    def stage_output(self, stage: Stage, line: str) -> None: ...
    def stage_result(self, stage: Stage, result: StageResult) -> None: ...
    def source_progress(self, source: str, record: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def exported(self, name: str, path: str) -> None: ...
    def finish(self, success: bool, results: list[StageResult], error: str | None) -> None: ...


class LogMonitor(Monitor):
    """One line per stage (name, id prefix, cached or ran, duration), output indented."""

    def __init__(self, out: TextIO = sys.stdout):
        self.out = out
        self.start = time.monotonic()
        self.downloads: dict[str, int] = {}  # checksum -> size, for completed files
        self.last_progress = 0.0

    def write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def pipeline_start(self, pipeline: Pipeline) -> None:
        self.write(f"pipeline {pipeline.name}")

    def stage_start(self, pipeline: Pipeline, stage: Stage) -> None:
        self.write(f"  {stage.name} {stage.id[:12]} running")

    def stage_output(self, stage: Stage, line: str) -> None:
        self.write(f"      {line}")

    def stage_result(self, stage: Stage, result: StageResult) -> None:
        if result.cached:
            state = "cached"
        elif result.success:
            state = f"ran {result.duration:.1f}s"
        else:
            state = f"FAILED after {result.duration:.1f}s"
        self.write(f"  {stage.name} {stage.id[:12]} {state}")

    def source_progress(self, source: str, record: dict[str, Any]) -> None:
        """A running total every few seconds; one line per file would drown the log."""
        if record.get("type") != "progress":
            return
        total, done = record.get("total"), record.get("done", 0)
        if total is not None and done >= total:
            self.downloads[record.get("checksum", "")] = done
        now = time.monotonic()
        if now - self.last_progress < 2:
            return
        self.last_progress = now
        fetched = format_size(sum(self.downloads.values()))
        self.write(f"  {source}: {len(self.downloads)} files fetched so far ({fetched})")

    def message(self, text: str) -> None:
        self.write(text)

    def exported(self, name: str, path: str) -> None:
        self.write(f"exported {name} to {path}")

    def finish(self, success: bool, results: list[StageResult], error: str | None) -> None:
        ran = sum(1 for r in results if not r.cached)
        cached = len(results) - ran
        elapsed = time.monotonic() - self.start
        verdict = "build succeeded" if success else "build FAILED"
        self.write(f"{verdict}: {ran} stages ran, {cached} cached, {elapsed:.1f}s")


class JSONSeqMonitor(Monitor):
    """RFC 7464 JSON text sequences: RS, a JSON record, LF; one record per event."""

    def __init__(self, fd: int):
        self.fd = fd
        self.start = time.monotonic()
        self.context: dict[str, Any] = {}
        self.total = 0
        self.done = 0

    def record(self, **fields: Any) -> None:
        fields.setdefault("context", self.context)
        fields["timestamp"] = time.time()
        data = "\x1e" + json.dumps(fields, sort_keys=True) + "\n"
        os.write(self.fd, data.encode("utf-8"))

    def progress(self) -> dict[str, Any]:
        return {"name": "stages", "total": self.total, "done": self.done}

    def begin(self, pipelines: list[Pipeline]) -> None:
        self.total = sum(len(p.stages) for p in pipelines)

    def pipeline_start(self, pipeline: Pipeline) -> None:
        self.context = {"pipeline": {"name": pipeline.name, "id": pipeline.id}}
        self.record(message=f"starting pipeline {pipeline.name}", progress=self.progress())

    def stage_start(self, pipeline: Pipeline, stage: Stage) -> None:
        self.context = {"pipeline": {"name": pipeline.name, "id": pipeline.id,
                                     "stage": {"name": stage.name, "id": stage.id}}}
        self.record(message=f"starting {stage.name}", progress=self.progress())

    def stage_output(self, stage: Stage, line: str) -> None:
        self.record(message=line)

    def stage_result(self, stage: Stage, result: StageResult) -> None:
        self.done += 1
        record = result.to_json()
        if not result.success:
            record["output"] = result.output
        self.record(message=f"finished {stage.name}", progress=self.progress(),
                    duration=round(result.duration, 3), result=record)

    def source_progress(self, source: str, record: dict[str, Any]) -> None:
        self.record(context={"source": source}, message=record.get("message", ""),
                    progress={"name": "download", "done": record.get("done", 0),
                              "total": record.get("total")}, source=record)

    def message(self, text: str) -> None:
        self.record(message=text)

    def exported(self, name: str, path: str) -> None:
        self.record(message=f"exported {name} to {path}")

    def finish(self, success: bool, results: list[StageResult], error: str | None) -> None:
        self.record(context={}, message="build finished" if success else f"build failed: {error}",
                    duration=round(time.monotonic() - self.start, 3),
                    result={"success": success, "error": error})


MONITORS = {"LogMonitor": LogMonitor, "JSONSeqMonitor": JSONSeqMonitor, "NullMonitor": Monitor}
