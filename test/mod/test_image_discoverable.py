"""image-info's Discoverable Partitions view: systemd's type names and the verdicts of
systemd-gpt-auto-generator's rules, on a disk made with sfdisk and on small reports.

The names and the /var UUID are checked against the host's own systemd-id128,
so the table and the HMAC are not only checked against themselves.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from imagemaker import mk

from osbuild.image_info import discoverable, gpt_types
from osbuild.image_info.disk import Filesystem, Layout, Partition
from osbuild.image_info.treeview import Tree

needs_id128 = pytest.mark.skipif(shutil.which("systemd-id128") is None,
                                 reason="systemd-id128 is not installed")
ALIASES = ("root", "usr", "root-secondary", "usr-secondary")


@needs_id128
def test_type_names_are_systemds() -> None:
    shown = subprocess.run(["systemd-id128", "show"], capture_output=True, text=True,
                           check=True).stdout.splitlines()[1:]
    host = {name: str(uuid.UUID(hex_)) for name, hex_ in (line.split() for line in shown)
            if name.removesuffix("-verity-sig").removesuffix("-verity") not in ALIASES}
    # A newer systemd may know more types; every one we name, it names the same way.
    assert {k: v for k, v in gpt_types.GUIDS.items() if k in host} == \
        {k: v for k, v in host.items() if k in gpt_types.GUIDS}
    assert len(set(gpt_types.GUIDS) & set(host)) >= 130


@needs_id128
@pytest.mark.skipif(not Path("/etc/machine-id").is_file(), reason="the host has no machine-id")
def test_var_uuid_is_systemds_app_specific_id() -> None:
    machine_id = Path("/etc/machine-id").read_text().strip()
    expected = subprocess.run(
        ["systemd-id128", "machine-id", "-u",
         f"--app-specific={gpt_types.GUIDS['var'].replace('-', '')}"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert discoverable.var_partuuid(machine_id) == expected


@pytest.mark.parametrize("attrs,expected", [
    ("", []), ("RequiredPartition", []), ("GUID:63", ["no-auto"]),
    ("RequiredPartition LegacyBIOSBootable GUID:48,59,60,63", ["grow-fs", "read-only", "no-auto"]),
    ("NoBlockIOProtocol", ["no-block-io-protocol"]),
])
def test_flags(attrs: str, expected: list[str]) -> None:
    assert discoverable.flags(attrs) == expected


@pytest.mark.skipif(os.geteuid() != 0, reason="the loop backend needs root")
def test_verdicts_on_a_disk(tmp_path: Path) -> None:
    image = tmp_path / "disk" / "discoverable.raw"
    image.parent.mkdir()
    (tmp_path / "build").mkdir()
    mk.discoverable_image(image, tmp_path / "build")
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", str(image)],
                          capture_output=True, text=True, check=True)
    found = {p["number"]: p for p in json.loads(proc.stdout)["discoverable-partitions"]}
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert [found[n]["type"] for n in sorted(found)] == \
        [gpt_types.name(p["type"]) for p in table["partitions"]]
    verdicts = {n: (p["mountpoint"], p["auto-mount"], p["why"]) for n, p in found.items()}
    assert verdicts == {
        # No EFI binary on the ESP: a BIOS boot, where the generator needs no loader report.
        1: ("/efi", True, discoverable.BIOS_BOOT),  # /boot holds the kernel's files
        2: ("/", False, f"the kernel command line names root=UUID={mk.ROOT_UUID}"),
        3: ("/home", True, "the first home partition on the root's disk"),
        4: ("/home", False, "not the first home partition on the disk"),
        5: ("/var", False, "/var holds files in the root file system"),  # the UUID is right
        6: ("swap", False, "the partition has the no-auto flag"),
        7: ("/srv", False, "fstab mounts /srv"),
        8: ("/var/tmp", False, "/var/tmp holds files in the root file system"),
        9: (None, False, "a type the generator does not mount (only fstab or its own tool)"),
        10: (None, False, "not a type of the Discoverable Partitions Specification"),
        11: ("/", False, "a root partition for arm64; the image is amd64"),
    }
    assert found[7]["flags"] == ["read-only"] and found[6]["flags"] == ["no-auto"]


def _part(number: int, kind: str, partuuid: str | None = None, attrs: str = "") -> Partition:
    return Partition(number=number, start=number, size=1, type=gpt_types.GUIDS[kind].upper(),
                     partuuid=partuuid, bootable=False, name=None,
                     fs=Filesystem(None, None, None), attrs=attrs)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    generator = tmp_path / "usr/lib/systemd/system-generators/systemd-gpt-auto-generator"
    generator.parent.mkdir(parents=True)
    generator.touch()
    (tmp_path / "boot").mkdir()
    return Tree(tmp_path)


MACHINE_ID = "0123456789abcdef0123456789abcdef"
SYSTEMD_BOOT = {"esp": [{"files": {"/EFI/systemd/systemd-bootx64.efi": "sha256"},
                         "efi-binaries": {"/EFI/systemd/systemd-bootx64.efi": "x86_64"}}],
                "bootmenu": [{"options": "quiet rw"}], "packages": ["dracut:all"],
                "architecture": {"dpkg": "amd64"}, "machine-id": MACHINE_ID}


def verdicts(parts: list[Partition], report: dict, tree: Tree | None) -> list[tuple]:
    found = discoverable.report(Layout(size=0, pttype="gpt", partitions=parts), report, tree)
    return [(p["mountpoint"], p["auto-mount"], p["why"])
            for p in found["discoverable-partitions"]]


def test_systemd_boot_and_a_systemd_initrd_discover_everything(tree: Tree) -> None:
    parts = [_part(1, "esp"), _part(2, "root-x86-64"), _part(3, "xbootldr"),
             _part(4, "var", discoverable.var_partuuid(MACHINE_ID)), _part(5, "swap")]
    assert [v[:2] for v in verdicts(parts, SYSTEMD_BOOT, tree)] == [
        ("/efi", True), ("/", True), ("/boot", True), ("/var", True), ("swap", True)]


def test_what_stops_the_generator(tree: Tree) -> None:
    moved = [_part(1, "var", discoverable.var_partuuid("f" * 32))]
    [(_, auto, why)] = verdicts(moved, SYSTEMD_BOOT, tree)
    assert not auto and why.startswith("its partition UUID is not the one derived")
    off = {**SYSTEMD_BOOT, "bootmenu": [{"options": "systemd.gpt_auto=0"}]}
    assert verdicts([_part(1, "home")], off, tree) == \
        [(None, False, "the kernel command line has systemd.gpt_auto=0")]
    initramfs_tools = {**SYSTEMD_BOOT, "packages": ["initramfs-tools:all"]}
    assert verdicts([_part(1, "root-x86-64")], initramfs_tools, tree)[0][2] == \
        "only a systemd initrd (dracut) finds it; initramfs-tools' does not"
    skipped = [_part(1, "home", attrs="GUID:63"), _part(2, "home")]
    assert [v[1] for v in verdicts(skipped, SYSTEMD_BOOT, tree)] == [False, True]
    assert verdicts([_part(1, "home")], SYSTEMD_BOOT, None) == \
        [(None, False, "no OS tree found on the image")]


def test_only_gpt_disks_have_the_view() -> None:
    assert discoverable.report(Layout(size=0, pttype="dos", partitions=[]), {}, None) == {}


GRUB = {**SYSTEMD_BOOT, "esp": [{"files": {"/EFI/debian/grubx64.efi": "sha256"},
                                 "efi-binaries": {"/EFI/debian/grubx64.efi": "x86_64"}}]}


def test_grub_reports_the_boot_partition_only_with_its_bli_module(tree: Tree) -> None:
    parts = [_part(1, "esp"), _part(2, "root-x86-64")]
    assert verdicts(parts, GRUB, tree) == [("/boot", False, discoverable.NO_LOADER_REPORT),
                                           ("/", False, discoverable.NO_LOADER_REPORT)]
    (Path(str(tree.resolve("boot"))) / "grub").mkdir()
    (Path(str(tree.resolve("boot"))) / "grub/grub.cfg").write_text(
        "if [ $grub_platform = efi ]; then\n  insmod bli\nfi\n")
    # /boot holds grub.cfg now: the ESP goes to /efi.
    assert [v[:2] for v in verdicts(parts, GRUB, tree)] == [("/efi", True), ("/", True)]


def test_a_bios_boot_mounts_loader_partitions_without_a_report(tree: Tree) -> None:
    bios = {**GRUB, "esp": []}
    parts = [_part(1, "esp"), _part(2, "root-x86-64"), _part(3, "xbootldr")]
    assert verdicts(parts, bios, tree) == [
        ("/efi", True, discoverable.BIOS_BOOT), ("/", False, discoverable.BIOS_ROOT),
        ("/boot", True, discoverable.BIOS_BOOT)]
    # fstab under /boot or /efi stops both; fstab naming the ESP's device stops the ESP.
    under = {**bios, "fstab": [["UUID=1234", "/boot/efi", "vfat", "umask=0077", "0", "2"]]}
    assert [v[2] for v in verdicts(parts, under, tree)][::2] == ["fstab mounts /boot/efi"] * 2
    esp = Partition(number=1, start=1, size=1, type=gpt_types.GUIDS["esp"].upper(),
                    partuuid=None, bootable=False, name=None,
                    fs=Filesystem("vfat", "AB12-CD34", "ESP"))
    named = {**bios, "fstab": [["UUID=ab12-cd34", "/mnt/esp", "vfat", "defaults", "0", "2"]]}
    assert verdicts([esp], named, tree) == \
        [("/boot", False, "fstab mounts the partition at /mnt/esp")]


def test_the_esp_takes_boot_else_efi(tree: Tree) -> None:
    bios = {**GRUB, "esp": []}
    assert verdicts([_part(1, "esp")], bios, tree)[0][:2] == ("/boot", True)
    boot = Path(str(tree.resolve("boot")))
    (boot / "vmlinuz").touch()
    assert verdicts([_part(1, "esp")], bios, tree)[0][:2] == ("/efi", True)
    (boot.parent / "efi").write_text("not a directory")
    assert verdicts([_part(1, "esp")], bios, tree) == [("/efi", False, (
        "/boot holds files in the root file system, and /efi is not a directory in the "
        "root file system"))]


def test_skipped_partitions_leave_the_next_of_their_type(tree: Tree) -> None:
    """no-auto and a /var of another machine are skipped before the first one is picked;
    the ESP has no no-auto flag, but UEFI's no-block-io-protocol hides it."""
    parts = [_part(1, "var", discoverable.var_partuuid("f" * 32)),
             _part(2, "var", discoverable.var_partuuid(MACHINE_ID)),
             _part(3, "esp", attrs="GUID:63"), _part(4, "esp"),
             _part(5, "esp", attrs="NoBlockIOProtocol")]
    assert [v[:2] for v in verdicts(parts, SYSTEMD_BOOT, tree)] == [
        ("/var", False), ("/var", True), ("/boot", True), (None, False), (None, False)]
    assert verdicts(parts, SYSTEMD_BOOT, tree)[3][2] == "not the first esp partition on the disk"


def test_swap_and_the_switches(tree: Tree) -> None:
    assert verdicts([_part(1, "swap")], SYSTEMD_BOOT, tree)[0][1]
    in_fstab = {**SYSTEMD_BOOT, "fstab": [["/swapfile", "none", "swap", "sw", "0", "0"]]}
    assert verdicts([_part(1, "swap")], in_fstab, tree) == \
        [("swap", False, "fstab has a swap entry")]
    off = {**SYSTEMD_BOOT, "bootmenu": [{"options": "quiet systemd.swap=no"}]}
    assert verdicts([_part(1, "swap")], off, tree) == \
        [("swap", False, "the kernel command line has systemd.swap=no")]
    # The last setting of a switch counts, as on the kernel command line.
    again = {**SYSTEMD_BOOT, "bootmenu": [{"options": "systemd.gpt_auto=0 systemd.gpt_auto"}]}
    assert verdicts([_part(1, "home")], again, tree)[0][1]
