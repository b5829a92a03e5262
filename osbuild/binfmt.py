"""qemu-user for foreign trees: the host's binfmt_misc handlers, held for a build.

A stage whose meta.json lists the EMULATION capability runs programs of the
tree it builds (maintainer scripts, dpkg in a chroot), and the tree may be of
another architecture. The kernel runs those through qemu-user once a binfmt_misc
handler is registered with the F flag (the interpreter is opened at
registration, so it works inside the sandbox's chroots). The handlers are
qemu-user-static's own binfmt.d files; the engine registers those the host
lacks while a build needs them and removes them afterwards, so the host's
handlers are left as they were found. Builds running side by side share the
registrations: a shared lock on USERS marks a build using them, and the last
build to let go removes what was registered (and unmounts binfmt_misc if
the engine mounted it).
"""

import fcntl
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OsbuildError
from .toolkit.architectures import ARCHITECTURES

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
# qemu-user-static's handler definitions, in systemd's binfmt.d format.
HANDLER_DIR = Path("/usr/lib/binfmt.d")
STATE = Path("/run/osbuild-deb/binfmt")
MUTEX = "mutex"  # held exclusively while handlers are added or removed
USERS = "users"  # held shared by every build that uses them
OURS = "ours"  # the names this engine registered, one per line
MOUNTED = "mounted"  # present when this engine mounted binfmt_misc


class EmulationError(OsbuildError):
    """binfmt_misc cannot be set up on this host."""


def available_handlers() -> dict[str, str]:
    """name -> registration line of qemu-user-static's handler for each foreign architecture."""
    found = {}
    host = platform.machine()
    for name in sorted(f"qemu-{a.machine}" for a in ARCHITECTURES.values() if a.machine != host):
        conf = HANDLER_DIR / f"{name}.conf"
        if conf.is_file():
            line = conf.read_text().strip()
            interpreter = line.split(":")[6] if line.count(":") >= 7 else ""
            if interpreter and os.path.exists(interpreter):
                found[name] = line
    return found


def registered() -> set[str]:
    if not (BINFMT_MISC / "register").exists():
        return set()
    return {p.name for p in BINFMT_MISC.iterdir() if p.name not in ("register", "status")}


def _mount() -> bool:
    """Mount binfmt_misc if it is not; whether this call mounted it."""
    if (BINFMT_MISC / "register").exists():
        return False
    proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_MISC)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EmulationError("cannot mount binfmt_misc for qemu-user: "
                             + (proc.stderr.strip() or "mount failed"))
    return True


def _register(lines: dict[str, str]) -> list[str]:
    added = []
    for name, line in lines.items():
        try:
            (BINFMT_MISC / "register").write_text(line)
        except OSError as e:
            raise EmulationError(f"cannot register the binfmt_misc handler {name}: "
                                 f"{e.strerror}") from e
        added.append(name)
    return added


def _unregister(names: list[str]) -> None:
    for name in names:
        entry = BINFMT_MISC / name
        if entry.exists():
            entry.write_text("-1")


@contextmanager
def _locked(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


def _read_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@contextmanager
def emulation() -> Iterator[set[str]]:
    """Hold qemu-user's handlers for the body; yields the names now registered.

    Registers what qemu-user-static offers and the host lacks. A host without
    qemu-user-static gets nothing: the stage that needs a handler says so.
    """
    offered = available_handlers()
    if not offered:
        yield registered()
        return
    STATE.mkdir(parents=True, exist_ok=True)
    users = os.open(STATE / USERS, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        with _locked(STATE / MUTEX, fcntl.LOCK_EX):
            fcntl.flock(users, fcntl.LOCK_SH)
            if _mount():
                (STATE / MOUNTED).touch()
            present = registered()
            added = _register({n: line for n, line in offered.items() if n not in present})
            if added:
                ours = STATE / OURS
                ours.write_text("".join(f"{n}\n" for n in _read_lines(ours) + added))
        yield registered()
    finally:
        with _locked(STATE / MUTEX, fcntl.LOCK_EX):
            try:
                # Only the last user gets the lock exclusively.
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                last = True
            except BlockingIOError:
                last = False
            os.close(users)
            if last:
                _release()


def _release() -> None:
    """Remove what the engine registered, and binfmt_misc if the engine mounted it."""
    ours = STATE / OURS
    _unregister(_read_lines(ours))
    ours.unlink(missing_ok=True)
    mounted = STATE / MOUNTED
    if mounted.exists() and (BINFMT_MISC / "register").exists() and not registered():
        subprocess.run(["umount", str(BINFMT_MISC)], capture_output=True, check=False)
    mounted.unlink(missing_ok=True)
