"""The Discoverable Partitions view: each GPT partition by its systemd type name,
and whether systemd-gpt-auto-generator would mount it when the image boots.

The verdict follows the generator's rules as systemd 257 (Debian 13) has them,
first failing rule first, so `why` names what a user has to change. A test boots
an image and compares every verdict with what the guest's generator mounted
(test/vm/test_discoverable_boot.py).
- Everything but the root runs on the booted system, on the disk that holds /,
  whatever found the root. Each type counts its first partition only; one with
  the no-auto flag (the ESP: no-block-io-protocol) or a /var whose partition
  UUID is not the machine ID's (HMAC-SHA256 of the type UUID keyed with the
  machine ID) is skipped, and the next one of its type counts.
- /home, /srv, /var, /var/tmp: unless fstab names the mount point (its unit wins)
  or the directory holds files in the root file system.
- swap: unless fstab has any swap entry or the command line says systemd.swap=no.
- the ESP and XBOOTLDR: never when fstab mounts anything under /boot or /efi; on
  an EFI boot only when the boot loader reports the partition it booted from
  (LoaderDevicePartUUID: systemd-boot, or GRUB with its bli module loaded); a BIOS
  boot needs no report. XBOOTLDR takes /boot; the ESP takes /boot when there is
  no XBOOTLDR and /boot is empty, else /efi, and nothing when fstab names its
  device. An image boots through EFI when its ESP holds an EFI binary.
- the root (and /usr) is found only by a systemd initrd, on an EFI boot, when the
  kernel command line has no root= (or root=gpt-auto) and the boot loader
  reports the partition it booted from.
"""

import hashlib
import hmac
import shlex
import uuid
from typing import Any

from osbuild.image_info import gpt_types
from osbuild.image_info.disk import Layout, Partition
from osbuild.image_info.treeview import Tree

# GPT attribute bits of the specification (bit 1 is UEFI's, the one the ESP honours).
FLAGS = {1: "no-block-io-protocol", 59: "grow-fs", 60: "read-only", 63: "no-auto"}
# sfdisk's names for the low attribute bits.
ATTR_NAMES = {"RequiredPartition": 0, "NoBlockIOProtocol": 1, "LegacyBIOSBootable": 2}
# dpkg architecture -> the specification's architecture name.
ARCHES = {
    "amd64": "x86-64", "i386": "x86", "arm64": "arm64", "armhf": "arm", "armel": "arm",
    "riscv64": "riscv64", "ppc64el": "ppc64-le", "ppc64": "ppc64", "s390x": "s390x",
    "mips64el": "mips64-le", "mipsel": "mips-le", "loong64": "loongarch64",
    "alpha": "alpha", "ia64": "ia64", "hppa": "parisc",
}
MOUNTPOINTS = {"home": "/home", "srv": "/srv", "var": "/var", "tmp": "/var/tmp", "swap": "swap"}
NO_LOADER_REPORT = "the boot loader does not report LoaderDevicePartUUID (systemd-boot " \
    "does, GRUB only with its bli module)"
BIOS_BOOT = "a BIOS boot (no EFI binary on an ESP): no boot loader report is needed"
BIOS_ROOT = "a BIOS boot (no EFI binary on an ESP): only an EFI boot finds it"
GENERATORS = ("usr/lib/systemd/system-generators/systemd-gpt-auto-generator",
              "lib/systemd/system-generators/systemd-gpt-auto-generator")
GRUB_CONFIGS = ("boot/grub/grub.cfg", "boot/grub2/grub.cfg")
FALSE = ("0", "no", "n", "false", "f", "off")


def flags(attrs: str) -> list[str]:
    """The specification's flags among sfdisk's attributes ("NoBlockIOProtocol GUID:60,63")."""
    bits: set[int] = set()
    for word in attrs.split():
        if word.startswith("GUID:"):
            bits.update(int(b) for b in word[5:].split(",") if b.isdigit())
        elif word in ATTR_NAMES:
            bits.add(ATTR_NAMES[word])
    return [FLAGS[b] for b in sorted(bits) if b in FLAGS]


def var_partuuid(machine_id: str) -> str:
    """The partition UUID a /var partition must have on the machine with this ID."""
    digest = hmac.new(bytes.fromhex(machine_id),
                      uuid.UUID(gpt_types.GUIDS["var"]).bytes, hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _cmdlines(report: dict[str, Any]) -> list[list[str]]:
    options = [e.get("options", "") for e in report.get("grub-menu", [])]
    options += [e.get("options", "") for e in report.get("bootmenu", [])]
    return [shlex.split(o) for o in options if o]


def _packages(report: dict[str, Any]) -> set[str]:
    return {p.split(":")[0] for p in report.get("packages", [])}


def _efi_boot(report: dict[str, Any]) -> bool:
    """Whether the image boots through EFI: its ESP holds an EFI binary."""
    return any(esp.get("efi-binaries") for esp in report.get("esp", []))


def _loads_bli(text: str) -> bool:
    return any(line.split()[:2] == ["insmod", "bli"] for line in text.splitlines())


def _fstab(report: dict[str, Any]) -> list[list[str]]:
    return [entry for entry in report.get("fstab", []) if len(entry) > 2]


def _names(part: Partition, spec: str) -> bool:
    """Whether an fstab source (UUID=, PARTUUID=, LABEL=, PARTLABEL=) is this partition."""
    key, _, value = spec.partition("=")
    found = {"UUID": part.fs.uuid, "PARTUUID": part.partuuid, "LABEL": part.fs.label,
             "PARTLABEL": part.name}.get(key)
    if found is None or not value:
        return False
    return value.lower() == found.lower() if "UUID" in key else value == found


class _Judge:
    """The rules, with what they read from the image's report and tree."""

    def __init__(self, report: dict[str, Any], view: Tree | None, kinds: list[str | None],
                 parts: list[Partition]):
        self.report = report
        self.view = view
        self.cmdlines = _cmdlines(report)
        self.fstab = _fstab(report)
        self.targets = [entry[1] for entry in self.fstab]
        self.efi = _efi_boot(report)
        self.seen: set[str] = set()
        # XBOOTLDR counts when the generator's dissection finds one (no-auto skips it).
        self.xbootldr = any(kind == "xbootldr" and "no-auto" not in flags(part.attrs)
                            for kind, part in zip(kinds, parts, strict=True))

    def switch(self, *keys: str) -> str | None:
        """The last setting of a boolean kernel command line switch, if it turns it off."""
        last = None
        for words in self.cmdlines:
            for word in words:
                key, eq, value = word.partition("=")
                if key in keys:
                    last = word if eq and value.lower() in FALSE else None
        return last

    def disabled(self) -> str | None:
        if self.view is None:
            return "no OS tree found on the image"
        if not any(self.view.exists(path) for path in GENERATORS):
            return "the tree has no systemd-gpt-auto-generator"
        off = self.switch("systemd.gpt_auto", "rd.systemd.gpt_auto")
        return f"the kernel command line has {off}" if off else None

    def busy(self, mountpoint: str) -> str | None:
        """Why the generator leaves a mount point of the root file system alone, if it does."""
        assert self.view is not None
        path = mountpoint.lstrip("/")
        if not self.view.exists(path):
            return None  # the mount unit makes it
        if not self.view.is_dir(path):
            return f"{mountpoint} is not a directory in the root file system"
        if self.view.listdir(path):
            return f"{mountpoint} holds files in the root file system"
        return None

    def loader_reports(self) -> bool:
        """Whether the boot loader sets LoaderDevicePartUUID: systemd-boot on the ESP, or
        a GRUB configuration that loads the bli module."""
        assert self.view is not None
        esps = self.report.get("esp", [])
        if any("systemd-boot" in path.lower() for esp in esps for path in esp.get("files", {})):
            return True
        texts = ["\n".join(lines) for esp in esps for lines in esp.get("configs", {}).values()]
        texts += [self.view.read_text(path) or "" for path in GRUB_CONFIGS]
        return any(_loads_bli(text) for text in texts)

    def first(self, kind: str) -> str | None:
        if kind in self.seen:
            return f"not the first {kind} partition on the disk"
        self.seen.add(kind)
        return None

    def root(self, kind: str, arch: str) -> tuple[bool, str]:
        dpkg = self.report.get("architecture", {}).get("dpkg")
        if dpkg is None:
            return False, "the image's architecture is unknown (no dpkg arch)"
        if ARCHES.get(dpkg) != arch:
            return False, f"a {kind} partition for {arch}; the image is {dpkg}"
        named = [w for words in self.cmdlines for w in words
                 if (w.startswith("root=") and w != "root=gpt-auto") or
                 w.startswith("roothash=")]
        if named:
            return False, f"the kernel command line names {named[0]}"
        if not self.cmdlines:
            return False, "no boot entry with a kernel command line"
        if "dracut" not in _packages(self.report):
            return False, "only a systemd initrd (dracut) finds it; initramfs-tools' does not"
        if not self.efi:
            return False, BIOS_ROOT
        if not self.loader_reports():
            return False, NO_LOADER_REPORT
        return True, "a systemd initrd finds it on the disk the boot loader used"

    def loader_partition(self, kind: str, part: Partition) -> tuple[bool, str, str]:
        """(auto-mounted, where, why) of the ESP or XBOOTLDR."""
        where, boot_taken = "/boot", None
        if kind == "esp":
            boot_taken = "/boot is the XBOOTLDR's" if self.xbootldr else self.busy("/boot")
            where = "/efi" if boot_taken else "/boot"
        under = [t for t in self.targets
                 if t in ("/boot", "/efi") or t.startswith(("/boot/", "/efi/"))]
        if under:
            return False, where, f"fstab mounts {under[0]}"
        if self.efi and not self.loader_reports():
            return False, where, NO_LOADER_REPORT
        named = [e[1] for e in self.fstab if _names(part, e[0])] if kind == "esp" else []
        if named:
            return False, where, f"fstab mounts the partition at {named[0]}"
        busy = self.busy(where)
        if busy:
            return False, where, f"{boot_taken}, and {busy}" if boot_taken else busy
        if self.efi:
            return True, where, "the boot loader reports the partition it booted from"
        return True, where, BIOS_BOOT

    def data(self, kind: str, mountpoint: str, part: Partition) -> tuple[bool, str]:
        if kind == "var":
            # A /var of another machine is skipped before the first one is picked.
            machine_id = self.report.get("machine-id", "")
            if len(machine_id) != 32:
                return False, "no machine ID: /var's partition UUID cannot match it"
            if (part.partuuid or "").lower() != var_partuuid(machine_id):
                return False, "its partition UUID is not the one derived from the machine " \
                    f"ID ({var_partuuid(machine_id)})"
        not_first = self.first(kind)
        if not_first:
            return False, not_first
        if kind == "swap":
            if any(entry[2] == "swap" for entry in self.fstab):
                return False, "fstab has a swap entry"
            off = self.switch("systemd.swap")
            if off:
                return False, f"the kernel command line has {off}"
        else:
            if mountpoint in self.targets:
                return False, f"fstab mounts {mountpoint}"
            busy = self.busy(mountpoint)
            if busy:
                return False, busy
        return True, f"the first {kind} partition on the root's disk"


def _verdict(judge: _Judge, kind: str | None, part: Partition, part_flags: list[str]
             ) -> tuple[bool, str | None, str]:
    """(auto-mounted, where, why) of one partition."""
    if kind is None:
        return False, None, "not a type of the Discoverable Partitions Specification"
    if kind in ("linux-generic", "user-home"):
        return False, None, "a type the generator does not mount (only fstab or its own tool)"
    if kind.endswith(("-verity", "-verity-sig")):
        return False, None, "verity data of a root or /usr partition, never mounted itself"
    disabled = judge.disabled()
    if disabled:
        return False, None, disabled
    family, _, arch = kind.partition("-")
    if kind == "esp":
        # The ESP has no no-auto flag; UEFI's no-block-io-protocol hides it instead.
        if "no-block-io-protocol" in part_flags:
            return False, None, "the partition has the no-block-io-protocol flag"
    elif "no-auto" in part_flags:  # skipped: the next partition of its type counts
        where = "/" if family == "root" else "/usr" if family == "usr" else \
            "/boot" if kind == "xbootldr" else MOUNTPOINTS.get(kind)
        return False, where, "the partition has the no-auto flag"
    if family in ("root", "usr"):
        auto, why = judge.root(family, arch)
        return auto, "/" if family == "root" else "/usr", why
    if kind in ("esp", "xbootldr"):
        not_first = judge.first(kind)
        if not_first:
            return False, None, not_first
        return judge.loader_partition(kind, part)
    mountpoint = MOUNTPOINTS[kind]
    auto, why = judge.data(kind, mountpoint, part)
    return auto, mountpoint, why


def report(layout: Layout, found: dict[str, Any], tree: Tree | None) -> dict[str, Any]:
    """{"discoverable-partitions": [...]} of a GPT disk whose report so far is `found`;
    nothing for other layouts."""
    if layout.pttype != "gpt":
        return {}
    parts = layout.partitions or []
    kinds = [gpt_types.name(part.type) for part in parts]
    judge = _Judge(found, tree, kinds, parts)
    verdicts = []
    for part, kind in zip(parts, kinds, strict=True):
        part_flags = flags(part.attrs)
        auto, mountpoint, why = _verdict(judge, kind, part, part_flags)
        verdicts.append({"number": part.number, "type": kind, "flags": part_flags,
                         "mountpoint": mountpoint, "auto-mount": auto, "why": why})
    return {"discoverable-partitions": verdicts}
