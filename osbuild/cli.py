"""What the small commands (osbuild-store, osbuild-depsolve-deb, osbuild-mpp) share:
argument errors as exit 2, user errors as one line "PROG: error: ...", no traceback."""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .errors import OsbuildError


class UsageError(OsbuildError):
    """The command line is wrong."""

    exit_code = 2


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so `run` reports it."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def run(prog: str, body: Callable[[], None]) -> int:
    """Run a command's body and turn what users can cause into an exit status."""
    try:
        body()
    except OsbuildError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def read_input(path: str) -> tuple[str, str]:
    """(name for messages, text) of a file argument, "-" meaning standard input."""
    if path == "-":
        return "<stdin>", sys.stdin.read()
    return path, Path(path).read_text(encoding="utf-8")
