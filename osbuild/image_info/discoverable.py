"""The Discoverable Partitions view: each GPT partition by its systemd type name,
and whether systemd-gpt-auto-generator would mount it when the image boots.

The verdict follows the generator's documented rules (systemd 252 and later),
first failing rule first, so `why` names what a user has to change:
- the root (and /usr) partition is found only by a systemd initrd, when the
  kernel command line has no root= (or root=gpt-auto) and the boot loader
  reports the partition it booted from (LoaderDevicePartUUID: systemd-boot,
  not GRUB);
- the ESP and XBOOTLDR need that boot loader report too, and nothing in fstab
  under /boot or /efi;
- /home, /srv, /var, /var/tmp and swap: the first partition of each type on
  the root's disk, unless fstab names its mount point, the directory already
  holds files, the partition has the no-auto flag, or systemd.gpt_auto=0;
  /var only if its partition UUID is the machine-id's (HMAC-SHA256 of the
  type UUID keyed with the machine ID), so a disk moved to another machine
  does not get its /var.
"""

import hashlib
import hmac
import shlex
import uuid
from typing import Any

from osbuild.image_info import gpt_types
from osbuild.image_info.disk import Layout, Partition
from osbuild.image_info.treeview import Tree

# GPT attribute bits of the specification.
FLAGS = {59: "grow-fs", 60: "read-only", 63: "no-auto"}
# dpkg architecture -> the specification's architecture name.
ARCHES = {
    "amd64": "x86-64", "i386": "x86", "arm64": "arm64", "armhf": "arm", "armel": "arm",
    "riscv64": "riscv64", "ppc64el": "ppc64-le", "ppc64": "ppc64", "s390x": "s390x",
    "mips64el": "mips64-le", "mipsel": "mips-le", "loong64": "loongarch64",
    "alpha": "alpha", "ia64": "ia64", "hppa": "parisc",
}
MOUNTPOINTS = {"home": "/home", "srv": "/srv", "var": "/var", "tmp": "/var/tmp", "swap": "swap"}
NO_LOADER_REPORT = "the boot loader does not report LoaderDevicePartUUID (systemd-boot " \
    "does, GRUB does not)"
GENERATORS = ("usr/lib/systemd/system-generators/systemd-gpt-auto-generator",
              "lib/systemd/system-generators/systemd-gpt-auto-generator")


def flags(attrs: str) -> list[str]:
    """The specification's flags among sfdisk's attributes ("GUID:60,63")."""
    bits: set[int] = set()
    for word in attrs.split():
        if word.startswith("GUID:"):
            bits.update(int(b) for b in word[5:].split(",") if b.isdigit())
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


def _reports_boot_partition(report: dict[str, Any]) -> bool:
    """Whether the ESP's boot loader sets LoaderDevicePartUUID (systemd-boot does)."""
    return any("systemd-boot" in path.lower()
               for esp in report.get("esp", []) for path in esp.get("files", {}))


def _fstab_targets(report: dict[str, Any]) -> list[str]:
    return [entry[1] for entry in report.get("fstab", []) if len(entry) > 1]


class _Judge:
    """The rules, with what they read from the image's report and tree."""

    def __init__(self, report: dict[str, Any], view: Tree | None, kinds: list[str | None]):
        self.report = report
        self.kinds = kinds
        self.view = view
        self.cmdlines = _cmdlines(report)
        self.fstab = _fstab_targets(report)
        self.seen: set[str] = set()

    def disabled(self) -> str | None:
        if self.view is None:
            return "no OS tree found on the image"
        if not any(self.view.exists(path) for path in GENERATORS):
            return "the tree has no systemd-gpt-auto-generator"
        for words in self.cmdlines:
            for word in words:
                key, _, value = word.partition("=")
                if key in ("systemd.gpt_auto", "rd.systemd.gpt_auto") and \
                        value in ("0", "no", "false", "off"):
                    return f"the kernel command line has {word}"
        return None

    def mountpoint(self, kind: str) -> str | None:
        family = kind.partition("-")[0]
        if family in ("root", "usr"):
            return "/" if family == "root" else "/usr"
        if kind == "esp":
            # The ESP takes /boot when it is free and no XBOOTLDR claims it, else /efi.
            assert self.view is not None
            boot_free = "xbootldr" not in self.kinds and not self.view.listdir("boot")
            return "/boot" if boot_free else "/efi"
        return "/boot" if kind == "xbootldr" else MOUNTPOINTS.get(kind)

    def root(self, kind: str, arch: str) -> tuple[bool, str]:
        dpkg = self.report.get("architecture", {}).get("dpkg")
        if dpkg is None:
            return False, "the image's architecture is unknown (no dpkg arch)"
        if ARCHES.get(dpkg) != arch:
            return False, f"a {kind} partition for {arch}; the image is {dpkg}"
        named = [w for words in self.cmdlines for w in words
                 if w.startswith("root=") and w != "root=gpt-auto"]
        if named:
            return False, f"the kernel command line names {named[0]}"
        if not self.cmdlines:
            return False, "no boot entry with a kernel command line"
        if "dracut" not in _packages(self.report):
            return False, "only a systemd initrd (dracut) finds it; initramfs-tools' does not"
        if not _reports_boot_partition(self.report):
            return False, NO_LOADER_REPORT
        return True, "a systemd initrd finds it on the disk the boot loader used"

    def boot(self, mountpoint: str) -> tuple[bool, str]:
        assert self.view is not None
        under = [t for t in self.fstab
                 if t in ("/boot", "/efi") or t.startswith(("/boot/", "/efi/"))]
        if under:
            return False, f"fstab mounts {under[0]}"
        if not _reports_boot_partition(self.report):
            return False, NO_LOADER_REPORT
        if self.view.listdir(mountpoint.lstrip("/")):
            return False, f"{mountpoint} holds files in the root file system"
        return True, "the boot loader reports it as the partition it booted from"

    def data(self, kind: str, mountpoint: str, part: Partition) -> tuple[bool, str]:
        assert self.view is not None
        if kind in self.seen:
            return False, f"not the first {kind} partition on the disk"
        self.seen.add(kind)
        if kind == "var":
            machine_id = self.report.get("machine-id", "")
            if len(machine_id) != 32:
                return False, "no machine ID: /var's partition UUID cannot match it"
            if part.partuuid != var_partuuid(machine_id):
                return False, "its partition UUID is not the one derived from the machine " \
                    f"ID ({var_partuuid(machine_id)})"
        if kind != "swap":
            if mountpoint in self.fstab:
                return False, f"fstab mounts {mountpoint}"
            if self.view.listdir(mountpoint.lstrip("/")):
                return False, f"{mountpoint} holds files in the root file system"
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
    mountpoint = judge.mountpoint(kind)
    assert mountpoint is not None
    if "no-auto" in part_flags:  # skipped: the next partition of its type counts
        return False, mountpoint, "the partition has the no-auto flag"
    family, _, arch = kind.partition("-")
    if family in ("root", "usr"):
        auto, why = judge.root(family, arch)
    elif kind in ("esp", "xbootldr"):
        auto, why = judge.boot(mountpoint)
    else:
        auto, why = judge.data(kind, mountpoint, part)
    return auto, mountpoint, why


def report(layout: Layout, found: dict[str, Any], tree: Tree | None) -> dict[str, Any]:
    """{"discoverable-partitions": [...]} of a GPT disk whose report so far is `found`;
    nothing for other layouts."""
    if layout.pttype != "gpt":
        return {}
    kinds = [gpt_types.name(part.type) for part in layout.partitions or []]
    judge = _Judge(found, tree, kinds)
    parts = []
    for part, kind in zip(layout.partitions or [], kinds, strict=True):
        part_flags = flags(part.attrs)
        auto, mountpoint, why = _verdict(judge, kind, part, part_flags)
        parts.append({"number": part.number, "type": kind, "flags": part_flags,
                      "mountpoint": mountpoint, "auto-mount": auto, "why": why})
    return {"discoverable-partitions": parts}
