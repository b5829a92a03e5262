"""Boot a disk image under qemu and wait until it is up: the one-call entry point.

`boot(image)` starts a VM (verify.qemu: -snapshot, so the image is never
changed), waits for the org.osbuild.test boot marker or a login prompt, and
stops qemu again, whatever happens. For talking to the booted guest (SSH,
HTTP, the console), use verify.qemu.VM directly.

A system that came up `degraded` (a unit failed) counts as booted: the image
may be someone else's. `require_running` is for images whose failed unit is a
bug, as this project's own are.
"""

import re
from pathlib import Path

from .bootlog import LOGIN, BootResult
from .qemu import VM

__all__ = ["LOGIN", "BootResult", "boot", "failed_units", "require_running"]


def failed_units(result: BootResult) -> list[str]:
    """The units the boot marker names as failed ("failed: UNIT load active sub ...")."""
    return [line.split()[1] for line in result.marker[1:]
            if line.startswith("failed: ") and len(line.split()) > 1]


def require_running(vm: VM, result: BootResult) -> BootResult:
    """`result`, failed unless the boot marker says `running` (artifacts saved as for any
    failed boot). Only the marker tells: a login prompt alone says nothing of the units."""
    if not result.success or result.state == "running":
        return result
    if result.state is None:
        result.reason = (f"{result.reason}, but no boot marker says whether the system is "
                         "running")
    else:
        failed = failed_units(result)
        result.reason = (f"the system is {result.state}, not running"
                         + (f" (failed: {', '.join(failed)})" if failed else ""))
    result.success = False
    result.artifacts = vm.save_artifacts(result.reason)
    return result


def boot(image: Path, timeout: float | None = None, uefi: bool = False, memory: int = 1024,
         expect: re.Pattern[str] = LOGIN, artifacts: Path | None = None,
         until: str = "any", running: bool = False) -> BootResult:
    """Boot `image`; wait up to `timeout` seconds (default: scaled to the accelerator).

    With `running`, wait for the boot marker and succeed only if it says `running`.
    """
    with VM(image, uefi=uefi, memory=memory, forwards=(), artifacts=artifacts) as vm:
        if not running:
            return vm.wait_boot(timeout, until=until, login=expect)
        return require_running(vm, vm.wait_boot(timeout, until="marker", login=expect))
