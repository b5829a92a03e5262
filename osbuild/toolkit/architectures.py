"""The CPU architectures trees are built for, under each tool's name for them.

dpkg, the kernel (and qemu), GRUB and UEFI each name an architecture their own
way; this table is the one place that says which names go together, for the
stages (run in the build root: standard library only), the engine's qemu-user
set-up, image-info and the boot harness.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    debian: str  # dpkg --print-architecture
    machine: str  # uname -m, and qemu's name (qemu-system-<machine>, qemu-<machine>)
    grub_efi: str  # GRUB's EFI platform: /usr/lib/grub/<grub_efi>/
    efi_image: str  # Debian's monolithic GRUB EFI image in .../monolithic/
    efi_removable: str  # the removable-media file name firmware starts: /EFI/BOOT/<this>
    # qemu's -cpu (QEMU_CPU for qemu-user) where its default is slow to emulate: arm64's
    # "max" computes pointer authentication with the architected QARMA5, which Debian's
    # arm64 code (signed return addresses) pays at every call; qemu's own algorithm gives
    # the guest the same features (perl 7.5 s against 57 s, xz 57 s against 193 s here).
    qemu_cpu: str | None = None

    @property
    def grub_efi_package(self) -> str:
        return f"grub-efi-{self.debian}-bin"


ARCHITECTURES = {a.debian: a for a in (
    Architecture("amd64", "x86_64", "x86_64-efi", "grubx64.efi", "BOOTX64.EFI"),
    Architecture("arm64", "aarch64", "arm64-efi", "grubaa64.efi", "BOOTAA64.EFI",
                 qemu_cpu="max,pauth-impdef=on"),
    Architecture("riscv64", "riscv64", "riscv64-efi", "grubriscv64.efi", "BOOTRISCV64.EFI"),
)}

# Architectures a host runs natively besides its own (no qemu-user needed).
NATIVE_ALSO = {"amd64": ("i386",), "arm64": ("armhf", "armel")}


def by_machine(machine: str) -> Architecture | None:
    """The architecture whose kernel name is `machine` (platform.machine())."""
    return next((a for a in ARCHITECTURES.values() if a.machine == machine), None)


def by_grub_efi(platform: str) -> Architecture | None:
    return next((a for a in ARCHITECTURES.values() if a.grub_efi == platform), None)


def runs_natively(host: str, architecture: str) -> bool:
    """Whether a `host` (dpkg name) runs `architecture`'s programs without qemu-user."""
    return architecture in (host, "all") or architecture in NATIVE_ALSO.get(host, ())


def binfmt_name(architecture: str) -> str:
    """binfmt_misc's name for qemu-user-static's handler of a dpkg architecture."""
    known = ARCHITECTURES.get(architecture)
    return f"qemu-{known.machine if known else architecture}"
