"""Images that must boot and keep their manifest's promises, checked from inside.

Each case builds its image into the run's shared store (conftest), boots it
under qemu, waits for the org.osbuild.test marker (or, for the samples, a login
prompt) and checks inside the guest, over SSH with the session's key (or the
serial console with the samples' documented password): hostname, root file
system UUID and type, every service the manifest enables is active, and
`systemctl is-system-running` is running: a failed unit (degraded) in an image
of ours is a bug, whatever osbuild-boot-test accepts of other people's images.
The xfs image also runs lighttpd, checked over HTTP from the host: a TCG boot
costs minutes, so one boot checks both. The btrfs root boots in
test_discoverable_boot.py (the UEFI image's root), for the same reason.
"""

import pytest
from vmkit import Guest, VMImage

from verify import qemu

pytestmark = pytest.mark.slow


def powered_off(vm) -> None:
    """The ACPI power button (QMP system_powerdown) shuts the guest down cleanly."""
    assert vm.powerdown(), f"no power-off on the ACPI power button:\n{vm.serial_log()[-2000:]}"
    assert "reboot: Power down" in vm.serial_log()


def test_uefi_sample_boots_with_its_esp(uefi_sample: VMImage, boot_vm) -> None:
    vm, guest = boot_vm(uefi_sample, forwards=())
    guest.check_manifest()
    esp = next(fs for fs in uefi_sample.options("org.osbuild.fstab")["filesystems"]
               if fs["path"] == "/boot/efi")
    facts = guest.output("test -d /sys/firmware/efi && echo uefi; "
                         "findmnt -no UUID,FSTYPE /boot/efi; ls /boot/efi/EFI")
    lines = facts.split()
    if lines[:3] != ["uefi", esp["uuid"], "vfat"] or "debian" not in lines:
        guest.fail([f"expected a UEFI boot with the ESP {esp['uuid']} (vfat) holding "
                    f"EFI/debian mounted at /boot/efi, got {facts!r}"])


def serves_through_a_port_forward(vm: qemu.VM, guest: Guest) -> None:
    """lighttpd, enabled, answers the host on guest port 80: the page, and 404 for no page."""
    status, body = vm.http_get(80, "/")
    expected = "osbuild-deb web server test image\n"
    if (status, body) != (200, expected):
        guest.fail([f"GET / through host port {vm.host_port(80)}: {status} {body[:200]!r}, "
                    f"expected 200 {expected!r}"])
    status, body = vm.http_get(80, "/no-such-page")
    if status != 404:
        guest.fail([f"GET /no-such-page through host port {vm.host_port(80)}: {status} "
                    f"{body[:200]!r}, expected 404"])
    _, enabled = guest.run("systemctl is-enabled lighttpd")
    if enabled.strip() != "enabled":
        guest.fail([f"systemctl is-enabled lighttpd: {enabled.strip()!r}, expected enabled"])


def test_xfs_root_boots_and_serves_through_a_port_forward(xfs_web_image: VMImage,
                                                          boot_vm) -> None:
    vm, guest = boot_vm(xfs_web_image, forwards=(22, 80))
    guest.boots_from_its_root("xfs")
    serves_through_a_port_forward(vm, guest)
    powered_off(vm)
