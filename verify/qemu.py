"""One qemu virtual machine for a boot test, as a context manager.

    with VM(image, forwards=[22, 80]) as vm:
        result = vm.wait_boot()
        vm.ssh(key).run("hostname")

qemu runs with -snapshot (the image is never written), a virtio disk (the
only boot device), user networking with host port forwards on free local
ports, the serial console in a unix socket that qemu also copies to
serial.log, the org.osbuild.test virtio-serial port in marker.log, the BIOS
debug port in firmware.log, and a QMP socket driven with verify.qmp. Everything
lives in one temp dir that is removed on the way out, after qemu is stopped
(QMP quit, then SIGKILL); qemu also dies with the Python process that started
it. When the block fails, or a boot does, the logs and a QMP screendump are
kept in an artifacts directory. What differs between architectures (binary,
machine, firmware) is in verify.arches; what the consoles say of a boot (its
milestones, its failure signs) in verify.bootlog.
"""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

from osbuild.accel import Accel

from .arches import Arch, accelerator, lookup, names
from .bootlog import BOOT_SECONDS, LOGIN, SILENCE_SECONDS, BootResult, BootWatch
from .console import SerialConsole
from .qmp import Monitor, VMError
from .ssh import SSH

MARKER_PORT = "org.osbuild.test"
ARTIFACTS_ENV = "OSBUILD_BOOT_ARTIFACTS"
WORKDIR_PREFIX = "osbuild-vm-"  # then the owner's pid: stale ones can be found
# The VGA text screen (mode 3: 80x25, a character and an attribute byte per cell), where
# SeaBIOS and a GRUB without a serial terminal write.
VGA_TEXT = 0xB8000
VGA_COLUMNS, VGA_ROWS = 80, 25
SCREEN_EVERY = 2.0  # seconds between two reads of the screen while the serial console is silent

# What this process started and has not cleaned up yet: for leak checks after a suite.
_LIVE_PIDS: set[int] = set()
_LIVE_DIRS: set[Path] = set()


def leftovers() -> list[str]:
    """qemu processes and temp dirs of this process's VMs that are still there."""
    found = []
    for pid in sorted(_LIVE_PIDS):
        if Path(f"/proc/{pid}").exists():
            found.append(f"qemu pid {pid} still running")
    found += [f"temp dir {d} still there" for d in sorted(_LIVE_DIRS) if d.exists()]
    return found


def _reap_stale() -> None:
    """Remove VM temp dirs of processes that are gone (killed before they could clean up)."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        pid = path.name.removeprefix(WORKDIR_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if not path.exists():
        _LIVE_DIRS.discard(path)


def image_format(image: Path) -> str:
    """qcow2, raw, vmdk, ...: qemu must be told, it refuses to guess raw with -snapshot."""
    out = subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise VMError(f"{image}: not a disk image: {out.stderr.strip()}")
    return str(json.loads(out.stdout)["format"])


def free_port() -> int:
    """A local TCP port free right now (qemu may still lose a race for it: start retries)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: SIGKILL qemu when the Python process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def default_artifacts() -> Path:
    """$OSBUILD_BOOT_ARTIFACTS, else osbuild-boot-artifacts in the temp dir (never the cwd,
    which is often a source tree)."""
    env = os.environ.get(ARTIFACTS_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / "osbuild-boot-artifacts"


class VM:
    """A running qemu; see the module docstring."""

    def __init__(self, image: Path | str, *, uefi: bool = False, arch: str | Arch = "x86_64",
                 memory: int = 1024, cpus: int | None = None, accel: Accel | None = None,
                 forwards: list[int] | tuple[int, ...] = (22,), name: str | None = None,
                 artifacts: Path | None = None):
        self.image = Path(image).resolve()
        if not self.image.is_file():
            raise VMError(f"{image}: no such image")
        known = arch if isinstance(arch, Arch) else lookup(arch)
        if known is None:
            raise VMError(f"unsupported architecture {arch!r} (known: {', '.join(names())})")
        self.arch = known
        self.uefi = self.arch.boots_uefi(uefi)
        if missing := self.arch.missing(uefi):
            raise VMError(missing)
        self.memory = memory
        self.accel = accel or accelerator(self.arch)
        self.cpus = cpus or self.accel.cpus
        self.forwards = dict.fromkeys(forwards, 0)  # guest port -> host port
        self.name = name or self.image.stem
        self.artifacts_root = artifacts or default_artifacts()
        self.artifacts: Path | None = None
        self.workdir = Path()
        self.proc: subprocess.Popen[bytes] | None = None
        self.monitor: Monitor | None = None
        self._console: SerialConsole | None = None
        self._stack = ExitStack()
        self.started = 0.0
        self.milestones: dict[str, float] = {}  # of all waits: see BootWatch
        self.screen = ""  # the VGA text screen when it was last read

    # -- life cycle -------------------------------------------------------------------
    def __enter__(self) -> "VM":
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is not None and self.artifacts is None:
                self.save_artifacts(f"{exc_type.__name__}: {exc}")
        finally:
            self._stack.close()

    def _start(self) -> None:
        _reap_stale()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        _LIVE_DIRS.add(self.workdir)
        self._stack.callback(_remove_dir, self.workdir)
        if self.uefi and self.arch.uefi_vars:
            # The firmware writes its variables: each VM gets its own copy.
            shutil.copy(self.arch.uefi_vars.path, self.vars_copy())
        for attempt in range(3):
            for guest in self.forwards:
                self.forwards[guest] = free_port()
            self._launch()
            assert self.proc is not None
            self.monitor = Monitor(self.workdir / "qmp.sock")
            try:
                self.monitor.connect(self.proc)
            except VMError as e:
                self.monitor.close()
                self.monitor = None
                if self.proc.returncode == 0:
                    # Started fine, and the guest already reset or powered off
                    # (-no-reboot): wait_boot() tells why, there is nothing to drive.
                    self._stack.callback(self._stop)
                    return
                self._stop()
                err = self.stderr()
                if "host forwarding" in err and attempt < 2:
                    continue  # another process took a port between free_port() and qemu
                raise VMError(f"qemu did not start: {err.strip()[-500:] or e}") from e
            self._stack.callback(self._stop)
            return

    def _launch(self) -> None:
        for log in ("serial.log", "firmware.log", "marker.log", "qemu.stderr"):
            (self.workdir / log).write_bytes(b"")
        stderr = open(self.workdir / "qemu.stderr", "wb")
        with stderr:
            # TMPDIR: -snapshot's overlay goes into the temp dir, never elsewhere.
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                cwd=self.workdir, env={**os.environ, "TMPDIR": str(self.workdir)},
                preexec_fn=_die_with_parent)
        _LIVE_PIDS.add(self.proc.pid)
        self.started = time.monotonic()

    def vars_copy(self) -> Path:
        """This VM's writable copy of the UEFI variables (made when it starts)."""
        return self.workdir / "efivars.fd"

    def command(self) -> list[str]:
        """The qemu command line (see the module docstring for what each part is for)."""
        w = self.workdir
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
                      for guest, host in self.forwards.items())
        machine = ["-machine", self.arch.machine] if self.arch.machine else []
        cmd = [self.arch.binary, *machine, *self.accel.args,
               "-m", str(self.memory), "-smp", str(self.cpus),
               "-nodefaults", "-no-reboot", "-display", "none", "-snapshot",
               "-name", f"osbuild-boot-test:{self.name}",
               # The disk is the only boot device (bootindex, -boot strict): a disk that
               # does not boot must fail now, not after the firmware tried the network
               # (edk2 and U-Boot have their own virtio-net drivers, romfile= or not).
               "-drive", f"file={self.image},format={image_format(self.image)},if=none,id=disk0",
               "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
               "-device", "virtio-rng-pci",
               "-netdev", f"user,id=net0{fwd}", "-device", "virtio-net-pci,netdev=net0,romfile=",
               "-chardev", f"socket,id=serial0,path={w}/serial.sock,server=on,wait=off,"
                           f"logfile={w}/serial.log",
               "-serial", "chardev:serial0",
               "-device", "virtio-serial-pci",
               "-chardev", f"file,id=marker,path={w}/marker.log",
               "-device", f"virtserialport,chardev=marker,name={MARKER_PORT}",
               "-qmp", f"unix:{w}/qmp.sock,server=on,wait=off",
               # A panic keeps the guest paused for the screendump instead of quitting.
               "-action", "panic=pause",
               "-boot", "strict=on"]
        if self.arch.display:
            cmd += ["-device", self.arch.display]  # something for the screendump to show
        if self.arch.seabios:
            cmd += ["-device", "pvpanic",
                    "-chardev", f"file,id=firmware,path={w}/firmware.log",
                    "-device", "isa-debugcon,iobase=0x402,chardev=firmware"]
        return cmd + self.arch.firmware_args(self.uefi, self.vars_copy())

    def _stop(self) -> None:
        """Stop qemu: QMP quit, then SIGKILL; always reaped, also when interrupted."""
        try:
            if self._console:
                self._console.close()
                self._console = None
            if self.monitor:
                if self.running():
                    try:
                        self.monitor.execute("quit", timeout=5)
                    except VMError:
                        pass
                self.monitor.close()
                self.monitor = None
            if self.proc:
                self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.proc:
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait()
                _LIVE_PIDS.discard(self.proc.pid)

    # -- state ------------------------------------------------------------------------
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read(self, log: str) -> str:
        path = self.workdir / log
        return path.read_text(errors="replace") if path.exists() else ""

    def serial_log(self) -> str:
        return self.read("serial.log")

    def stderr(self) -> str:
        return self.read("qemu.stderr")

    def status(self) -> str:
        """QMP query-status: running, paused, guest-panicked, shutdown, ..."""
        if not self.monitor:
            raise VMError("qemu is not running")
        return str(self.monitor.execute("query-status")["status"])

    def powerdown(self, timeout: float | None = None) -> bool:
        """ACPI power button, then wait for qemu to exit; forced quit after `timeout`.

        True when the guest shut itself down in time.
        """
        timeout = timeout if timeout is not None else self.accel.seconds(120)
        if not self.running() or not self.monitor:
            return True
        self.monitor.execute("system_powerdown")
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            self._stop()
            return False

    def screendump(self, path: Path) -> Path | None:
        """The screen as PNG (PPM on a qemu without PNG support); None when impossible."""
        if not self.running() or not self.monitor:
            return None
        for fmt in ("png", "ppm"):
            target = path.with_suffix(f".{fmt}")
            args: dict[str, Any] = {"filename": str(target)}
            if fmt == "png":
                args["format"] = "png"
            try:
                self.monitor.execute("screendump", args, timeout=20)
                return target
            except VMError:
                continue
        return None

    def screen_text(self) -> str:
        """The VGA text screen, read from video memory: what SeaBIOS and a GRUB without
        a serial terminal show. Empty where there is none (UEFI's framebuffer, machines
        without VGA) and once the guest has switched to graphics."""
        if self.uefi or not self.arch.seabios or not self.running() or not self.monitor:
            return ""
        dump = self.workdir / "screen.bin"
        try:
            self.monitor.execute("pmemsave", {"val": VGA_TEXT, "size": VGA_COLUMNS * VGA_ROWS * 2,
                                              "filename": str(dump)})
            cells = dump.read_bytes()
        except (VMError, OSError):
            return ""
        text = cells[0::2].replace(b"\0", b" ").decode("cp437")
        rows = [text[i:i + VGA_COLUMNS].rstrip() for i in range(0, len(text), VGA_COLUMNS)]
        return "\n".join(rows).strip("\n")

    def save_artifacts(self, reason: str) -> Path:
        """Keep the logs and a screendump of this VM for a post-mortem; returns the directory."""
        if self.artifacts is not None:
            return self.artifacts
        self.artifacts_root.mkdir(parents=True, exist_ok=True)
        self.artifacts = Path(tempfile.mkdtemp(
            prefix=f"{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}-",
            dir=self.artifacts_root))
        self.screendump(self.artifacts / "screen")
        if screen := self.screen_text() or self.screen:
            (self.artifacts / "screen.txt").write_text(screen + "\n")
        for log in ("serial.log", "firmware.log", "marker.log", "qemu.stderr"):
            if (self.workdir / log).exists():
                shutil.copy(self.workdir / log, self.artifacts / log)
        (self.artifacts / "reason.txt").write_text(
            f"{reason}\naccelerator: {self.accel.name} ({self.accel.reason})\n"
            f"command: {' '.join(self.command())}\n")
        return self.artifacts

    # -- waiting for the boot ---------------------------------------------------------
    def marker(self) -> list[str]:
        """Complete lines the guest wrote to the org.osbuild.test port."""
        text = self.read("marker.log")
        return [line.strip() for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def wait_boot(self, timeout: float | None = None, until: str = "any",
                  login: re.Pattern[str] = LOGIN, silence: float | None = None) -> BootResult:
        """Wait for the boot marker or a login prompt (`until`: any, marker or login), or
        only for the kernel's first words (`until`: kernel, for what ends at the handoff).

        `timeout` counts from qemu's start, so waiting again (say for the login prompt
        after the marker) keeps the same deadline.

        Fails early on what verify.bootlog reads on the consoles (a firmware, GRUB,
        kernel, initramfs or systemd failure; a serial console that stays empty for
        `silence` seconds after the firmware started the boot loader), on qemu's exit,
        on a panicked guest; on timeout otherwise. A failed boot's artifacts are saved
        while qemu still runs.
        """
        timeout = timeout if timeout is not None else self.accel.seconds(BOOT_SECONDS)
        silence = silence if silence is not None else self.accel.seconds(SILENCE_SECONDS)
        # SeaBIOS says on its debug port when it starts the boot code; UEFI firmware and
        # U-Boot do not, so theirs is taken to be one silence window after qemu's start
        # (OVMF itself needs seconds under TCG before it prints anything).
        handoff = self.accel.seconds(SILENCE_SECONDS) if self.uefi else None
        watch = BootWatch(f"{self.arch.console} on {self.arch.name}", until, login, silence,
                          handoff, self.milestones, self.screen)
        last_status = last_screen = 0.0
        while True:
            now = time.monotonic()
            serial = self.serial_log()
            if not serial.strip() and now - last_screen > SCREEN_EVERY:
                # A boot loader that does not use the serial console shows on the screen.
                last_screen, self.screen = now, self.screen_text()
            result = watch.look(now - self.started, serial, self.marker(), self.screen,
                                self.read("firmware.log"))
            result.accel = self.accel.name
            if result.success:
                return result
            if not result.reason and not self.running():
                assert self.proc is not None
                err = self.stderr().strip().splitlines()[-1:]
                result.reason = (f"qemu exited with {self.proc.returncode}: {err[0]}" if err else
                                 f"qemu exited with {self.proc.returncode}: the guest reset or "
                                 "powered off before it was up (qemu runs with -no-reboot)")
            if not result.reason and now - last_status > 3:
                last_status = now
                try:
                    status = self.status()
                except VMError:
                    status = "running"  # qemu just went away: the next round says why
                if status not in ("running", "prelaunch"):
                    result.reason = f"the guest is {status}"
            if not result.reason and result.seconds > timeout:
                result.reason = watch.timed_out(timeout, f"{self.accel.name}: {self.accel.reason}")
            if result.reason:
                result.artifacts = self.save_artifacts(result.reason)
                return result
            time.sleep(0.5)

    # -- talking to the guest ---------------------------------------------------------
    def host_port(self, guest_port: int) -> int:
        if guest_port not in self.forwards:
            raise VMError(f"guest port {guest_port} is not forwarded "
                          f"(forwards: {sorted(self.forwards)})")
        return self.forwards[guest_port]

    def ssh(self, key: Path, user: str = "root") -> SSH:
        """An SSH client for the guest's port 22 (forwarded), keyed with `key`."""
        return SSH(self.host_port(22), key, user=user, workdir=self.workdir,
                   scale=self.accel.scale)

    def console(self) -> SerialConsole:
        """The serial console, interactive (e.g. to log in with a password)."""
        if self._console is None:
            self._console = SerialConsole(self.workdir / "serial.sock")
        return self._console

    def http_get(self, guest_port: int = 80, path: str = "/",
                 timeout: float | None = None) -> tuple[int, str]:
        """GET a guest port through its host forward: (status, body); retried until it answers.

        The forward accepts connections even when nothing listens in the guest yet,
        so resets and empty answers are retried too.
        """
        timeout = timeout if timeout is not None else self.accel.seconds(60)
        url = f"http://127.0.0.1:{self.host_port(guest_port)}{path}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    return answer.status, answer.read().decode(errors="replace")
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode(errors="replace")
            except (urllib.error.URLError, OSError) as e:
                if time.monotonic() > deadline:
                    raise VMError(f"{url}: no answer after {timeout:.0f}s: {e}") from e
                time.sleep(1)
