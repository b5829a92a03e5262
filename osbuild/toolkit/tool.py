"""Running a build root's tools from a stage: one way to call them, one way to fail.

Stages are thin: their work is done by tools (sfdisk, useradd, mmdebstrap,
qemu-img, ...). Every stage runs them through run(), so a failed tool always
ends the stage the same way: the tool's whole output in the build log, then one
api.fail line that says what the tool was for and the tool's own words, never a
traceback. Long-running tools stream their output to the log as they go.

Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from typing import IO, Any

import osbuild.api

# How many of a streamed tool's last lines are kept to explain its failure.
TAIL_LINES = 20

ERROR_WORDS = ("error", "fail", "cannot", "can't", "unable", "invalid", "no such")


def reason(text: str, code: int | None = None) -> str:
    """The line of a tool's output that says what went wrong.

    Tools often follow their error with usage text or detail, so usage text is
    left out and the first line that says it is an error wins; else the last
    line, which is where a tool that only says one thing says it. The whole
    output is in the build log.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"exit status {code}" if code is not None else "no error output"
    usage = next((i for i, line in enumerate(lines) if line.lower().startswith("usage:")), 0)
    lines = lines[:usage] or lines
    return next((line for line in lines if any(w in line.lower() for w in ERROR_WORDS)),
                lines[-1])


def run(cmd: Sequence[str], what: str, *, env: Mapping[str, str] | None = None,
        stdin: "str | IO[bytes] | None" = None, stdout: "IO[bytes] | None" = None,
        stream: bool = False, log: bool = False, check: bool = True, quiet: bool = False,
        ) -> subprocess.CompletedProcess[str]:
    """Run a tool for `what` (e.g. "partitioning /dev/loop0"); return its result.

    By default the output is captured and returned; on failure it goes to the
    build log and the stage ends with "`what` failed: <the tool's reason>".
    `stream`: the output goes to the log line by line as the tool runs (for
    tools that take long), and only its last lines are kept. `log`: captured
    output goes to the log on success too (warnings worth keeping). `stdin` is
    text to feed the tool or a file to read from; `stdout` a file to write the
    tool's output to instead of capturing it. `check=False` returns a failed
    result for the caller to judge (a missing tool still ends the stage);
    `quiet` keeps its output out of the log too, for a probe whose failure is
    an answer ("is there a partition table?").
    """
    args = list(cmd)
    try:
        if stream:
            proc = _streamed(args, env, stdin)
        else:
            proc = subprocess.run(
                args, env=env, check=False,
                input=stdin if isinstance(stdin, str) else None,
                stdin=None if stdin is None or isinstance(stdin, str) else stdin,
                stdout=stdout if stdout is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=stdout is None,
            )
            if stdout is not None:  # binary: the output went to a file
                raw: Any = proc.stderr
                proc = subprocess.CompletedProcess(
                    args, proc.returncode, "", raw.decode("utf-8", "replace"))
    except FileNotFoundError:
        osbuild.api.fail(f"{what}: {args[0]} is not installed in the build root")
    failed = proc.returncode != 0
    if not stream and ((failed and not quiet) or log):
        sys.stdout.flush()
        sys.stderr.write(proc.stdout + proc.stderr)
        sys.stderr.flush()
    if failed and check:
        output = proc.stderr or proc.stdout
        osbuild.api.fail(f"{what} failed: {reason(output, proc.returncode)}")
    return proc


def _streamed(cmd: list[str], env: Mapping[str, str] | None,
              stdin: "str | IO[bytes] | None") -> subprocess.CompletedProcess[str]:
    """Run `cmd` with its output copied to ours as it comes; keep its last lines."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    feed = subprocess.PIPE if isinstance(stdin, str) else stdin
    with subprocess.Popen(cmd, env=env, stdin=feed, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        if isinstance(stdin, str):
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line)
        code = proc.wait()
    return subprocess.CompletedProcess(cmd, code, "".join(tail), "")
