"""The stage side of the stage contract.

A stage runs inside bubblewrap and talks to the engine only through files in
/run/osbuild/api: it reads its arguments from `arguments` and may leave JSON
metadata in `metadata`. Stdlib only: this module runs on the build root's
Python, not the host's.
"""

import json
import os
import sys
from typing import Any, NoReturn

API_DIR = "/run/osbuild/api"
ARGUMENTS = os.path.join(API_DIR, "arguments")
METADATA = os.path.join(API_DIR, "metadata")


def arguments(path: str = ARGUMENTS) -> dict[str, Any]:
    """Return the arguments the engine passed to this stage.

    Keys: tree (the tree to work on), options, inputs {name: {path, data}},
    devices {name: {path}}, mounts {name: {path}}, paths, meta {id}.
    """
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def metadata(data: dict[str, Any], path: str = METADATA) -> None:
    """Return JSON metadata from the stage; it is stored with the stage's object."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """End the stage with a one-line error instead of a traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
