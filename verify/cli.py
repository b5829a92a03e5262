"""osbuild-boot-test: boot a disk image under qemu and say whether it came up.

    osbuild-boot-test IMAGE [--timeout S] [--expect-hostname H] [--ssh-key K] [--uefi]
                            [--login USER:PASSWORD] [--run CMD]... [--http PORT[/PATH]]
                            [--arch x86_64|aarch64|riscv64] [--json] [--require-running]

Exit 0 when the image boots to the org.osbuild.test marker or a login prompt
(and passes the checks asked for), 1 with the reason, where the artifacts are
and the serial console's tail otherwise, 2 on bad usage. A system that came
up `degraded` passes, its failed units named (the image may be someone
else's); --require-running, for images whose failed unit is a bug, fails it.
The image is never changed (qemu -snapshot) and qemu is always stopped, also
on Ctrl-C. With --json, stdout gets the boot's metrics (verify.metrics), for
a failed boot too.
"""

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from . import metrics
from .arches import Arch, accelerator, lookup, names
from .boot import failed_units
from .bootlog import BOOT_SECONDS, BootResult, console_tail
from .console import ConsoleError
from .qemu import VM, VMError, default_artifacts
from .ssh import SSHError

PROG = "osbuild-boot-test"


def architecture(name: str) -> Arch:
    """--arch: qemu's name for it, or Debian's (arm64 is aarch64)."""
    arch = lookup(name)
    if arch is None:
        raise argparse.ArgumentTypeError(f"unknown architecture {name!r} "
                                         f"(known: {', '.join(names())})")
    return arch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Boot a disk image and check it is up.")
    p.add_argument("image", type=Path, help="the disk image (qcow2, raw, vmdk, ...)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help=f"seconds to wait for the boot (default: {BOOT_SECONDS:.0f} for x86_64 "
                        "under TCG, less under KVM, 6 times that for aarch64, 8 for riscv64)")
    p.add_argument("--expect-hostname", metavar="H",
                   help="fail unless the guest's hostname is H (login prompt, or SSH)")
    p.add_argument("--ssh-key", type=Path, metavar="K",
                   help="private key for root over SSH: wait for sshd and check the login")
    p.add_argument("--login", metavar="USER:PASSWORD",
                   help="log in on the serial console (for --run without an SSH key)")
    p.add_argument("--run", action="append", default=[], metavar="CMD",
                   help="run CMD in the guest (SSH, else the console) and print its output")
    p.add_argument("--http", action="append", default=[], metavar="PORT[/PATH]",
                   help="GET http://guest:PORT/PATH through a host forward; fail unless 200")
    p.add_argument("--uefi", action="store_true",
                   help="boot x86_64 with UEFI firmware (OVMF); other arches always boot EFI")
    p.add_argument("--arch", type=architecture, default="x86_64", metavar="ARCH",
                   help="the guest's architecture: x86_64 (default), aarch64 or riscv64 "
                        "(or amd64, arm64); foreign ones run under TCG")
    p.add_argument("--memory", type=int, default=1024, metavar="MIB")
    p.add_argument("--require-running", action="store_true",
                   help="fail unless `systemctl is-system-running` says running (by default "
                        "degraded passes, naming the failed units): from the boot marker, "
                        "or logged in (--login, --ssh-key) from the guest; without a login, "
                        "wait for the marker, as a login prompt says nothing of the units")
    p.add_argument("--json", action="store_true",
                   help="print the boot's metrics as JSON on stdout: seconds to the boot "
                        "loader, the kernel, the login prompt and (logged in) a running "
                        "system, failed units, systemd-analyze's blame")
    p.add_argument("--artifacts", type=Path, metavar="DIR",
                   help="where failed boots leave logs and a screendump "
                        "(default: $OSBUILD_BOOT_ARTIFACTS, else $TMPDIR/osbuild-boot-artifacts)")
    args = p.parse_args(argv)
    if args.run and not (args.ssh_key or args.login):
        p.error("--run needs --ssh-key or --login")
    if args.login and ":" not in args.login:
        p.error("--login takes USER:PASSWORD")
    for http in args.http:
        if not http.split("/", 1)[0].isdigit():
            p.error(f"--http {http}: expected PORT or PORT/PATH")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def login(vm: VM, args: argparse.Namespace, hostname: str | None
          ) -> tuple[Callable[[str], str] | None, str | None]:
    """A shell in the guest (over SSH or the console, as asked) and the hostname."""
    runner: Callable[[str], str] | None = None
    if args.ssh_key:
        ssh = vm.ssh(args.ssh_key)
        ssh.wait()
        hostname = ssh.output("hostname")
        print(f"{PROG}: ssh: logged in as root", file=sys.stderr)

        def via_ssh(cmd: str) -> str:
            return ssh.output(cmd)
        runner = via_ssh
    elif args.login:
        user, password = args.login.split(":", 1)
        console = vm.console()
        console.login(user, password, timeout=vm.accel.seconds(120))
        print(f"{PROG}: console: logged in as {user}", file=sys.stderr)

        def via_console(cmd: str) -> str:
            res = console.run(cmd, timeout=vm.accel.seconds(120))
            if res.returncode != 0:
                raise ConsoleError(f"{cmd!r} exited with {res.returncode}: {res.output[-300:]}")
            return res.output.strip()
        runner = via_console
        if hostname is None:
            hostname = runner("hostname")
    return runner, hostname


def check(runner: Callable[[str], str] | None, vm: VM, args: argparse.Namespace,
          hostname: str | None) -> str | None:
    """The checks asked for on the command line; the first failure, or None."""
    if args.expect_hostname and hostname != args.expect_hostname:
        return f"hostname is {hostname!r}, expected {args.expect_hostname!r}"
    for cmd in args.run:
        assert runner is not None  # parse_args made sure
        # With --json, stdout is the metrics' alone.
        print(f"$ {cmd}\n{runner(cmd)}", file=sys.stderr if args.json else sys.stdout)
    for http in args.http:
        port, _, path = http.partition("/")
        status, body = vm.http_get(int(port), "/" + path)
        print(f"{PROG}: http {port}/{path}: {status}, {len(body)} bytes", file=sys.stderr)
        if status != 200:
            return f"http port {port}/{path} answered {status}"
    return None


def system_state(result: BootResult, runner: Callable[[str], str] | None, wait: bool
                 ) -> tuple[str | None, list[str]]:
    """The system's state and failed units: from the boot marker, else asked in the guest,
    which with `wait` first finishes starting up (None when neither tells)."""
    if result.state is not None:
        return result.state, failed_units(result)
    if runner is None:
        return None, []
    wait_option = " --wait" if wait else ""
    state = runner(f"systemctl is-system-running{wait_option} 2>/dev/null || true").strip()
    failed = runner("systemctl list-units --failed --plain --no-legend --no-pager "
                    "2>/dev/null || true")
    return (state.splitlines()[-1] if state else None,
            [line.split()[0] for line in failed.splitlines() if line.split()])


def judge_state(args: argparse.Namespace, result: BootResult,
                runner: Callable[[str], str] | None) -> str | None:
    """Say the system's state and its failed units; the failure --require-running makes
    of anything but running, or None."""
    state, units = system_state(result, runner, wait=args.require_running)
    failed = f" (failed: {', '.join(units)})" if units else ""
    if state is not None:
        print(f"{PROG}: system {state}{failed}", file=sys.stderr)
    if not args.require_running or state == "running":
        return None
    if state is None:
        return ("--require-running: neither a boot marker nor a login (--login, --ssh-key) "
                "tells whether the system is running")
    return f"the system is {state}, not running{failed}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    forwards = sorted({22} | {int(h.split("/", 1)[0]) for h in args.http})
    start = time.monotonic()
    try:
        accel = accelerator(args.arch)
        print(f"{PROG}: {args.arch.name}, accelerator {accel.name} ({accel.reason})",
              file=sys.stderr)
        with VM(args.image, uefi=args.uefi, arch=args.arch, memory=args.memory, accel=accel,
                forwards=forwards, artifacts=args.artifacts or default_artifacts()) as vm:
            # Without a login only the marker tells the system's state.
            marker_only = args.require_running and not (args.ssh_key or args.login)
            result = vm.wait_boot(args.timeout, until="marker" if marker_only else "any")
            if result.success and args.expect_hostname and result.hostname is None \
                    and not (args.ssh_key or args.login):
                # Booted to the marker: the hostname comes with the login prompt (the
                # timeout counts from qemu's start, so the same one still holds).
                result = vm.wait_boot(args.timeout, until="login")
            if not result.success:
                print(f"{PROG}: FAILED after {result.seconds:.0f}s: {result.report()}",
                      file=sys.stderr)
                if args.json:
                    print(json.dumps(metrics.collect(vm, result, None), indent=2))
                return 1
            print(f"{PROG}: booted in {result.seconds:.0f}s: {result.reason}"
                  + (f" (hostname {result.hostname})" if result.hostname else ""),
                  file=sys.stderr)
            found: dict | None = None
            try:
                runner, hostname = login(vm, args, result.hostname)
                failed = check(runner, vm, args, hostname)
                if args.json:
                    found = {**metrics.collect(vm, result, runner), "hostname": hostname}
                failed = failed or judge_state(args, result, runner)
            except (SSHError, ConsoleError, VMError) as e:
                failed = str(e)
            if args.json:
                found = found or metrics.collect(vm, result, None)
                if failed:
                    found.update(success=False, reason=failed)
                print(json.dumps(found, indent=2))
            if failed:
                where = vm.save_artifacts(failed)
                print(f"{PROG}: FAILED: {failed}\nartifacts: {where}\n"
                      f"--- serial console, last 30 lines ---\n"
                      f"{console_tail(vm.serial_log())}", file=sys.stderr)
                return 1
    except VMError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; qemu stopped", file=sys.stderr)
        return 130
    print(f"{PROG}: OK in {time.monotonic() - start:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
