"""Boot a disk image under qemu and wait until it is up: the one-call entry point.

`boot(image)` starts a VM (verify.qemu: -snapshot, so the image is never
changed), waits for the org.osbuild.test boot marker or a login prompt, and
stops qemu again, whatever happens. For talking to the booted guest (SSH,
HTTP, the console), use verify.qemu.VM directly.
"""

import re
from pathlib import Path

from .qemu import LOGIN, VM, BootResult

__all__ = ["LOGIN", "BootResult", "boot"]


def boot(image: Path, timeout: float | None = None, uefi: bool = False, memory: int = 1024,
         expect: re.Pattern[str] = LOGIN, artifacts: Path | None = None,
         until: str = "any") -> BootResult:
    """Boot `image`; wait up to `timeout` seconds (default: scaled to the accelerator)."""
    with VM(image, uefi=uefi, memory=memory, forwards=(), artifacts=artifacts) as vm:
        return vm.wait_boot(timeout, until=until, login=expect)
