"""Devices of a v2 stage: loop devices set up on the host, handed into the sandbox.

The sandbox cannot create loop devices, so the engine attaches them here before
the stage starts and passes the nodes in (bwrap --dev-bind). There is no udev on
the build hosts: partition nodes (/dev/loopNpM) never appear, which is why every
partition gets its own loop device via --offset/--sizelimit instead.

Every device is a context manager held in the build's ExitStack, so it is
detached on success, on errors and on Ctrl-C alike. Types and options were
validated against SCHEMAS before the build (osbuild/validate.py); what is
checked here can only be known when the stage runs: the image in the tree
and whether the device fits in it.
"""

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from osbuild import interrupts
from osbuild.errors import OsbuildError, one_line
from osbuild.interrupts import pause, run_to_end
from osbuild.model import Device

# A path inside the tree: relative or absolute (taken as relative to the tree),
# and never with a ".." component.
TREE_PATH_PATTERN = r"^(?!(.*/)?\.\.(/|$)).+$"

SCHEMAS: dict[str, dict[str, Any]] = {
    "org.osbuild.loopback": {
        "type": "object",
        "additionalProperties": False,
        "required": ["filename"],
        "properties": {
            "filename": {
                "description": "File to attach, relative to the tree the stage works on",
                "type": "string",
                "pattern": TREE_PATH_PATTERN,
            },
            "start": {
                "description": "Start of the data segment, in sectors",
                "type": "integer",
                "minimum": 0,
                "default": 0,
            },
            "size": {
                "description": "Size of the data segment, in sectors (default: to the end)",
                "type": "integer",
                "minimum": 1,
            },
            "sector-size": {
                "description": "Logical sector size of the device, in bytes",
                "type": "integer",
                "enum": [512, 1024, 2048, 4096],
                "default": 512,
            },
            "lock": {
                "description": "Hold a BSD lock on the device node while it is in use",
                "type": "boolean",
                "default": False,
            },
            "partscan": {
                "description": "Accepted for compatibility and ignored: without udev no "
                "partition nodes ever appear; use one device per partition instead",
                "type": "boolean",
                "default": False,
            },
        },
    },
}

# How often and how long to retry: another process may grab the free device we
# were offered, and a device may still be held for a moment after an unmount.
ATTACH_TRIES = 10
DETACH_TRIES = 6
LOCK_TIMEOUT = 10.0
# How long a detached device still in use may take to go with its last user.
# Until it goes, a file system on it may still be writing into the image (a
# lazily unmounted one flushes when released), so the stage is not done.
RELEASE_TIME = 30.0


def _sysfs(device: str) -> Path:
    return Path("/sys/block") / os.path.basename(device) / "loop"


def _identity(device: str) -> tuple[str, str] | None:
    """The (backing file, offset) the kernel has for `device`, or None if it is free."""
    loop = _sysfs(device)
    try:
        backing = (loop / "backing_file").read_text().rstrip("\n")
        offset = (loop / "offset").read_text().strip()
    except OSError:
        return None
    # A deleted image is still ours; the kernel only marks its name.
    return backing.removesuffix(" (deleted)"), offset


def _attach(
    image: Path, offset: int, size: int | None, sector_size: int, read_only: bool = False
) -> str:
    cmd = ["losetup", "--find", "--show", "--offset", str(offset)]
    if read_only:
        cmd.append("--read-only")
    if size is not None:
        cmd += ["--sizelimit", str(size)]
    if sector_size != 512:
        cmd += ["--sector-size", str(sector_size)]
    cmd.append(str(image))
    for attempt in range(ATTACH_TRIES):
        result, interrupt = run_to_end(cmd)
        device = result.stdout.strip() if result.returncode == 0 else ""
        if interrupt is not None:
            if device:
                _detach(device, _identity(device), strict=False)
            raise interrupt
        if device:
            return device
        # --find offers a free device that another process can take before us;
        # the kernel then says the device is busy, and a new --find picks another.
        if "busy" not in result.stderr or attempt == ATTACH_TRIES - 1:
            raise OsbuildError(f"cannot attach {image} to a loop device: {one_line(result.stderr)}")
        time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _try_detach(
    device: str, identity: tuple[str, str] | None, interrupts: list[BaseException]
) -> str | None:
    """Detach `device`, retrying while it is busy; return why it failed, or None."""
    delay = 0.1
    message = ""
    for attempt in range(DETACH_TRIES):
        current = _identity(device)
        # Free already, or freed and reused by someone else: not ours to touch.
        if current is None or (identity is not None and current != identity):
            return None
        result, interrupt = run_to_end(["losetup", "--detach", device])
        if interrupt is not None:
            interrupts.append(interrupt)
        if "No such device or address" in result.stderr:
            return None
        if result.returncode == 0:
            return _wait_released(device, current, interrupts)
        message = one_line(result.stderr)
        if attempt < DETACH_TRIES - 1:
            pause(delay, interrupts)
            delay *= 2
    return f"cannot detach loop device {device}: {message}"


def _wait_released(
    device: str, bound: tuple[str, str], interrupts: list[BaseException]
) -> str | None:
    """Wait until `device` is no longer bound to `bound`; return why it still is, or None.

    A device still open elsewhere (a lazily unmounted file system, a tool that
    probes block devices) is only marked for auto-clear and goes with its last
    user. The image is not finished before that, so the caller waits for it.
    """
    deadline = time.monotonic() + RELEASE_TIME
    delay = 0.01
    while _identity(device) == bound:
        if time.monotonic() > deadline:
            users = "; ".join(device_users(device)) or "no process shows it"
            return (
                f"loop device {device} ({bound[0]}) is still in use {RELEASE_TIME:.0f} s "
                f"after its detach: {users}"
            )
        pause(delay, interrupts)
        delay = min(delay * 2, 0.25)
    return None


def device_users(device: str) -> list[str]:
    """Who keeps `device` busy: processes with the node open or a file, cwd or root
    on it, and mount namespaces (named by a process in them) that still mount it."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return []
    numbers = f"{os.major(rdev)}:{os.minor(rdev)}"
    found, namespaces = [], set()
    for pid in sorted(int(n) for n in os.listdir("/proc") if n.isdigit()):
        proc = Path(f"/proc/{pid}")
        try:
            comm = (proc / "comm").read_text().strip()
            links = [proc / "cwd", proc / "root", *(proc / "fd").iterdir()]
            namespace = os.readlink(proc / "ns/mnt")
            mountinfo = (proc / "mountinfo").read_text()
        except OSError:  # gone meanwhile
            continue
        for link in links:
            try:
                st = os.stat(link)
            except OSError:
                continue
            name = link.name if link.parent == proc else f"fd {link.name}"
            if st.st_rdev == rdev and link.parent != proc:
                found.append(f"pid {pid} ({comm}) has it open")
            elif st.st_dev == rdev:
                found.append(f"pid {pid} ({comm}) uses a file on it ({name})")
            else:
                continue
            break
        if namespace not in namespaces and any(
            line.split()[2] == numbers for line in mountinfo.splitlines()
        ):
            namespaces.add(namespace)
            found.append(f"it is mounted in the mount namespace of pid {pid} ({comm})")
    return found


def _detach(device: str, identity: tuple[str, str] | None, strict: bool) -> None:
    """Detach `device`; a Ctrl-C meanwhile is re-raised only once that is done.

    `identity` is what the device showed right after we attached it. With
    `strict` a failure raises; without it (an exception is already on its way)
    it is only reported, so the first error wins.
    """
    interrupts: list[BaseException] = []
    error = _try_detach(device, identity, interrupts)
    if error and strict and not interrupts:
        raise OsbuildError(error)
    if error:
        print(f"osbuild: warning: {error}", file=sys.stderr)
    if interrupts:
        raise interrupts[0]


@contextlib.contextmanager
def _locked(device: str) -> Iterator[None]:
    """Hold a BSD lock on the device node: udev and well-behaved tools keep away."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OsbuildError(f"cannot lock {device}: held by another process") from None
                time.sleep(0.1)
        yield
    finally:
        # Closed before the detach: an open node would make the kernel defer it.
        os.close(fd)


@contextlib.contextmanager
def loopback(
    image: Path,
    offset: int,
    size: int | None,
    sector_size: int = 512,
    lock: bool = False,
    read_only: bool = False,
) -> Iterator[str]:
    """Attach `image` from byte `offset` for `size` bytes (None: to its end); yield /dev/loopN.

    Offsets and sizes here are in bytes, as losetup takes them; `sector_size`
    is the logical block size the device reports. With `lock` the device node
    is flock()ed for as long as it is in use. With `read_only` the kernel refuses
    every write, so not even a journal replay can change the image. The device
    is detached on exit, whatever the way out.
    """
    device = _attach(image, offset, size, sector_size, read_only)
    identity = _identity(device)
    try:
        with _locked(device) if lock else contextlib.nullcontext():
            yield device
    except BaseException:
        _detach(device, identity, strict=False)
        raise
    _detach(device, identity, strict=True)


def _image_path(name: str, filename: str, tree: Path) -> Path:
    """The image `filename` names in `tree`, refusing anything that leads out of it."""
    root = tree.resolve()
    path = (root / filename.lstrip("/")).resolve()
    if not path.is_relative_to(root):
        raise OsbuildError(f"device '{name}': filename '{filename}' leads outside the tree")
    if not path.exists():
        raise OsbuildError(f"device '{name}': image file '{filename}' does not exist in the tree")
    if not path.is_file():
        raise OsbuildError(f"device '{name}': '{filename}' is not a regular file")
    return path


def _plan_loopback(name: str, options: dict[str, Any], tree: Path) -> tuple[Path, int, int | None]:
    """Check a loopback device fully before anything is attached."""
    filename = options["filename"]
    image = _image_path(name, filename, tree)
    sector = options.get("sector-size", 512)
    start, count = options.get("start", 0), options.get("size")
    file_size = image.stat().st_size
    offset = start * sector
    if offset + sector > file_size:
        raise OsbuildError(
            f"device '{name}': start sector {start} ({sector}-byte sectors) is at or "
            f"beyond the end of '{filename}' ({file_size} bytes)"
        )
    if count is not None and offset + count * sector > file_size:
        raise OsbuildError(
            f"device '{name}': start {start} + size {count} ({sector}-byte sectors) "
            f"runs past the end of '{filename}' ({file_size} bytes)"
        )
    return image, offset, None if count is None else count * sector


def open_devices(
    devices: dict[str, Device], tree: Path, stack: contextlib.ExitStack
) -> dict[str, str]:
    """Attach every (validated) device of a stage inside `stack`; return name -> /dev/loopN.

    All devices are checked before the first is attached, so a device that
    does not fit fails fast and leaves nothing behind.
    """
    plans = []
    for name, device in devices.items():
        # org.osbuild.loopback is the one type there is (validation saw to that).
        image, offset, size = _plan_loopback(name, device.options, tree)
        plans.append((name, image, offset, size, device.options))
    opened: dict[str, str] = {}
    for name, image, offset, size, options in plans:
        # "partscan" is ignored on purpose: no udev, so partition nodes would
        # never show up; manifests use one device per partition instead.
        # Deferred: an interrupt between attaching and registering the detach would leak.
        with interrupts.deferred():
            opened[name] = stack.enter_context(
                loopback(
                    image,
                    offset,
                    size,
                    sector_size=options.get("sector-size", 512),
                    lock=options.get("lock", False),
                )
            )
    return opened
