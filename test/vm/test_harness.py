"""The boot harness itself, on tiny disks that boot in a second: real qemu, no build.

A 22-byte boot sector prints a message on the serial port and halts, so each
outcome the harness must tell apart (a login prompt, a kernel panic, an
initramfs shell, silence, nothing bootable, a timeout) is one disk away. None of
them may leave a qemu process or a temp dir behind. The other architectures'
firmware gets a blank disk: it must start, say so on the serial console and give
up on the disk at once.
"""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from osbuild import accel
from verify import arches, bootlog, qemu
from verify.boot import boot, require_running
from verify.console import ConsoleError
from verify.qemu import VM, VMError

# cli; xor ax,ax; mov ds,ax; mov si,0x7c16; mov dx,0x3f8
# next: lodsb; test al,al; jz halt; out dx,al; jmp next
# halt: hlt; jmp halt          ; the message follows at 0x7c16, NUL-terminated
PRINT_AND_HALT = bytes.fromhex("fa31c08ed8be167cbaf803ac84c07403eeebf8f4ebfd")
# The same, but instead of halting it echoes what comes in on the serial port:
# echo: mov dx,0x3fd; in al,dx; test al,1; jz echo; mov dx,0x3f8; in al,dx; out dx,al; jmp echo
PRINT_AND_ECHO = bytes.fromhex("fa31c08ed8be227cbaf803ac84c07403eeebf8"
                               "bafd03eca80174f8baf803eceeebf1")


# mov al,0xfe; out 0x64,al (the keyboard controller's reset line); then halt
RESET = bytes.fromhex("b0fee664f4ebfd")

# A hang guard, never a speed bound: the probe gives up on a hung guest by itself.
PROBE_HANG_GUARD = 300


def disk(path: Path, message: str | None, signature: bool = True, echo: bool = False) -> Path:
    """A 1 MiB raw disk whose boot code prints `message` (None: no boot code at all)."""
    sector = bytearray(512)
    if message is not None:
        code = (PRINT_AND_ECHO if echo else PRINT_AND_HALT) + message.encode() + b"\0"
        assert len(code) <= 440
        sector[:len(code)] = code
    if signature:
        sector[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(sector) + bytes(1024 * 1024 - 512))
    return path


def gone(pid: int, workdir: Path) -> None:
    assert not Path(f"/proc/{pid}").exists(), f"qemu {pid} still runs"
    assert not workdir.exists(), f"{workdir} still there"
    assert qemu.leftovers() == []


def test_login_prompt_is_a_boot(tmp_path: Path) -> None:
    image = disk(tmp_path / "login.img", "\r\nDebian GNU/Linux 13 harness-test ttyS0\r\n\r\n"
                                         "harness-test login: ")
    with VM(image, forwards=(22,), artifacts=tmp_path / "artifacts") as vm:
        result = vm.wait_boot(timeout=60)
        assert result.success, result.report()
        assert result.hostname == "harness-test"
        assert result.reason == "reached the login prompt"
        assert result.accel == vm.accel.name
        assert vm.status() == "running"
        assert "-snapshot" in vm.command()
        assert f"hostfwd=tcp:127.0.0.1:{vm.host_port(22)}-:22" in " ".join(vm.command())
        with pytest.raises(VMError, match="not forwarded"):
            vm.host_port(80)
        pid, workdir = vm.proc.pid, vm.workdir  # type: ignore[union-attr]
    gone(pid, workdir)
    assert not (tmp_path / "artifacts").exists(), "a good boot keeps no artifacts"
    assert image.read_bytes()[:22] == PRINT_AND_HALT, "-snapshot: the image is never written"


@pytest.mark.parametrize("message, reason", [
    ("[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
     "the kernel panicked: Kernel panic - not syncing: VFS: Unable to mount root fs"),
    ("ALERT!  UUID=0bad does not exist.  Dropping to a shell!\r\n\r\n(initramfs) ",
     "the initramfs did not find the root file system: ALERT!  UUID=0bad does not exist."),
    ("\r\nYou are in emergency mode. After logging in, type",
     "systemd went into emergency mode: You are in emergency mode."),
    ("error: you need to load the kernel first.\r\n", "GRUB could not load the kernel"),
])
def test_failure_on_the_console_ends_the_boot_at_once(tmp_path: Path, message: str,
                                                      reason: str) -> None:
    image = disk(tmp_path / "broken.img", message)
    result = boot(image, timeout=120, artifacts=tmp_path / "artifacts")
    assert not result.success
    assert result.reason.startswith(reason), result.reason  # the sign, not the timeout
    assert result.artifacts and result.artifacts.parent == tmp_path / "artifacts"
    saved = {p.name for p in result.artifacts.iterdir()}
    assert {"serial.log", "firmware.log", "reason.txt", "screen.png"} <= saved
    assert (result.artifacts / "screen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert message.split("\r")[0] in (result.artifacts / "serial.log").read_text()
    assert result.reason in (result.artifacts / "reason.txt").read_text()
    assert qemu.leftovers() == []


@pytest.mark.parametrize("marker, success, reason", [
    ("running\n", True, "boot marker: running"),
    ("degraded\nfailed: a.service loaded failed failed A\nfailed: b.mount loaded failed\n",
     True, "boot marker: degraded (failed: a.service, b.mount)"),
    ("maintenance\n", False, "the boot marker says the system is maintenance"),
])
def test_boot_marker_decides(tmp_path: Path, marker: str, success: bool, reason: str) -> None:
    # What the guest's org.osbuild.test service would write to its port, written
    # into the file qemu keeps for the port; the halted guest cannot interfere.
    with VM(disk(tmp_path / "marker.img", "GRUB\r\n"), forwards=(),
            artifacts=tmp_path / "artifacts") as vm:
        with open(vm.workdir / "marker.log", "a") as port:
            port.write(marker + "not a line yet")
        result = vm.wait_boot(timeout=60)
    assert (result.success, result.reason) == (success, reason)
    assert result.state == marker.split()[0]
    assert "not a line yet" not in result.marker
    assert (result.artifacts is None) == success


@pytest.mark.parametrize("marker, reason", [
    ("running\n", None),
    ("degraded\nfailed: a.service loaded failed failed A\nfailed: b.mount loaded failed\n",
     "the system is degraded, not running (failed: a.service, b.mount)"),
    (None, "reached the login prompt, but no boot marker says whether the system is running"),
])
def test_require_running_fails_a_degraded_system(tmp_path: Path, marker: str | None,
                                                 reason: str | None) -> None:
    """Our own images (verify.boot.require_running): degraded is a failed unit, a bug."""
    with VM(disk(tmp_path / "marker.img", "GRUB\r\nhost login: "), forwards=(),
            artifacts=tmp_path / "artifacts") as vm:
        if marker is not None:
            with open(vm.workdir / "marker.log", "a") as port:  # as in test_boot_marker_decides
                port.write(marker)
        result = vm.wait_boot(timeout=60, until="marker" if marker else "login")
        assert result.success, result.report()  # what everybody else's image gets
        result = require_running(vm, result)
    assert (result.success, result.reason if reason else None) == (reason is None, reason)
    assert (result.artifacts is None) == (reason is None)


def test_cli_require_running_waits_for_the_marker(tmp_path: Path) -> None:
    """Without a login, a login prompt says nothing of the units: only the marker counts."""
    image = disk(tmp_path / "prompt-only.img", "cli-host login: ")
    cmd = [sys.executable, "-m", "verify.cli", str(image), "--timeout", "5",
           "--artifacts", str(tmp_path / "artifacts")]
    accepted = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stderr
    refused = subprocess.run([*cmd, "--require-running"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert "FAILED after " in refused.stderr and ": no boot marker after 5s" in refused.stderr


def test_a_guest_that_resets_ends_the_boot(tmp_path: Path) -> None:
    image = tmp_path / "reset.img"
    disk(image, None)
    with open(image, "r+b") as f:
        f.write(RESET)
    result = boot(image, timeout=120, artifacts=tmp_path / "artifacts")
    assert not result.success
    assert result.reason == ("qemu exited with 0: the guest reset or powered off before it "
                             "was up (qemu runs with -no-reboot)"), result.reason
    assert qemu.leftovers() == []


def test_no_boot_code_is_reported_by_the_firmware(tmp_path: Path) -> None:
    result = boot(disk(tmp_path / "blank.img", None, signature=False), timeout=120,
                  artifacts=tmp_path / "artifacts")
    assert not result.success
    assert result.reason.startswith("the firmware found"), result.reason
    assert "Boot failed" in (result.artifacts / "firmware.log").read_text()  # type: ignore


def test_boot_code_that_prints_nothing_fails_on_silence(tmp_path: Path) -> None:
    with VM(disk(tmp_path / "silent.img", ""), forwards=(),
            artifacts=tmp_path / "artifacts") as vm:
        result = vm.wait_boot(timeout=120, silence=3)
    assert not result.success
    assert result.reason.startswith("nothing on the serial console 3s after the firmware "
                                    "started the boot loader"), result.reason


def test_timeout_names_what_was_awaited_and_the_accelerator(tmp_path: Path) -> None:
    image = disk(tmp_path / "slow.img", "GNU GRUB  version 2.12\r\n")
    with VM(image, forwards=(), artifacts=tmp_path / "artifacts") as vm:
        result = vm.wait_boot(timeout=3, until="marker")
    assert not result.success
    assert result.reason.startswith(f"no boot marker after 3s ({vm.accel.name}: "), result.reason
    assert "GNU GRUB" in result.tail()


def test_an_error_in_the_block_stops_qemu_and_keeps_artifacts(tmp_path: Path) -> None:
    image = disk(tmp_path / "login.img", "host login: ")
    for error in (RuntimeError("check failed"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with VM(image, forwards=(), artifacts=tmp_path / "artifacts") as vm:
                assert vm.wait_boot(timeout=60).success
                pid, workdir = vm.proc.pid, vm.workdir  # type: ignore[union-attr]
                raise error
        gone(pid, workdir)
        assert vm.artifacts is not None
        assert type(error).__name__ in (vm.artifacts / "reason.txt").read_text()


def test_console_talks_to_the_guest(tmp_path: Path) -> None:
    image = disk(tmp_path / "echo.img", "echo login: ", echo=True)
    with VM(image, forwards=()) as vm:
        assert vm.wait_boot(timeout=60).success
        console = vm.console()
        console.send("ping 42\n")
        # The guest echoes byte by byte: wait for the whole line.
        assert console.expect(r"ping (\d+)\n", timeout=30).group(1) == "42"
        with pytest.raises(ConsoleError, match="no 'pong' on the console after 1s"):
            console.expect("pong", timeout=1)
        # qemu keeps copying the console to the log while the socket is in use.
        time.sleep(1)
        assert "echo login: ping 42" in vm.serial_log()


def test_cli_reports_a_failed_boot_and_exits_1(tmp_path: Path) -> None:
    image = disk(tmp_path / "cli-broken.img", "Kernel panic - not syncing: test\r\n")
    proc = subprocess.run([sys.executable, "-m", "verify.cli", str(image), "--timeout", "60",
                           "--artifacts", str(tmp_path / "artifacts")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "FAILED" in proc.stderr and "the kernel panicked" in proc.stderr
    assert f"artifacts: {tmp_path / 'artifacts'}" in proc.stderr
    assert "Kernel panic - not syncing: test" in proc.stderr.split("serial console")[-1]


def test_cli_accepts_a_login_prompt_and_checks_the_hostname(tmp_path: Path) -> None:
    image = disk(tmp_path / "cli-ok.img", "cli-host login: ")
    cmd = [sys.executable, "-m", "verify.cli", str(image), "--timeout", "60",
           "--artifacts", str(tmp_path / "artifacts")]
    ok = subprocess.run([*cmd, "--expect-hostname", "cli-host"], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "reached the login prompt (hostname cli-host)" in ok.stderr
    wrong = subprocess.run([*cmd, "--expect-hostname", "other"], capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 1
    assert "hostname is 'cli-host', expected 'other'" in wrong.stderr


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (["--login", "rootonly", "x.img"], ["--http", "eighty", "x.img"], [],
                 ["--run", "true", "x.img"], ["--arch", "sparc64", "x.img"]):
        proc = subprocess.run([sys.executable, "-m", "verify.cli", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2, (args, proc.stderr)
    missing = subprocess.run([sys.executable, "-m", "verify.cli", str(tmp_path / "nope.qcow2")],
                             capture_output=True, text=True)
    assert missing.returncode == 1
    assert "no such image" in missing.stderr


def test_cli_ctrl_c_stops_qemu(tmp_path: Path) -> None:
    image = disk(tmp_path / "ctrl-c-unique.img", "waiting forever\r\n")
    proc = subprocess.Popen([sys.executable, "-m", "verify.cli", str(image), "--timeout", "300",
                             "--artifacts", str(tmp_path / "artifacts")],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-f", "osbuild-boot-test:ctrl-c-unique"],
                         capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "qemu never started"
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; qemu stopped" in err
    assert subprocess.run(["pgrep", "-f", "osbuild-boot-test:ctrl-c-unique"],
                          capture_output=True).returncode == 1, "qemu outlived the CLI"


def test_accelerator_override_and_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    accel.probe.cache_clear()
    try:
        monkeypatch.setenv("OSBUILD_BOOT_ACCEL", "tcg")
        chosen = accel.probe()
        assert (chosen.name, chosen.scale, chosen.reason) == ("tcg", 1.0, "OSBUILD_BOOT_ACCEL=tcg")
        assert chosen.seconds(300) == 300
    finally:
        accel.probe.cache_clear()
    # The probe itself, in a process of its own: it bounds its wait for a hung KVM
    # guest (PROBE_SECONDS); the timeout here only guards against a hang of the probe.
    script = "from osbuild import accel; chosen = accel.probe(); print(chosen.name, chosen.reason)"
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, "OSBUILD_BOOT_ACCEL": "auto"},
                              cwd=Path(__file__).resolve().parents[2], timeout=PROBE_HANG_GUARD)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the KVM probe hung: no answer after {PROBE_HANG_GUARD} s", pytrace=False)
    assert proc.returncode == 0, proc.stderr
    name, reason = proc.stdout.strip().split(" ", 1)
    verdicts = {"kvm": [r"a kernel ran to its end under KVM \(vmlinuz-.+\)"],
                "tcg": [r"no usable /dev/kvm", r"no host kernel to probe KVM with",
                        r"qemu -accel kvm failed: .+",
                        rf"a kernel hung under KVM for {accel.PROBE_SECONDS:.0f}s"]}
    assert any(re.fullmatch(v, reason) for v in verdicts.get(name, [])), proc.stdout
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert (name, reason) == ("tcg", "no usable /dev/kvm")


def test_console_tail_drops_terminal_noise() -> None:
    log = ("\x1b[H\x1b[J\x1b[1;1HGNU GRUB  version 2.12\r\n\r\n\r\n"
           "\x1b[!p\x1b]104\x07[  OK  ] Reached target\r\n\r\nhost login: ")
    assert bootlog.console_tail(log) == ("GNU GRUB  version 2.12\n[  OK  ] Reached target\n"
                                         "host login: ")
    assert bootlog.console_tail("1\n2\n3\n", lines=2) == "2\n3"


def option(cmd: list[str], name: str) -> list[str]:
    """Every value given to the qemu option `name`, in order."""
    return [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == name]


@pytest.mark.parametrize("arch, uefi, machine, cpu, firmware, console, factor", [
    ("x86_64", False, [], "max", [], "ttyS0", 1.0),
    ("x86_64", True, [], "max",
     ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
      "-drive", "if=pflash,format=raw,unit=1,file=@/efivars.fd"], "ttyS0", 1.0),
    ("arm64", False, ["virt"], "max,pauth-impdef=on",
     ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd",
      "-drive", "if=pflash,format=raw,unit=1,file=@/efivars.fd"], "ttyAMA0", 6.0),
    ("riscv64", False, ["virt"], "rv64",
     ["-bios", "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin",
      "-kernel", "/usr/lib/u-boot/qemu-riscv64_smode/uboot.elf"], "ttyS0", 8.0),
])
def test_command_line_per_architecture(tmp_path: Path, arch: str, uefi: bool,
                                       machine: list[str], cpu: str, firmware: list[str],
                                       console: str, factor: float) -> None:
    image = disk(tmp_path / "any.img", None)
    # x86_64 gets TCG handed in: the KVM probe is not what this test is about.
    vm = VM(image, arch=arch, uefi=uefi, forwards=(),
            accel=accel.TCG if arch == "x86_64" else None)
    cmd = vm.command()
    native = vm.arch.name == "x86_64"
    assert cmd[0] == f"qemu-system-{vm.arch.name}"
    assert option(cmd, "-machine") == machine
    assert option(cmd, "-accel") == ["tcg"], "a foreign guest never runs under KVM"
    assert option(cmd, "-cpu") == [cpu]
    assert (vm.accel.scale, vm.arch.console, vm.arch.tcg_factor) == (factor, console, factor)
    assert vm.accel.seconds(bootlog.BOOT_SECONDS) == bootlog.BOOT_SECONDS * factor
    # The firmware options come last, and are the only firmware there is.
    expected = [a.replace("@/efivars.fd", str(vm.vars_copy())) for a in firmware]
    assert cmd[len(cmd) - len(expected):] == expected
    for kind in ("pflash", "-bios", "-kernel"):
        assert sum(kind in a for a in cmd) == sum(kind in a for a in expected), kind
    assert vm.uefi == (uefi or not native)
    # The same for every arch: one virtio disk, the only boot device; the serial console.
    assert option(cmd, "-drive")[0].endswith(",if=none,id=disk0")
    assert "virtio-blk-pci,drive=disk0,bootindex=0" in option(cmd, "-device")
    assert option(cmd, "-serial") == ["chardev:serial0"]
    assert ("isa-debugcon,iobase=0x402,chardev=firmware" in option(cmd, "-device")) == native


def test_debian_and_kernel_names_are_the_same_architecture(tmp_path: Path) -> None:
    image = disk(tmp_path / "any.img", None)
    for debian, machine in (("amd64", "x86_64"), ("arm64", "aarch64"), ("riscv64", "riscv64")):
        assert arches.lookup(debian) is arches.lookup(machine) is arches.ARCHES[machine]
    with pytest.raises(VMError, match=r"unsupported architecture 'sparc64' \(known: "
                                      r"aarch64, riscv64, x86_64, amd64, arm64\)"):
        VM(image, arch="sparc64")


@pytest.mark.parametrize("arch, field, package", [
    ("aarch64", "uefi_code", "qemu-efi-aarch64"),
    ("aarch64", "uefi_vars", "qemu-efi-aarch64"),
    ("riscv64", "sbi", "opensbi"),
    ("riscv64", "loader", "u-boot-qemu"),
    ("x86_64", "uefi_code", "ovmf"),
])
def test_missing_firmware_names_the_file_and_its_package(tmp_path: Path, arch: str, field: str,
                                                         package: str) -> None:
    image = disk(tmp_path / "any.img", None)
    known = arches.ARCHES[arch]
    gone_file = tmp_path / "not-installed.fd"
    broken = replace(known, **{field: replace(getattr(known, field), path=gone_file)})
    message = f"{gone_file} not found: install the Debian package {package}"
    with pytest.raises(VMError) as error:
        VM(image, arch=broken, uefi=True, forwards=(), accel=accel.TCG)
    assert str(error.value) == message
    if arch == "x86_64":  # SeaBIOS needs no firmware file
        VM(image, arch=broken, uefi=False, forwards=(), accel=accel.TCG)
    # The command says the same in one line and exits 1, before any qemu starts.
    script = ("import sys; from dataclasses import replace; from pathlib import Path; "
              "from verify import arches, cli; "
              f"known = arches.ARCHES[{arch!r}]; "
              f"arches.ARCHES[{arch!r}] = replace(known, {field}=replace(known.{field}, "
              f"path=Path({str(gone_file)!r}))); "
              f"sys.exit(cli.main([{str(image)!r}, '--arch', {arch!r}, '--uefi']))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "OSBUILD_BOOT_ACCEL": "tcg"}, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1] == f"osbuild-boot-test: error: {message}"
    assert "Traceback" not in proc.stderr


def test_missing_qemu_binary_names_its_package(tmp_path: Path) -> None:
    image = disk(tmp_path / "any.img", None)
    absent = replace(arches.ARCHES["aarch64"], name="nonesuch", package="qemu-system-nonesuch")
    with pytest.raises(VMError, match=r"^qemu-system-nonesuch not found: install the Debian "
                                      r"package qemu-system-nonesuch$"):
        VM(image, arch=absent, forwards=())


@pytest.mark.parametrize("arch, reason, banner", [
    # edk2 tries the disk, the only boot option, then starts its shell.
    ("aarch64", "UEFI fell back to its shell: Shell>", "UEFI firmware"),
    # OpenSBI starts U-Boot, whose boot command finds no partition, then its prompt.
    ("riscv64", "U-Boot found nothing to boot: =>", "U-Boot 20"),
])
def test_foreign_firmware_boots_and_gives_up_on_a_blank_disk(tmp_path: Path, arch: str,
                                                             reason: str, banner: str) -> None:
    image = tmp_path / "blank.img"
    image.write_bytes(bytes(4 * 1024 * 1024))
    with VM(image, arch=arch, forwards=(), artifacts=tmp_path / "artifacts") as vm:
        result = vm.wait_boot(timeout=vm.accel.seconds(60))
        pid, workdir = vm.proc.pid, vm.workdir  # type: ignore[union-attr]
    gone(pid, workdir)
    assert not result.success
    assert result.reason == reason, result.report()
    assert banner in result.log, "the firmware writes to qemu's first serial port"
    assert result.accel == "tcg"
    assert image.read_bytes() == bytes(4 * 1024 * 1024)


def test_cli_json_has_the_milestones_of_good_and_failed_boots(tmp_path: Path) -> None:
    """--json: the seconds at which each milestone first showed, in boot order."""
    import json

    good = disk(tmp_path / "good.img", "GNU GRUB  version 2.12\r\nLoading Linux 6.12 ...\r\n"
                "[    0.000000] Linux version 6.12.41-amd64\r\nmetrics-host login: ")
    cmd = [sys.executable, "-m", "verify.cli", "--timeout", "60", "--json",
           "--artifacts", str(tmp_path / "artifacts")]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    found = json.loads(ok.stdout)
    assert (found["success"], found["hostname"], found["arch"]) == (True, "metrics-host",
                                                                   "x86_64")
    assert found["accelerator"] in ("kvm", "tcg")
    times = found["seconds"]
    assert list(times) == ["firmware-handoff", "boot-loader", "kernel", "login"]
    assert 0 < times["firmware-handoff"] <= times["boot-loader"] <= times["kernel"] \
        <= times["login"]
    assert "blame" not in found, "nothing from inside without a login"
    panic = disk(tmp_path / "panic.img", "Loading Linux 6.12 ...\r\nKernel panic - not syncing: x")
    failed = subprocess.run([*cmd, str(panic)], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    found = json.loads(failed.stdout)
    assert found["success"] is False and found["reason"].startswith("the kernel panicked")
    assert "boot-loader" in found["seconds"] and "login" not in found["seconds"]


def test_systemd_durations_and_blame_lines() -> None:
    from verify import metrics

    assert metrics.seconds("1min 2.5s") == 62.5
    assert metrics.seconds("830ms") == 0.83
    assert metrics.seconds("1h 2min") == 3720.0
    assert metrics.seconds("soon") is None
    text = ("1min 2.003s apt-daily.service\n  830ms systemd-udev-trigger.service\n"
            "\n  120us tmp.mount\n")
    assert metrics.blame(text) == [{"unit": "apt-daily.service", "seconds": 62.003},
                                   {"unit": "systemd-udev-trigger.service", "seconds": 0.83},
                                   {"unit": "tmp.mount", "seconds": 0.0}]
