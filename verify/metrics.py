"""Boot metrics for osbuild-boot-test --json: how long each part of a boot took.

From the serial console (seconds from qemu's start at which each milestone
first showed; the console is read every half second): the boot loader, the
kernel, the login prompt. Once logged in (--login or --ssh-key), from the
guest itself: when `systemctl is-system-running --wait` returned and what it
said, the failed units, `systemd-analyze time` and the ten slowest units of
`systemd-analyze blame`.
"""

import re
import time
from collections.abc import Callable
from typing import Any

from .bootlog import BootResult
from .qemu import VM

UNITS = {"h": 3600.0, "min": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|min|ms|us|s)\b")
BLAME_TOP = 10


def seconds(text: str) -> float | None:
    """systemd's duration ("1min 2.5s", "830ms") in seconds; None if there is none."""
    parts = DURATION.findall(text)
    return round(sum(float(n) * UNITS[u] for n, u in parts), 3) if parts else None


def blame(text: str) -> list[dict[str, Any]]:
    """`systemd-analyze blame` lines as {"unit", "seconds"}, slowest first."""
    entries = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        took = seconds(" ".join(words[:-1]))
        if took is not None:
            entries.append({"unit": words[-1], "seconds": took})
    return entries[:BLAME_TOP]


def collect(vm: VM, result: BootResult, runner: Callable[[str], str] | None
            ) -> dict[str, Any]:
    """What --json prints; from the guest only with a `runner` (a logged-in shell)."""
    found: dict[str, Any] = {
        "success": result.success, "reason": result.reason, "arch": vm.arch.name,
        "accelerator": result.accel, "seconds": dict(result.milestones),
        "hostname": result.hostname}
    if result.state:
        found["system-state"] = result.state
    if runner is None or not result.success:
        return found
    state = runner("systemctl is-system-running --wait 2>/dev/null || true").strip()
    found["seconds"]["system-running"] = round(time.monotonic() - vm.started, 1)
    found["system-state"] = state.splitlines()[-1] if state else None
    failed = runner("systemctl list-units --failed --plain --no-legend --no-pager "
                    "2>/dev/null || true")
    found["failed-units"] = [line.split()[0] for line in failed.splitlines() if line.split()]
    found["startup"] = runner("systemd-analyze time --no-pager 2>/dev/null | head -n 1 "
                              "|| true").strip() or None
    found["blame"] = blame(runner(f"systemd-analyze blame --no-pager 2>/dev/null "
                                  f"| head -n {BLAME_TOP} || true"))
    return found
