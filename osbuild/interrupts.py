"""SIGINT and SIGTERM: the first one unwinds the build, later ones are ignored.

Unwinding (a KeyboardInterrupt) releases every resource the build holds on the
way out. A second signal raised in the middle of that, say during an unmount or a
tree removal, would cut the cleanup short and leak what it was releasing, so once
the first has come the others are ignored; the cleanup is bounded and takes seconds.

An interrupt may land between any two steps, also between taking a resource and
registering its release: a child started but not yet known to its caller runs on
unseen. Such steps run `deferred()`: an interrupt meanwhile is raised at their end.
"""

import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

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
