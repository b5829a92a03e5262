"""Pick the qemu accelerator: KVM when it really runs a kernel, TCG otherwise.

/dev/kvm can exist and still be useless: on some hosts a KVM guest runs a boot
sector fine but hangs as soon as the Linux kernel takes over. So the probe
boots a real kernel (the host's newest /boot/vmlinuz-*, no initrd) and requires
it to get all the way to its "no root file system" panic, which takes about a
second under KVM and three under TCG. Only then is KVM used. A qemu that fails
to start under KVM (on some hosts it asserts in kvm_buf_set_msrs) is told at
once; a guest that hangs is given up after PROBE_SECONDS.

The host's kernel, not the image's: it is the one image-info's appliance boots,
it is there before any image is read, and the image's may be another
architecture's (those boot under TCG anyway).

OSBUILD_BOOT_ACCEL=kvm|tcg skips the probe.

Both verify's boot harness and image-info's guestfs appliance ask it, so it
lives in osbuild (verify may import osbuild, never the other way round).
"""

import functools
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

PROBE_SECONDS = 10.0
# The kernel's last words without a root file system: proof it ran to the end.
KERNEL_DONE = re.compile(r"Kernel panic - not syncing|VFS: Unable to mount root")


@dataclass(frozen=True)
class Accel:
    """An accelerator and how much slower than KVM it runs guests."""

    name: str
    args: tuple[str, ...] = field(default=())
    # Timeouts are written for TCG (scale 1); KVM boots several times faster.
    scale: float = 1.0
    reason: str = ""
    # Guests under TCG get one vCPU: with two, multi-threaded TCG now and then
    # runs a half-patched kernel instruction (a static key flipped by one vCPU
    # while the other executes it) and the guest panics in the scheduler.
    cpus: int = 1

    def seconds(self, tcg_seconds: float) -> float:
        """A timeout written for TCG, scaled to this accelerator."""
        return tcg_seconds * self.scale


TCG = Accel("tcg", ("-accel", "tcg", "-cpu", "max"), 1.0)
KVM = Accel("kvm", ("-accel", "kvm", "-cpu", "host"), 0.3, cpus=2)


def probe_kernel() -> Path | None:
    """The newest host kernel, or None when the host has none readable."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    readable = [k for k in kernels if os.access(k, os.R_OK)]
    return readable[-1] if readable else None


def kvm_runs_kernel(kernel: Path, seconds: float = PROBE_SECONDS) -> tuple[bool, str]:
    """Boot `kernel` under KVM without a root file system; True when it reaches its panic."""
    with tempfile.TemporaryDirectory(prefix="osbuild-kvm-probe-") as tmp:
        log = Path(tmp) / "serial.log"
        cmd = ["qemu-system-x86_64", *KVM.args, "-m", "256", "-nodefaults", "-display", "none",
               "-no-reboot", "-kernel", str(kernel),
               "-append", "console=ttyS0 earlyprintk=serial panic=-1",
               "-serial", f"file:{log}"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                if KERNEL_DONE.search(text):
                    return True, f"a kernel ran to its end under KVM ({kernel.name})"
                if proc.poll() is not None and not KERNEL_DONE.search(text):
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    last = err.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
                    return False, f"qemu -accel kvm failed: {last[0][-160:]}"
                time.sleep(0.2)
            return False, f"a kernel hung under KVM for {seconds:.0f}s"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()


@functools.cache
def probe() -> Accel:
    """The accelerator to boot with; probed once per process."""
    wanted = os.environ.get("OSBUILD_BOOT_ACCEL", "auto")
    if wanted == "tcg":
        return replace(TCG, reason="OSBUILD_BOOT_ACCEL=tcg")
    if wanted == "kvm":
        return replace(KVM, reason="OSBUILD_BOOT_ACCEL=kvm")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return replace(TCG, reason="no usable /dev/kvm")
    kernel = probe_kernel()
    if kernel is None:
        return replace(TCG, reason="no host kernel to probe KVM with")
    works, why = kvm_runs_kernel(kernel)
    base = KVM if works else TCG
    return replace(base, reason=why)
