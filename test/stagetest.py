"""Run a single stage or assembler in the real sandbox, for stage unit tests.

The host is the build root, as for a manifest without a build pipeline.
"""

import json
from pathlib import Path
from typing import Any

from osbuild.buildroot import Bind, BuildRoot, StageRun

LIBDIR = Path(__file__).resolve().parent.parent


def run_stage(
    name: str,
    options: dict[str, Any],
    tree: Path,
    workdir: Path,
    kind: str = "stages",
    inputs: dict[str, dict[str, Any]] | None = None,
    binds: list[Bind] | None = None,
    devices: list[str] | None = None,
    source_epoch: int | None = None,
    mounts: dict[str, Path] | None = None,
) -> StageRun:
    """Run `kind/name` with `options` on `tree` and return its StageRun.

    `inputs` maps an input name to {"path": host path, "data": {...}}; it is
    bound read-only at /run/osbuild/inputs/<name> like the engine does.
    `mounts` maps a mount name to a host directory that stands in for the mounted
    filesystem: bound read-write at /run/osbuild/mounts/<name>, as args["mounts"].
    """
    args: dict[str, Any] = {"options": options, "inputs": {}, "devices": {}, "mounts": {},
                            "paths": {"inputs": "/run/osbuild/inputs",
                                      "mounts": "/run/osbuild/mounts", "devices": "/dev"},
                            "meta": {"id": "0" * 64}}
    all_binds = list(binds or [])
    for input_name, spec in (inputs or {}).items():
        target = f"/run/osbuild/inputs/{input_name}"
        all_binds.append(Bind(Path(spec["path"]), target))
        args["inputs"][input_name] = {"path": target, "data": spec.get("data", {})}
    for mount_name, host_dir in (mounts or {}).items():
        target = f"/run/osbuild/mounts/{mount_name}"
        all_binds.append(Bind(Path(host_dir), target, readonly=False))
        args["mounts"][mount_name] = {"path": target}
    root = BuildRoot(Path("/"), "org.osbuild.linux", LIBDIR, source_epoch)
    return root.run(f"{kind}/{name}", args, tree, workdir, all_binds, devices or [])


def load_meta(name: str, kind: str = "stages") -> dict[str, Any]:
    return json.loads((LIBDIR / kind / f"{name}.meta.json").read_text())
