"""What a boot's consoles mean (verify.bootlog), on recorded text: no qemu.

Each failure sign of FAILURES is told on a console where it showed (the serial
console, SeaBIOS's debug port, the VGA text screen), with its reason; a sign
without a recorded console here fails the suite. Then the milestones, the
boot marker, the silence rule and the kernel-only wait, fed to a BootWatch the
way verify.qemu's wait_boot feeds it: text at seconds from qemu's start.
"""

import pytest

from verify import bootlog
from verify.bootlog import BootWatch

X86 = "ttyS0 on x86_64"
SEABIOS = ("SeaBIOS (version 1.16.3-debian-1.16.3-2)\n"
           "Booting from Hard Disk...\n"
           "Booting from 0000:7c00\n")

# (console, recorded text, the reason): one or more for each row of FAILURES.
SIGNS: dict[str, tuple[str, str, str]] = {
    "seabios-nothing": (
        "screen", "SeaBIOS (version 1.16.3-debian-1.16.3-2)\n\nBooting from Hard Disk...\n"
        "Boot failed: not a bootable disk\n\nNo bootable device.  Retrying in 60 seconds.",
        "the firmware found nothing to boot: No bootable device"),
    "seabios-no-boot-code": (
        "firmware", "Booting from Hard Disk...\nBoot failed: not a bootable disk\n",
        "the firmware found no boot code: Boot failed: not a bootable disk"),
    "edk2-nothing": (
        "serial", "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\": Not Found\r\n"
        "BdsDxe: No bootable option or device was found.\r\n"
        "BdsDxe: Press any key to enter the Boot Manager Menu.\r\n",
        "the firmware found nothing to boot: No bootable option or device was found"),
    "edk2-shell": (
        "serial", "UEFI Interactive Shell v2.2\r\nEDK II\r\nMapping table\r\n"
        "Press ESC in 1 seconds to skip startup.nsh or any other key to continue.\r\n"
        "\x1b[0m\x1b[33m\x1b[40mShell> \x1b[0m\x1b[37m\x1b[40m",
        "UEFI fell back to its shell: Shell>"),
    "u-boot-prompt": (
        "serial", "U-Boot 2024.01+dfsg-5 (Mar 01 2024 - 00:00:00 +0000)\n\n"
        "Scanning disk virtio-blk#0...\nFound 1 disk\nNo EFI system partition\n"
        "BootOrder not defined\nEFI boot manager: Cannot load any image\n=> ",
        "U-Boot found nothing to boot: =>"),
    "grub-rescue": (
        "screen", "GRUB loading.\nWelcome to GRUB!\n\n"
        "error: file `/boot/grub/i386-pc/normal.mod' not found.\n"
        "Entering rescue mode...\ngrub rescue>",
        "GRUB could not find its modules or config: grub rescue>"),
    "grub-no-command-lists": (
        "screen", "error: can't find command `serial'.\n"
        "error: can't find command `terminal_input'.",
        "GRUB could not find the module of a command: error: can't find command `serial'."),
    "grub-no-kernel": (
        "serial", "Loading Linux 6.12.38+deb13-amd64 ...\r\n"
        "error: file `/boot/vmlinuz-6.12.38+deb13-amd64' not found.\r\n"
        "Loading initial ramdisk ...\r\nerror: you need to load the kernel first.\r\n\r\n"
        "Press any key to continue...",
        "GRUB could not load the kernel: error: file `/boot/vmlinuz-6.12.38+deb13-amd64' "
        "not found"),
    "grub-kernel-first": (
        "serial", "error: you need to load the kernel first.\r\n",
        "GRUB could not load the kernel: error: you need to load the kernel first"),
    "grub-command-line": (
        "serial", "\x1b[H\x1b[J                             GNU GRUB  version 2.12\r\n\r\n"
        "   Minimal BASH-like line editing is supported.\r\n\r\ngrub> ",
        "GRUB dropped to its command line: grub>"),
    "grub-menu-again": (
        "serial", "Loading Linux 6.12.38+deb13-amd64 ...\r\n"
        "error: invalid magic number.\r\n\r\nPress any key to continue...",
        "GRUB could not boot the entry and returns to its menu: Press any key to continue..."),
    "initramfs-wrong-root": (
        "serial", "Begin: Waiting for root file system ... Begin: Running /scripts/local-block"
        " ... done.\r\ndone.\r\nGave up waiting for root file system device.  Common problems:"
        "\r\n - Boot args (cat /proc/cmdline)\r\n"
        "ALERT!  UUID=deadbeef-0000-4000-8000-00000000dead does not exist.  "
        "Dropping to a shell!\r\n\r\n\r\nBusyBox v1.37.0 (Debian 1:1.37.0-6+b3) built-in shell "
        "(ash)\r\n(initramfs) ",
        "the initramfs did not find the root file system: ALERT!  "
        "UUID=deadbeef-0000-4000-8000-00000000dead does not exist.  Dropping to a shell!"),
    "initramfs-gave-up": (
        "serial", "Gave up waiting for suspend/resume device\r\n",
        "the initramfs did not find the root file system: "
        "Gave up waiting for suspend/resume device"),
    "initramfs-no-fs-driver": (
        "serial", "Begin: Will now check root file system ... done.\r\n"
        "mount: mounting /dev/vda1 on /root failed: No such device\r\n"
        "Failed to mount /dev/vda1 as root file system.\r\n",
        "the initramfs has no driver for the root file system: No such device "
        "Failed to mount /dev/vda1 as root file system."),
    "initramfs-mount-failed": (
        "serial", "mount: mounting /dev/vda1 on /root failed: Invalid argument\r\n"
        "Failed to mount /dev/vda1 as root file system.\r\n",
        "the initramfs could not mount the root file system: "
        "Failed to mount /dev/vda1 as root file system."),
    "initramfs-shell": (
        "serial", "BusyBox v1.37.0 (Debian 1:1.37.0-6+b3) built-in shell (ash)\r\n"
        "Enter 'help' for a list of built-in commands.\r\n\r\n(initramfs) ",
        "the initramfs dropped to a shell: (initramfs)"),
    "kernel-panic": (
        "serial", "[    2.345678] VFS: Cannot open root device \"vda1\" or unknown-block(0,0)\r\n"
        "[    2.346012] Kernel panic - not syncing: VFS: Unable to mount root fs on "
        "unknown-block(0,0)\r\n",
        "the kernel panicked: Kernel panic - not syncing: VFS: Unable to mount root fs on "
        "unknown-block(0,0)"),
    "systemd-emergency": (
        "serial", "You are in emergency mode. After logging in, type \"journalctl -xb\" to "
        "view\r\nsystem logs, \"systemctl reboot\" to reboot.\r\n",
        "systemd went into emergency mode: You are in emergency mode. After logging in, type "
        "\"journalctl -xb\" to view"),
    "systemd-maintenance": (
        "serial", "Give root password for maintenance\r\n(or press Control-D to continue): ",
        "systemd went into emergency mode: Give root password for maintenance"),
}


def consoles(where: str, text: str) -> dict[str, str]:
    return {"serial": "", "firmware": "", "screen": "", where: text}


@pytest.mark.parametrize("name", SIGNS)
def test_a_failure_sign_is_told_with_its_reason(name: str) -> None:
    where, text, reason = SIGNS[name]
    assert bootlog.failure(**consoles(where, text)) == reason


@pytest.mark.parametrize("name", SIGNS)
def test_a_failure_sign_ends_the_wait(name: str) -> None:
    where, text, reason = SIGNS[name]
    shown = consoles(where, text)
    result = BootWatch(X86).look(12.0, shown["serial"], (), shown["screen"], shown["firmware"])
    assert (result.success, result.reason, result.seconds) == (False, reason, 12.0)


def test_every_failure_sign_has_a_recorded_console() -> None:
    """The sign that decides each recorded console: together, every row of FAILURES."""
    deciding = set()
    for where, text, _ in SIGNS.values():
        seen = consoles(where, text)
        seen["serial"] = bootlog.plain(seen["serial"])
        deciding.add(next(i for i, (pattern, _) in enumerate(bootlog.FAILURES)
                          if any(pattern.search(t) for t in seen.values())))
    missing = [bootlog.FAILURES[i][1] for i in range(len(bootlog.FAILURES)) if i not in deciding]
    assert not missing, f"failure signs without a recorded console in SIGNS: {missing}"


def test_a_healthy_boot_shows_no_failure_sign() -> None:
    assert bootlog.failure(BOOT_TEXT, SEABIOS, "Booting from Hard Disk...") is None


def test_a_long_sign_is_cut_to_one_line_of_200_characters() -> None:
    reason = bootlog.failure("Kernel panic - not syncing: " + "x" * 300 + "\n")
    assert reason == "the kernel panicked: " + ("Kernel panic - not syncing: " + "x" * 300)[:200]


# The default sample's serial console (x86_64, BIOS), cut where each milestone shows.
BOOT = [
    "\x1b[H\x1b[J\x1b[1;1H                             GNU GRUB  version 2.12-9\r\n\r\n"
    " \x1b[7m*Debian GNU/Linux\x1b[0m\r\n",
    "Loading Linux 6.12.38+deb13-amd64 ...\r\nLoading initial ramdisk ...\r\n"
    "[    0.000000] Linux version 6.12.38+deb13-amd64 (debian-kernel@lists.debian.org) "
    "(x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0) #1 SMP PREEMPT_DYNAMIC\r\n",
    "[  OK  ] Reached target multi-user.target - Multi-User System.\r\n\r\n"
    "Debian GNU/Linux 13 debian13 ttyS0\r\n\r\ndebian13 login: ",
]
BOOT_TEXT = "".join(BOOT)


def test_milestones_are_noted_in_order_at_first_sight() -> None:
    watch = BootWatch(X86, until="marker")
    watch.look(0.5, "", firmware="SeaBIOS (version 1.16.3)\n")
    watch.look(1.0, "", firmware=SEABIOS)
    for elapsed, upto in ((1.5, 1), (4.0, 2), (21.0, 3), (30.0, 3)):
        result = watch.look(elapsed, "".join(BOOT[:upto]), firmware=SEABIOS)
    assert list(result.milestones.items()) == [
        ("firmware-handoff", 1.0), ("boot-loader", 1.5), ("kernel", 4.0), ("login", 21.0)]
    assert result.milestones == watch.milestones and result.milestones is not watch.milestones


def test_a_second_wait_keeps_the_first_times() -> None:
    """cli waits for the marker, then for the login prompt: the milestones of the first
    wait stay."""
    milestones: dict[str, float] = {}
    first = BootWatch(X86, until="marker", milestones=milestones)
    assert first.look(4.0, "".join(BOOT[:2]), ["running"]).success
    result = BootWatch(X86, until="login", milestones=milestones).look(21.0, BOOT_TEXT)
    assert result.milestones == {"boot-loader": 4.0, "kernel": 4.0, "login": 21.0}


def test_the_boot_loader_on_the_screen_is_a_milestone() -> None:
    result = BootWatch(X86).look(3.0, "", screen="GNU GRUB  version 2.12\n\nLoading Linux ...")
    assert result.milestones == {"boot-loader": 3.0}


def test_the_login_prompt_ends_a_wait_for_any_or_login() -> None:
    for until in ("any", "login"):
        result = BootWatch(X86, until=until).look(21.0, BOOT_TEXT)
        assert (result.success, result.reason, result.hostname) == (
            True, "reached the login prompt", "debian13")
    result = BootWatch(X86, until="marker").look(21.0, BOOT_TEXT)
    assert (result.success, result.reason, result.hostname) == (False, "", "debian13")


@pytest.mark.parametrize("marker, success, reason", [
    (["running"], True, "boot marker: running"),
    (["degraded", "failed: ssh.service loaded failed failed OpenBSD Secure Shell server",
      "failed: x.mount loaded failed failed /x"], True,
     "boot marker: degraded (failed: ssh.service, x.mount)"),
    (["maintenance"], False, "the boot marker says the system is maintenance"),
])
def test_the_boot_marker_says_whether_the_system_is_up(marker: list[str], success: bool,
                                                       reason: str) -> None:
    for until in ("any", "marker"):
        result = BootWatch(X86, until=until).look(25.0, BOOT_TEXT, marker)
        assert (result.success, result.reason, result.state, result.marker) == (
            success, reason, marker[0], marker)
    # Waiting for the login prompt, the marker decides nothing: the prompt does.
    result = BootWatch(X86, until="login").look(25.0, BOOT_TEXT, marker)
    assert (result.success, result.reason) == (True, "reached the login prompt")


def test_silence_after_the_handoff_fails_after_the_silence_window() -> None:
    watch = BootWatch(X86, silence=30)
    screen = "SeaBIOS (version 1.16.3)\n\nBooting from Hard Disk..."
    assert watch.look(0.5, "", screen=screen).reason == ""
    assert watch.look(1.0, "", screen=screen, firmware=SEABIOS).reason == ""
    assert watch.look(31.0, "", screen=screen, firmware=SEABIOS).reason == ""
    assert watch.look(31.5, "", screen=screen, firmware=SEABIOS).reason == (
        "nothing on the serial console 30s after the firmware started the boot loader: no "
        "boot loader ran, or it does not use the serial console (ttyS0 on x86_64); the "
        "screen shows 'Booting from Hard Disk...'")


def test_a_boot_loader_on_the_screen_gets_twice_the_silence() -> None:
    watch = BootWatch(X86, silence=30)
    watch.look(1.0, "", firmware=SEABIOS)
    grub = "GNU GRUB  version 2.12\n\nLoading Linux 6.12.38+deb13-amd64 ...\n"
    assert watch.look(3.0, "", screen=grub, firmware=SEABIOS).reason == ""
    assert watch.look(62.9, "", screen=grub, firmware=SEABIOS).reason == ""
    # A changed screen is news: the quiet time counts from it.
    grub += "Loading initial ramdisk ..."
    assert watch.look(63.0, "", screen=grub, firmware=SEABIOS).reason == ""
    assert watch.look(123.0, "", screen=grub, firmware=SEABIOS).reason == ""
    assert watch.look(124.0, "", screen=grub, firmware=SEABIOS).reason == (
        "the boot loader shows only on the screen and stopped there, with nothing on the "
        "serial console for 61s: 'Loading initial ramdisk ...'")


def test_silence_needs_a_handoff_and_an_empty_serial_console() -> None:
    # No handoff seen (no SeaBIOS line, none given): silence is no sign.
    assert BootWatch(X86, silence=30).look(200.0, "", screen="").reason == ""
    # Something on the serial console: the silence rule is over.
    watch = BootWatch(X86, silence=30, handoff=30.0)
    assert watch.look(200.0, BOOT[0], screen="").reason == ""
    # UEFI and U-Boot: the handoff is given, one silence window after qemu's start.
    reason = BootWatch("ttyAMA0 on arm64", silence=30, handoff=30.0).look(60.5, "").reason
    assert reason == ("nothing on the serial console 30s after the firmware started the boot "
                      "loader: no boot loader ran, or it does not use the serial console "
                      "(ttyAMA0 on arm64)")


def test_a_screen_seen_before_the_wait_is_no_news() -> None:
    """A second wait starts with the screen the first one saw last: unchanged, it does
    not restart the quiet time."""
    screen = "Booting from Hard Disk..."
    watch = BootWatch(X86, silence=30, handoff=1.0, screen=screen)
    assert watch.look(31.5, "", screen=screen).reason.startswith("nothing on the serial console")


def test_a_kernel_only_wait_ends_at_the_kernels_first_words() -> None:
    """GRUB on the screen only (no serial terminal), then the kernel on the serial
    console: the wait for the kernel succeeds, silence and all."""
    watch = BootWatch(X86, until="kernel", silence=30)
    watch.look(1.0, "", firmware=SEABIOS)
    grub = "GNU GRUB  version 2.12\n\nLoading Linux 6.12.38+deb13-amd64 ...\n"
    watch.look(3.0, "", screen=grub, firmware=SEABIOS)
    result = watch.look(50.0, "", screen=grub, firmware=SEABIOS)  # past one silence window
    assert (result.success, result.reason) == (False, "")
    kernel = BOOT[1].split("\r\n", 2)[2]  # the kernel's lines, none of GRUB's
    result = watch.look(52.0, kernel, screen=grub, firmware=SEABIOS)
    assert (result.success, result.reason) == (True, "the kernel started")
    assert result.milestones == {"firmware-handoff": 1.0, "boot-loader": 3.0, "kernel": 52.0}


def test_a_kernel_only_wait_is_not_ended_by_the_marker_or_the_prompt() -> None:
    result = BootWatch(X86, until="kernel").look(9.0, "debian13 login: ", ["running"])
    assert (result.success, result.reason, result.hostname) == (False, "", "debian13")
    assert BootWatch(X86, until="kernel").look(9.0, BOOT_TEXT, ["running"]).success


@pytest.mark.parametrize("until, awaited", [
    ("any", "boot marker or login prompt"), ("marker", "boot marker"),
    ("login", "login prompt"), ("kernel", "kernel")])
def test_a_timeout_names_what_was_awaited_and_the_accelerator(until: str, awaited: str) -> None:
    reason = BootWatch(X86, until=until).timed_out(300.4, "tcg: no usable /dev/kvm")
    assert reason == f"no {awaited} after 300s (tcg: no usable /dev/kvm)"


def test_the_tail_is_plain_and_dense() -> None:
    result = bootlog.BootResult(False, "the kernel panicked: x", log=BOOT_TEXT)
    assert result.tail(3) == ("[  OK  ] Reached target multi-user.target - Multi-User System.\n"
                              "Debian GNU/Linux 13 debian13 ttyS0\ndebian13 login: ")
    assert result.report(1) == ("the kernel panicked: x\n--- serial console, last 1 lines ---\n"
                                "debian13 login: ")
