"""One hierarchy for every error a user can cause or fix.

The CLI turns an `OsbuildError` into one line on stderr and its exit code;
anything else is a bug and shows a traceback only with --debug.
"""

import json
import signal
from typing import Literal

# Where a build can run out of space; the CLI names the option that moves each.
Place = Literal["store", "output directory"]


class OsbuildError(Exception):
    """A user-facing error: printed as one line, never with a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None,
                 out_of_space: Place | None = None):
        super().__init__(message)
        self.hint = hint
        self.out_of_space = out_of_space  # the place that filled up, when that is the cause


class ManifestError(OsbuildError):
    """The manifest is malformed or invalid; nothing was built."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class ModuleNotFound(ManifestError):
    """A stage, assembler, source, input, device, mount or runner is unknown."""


class ModuleMetaError(OsbuildError):
    """A module's .meta.json is malformed: the libdir is broken, not the manifest."""


class StageFailed(OsbuildError):
    """A stage exited non-zero, was killed, or (with `reason`) failed for a known cause."""

    def __init__(self, pipeline: str, stage: str, stage_id: str, returncode: int, tail: list[str],
                 reason: str | None = None, hint: str | None = None,
                 out_of_space: Place | None = None):
        self.pipeline, self.stage, self.stage_id = pipeline, stage, stage_id
        self.returncode, self.tail = returncode, tail
        if reason is None:
            reason = f"failed with exit status {returncode}"
            if returncode < 0:  # Popen's way of saying the sandbox died of a signal
                reason = f"was killed by signal {signal_name(-returncode)}"
            elif 128 < returncode <= 128 + 64:  # bwrap's (and the shell's) way of saying so
                reason += f" (killed by signal {signal_name(returncode - 128)})"
        super().__init__(f"stage {stage} ({stage_id[:12]}) in pipeline '{pipeline}' {reason}",
                         hint, out_of_space)


class StageTimeout(StageFailed):
    """A stage ran longer than the stage timeout and was killed with its whole sandbox.

    `option` names the setting that sets the timeout, as the caller (the CLI) calls it.
    """

    def __init__(self, pipeline: str, stage: str, stage_id: str, returncode: int, tail: list[str],
                 timeout: float, option: str | None = None):
        self.timeout, self.option = timeout, option
        setting = f" ({option})" if option else ""
        super().__init__(pipeline, stage, stage_id, returncode, tail,
                         f"timed out after {timeout:g} s{setting} and was killed")


def one_line(text: str) -> str:
    """`text` as one line of an error: lines joined by "; ", whitespace runs collapsed.

    Other control characters are escaped: neither a tool's message nor a value
    quoted from the manifest may break the line or reach the terminal raw.
    """
    lines = (" ".join(line.split()) for line in text.splitlines())
    folded = "; ".join(line for line in lines if line)
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in folded)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class BuildRootError(OsbuildError):
    """The build root cannot run stages (for example it has no Python)."""


class SourceError(OsbuildError):
    """A source could not be fetched or did not match its checksum."""


class StoreError(OsbuildError):
    """The object store is unusable (not a store, full, locked)."""


class ToolMissing(OsbuildError):
    """A host tool the engine needs is not installed."""
