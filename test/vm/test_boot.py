"""Images that must boot and keep their manifest's promises, checked from inside.

Each case builds its image into the run's shared store (conftest), boots it
under qemu, waits for the org.osbuild.test marker (or, for the samples, a login
prompt) and checks inside the guest, over SSH with the session's key (or the
serial console with the samples' documented password): hostname, root file
system UUID and type, every service the manifest enables is active, and
`systemctl is-system-running` is running: a failed unit (degraded) in an image
of ours is a bug, whatever osbuild-boot-test accepts of other people's images.
"""

import pytest
from vmkit import VMImage

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


@pytest.mark.parametrize("fixture, module", [("xfs_image", "xfs"), ("btrfs_image", "btrfs")])
def test_root_file_system_boots(fixture: str, module: str, boot_vm,
                                request: pytest.FixtureRequest) -> None:
    image: VMImage = request.getfixturevalue(fixture)
    vm, guest = boot_vm(image)
    facts = guest.check_manifest()
    assert facts["fstype"] == module
    initramfs = guest.output("lsinitramfs /boot/initrd.img-$(uname -r)")
    if f"/fs/{module}/{module}.ko" not in initramfs:
        guest.fail([f"the initramfs has no {module} module"])
    # GRUB's core.img found /boot/grub on this file system: its prefix says so.
    assert guest.output("cat /proc/cmdline").startswith("BOOT_IMAGE=/boot/vmlinuz-")
    powered_off(vm)


def test_web_server_answers_through_a_port_forward(web_image: VMImage, boot_vm) -> None:
    vm, guest = boot_vm(web_image, forwards=(22, 80))
    guest.check_manifest()
    status, body = vm.http_get(80, "/")
    expected = "osbuild-deb web server test image\n"
    if (status, body) != (200, expected):
        guest.fail([f"GET / through host port {vm.host_port(80)}: {status} {body[:200]!r}, "
                    f"expected 200 {expected!r}"])
    status, _ = vm.http_get(80, "/no-such-page")
    assert status == 404
    assert guest.output("systemctl is-enabled lighttpd") == "enabled"
    powered_off(vm)
