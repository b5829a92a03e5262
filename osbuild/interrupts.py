"""SIGINT and SIGTERM: the first one unwinds the build, later ones are ignored.

Unwinding (a KeyboardInterrupt) releases every resource the build holds on the
way out. A second signal raised in the middle of that, say during an unmount or a
tree removal, would cut the cleanup short and leak what it was releasing, so once
the first has come the others are ignored; the cleanup is bounded and takes seconds.

An interrupt may land between any two steps, also between taking a resource and
registering its release: a child started but not yet known to its caller runs on
unseen. Such steps run `deferred()`: an interrupt meanwhile is raised at their end.
A tool that must not be cut short (losetup, mount, umount) runs through
`run_to_end()`: out of the terminal's reach, waited for, its interrupt handed back.
"""

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

from osbuild.errors import ToolMissing

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_depth = 0  # how many deferred() blocks the main thread is in
_pending: int | None = None  # the signal that came during them


def install() -> None:
    """Make SIGINT and SIGTERM interrupt the build (main thread only, as all signal set-up)."""
    for number in SIGNALS:
        signal.signal(number, _interrupt)


def ignore() -> None:
    """From now on SIGINT and SIGTERM change nothing: the build is over or being undone."""
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    global _pending
    ignore()
    if _depth:
        _pending = signum
        return
    _raise(signum)


def _raise(signum: int) -> NoReturn:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@dataclass
class Held:
    """What `deferred(reraise=False)` held back: the signal, if one came."""

    signum: int | None = None

    def exception(self) -> KeyboardInterrupt | None:
        if self.signum is None:
            return None
        return KeyboardInterrupt(signal.Signals(self.signum).name)


@contextmanager
def deferred(reraise: bool = True) -> Iterator[Held]:
    """Hold an interrupt back until the block ends; then raise it, or with `reraise`
    False leave it in the yielded `Held` for the caller to raise when it is ready.

    Only in the main thread, where Python runs signal handlers; elsewhere (and when
    install() was not called) this changes nothing.
    """
    global _depth, _pending
    held = Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    _depth += 1
    try:
        yield held
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            held.signum, _pending = _pending, None
            if reraise:
                _raise(held.signum)


def popen(*args: Any, on_interrupt: Callable[[subprocess.Popen], None],
          **kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen that an interrupt cannot separate from its caller.

    One that lands while the child is being started (it may have run already) is
    raised only after `on_interrupt` has stopped the child. The caller should enter
    its try block right after this returns.
    """
    with deferred(reraise=False) as held:
        proc = subprocess.Popen(*args, **kwargs)
    interrupt = held.exception()
    if interrupt is not None:
        on_interrupt(proc)
        raise interrupt
    return proc


def kill_and_wait(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def run_to_end(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], BaseException | None]:
    """Run `cmd` to its end even through Ctrl-C, and return its result and the interrupt.

    A losetup or mount killed half-way may leave a device attached or a file
    system mounted that nobody knows of. So the child runs in its own session
    (a terminal's Ctrl-C does not reach it) and is waited for; the caller learns
    what it did, cleans up, and then re-raises the interrupt. (Under the osbuild
    command the interrupt is held back from the start, so it cannot land between
    starting the tool and waiting for it either.)
    """
    interrupt: BaseException | None = None
    with deferred(reraise=False) as held:
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ToolMissing(f"{cmd[0]} is not installed (it comes with util-linux)") from None
        while True:
            try:
                out, err = proc.communicate()
                break
            except BaseException as exc:  # deferred: the caller re-raises it
                interrupt = interrupt or exc
    interrupt = interrupt or held.exception()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), interrupt


def pause(seconds: float, interrupts: list[BaseException]) -> None:
    """Sleep during a cleanup; a Ctrl-C is kept in `interrupts` so the cleanup can finish."""
    try:
        time.sleep(seconds)
    except BaseException as exc:  # deferred: the cleanup re-raises it when done
        interrupts.append(exc)
