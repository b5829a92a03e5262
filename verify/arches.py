"""How to run a guest of each architecture under qemu: the one table of per-arch facts.

The boot harness (verify.qemu) asks this table for the qemu binary, the machine,
the CPU under TCG, the firmware and how much slower the guest runs; the guest's
console device is here too, for messages. x86_64 boots with SeaBIOS or OVMF;
aarch64 with edk2 (AAVMF) on `-machine virt`; riscv64 with OpenSBI and U-Boot,
whose EFI loader starts the disk's GRUB (Debian 12 has no edk2 for riscv64).

A foreign architecture always runs under TCG (KVM cannot run it), and its
timeouts are those written for an x86_64 guest under TCG times `tcg_factor`.
"""

import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from osbuild.accel import Accel, probe
from osbuild.toolkit.architectures import ARCHITECTURES


@dataclass(frozen=True)
class Firmware:
    """A firmware file and the Debian package that installs it."""

    path: Path
    package: str


@dataclass(frozen=True)
class Arch:
    """How to run guests of one architecture (its kernel's name, uname -m)."""

    name: str
    package: str  # the Debian package with qemu-system-<name>
    machine: str | None  # -machine; None: qemu's default (pc on x86_64)
    cpu: str  # -cpu under TCG
    console: str  # the guest's device for qemu's first -serial
    tcg_factor: float  # how much slower than an x86_64 guest, both under TCG
    display: str | None  # a -device for screendumps; None where the machine has none
    seabios: bool = False  # legacy BIOS boot (and its debug port, pvpanic): x86 only
    uefi_code: Firmware | None = None  # pflash unit 0, read-only
    uefi_vars: Firmware | None = None  # the template of each VM's own writable pflash unit 1
    sbi: Firmware | None = None  # -bios: the machine-mode firmware
    loader: Firmware | None = None  # -kernel: the boot loader the SBI firmware starts

    @property
    def binary(self) -> str:
        return f"qemu-system-{self.name}"

    def boots_uefi(self, uefi: bool) -> bool:
        """Whether the firmware boots the disk's EFI loader (`uefi`: what was asked for)."""
        return uefi or not self.seabios

    def firmware(self, uefi: bool) -> list[Firmware]:
        """The firmware files a boot needs (none for SeaBIOS, which qemu brings)."""
        if not self.boots_uefi(uefi):
            return []
        return [f for f in (self.uefi_code, self.uefi_vars, self.sbi, self.loader) if f]

    def missing(self, uefi: bool) -> str | None:
        """What is not installed for a boot, as one line naming the package; None if all is."""
        if shutil.which(self.binary) is None:
            return f"{self.binary} not found: install the Debian package {self.package}"
        for f in self.firmware(uefi):
            if not f.path.is_file():
                return f"{f.path} not found: install the Debian package {f.package}"
        return None

    def firmware_args(self, uefi: bool, vars_copy: Path) -> list[str]:
        """qemu's firmware options; `vars_copy` is this VM's copy of the UEFI variables."""
        args = []
        if self.boots_uefi(uefi) and self.uefi_code:
            args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,"
                               f"file={self.uefi_code.path}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        if self.boots_uefi(uefi) and self.sbi:
            args += ["-bios", str(self.sbi.path)]
        if self.boots_uefi(uefi) and self.loader:
            args += ["-kernel", str(self.loader.path)]
        return args


OVMF = Path("/usr/share/OVMF")
AAVMF = Path("/usr/share/AAVMF")

ARCHES = {a.name: a for a in (
    Arch("x86_64", "qemu-system-x86", None, "max", "ttyS0", 1.0, "VGA", seabios=True,
         uefi_code=Firmware(OVMF / "OVMF_CODE_4M.fd", "ovmf"),
         uefi_vars=Firmware(OVMF / "OVMF_VARS_4M.fd", "ovmf")),
    # The PL011 is what -serial gives on virt; edk2 draws its screen on ramfb. The CPU
    # is osbuild.toolkit.architectures' (fast pointer authentication: Debian's arm64 kernel boots
    # to its root mount in 4.0 s instead of 8.6 s with plain "max").
    Arch("aarch64", "qemu-system-arm", "virt", str(ARCHITECTURES["arm64"].qemu_cpu),
         "ttyAMA0", 6.0, "ramfb",
         uefi_code=Firmware(AAVMF / "AAVMF_CODE.fd", "qemu-efi-aarch64"),
         uefi_vars=Firmware(AAVMF / "AAVMF_VARS.fd", "qemu-efi-aarch64")),
    # qemu 7.2 has no riscv64 "max" CPU, and its virt machine no ramfb (no fw_cfg DMA).
    Arch("riscv64", "qemu-system-misc", "virt", "rv64", "ttyS0", 8.0, None,
         sbi=Firmware(Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin"),
                      "opensbi"),
         loader=Firmware(Path("/usr/lib/u-boot/qemu-riscv64_smode/uboot.elf"), "u-boot-qemu")),
)}


def lookup(name: str) -> Arch | None:
    """The architecture named `name`, by its kernel name (aarch64) or Debian's (arm64)."""
    known = ARCHITECTURES.get(name)
    return ARCHES.get(known.machine if known else name)


def names() -> list[str]:
    """Every name lookup() accepts, for usage messages."""
    return sorted(ARCHES) + sorted(d for d, a in ARCHITECTURES.items()
                                   if a.machine in ARCHES and d not in ARCHES)


def accelerator(arch: Arch) -> Accel:
    """KVM when the probe says it works for a native guest; TCG, scaled, for the rest."""
    if arch.name == platform.machine() == "x86_64":
        return probe()  # the probe boots an x86_64 kernel
    return Accel("tcg", ("-accel", "tcg", "-cpu", arch.cpu), arch.tcg_factor,
                 f"{arch.name} is emulated on {platform.machine()}: "
                 f"timeouts x{arch.tcg_factor:g}")
