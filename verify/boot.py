"""Boot a disk image under qemu and wait until it reaches a login prompt.

This is the seed of the test/vm harness (issue 5): qemu runs with -snapshot
(the image is never changed), the serial console goes to a log file, and qemu
is always killed and its temp files removed, whatever happens. KVM hangs at
kernel start on these machines, so TCG is the default; set
OSBUILD_BOOT_ACCEL=kvm to try KVM.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOGIN = re.compile(r"^(?P<host>\S+) login: ", re.MULTILINE)
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass
class BootResult:
    success: bool
    reason: str
    hostname: str | None
    seconds: float
    log: str

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.splitlines()[-lines:])


def image_format(image: Path) -> str:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                         capture_output=True, text=True, check=True).stdout
    import json

    return str(json.loads(out)["format"])


def qemu_command(image: Path, serial_log: Path, workdir: Path, uefi: bool, accel: str,
                 memory: int) -> list[str]:
    cmd = ["qemu-system-x86_64", "-accel", accel, "-m", str(memory), "-smp", "2",
           "-nodefaults", "-display", "none", "-no-reboot",
           "-drive", f"file={image},format={image_format(image)},if=virtio,snapshot=on",
           "-serial", f"file:{serial_log}",
           "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
    if accel == "tcg":
        cmd += ["-cpu", "max"]
    if uefi:
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,file={vars_copy}"]
    return cmd


@contextmanager
def running(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """qemu for the duration of the block; killed on the way out, always."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def boot(image: Path, timeout: float = 300, uefi: bool = False, memory: int = 1024,
         expect: re.Pattern[str] = LOGIN) -> BootResult:
    """Boot `image` and wait up to `timeout` seconds for `expect` on the serial console."""
    accel = os.environ.get("OSBUILD_BOOT_ACCEL", "tcg")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="osbuild-boot-") as tmp:
        workdir = Path(tmp)
        serial_log = workdir / "serial.log"
        serial_log.touch()
        cmd = qemu_command(image.resolve(), serial_log, workdir, uefi, accel, memory)
        with running(cmd) as proc:
            while True:
                log = serial_log.read_text(errors="replace")
                match = expect.search(log)
                elapsed = time.monotonic() - start
                if match:
                    host = match.groupdict().get("host")
                    return BootResult(True, "reached the login prompt", host, elapsed, log)
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    return BootResult(False, f"qemu exited with {proc.returncode}: "
                                      f"{err.strip()[-300:]}", None, elapsed, log)
                if elapsed > timeout:
                    return BootResult(False, f"no login prompt after {timeout:.0f}s ({accel})",
                                      None, elapsed, log)
                time.sleep(0.5)
