"""What a boot looks like on its consoles, and what it means: knowledge, no qemu.

verify.qemu drives the machine and polls what it shows: the serial console, the
firmware's debug port (SeaBIOS), the org.osbuild.test marker port and the VGA text
screen. A BootWatch reads them at each poll and says whether the boot has come as
far as awaited, has failed for good (a failure sign in FAILURES, silence, a marker
saying the system is not up), or may go on; it notes the MILESTONES on the way.

Everything here is a function of text and times (seconds from qemu's start), so a
new failure sign is a row of FAILURES and a recorded console in
test/mod/test_bootlog.py. (verify.console is something else: the interactive
serial console, a socket to log in and run commands on.)
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOGIN = re.compile(r"^(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*) login: ", re.MULTILINE)
# TCG seconds (the harness scales them down for KVM): a UEFI boot under TCG takes about 70 s.
BOOT_SECONDS = 300.0
# GRUB prints within a second, even under TCG: boot code that does not run shows no
# error, only silence.
SILENCE_SECONDS = 30.0
# `systemctl is-system-running` states of a system that came up (degraded: some unit failed).
UP_STATES = ("running", "degraded")
HANDOFF = "Booting from 0000:7c00"  # SeaBIOS jumps to the MBR's boot code
# A boot's milestones on the serial console, the first sign of each (see verify.metrics).
MILESTONES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("boot-loader", re.compile(r"GNU GRUB|Welcome to GRUB|Loading Linux|grub> |U-Boot \d")),
    ("kernel", re.compile(r"Linux version \d|Booting Linux on physical CPU|EFI stub: ")),
    ("login", LOGIN),
)
# What wait_boot's `until` waits for, as a timeout names it.
AWAITED = {"any": "boot marker or login prompt", "marker": "boot marker",
           "login": "login prompt", "kernel": "kernel"}

# Signs on the consoles that a boot has failed for good: waiting on is pointless.
FAILURES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"No bootable device"), "the firmware found nothing to boot"),
    (re.compile(r"Boot failed: not a bootable disk"), "the firmware found no boot code"),
    (re.compile(r"No bootable option or device was found"), "the firmware found nothing to boot"),
    (re.compile(r"^Shell> ", re.MULTILINE), "UEFI fell back to its shell"),
    # U-Boot's prompt once its boot command has tried every device (riscv64).
    (re.compile(r"^=> ", re.MULTILINE), "U-Boot found nothing to boot"),
    # (The screen's rows lose their trailing blanks: no space after a prompt there.)
    (re.compile(r"grub rescue>"), "GRUB could not find its modules or config"),
    # Without its module lists (command.lst) GRUB's normal mode knows no command.
    (re.compile(r"error: can't find command `[^']*'\."),
     "GRUB could not find the module of a command"),
    (re.compile(r"error: (file [`']\S*vmlinu\S*' not found|you need to load the kernel first)"),
     "GRUB could not load the kernel"),
    (re.compile(r"^grub>( |$)", re.MULTILINE), "GRUB dropped to its command line"),
    (re.compile(r"Press any key to continue\.\.\."),
     "GRUB could not boot the entry and returns to its menu"),
    (re.compile(r"ALERT! .*"), "the initramfs did not find the root file system"),
    (re.compile(r"Gave up waiting for (root|suspend/resume) .*"),
     "the initramfs did not find the root file system"),
    # klibc's mount, then initramfs-tools' panic: the file system's module is missing.
    (re.compile(r"No such device\n(?:.*\n){0,4}?.*Failed to mount \S+ as root file system\."),
     "the initramfs has no driver for the root file system"),
    (re.compile(r"Failed to mount \S+ as root file system\."),
     "the initramfs could not mount the root file system"),
    (re.compile(r"^\(initramfs\) ", re.MULTILINE), "the initramfs dropped to a shell"),
    (re.compile(r"Kernel panic - not syncing.*"), "the kernel panicked"),
    (re.compile(r"You are in emergency mode.*"), "systemd went into emergency mode"),
    (re.compile(r"Give root password for maintenance.*"), "systemd went into emergency mode"),
]


@dataclass
class BootResult:
    """How a boot ended; `reason` says why in one line."""

    success: bool
    reason: str
    hostname: str | None = None
    seconds: float = 0.0
    log: str = ""
    state: str | None = None  # the org.osbuild.test marker: `systemctl is-system-running`
    marker: list[str] = field(default_factory=list)
    accel: str = ""
    artifacts: Path | None = None
    # Seconds from qemu's start to each milestone seen so far (MILESTONES, and the
    # firmware's handoff to the boot code where SeaBIOS says so).
    milestones: dict[str, float] = field(default_factory=dict)

    def tail(self, lines: int = 30) -> str:
        """The last lines of the serial console."""
        return console_tail(self.log, lines)

    def report(self, lines: int = 30) -> str:
        """The reason, where the artifacts are, and the console tail: a failure message."""
        where = f"\nartifacts: {self.artifacts}" if self.artifacts else ""
        return (f"{self.reason}{where}\n--- serial console, last {lines} lines ---\n"
                f"{self.tail(lines)}")


def plain(log: str) -> str:
    """A console log without terminal escapes and control characters (but \n and \t).

    GRUB's menu and edk2's shell are full of them: edk2 colours "Shell> ".
    """
    text = re.sub(r"\x1b\[[0-9;?!=]*[A-Za-z]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][A-Z0-9]",
                  "", log)
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)


def console_tail(log: str, lines: int = 30) -> str:
    """The last lines of a console log, plain and without blank lines (they waste a short tail)."""
    text = re.sub(r"\n{2,}", "\n", plain(log))
    return "\n".join(text.splitlines()[-lines:])


def failure(serial: str, firmware: str = "", screen: str = "") -> str | None:
    """Why the boot has failed for good, from the serial console, the firmware's debug
    port and the screen; None while it may go on. The first sign of FAILURES found
    wins, with what it matched (one line)."""
    serial = plain(serial)
    for pattern, what in FAILURES:
        for text in (serial, firmware, screen):
            match = pattern.search(text)
            if match:
                shown = re.sub(r"\s*\n\s*", " ", match.group(0).strip())  # one line
                return f"{what}: {shown[:200]}"
    return None


def silent(screen: str, quiet: float, silence: float, console: str) -> str | None:
    """Why a boot whose serial console stayed empty, and whose screen has not changed
    for `quiet` seconds, is stuck; None while it may go on. A boot loader on the
    screen alone gets twice `silence` (loading an initrd under TCG shows one
    unchanging line for seconds). `console` names the serial console the boot
    loader should have used ("ttyS0 on x86_64")."""
    shown = [line.strip() for line in screen.splitlines() if line.strip()]
    on_screen = MILESTONES[0][1].search(screen) is not None
    if quiet <= (2 * silence if on_screen else silence):
        return None
    if on_screen:
        return (f"the boot loader shows only on the screen and stopped there, with nothing "
                f"on the serial console for {quiet:.0f}s: {shown[-1][:200]!r}")
    return (f"nothing on the serial console {silence:.0f}s after the firmware started the "
            f"boot loader: no boot loader ran, or it does not use the serial console "
            f"({console})"
            + (f"; the screen shows {shown[-1][:200]!r}" if shown else ""))


def marker_verdict(lines: Sequence[str]) -> tuple[bool, str]:
    """The boot marker's word (its first line, then "failed: UNIT ..." lines): whether
    the system came up, and the reason that says so."""
    failed = ", ".join(line.split()[1] for line in lines[1:]
                       if line.startswith("failed: ") and len(line.split()) > 1)
    detail = f"{lines[0]}" + (f" (failed: {failed})" if failed else "")
    if lines[0] in UP_STATES:
        return True, f"boot marker: {detail}"
    return False, f"the boot marker says the system is {detail}"


class BootWatch:
    """One wait for a boot: fed what the consoles show at each poll, it says how far
    the boot got and whether it failed. Times are seconds from qemu's start.

    `console` names the serial console the boot loader should use, for the silence
    rule's reason ("ttyS0 on x86_64"). `until`: any (the boot marker or a login
    prompt), marker, login, or kernel (its first words, for what ends at the
    handoff). `silence`: see silent(). `handoff`: when the firmware started
    the boot loader, where no console says so (UEFI, U-Boot); else SeaBIOS's
    HANDOFF line on the firmware's port tells. `milestones` is filled in as they
    show, first sight only (a dict shared between waits keeps its first times);
    `screen` is the screen as last seen before this wait.
    """

    def __init__(self, console: str, until: str = "any", login: re.Pattern[str] = LOGIN,
                 silence: float = SILENCE_SECONDS, handoff: float | None = None,
                 milestones: dict[str, float] | None = None, screen: str = ""):
        self.until = until
        self.login = login
        self.silence = silence
        self.console = console
        self.handoff = handoff
        self.milestones = milestones if milestones is not None else {}
        self.screen = screen
        self.screen_changed = 0.0

    def look(self, elapsed: float, serial: str, marker: Sequence[str] = (),
             screen: str = "", firmware: str = "") -> BootResult:
        """The boot `elapsed` seconds after qemu's start: successful once what `until`
        waits for has come; failed with its reason on a failure sign, on silence, or
        on a boot marker that says the system is not up; else undecided (no success,
        an empty reason), and waiting goes on."""
        if screen != self.screen:
            self.screen, self.screen_changed = screen, elapsed
        if self.handoff is None and HANDOFF in firmware:
            self.handoff = elapsed
            self.milestones["firmware-handoff"] = round(elapsed, 1)
        text = plain(serial) + "\n" + screen
        for name, pattern in MILESTONES:
            if name not in self.milestones and pattern.search(text):
                self.milestones[name] = round(elapsed, 1)
        lines = list(marker)
        prompt = self.login.search(serial)
        result = BootResult(False, "", prompt.group("host") if prompt else None, elapsed,
                            serial, lines[0] if lines else None, lines,
                            milestones=dict(self.milestones))
        if lines and self.until in ("any", "marker"):
            result.success, result.reason = marker_verdict(lines)
        elif prompt and self.until in ("any", "login"):
            result.success, result.reason = True, "reached the login prompt"
        elif self.until == "kernel" and "kernel" in self.milestones:
            result.success, result.reason = True, "the kernel started"
        else:
            reason = failure(serial, firmware, screen)
            if reason is None and self.handoff is not None and not serial.strip():
                quiet = elapsed - max(self.handoff, self.screen_changed)
                reason = silent(screen, quiet, self.silence, self.console)
            result.reason = reason or ""
        return result

    def timed_out(self, timeout: float, accel: str) -> str:
        """The reason of a wait that ran out of time; `accel` names the accelerator and
        why it was chosen ("tcg: no usable /dev/kvm")."""
        return f"no {AWAITED[self.until]} after {timeout:.0f}s ({accel})"
