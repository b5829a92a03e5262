"""Mounts of a v2 stage: file systems on the stage's devices, mounted on the host.

The engine mounts them under one host directory, which the sandbox sees at
/run/osbuild/mounts; "/" comes before "/boot" because mounts are made in the
order the manifest gives. Each mount is registered in the build's ExitStack,
so everything is unmounted on success, on errors and on Ctrl-C alike. Types,
options, names and targets were validated against SCHEMAS before the build
(osbuild/validate.py); what is checked here can only be known when the stage
runs: whether the kernel mounts the file system, the device nodes, and where
a target leads once the mounts before it are made.
"""

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from osbuild import interrupts
from osbuild.errors import OsbuildError, one_line
from osbuild.interrupts import pause, run_to_end
from osbuild.model import Mount

_READONLY = {
    "description": "Mount the file system read-only",
    "type": "boolean",
    "default": False,
}
_NORECOVERY = {
    "description": "Do not replay the journal when mounting",
    "type": "boolean",
    "default": False,
}


def _schema(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}


# Values end up in one comma-separated `mount -o` string: no commas in them.
SCHEMAS: dict[str, dict[str, Any]] = {
    "org.osbuild.ext4": _schema(readonly=_READONLY, norecovery=_NORECOVERY),
    "org.osbuild.xfs": _schema(readonly=_READONLY, norecovery=_NORECOVERY),
    "org.osbuild.btrfs": _schema(
        readonly=_READONLY,
        norecovery=_NORECOVERY,
        subvol={
            "description": "Subvolume to mount instead of the top level",
            "type": "string",
            "pattern": r"^[^,\s]+$",
        },
        compress={
            "description": "Compression for new writes, e.g. zstd or zstd:3",
            "type": "string",
            "pattern": r"^[a-z0-9]+(:[0-9]+)?$",
        },
    ),
    # Kept so that upstream manifests validate; mounting it always fails (below).
    "org.osbuild.fat": _schema(
        readonly=_READONLY,
        uid={"type": "integer", "minimum": 0},
        gid={"type": "integer", "minimum": 0},
        umask={"type": "string", "pattern": "^[0-7][0-7][0-7]$"},
        shortname={"type": "string", "enum": ["lower", "win95", "winnt", "mixed"]},
    ),
}

FSTYPES = {"org.osbuild.ext4": "ext4", "org.osbuild.xfs": "xfs", "org.osbuild.btrfs": "btrfs"}

UMOUNT_TRIES = 5


def _mount_options(options: dict[str, Any]) -> list[str]:
    opts = []
    if options.get("readonly"):
        opts.append("ro")
    if options.get("norecovery"):
        opts.append("norecovery")
    if "subvol" in options:
        opts.append(f"subvol={options['subvol']}")
    if "compress" in options:
        opts.append(f"compress={options['compress']}")
    return opts


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_mounted(path: Path) -> bool:
    """Whether something is mounted exactly at `path` (a resolved path)."""
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return any(_unescape(line.split()[4]) == target for line in f if line.strip())


def _target_path(name: str, target: str, root: Path) -> Path:
    """The host path for `target`, refusing anything outside the mount root.

    An earlier mount (the "/" file system) may hold symlinks: "/boot" must not
    be followed out of the root by one of them.
    """
    path = Path(os.path.realpath(root / target.lstrip("/")))
    if not path.is_relative_to(root):
        raise OsbuildError(f"mount '{name}': target '{target}' leads outside the mount root")
    return path


def _check(mount: Mount, devices: dict[str, str]) -> None:
    """What can be known only now, checked before the first mount is made."""
    if mount.type == "org.osbuild.fat":
        raise OsbuildError(
            f"mount '{mount.name}': org.osbuild.fat cannot be mounted: this kernel has no vfat "
            "driver; fill FAT file systems with the mtools-based stages (mcopy) instead"
        )
    if mount.source not in devices:
        raise OsbuildError(
            f"mount '{mount.name}': source '{mount.source}' is not a device of this stage"
        )


def _try_unmount(path: Path, interrupts: list[BaseException]) -> str | None:
    """Unmount `path`, retrying while busy, lazily as a last resort; return why it failed."""
    delay = 0.1
    message = ""
    for attempt in range(UMOUNT_TRIES + 1):
        if not is_mounted(path):
            return None
        # The last try is lazy: the file system is detached from the tree now
        # and released when its last user lets go, so nothing stays mounted.
        lazy = attempt == UMOUNT_TRIES
        result, interrupt = run_to_end(["umount", *(["--lazy"] if lazy else []), str(path)])
        if interrupt is not None:
            interrupts.append(interrupt)
        if result.returncode == 0:
            return None
        message = one_line(result.stderr)
        if not lazy:
            pause(delay, interrupts)
            delay *= 2
    return None if not is_mounted(path) else f"cannot unmount {path}: {message}"


def _unmount(name: str, path: Path, strict: bool) -> None:
    """Unmount `path`; a Ctrl-C meanwhile is re-raised only once that is done.

    With `strict` a failure raises; without it (an exception is already on its
    way) it is only reported, so the first error wins.
    """
    interrupts: list[BaseException] = []
    error = _try_unmount(path, interrupts)
    if error and strict and not interrupts:
        raise OsbuildError(f"mount '{name}': {error}")
    if error:
        print(f"osbuild: warning: mount '{name}': {error}", file=sys.stderr)
    if interrupts:
        raise interrupts[0]


@contextlib.contextmanager
def mounted(name: str, fstype: str, device: str, path: Path, opts: list[str]) -> Iterator[None]:
    """Mount `device` as `fstype` with `opts` at `path`; unmount on exit, whatever the way out.

    `name` only labels errors. A Ctrl-C during the mount is held until the
    mount has either failed or been undone, so nothing is left behind.
    """
    cmd = ["mount", "-t", fstype, *(["-o", ",".join(opts)] if opts else []), device, str(path)]
    result, interrupt = run_to_end(cmd)
    if interrupt is not None:
        if result.returncode == 0:
            _unmount(name, path, strict=False)
        raise interrupt
    if result.returncode != 0:
        raise OsbuildError(
            f"mount '{name}': mounting {device} ({fstype}) failed: {one_line(result.stderr)}"
        )
    try:
        yield
    except BaseException:
        _unmount(name, path, strict=False)
        raise
    _unmount(name, path, strict=True)


def mount_all(
    mounts: list[Mount], devices: dict[str, str], root: Path, stack: contextlib.ExitStack
) -> dict[str, str]:
    """Mount each of a stage's (validated) `mounts` under `root`, in order; return name -> path.

    `devices` maps the stage's device names to their nodes (see
    osbuild.devices.open_devices). Unmounting is registered in `stack`, so the
    last mount is undone first.
    """
    for mount in mounts:
        _check(mount, devices)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    paths: dict[str, str] = {}
    for mount in mounts:
        name = mount.name
        # Resolved only now: an earlier mount decides what the path leads to.
        path = _target_path(name, mount.target, root)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OsbuildError(f"mount '{name}': cannot create {mount.target}: {exc}") from None
        opts = _mount_options(mount.options)
        assert mount.source is not None  # _check: it is one of `devices`
        # Deferred: an interrupt between mounting and registering the unmount would leak.
        with interrupts.deferred():
            stack.enter_context(
                mounted(name, FSTYPES[mount.type], devices[mount.source], path, opts)
            )
        paths[name] = str(path)
    return paths
