"""QMP, qemu's monitor protocol, spoken synchronously to a running qemu.

A module of its own because it is one concern with its own reader's context:
a unix socket, qemu.qmp's asyncio client and a private event loop, commands
with timeouts. It knows nothing of booting, images, consoles or artifacts;
verify.qemu starts the process, connects a Monitor to its -qmp socket and
sends the commands (status, powerdown, screendump, pmemsave, quit). VMError
lives here, below verify.qemu, so that a QMP failure is a VMError like any
other failure to start or drive qemu.
"""

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError


class VMError(Exception):
    """qemu could not be started or driven."""


class Monitor:
    """A synchronous QMP connection: qemu.qmp's client on a private event loop."""

    def __init__(self, path: Path):
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.client = QMPClient("osbuild-boot-test")

    def _run(self, coro: Any, timeout: float) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def connect(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise VMError(f"qemu exited with {proc.returncode} before QMP was up")
            if self.path.exists():
                try:
                    self._run(self.client.connect(str(self.path)), 5)
                    return
                except (TimeoutError, QMPError, OSError):
                    pass
            if time.monotonic() > deadline:
                raise VMError(f"no QMP connection after {timeout:.0f}s")
            time.sleep(0.1)

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float = 10) -> Any:
        try:
            return self._run(self.client.execute(command, arguments), timeout)
        except (TimeoutError, QMPError, OSError) as e:
            raise VMError(f"QMP {command}: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        try:
            self._run(self.client.disconnect(), 5)
        except Exception:  # qemu.qmp re-raises whatever ended the session, EOF included
            pass
        finally:
            self.loop.close()
