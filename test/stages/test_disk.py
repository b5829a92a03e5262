"""Disk image stages: sfdisk, mkfs.*, mtools.copy, grub2, grub2.inst and qemu.

Whole images are built through the real engine with v2 manifests (loop
devices, mounts, inputs) and checked with the tools a user would use:
sfdisk --json, blkid on offsets, debugfs, mtools, qemu-img. GRUB's BIOS
install is checked byte for byte against boot.img and a core.img made here,
and the result is booted under qemu to GRUB's menu. Every options example is
checked against its stage's schema.
"""

import json
import os
import re
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from harness import Osbuild
from imagecheck import (
    SECTOR,
    boot_until,
    check_grub,
    debugfs,
    expected_grub,
    fat,
    leaks,
    mdir,
    mtype,
    probe,
    sh,
    table,
)
from stagetest import LIBDIR, load_meta, run_stage

from osbuild.toolkit.debversion import compare_versions
from osbuild.toolkit.disk.convert import data_digest
from osbuild.toolkit.disk.partition import partition_uuid
from osbuild.toolkit.disk.sparse import data_extents

MiB = 1024 * 1024
ROOT_UUID = "6e4ff95f-f662-45ee-a82a-bdf44a2d0b75"
SRV_UUID = "0c8d3bd5-4c5e-4d6b-9b2f-63a8b1e8b7a1"
DISK_UUID = "d21a7c8e-0f3e-4d6e-8a53-0e1d2c3b4a59"
VOLID = "7B7795E7"
KERNELS = ["6.1.0-1-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"]
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SERIAL = {"serial": "serial --unit=0 --speed=115200", "terminal": ["serial", "console"]}
EPOCH = 1700000000

# --- helpers ------------------------------------------------------------------------


def schema(name: str) -> dict[str, Any]:
    meta = load_meta(name)
    fragment = meta.get("schema_2", {}).get("options", meta.get("schema"))
    full = {"type": "object", **fragment}
    jsonschema.Draft202012Validator.check_schema(full)
    return full


def valid(name: str, options: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(schema(name)).is_valid(options)


def stage(name: str, options: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A v2 stage; its options must pass the stage's schema."""
    full = f"org.osbuild.{name}"
    if not name.startswith("test."):
        jsonschema.validate(options, schema(full), cls=jsonschema.Draft202012Validator)
    return {"type": full, "options": options, **{k: v for k, v in sections.items() if v}}


def script(text: str, **sections: Any) -> dict[str, Any]:
    return stage("test.script", {"script": text}, **sections)


def loop(start: int, size: int, filename: str = "disk.img") -> dict[str, Any]:
    return {"type": "org.osbuild.loopback",
            "options": {"filename": filename, "start": start, "size": size}}


def whole(filename: str = "disk.img") -> dict[str, Any]:
    return {"type": "org.osbuild.loopback", "options": {"filename": filename}}


def tree_input(pipeline: str) -> dict[str, Any]:
    return {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
            "references": [f"name:{pipeline}"]}


def file_input(pipeline: str, name: str) -> dict[str, Any]:
    return {"type": "org.osbuild.files", "origin": "org.osbuild.pipeline",
            "references": {f"name:{pipeline}": {"file": name}}}


def mount(name: str, fstype: str, target: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "type": f"org.osbuild.{fstype}", "source": name, "target": target,
            **({"options": options} if options else {})}


def qemu_info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    """qemu-img's view; a fixed VHD has no header to probe, so its format can be given."""
    args = ["-f", fmt] if fmt else []
    return json.loads(sh("qemu-img", "info", *args, "--output=json", str(path)))


def same_content(raw: Path, converted: Path, fmt: str) -> bool:
    proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", fmt, str(raw),
                           str(converted)], capture_output=True, text=True)
    return proc.returncode == 0


# --- the OS tree the images are made of --------------------------------------------------

TREE_SCRIPT = " && ".join([
    "mkdir -p boot etc srv/data",
    "echo payload > srv/data/file",
    *(f"echo kernel-{v} > boot/vmlinuz-{v}" for v in KERNELS),
    f"echo initrd > boot/initrd.img-{KERNELS[2]}",
    "echo disk-test > etc/hostname",
    "printf 'secret\\n' > etc/shadow-test && chmod 0600 etc/shadow-test",
    "ln -s hostname etc/hostname-link",
])


def tree_pipeline(grub: dict[str, Any]) -> dict[str, Any]:
    return {"name": "tree", "source-epoch": EPOCH, "stages": [
        script(TREE_SCRIPT),
        stage("grub2", grub),
    ]}


def convert(name: str, fmt: dict[str, Any], filename: str) -> dict[str, Any]:
    return {"name": name, "source-epoch": EPOCH, "stages": [
        stage("qemu", {"filename": filename, "format": fmt},
              inputs={"image": file_input("image", "disk.img")})]}


# --- a dos image: ext4 root, FAT ESP, BIOS GRUB, every output format --------------------

DOS_ROOT = (2048, 40 * MiB // SECTOR)
DOS_ESP = (2048 + 40 * MiB // SECTOR, 16 * MiB // SECTOR)
DOS_FORMATS = {
    "qcow2": ({"type": "qcow2", "compat": "1.1"}, "disk.qcow2"),
    "vmdk": ({"type": "vmdk"}, "disk.vmdk"),
    "vpc": ({"type": "vpc"}, "disk.vhd"),
    "vdi": ({"type": "vdi"}, "disk.vdi"),
}


def dos_manifest(grub_config: dict[str, Any]) -> dict[str, Any]:
    image = {"name": "image", "source-epoch": EPOCH, "stages": [
        stage("truncate", {"filename": "disk.img", "size": "64M"}),
        stage("sfdisk", {"label": "dos", "uuid": "0x1a2b3c4d", "partitions": [
            {"start": DOS_ROOT[0], "size": DOS_ROOT[1], "type": "83", "bootable": True},
            {"start": DOS_ESP[0], "size": DOS_ESP[1], "type": "ef"}]},
            devices={"device": whole()}),
        stage("mkfs.ext4", {"uuid": ROOT_UUID, "label": "root"},
              devices={"device": loop(*DOS_ROOT)}),
        stage("mkfs.fat", {"volid": VOLID, "label": "ESP", "fat-size": 16},
              devices={"device": loop(*DOS_ESP)}),
        stage("copy", {"paths": [{"from": "input://tree/", "to": "mount://root/"}]},
              inputs={"tree": tree_input("tree")}, devices={"root": loop(*DOS_ROOT)},
              mounts=[mount("root", "ext4", "/")]),
        stage("mtools.copy", {"paths": [{"from": "input://tree/boot/efi/", "to": "/"}]},
              inputs={"tree": tree_input("tree")}, devices={"device": loop(*DOS_ESP)}),
        stage("grub2.inst", {
            "filename": "disk.img", "platform": "i386-pc",
            "core": {"type": "mkimage", "partlabel": "dos", "filesystem": "ext4"},
            "prefix": {"type": "partition", "partlabel": "dos", "number": 0,
                       "path": "/boot/grub"}}),
    ]}
    grub = {"root_fs_uuid": ROOT_UUID, "kernel_opts": "console=ttyS0,115200", "legacy": True,
            "uefi": {"vendor": "debian", "install": True}, "config": grub_config}
    return {"version": "2", "pipelines": [
        tree_pipeline(grub), image,
        *(convert(name, fmt, filename) for name, (fmt, filename) in DOS_FORMATS.items())]}


@pytest.fixture(scope="module")
def dos_image(tmp_path_factory: pytest.TempPathFactory, libdir: Path) -> Path:
    """The exported dos image and its conversions, built once for the tests below."""
    osbuild = Osbuild(libdir, tmp_path_factory.mktemp("dos"))
    # A short timeout: GRUB shows the menu, then boots the newest (fake) kernel.
    config = {**SERIAL, "timeout": 1, "timeout_style": "menu"}
    exports = [arg for name in ["image", *DOS_FORMATS] for arg in ("--export", name)]
    osbuild.run(dos_manifest(config), *exports, "--output-directory", str(osbuild.output))
    assert leaks(osbuild.workdir) == []
    return osbuild.output


@pytest.mark.slow
def test_dos_partition_table(dos_image: Path) -> None:
    pt = table(dos_image / "image/disk.img")
    assert pt["label"] == "dos" and pt["id"] == "0x1a2b3c4d"
    parts = [(p["start"], p["size"], p["type"], p.get("bootable", False))
             for p in pt["partitions"]]
    assert parts == [(*DOS_ROOT, "83", True), (*DOS_ESP, "ef", False)]


@pytest.mark.slow
def test_dos_file_systems_and_content(dos_image: Path) -> None:
    image = dos_image / "image/disk.img"
    root = probe(image, DOS_ROOT[0])
    assert (root["TYPE"], root["UUID"], root["LABEL"]) == ("ext4", ROOT_UUID, "root")
    esp = probe(image, DOS_ESP[0])
    assert (esp["TYPE"], esp["UUID"], esp["LABEL"]) == ("vfat", "7B77-95E7", "ESP")
    assert esp["VERSION"] == "FAT16"
    # The tree went into the mounted ext4 with org.osbuild.copy: content, modes, links.
    assert debugfs(image, DOS_ROOT[0], "cat /etc/hostname") == "disk-test\n"
    stat = debugfs(image, DOS_ROOT[0], "stat /etc/shadow-test")
    assert "Mode:  0600" in stat
    link = debugfs(image, DOS_ROOT[0], "stat /etc/hostname-link")
    assert 'Fast link dest: "hostname"' in link
    cfg = debugfs(image, DOS_ROOT[0], "cat /boot/grub/grub.cfg")
    assert f"search --no-floppy --fs-uuid --set=root {ROOT_UUID}" in cfg
    assert "normal.mod" in debugfs(image, DOS_ROOT[0], "ls -l /boot/grub/i386-pc")


@pytest.mark.slow
def test_dos_esp_filled_with_mtools(dos_image: Path) -> None:
    image = dos_image / "image/disk.img"
    assert mdir(image, DOS_ESP[0], "/EFI") == ["BOOT", "debian"]
    assert mdir(image, DOS_ESP[0], "/EFI/debian") == ["grub.cfg", "grubx64.efi"]
    stub = mtype(image, DOS_ESP[0], "/EFI/debian/grub.cfg").decode()
    assert stub == (f"search.fs_uuid {ROOT_UUID} root\n"
                    "set prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n")
    efi = Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi").read_bytes()
    assert mtype(image, DOS_ESP[0], "/EFI/BOOT/BOOTX64.EFI") == efi


@pytest.mark.slow
def test_dos_grub_bios_install(dos_image: Path) -> None:
    image = dos_image / "image/disk.img"
    check_grub(image, "(,msdos1)/boot/grub", ["biosdisk", "part_msdos", "ext2"], 1)
    data = image.read_bytes()[:512]
    assert data[440:444] == bytes.fromhex("4d3c2b1a")  # the disk id sfdisk wrote stays
    assert table(image)["partitions"][0]["start"] == DOS_ROOT[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DOS_FORMATS))
def test_dos_conversions(dos_image: Path, name: str) -> None:
    fmt, filename = DOS_FORMATS[name]
    out = dos_image / name / filename
    info = qemu_info(out, "vpc" if name == "vpc" else None)
    assert info["format"] == name
    assert info["virtual-size"] == 64 * MiB
    if name == "qcow2":
        assert info["format-specific"]["data"]["compat"] == "1.1"
    if name == "vmdk":
        assert info["format-specific"]["data"]["create-type"] == "monolithicSparse"
    if name == "vpc":
        # The footer was patched for reproducibility: its checksum must still hold.
        footer = bytearray(out.read_bytes()[-512:])
        stored = struct.unpack_from(">I", footer, 64)[0]
        struct.pack_into(">I", footer, 64, 0)
        assert stored == ~sum(footer) & 0xFFFFFFFF
        assert struct.unpack_from(">I", footer, 24)[0] == EPOCH - 946684800
    assert same_content(dos_image / "image/disk.img", out, name)
    assert oct(out.stat().st_mode & 0o777) == "0o644"


@pytest.mark.slow
def test_dos_image_boots_to_the_grub_menu(dos_image: Path, tmp_path: Path) -> None:
    """Smoke test: SeaBIOS runs boot.img, core.img finds /boot/grub, the menu is on serial.

    The default entry then finds the root by UUID and reads the fake kernel,
    which GRUB refuses as too short: the entry's search and paths are right.
    """
    log = tmp_path / "serial.log"
    assert boot_until(dos_image / "image/disk.img", log, "you need to load the kernel first"), \
        log.read_text(errors="replace")[-2000:]
    text = log.read_text(errors="replace")
    menu = [text.index(f"Debian GNU/Linux, with Linux {v} ") for v in reversed(KERNELS)]
    assert menu == sorted(menu)
    assert f"Loading Linux {KERNELS[2]} ..." in text
    assert f"error: premature end of file /boot/vmlinuz-{KERNELS[2]}." in text
    assert "no such device" not in text and "not found" not in text


# --- a gpt image: BIOS boot partition, FAT ESP, xfs root, btrfs /srv -------------------

GPT_BIOS = (2048, 2048)
GPT_ESP = (4096, 32768)
GPT_ROOT = (36864, 614400)
GPT_SRV = (651264, 262144)
GPT_SIZE = (GPT_SRV[0] + GPT_SRV[1] + 2048) * SECTOR
EXPLICIT_UUID = "5f3a9d1e-8e0b-4c36-b0b4-3a8c4d5e6f70"


def gpt_manifest() -> dict[str, Any]:
    grub = {"rootfs": {"uuid": ROOT_UUID}, "legacy": "i386-pc", "uefi": {"vendor": "debian",
            "install": True}, "kernel_opts": "console=ttyS0", "config": {**SERIAL,
            "timeout": 30, "disable_recovery": True}}
    mounts = [mount("root", "xfs", "/"), mount("srv", "btrfs", "/srv")]
    devices = {"root": loop(*GPT_ROOT), "srv": loop(*GPT_SRV)}
    image = {"name": "image", "stages": [
        stage("truncate", {"filename": "disk.img", "size": GPT_SIZE}),
        stage("sfdisk", {"label": "gpt", "uuid": DISK_UUID, "partitions": [
            {"start": GPT_BIOS[0], "size": GPT_BIOS[1], "type": BIOS_BOOT, "name": "bios"},
            {"start": GPT_ESP[0], "size": GPT_ESP[1], "type": ESP_GUID, "name": "EFI System",
             "uuid": EXPLICIT_UUID},
            {"start": GPT_ROOT[0], "size": GPT_ROOT[1], "type": LINUX_GUID, "name": "root",
             "attrs": [2]},
            {"start": GPT_SRV[0], "size": GPT_SRV[1], "type": LINUX_GUID, "attrs": [0, 60]}]},
            devices={"device": whole()}),
        stage("mkfs.fat", {"volid": "1234abcd", "fat-size": 16},
              devices={"device": loop(*GPT_ESP)}),
        stage("mkfs.xfs", {"uuid": ROOT_UUID, "label": "root"},
              devices={"device": loop(*GPT_ROOT)}),
        stage("mkfs.btrfs", {"uuid": SRV_UUID, "label": "srv", "metadata": "single"},
              devices={"device": loop(*GPT_SRV)}),
        stage("copy", {"paths": [{"from": "input://tree/", "to": "mount://root/"},
                                 {"from": "input://tree/srv/data", "to": "mount://srv/"}]},
              inputs={"tree": tree_input("tree")}, devices=devices, mounts=mounts),
        script("cat $MOUNT_root/etc/hostname $MOUNT_srv/data/file; ls $MOUNT_srv; "
               "stat -c %a $MOUNT_root/etc/shadow-test",
               devices=devices, mounts=[mount("root", "xfs", "/", readonly=True),
                                        mount("srv", "btrfs", "/srv", readonly=True)]),
        stage("mtools.copy", {"paths": [{"from": "input://tree/boot/efi/EFI", "to": "/EFI"}]},
              inputs={"tree": tree_input("tree")}, devices={"device": loop(*GPT_ESP)}),
        stage("grub2.inst", {
            "filename": "disk.img", "platform": "i386-pc", "location": GPT_BIOS[0],
            "core": {"type": "mkimage", "partlabel": "gpt", "filesystem": "xfs"},
            "prefix": {"type": "partition", "partlabel": "gpt", "number": 2,
                       "path": "/boot/grub"}}),
    ]}
    return {"version": "2", "pipelines": [
        tree_pipeline(grub), image,
        convert("vhdx", {"type": "vhdx"}, "disk.vhdx"),
        convert("raw", {"type": "raw"}, "disk.raw")]}


@pytest.fixture(scope="module")
def gpt_image(tmp_path_factory: pytest.TempPathFactory, libdir: Path) -> tuple[Path, dict]:
    osbuild = Osbuild(libdir, tmp_path_factory.mktemp("gpt"))
    result = osbuild.build_json(gpt_manifest(), "--export", "image", "--export", "vhdx",
                                "--export", "raw", "--output-directory", str(osbuild.output))
    assert leaks(osbuild.workdir) == []
    return osbuild.output, result


@pytest.mark.slow
def test_gpt_partition_table(gpt_image: tuple[Path, dict]) -> None:
    out, _ = gpt_image
    pt = table(out / "image/disk.img")
    assert pt["label"] == "gpt" and pt["id"] == DISK_UUID.upper()
    parts = pt["partitions"]
    assert [(p["start"], p["size"], p["type"]) for p in parts] == [
        (*GPT_BIOS, BIOS_BOOT), (*GPT_ESP, ESP_GUID), (*GPT_ROOT, LINUX_GUID),
        (*GPT_SRV, LINUX_GUID)]
    assert [p.get("name") for p in parts] == ["bios", "EFI System", "root", None]
    assert [p.get("attrs") for p in parts] == [
        None, None, "LegacyBIOSBootable", "RequiredPartition GUID:60"]
    # The explicit partition UUID is kept; the others are derived from the disk's UUID,
    # so they are the same in every build.
    uuids = [p["uuid"] for p in parts]
    assert uuids[1] == EXPLICIT_UUID.upper()
    assert uuids[0] == partition_uuid(DISK_UUID, 0).upper()
    assert uuids[3] == partition_uuid(DISK_UUID, 3).upper()
    assert len(set(uuids)) == 4


@pytest.mark.slow
def test_gpt_file_systems(gpt_image: tuple[Path, dict]) -> None:
    out, result = gpt_image
    image = out / "image/disk.img"
    root = probe(image, GPT_ROOT[0])
    assert (root["TYPE"], root["UUID"], root["LABEL"]) == ("xfs", ROOT_UUID, "root")
    srv = probe(image, GPT_SRV[0])
    assert (srv["TYPE"], srv["UUID"], srv["LABEL"]) == ("btrfs", SRV_UUID, "srv")
    esp = probe(image, GPT_ESP[0])
    assert (esp["TYPE"], esp["UUID"]) == ("vfat", "1234-ABCD")
    # What the copy stage put into the mounted xfs and btrfs, read back through mounts.
    check = result["pipelines"]["image"]["stages"][6]["metadata"]["stdout"].splitlines()
    assert check == ["disk-test", "payload", "data", "600"]


@pytest.mark.slow
def test_gpt_grub_in_bios_boot_partition(gpt_image: tuple[Path, dict]) -> None:
    out, _ = gpt_image
    image = out / "image/disk.img"
    check_grub(image, "(,gpt3)/boot/grub", ["biosdisk", "part_gpt", "xfs"], GPT_BIOS[0])
    mbr = image.read_bytes()[:512]
    assert mbr[446 + 4] == 0xEE  # the protective MBR entry stays
    assert table(image)["id"] == DISK_UUID.upper()  # the GPT was not touched
    assert mdir(image, GPT_ESP[0], "/EFI/debian") == ["grub.cfg", "grubx64.efi"]


@pytest.mark.slow
def test_gpt_conversions(gpt_image: tuple[Path, dict]) -> None:
    out, _ = gpt_image
    assert qemu_info(out / "vhdx/disk.vhdx")["format"] == "vhdx"
    assert same_content(out / "image/disk.img", out / "vhdx/disk.vhdx", "vhdx")
    raw = out / "raw/disk.raw"
    assert raw.read_bytes() == (out / "image/disk.img").read_bytes()
    assert raw.stat().st_blocks * 512 < GPT_SIZE // 2  # still sparse


@pytest.mark.slow
def test_gpt_image_boots_uefi_to_the_grub_menu(gpt_image: tuple[Path, dict],
                                               tmp_path: Path) -> None:
    """Smoke test: OVMF starts EFI/BOOT/BOOTX64.EFI, whose grub.cfg finds the xfs root."""
    out, _ = gpt_image
    log = tmp_path / "serial.log"
    firmware = ["-bios", "/usr/share/ovmf/OVMF.fd"]
    menu = f"Debian GNU/Linux, with Linux {KERNELS[2]}"
    assert boot_until(out / "image/disk.img", log, menu, firmware=firmware, timeout=240), \
        log.read_text(errors="replace")[-2000:]


# --- reproducibility: the same manifest gives the same bytes in another store -----------

REPRO_ESP = (2048, 32768)
REPRO_ROOT = (34816, 65536)
REPRO_FORMATS = {
    "qcow2": ({"type": "qcow2", "compat": "0.10"}, "disk.qcow2"),
    "vmdk": ({"type": "vmdk", "subformat": "streamOptimized"}, "disk.vmdk"),
    "vpc": ({"type": "vpc", "subformat": "dynamic"}, "disk.vhd"),
    "vdi": ({"type": "vdi"}, "disk.vdi"),
}


def repro_manifest() -> dict[str, Any]:
    """An image without mounts (a mounted ext4 gets mount times): every stage reproducible."""
    grub = {"root_fs_uuid": ROOT_UUID, "uefi": {"vendor": "test"}, "config": SERIAL}
    image = {"name": "image", "source-epoch": EPOCH, "stages": [
        stage("truncate", {"filename": "disk.img", "size": "56M"}),
        stage("sfdisk", {"label": "gpt", "uuid": DISK_UUID, "partitions": [
            {"start": REPRO_ESP[0], "size": REPRO_ESP[1], "type": "U"},
            {"start": REPRO_ROOT[0], "size": REPRO_ROOT[1], "type": "L"}]},
            devices={"device": whole()}),
        stage("mkfs.fat", {"volid": VOLID, "fat-size": 16}, devices={"device": loop(*REPRO_ESP)}),
        stage("mkfs.ext4", {"uuid": ROOT_UUID, "verity": True, "orphan_file": False,
                            "metadata_csum_seed": True, "lazy_init": False},
              devices={"device": loop(*REPRO_ROOT)}),
        stage("mtools.copy", {"paths": [{"from": "input://tree/boot/efi/", "to": "/"},
                                        {"from": "input://tree/etc/hostname", "to": "/x/y/"}]},
              inputs={"tree": tree_input("tree")}, devices={"device": loop(*REPRO_ESP)}),
    ]}
    return {"version": "2", "pipelines": [
        tree_pipeline(grub), image,
        *(convert(name, fmt, filename) for name, (fmt, filename) in REPRO_FORMATS.items())]}


def test_the_seed_of_converted_ids_is_the_content_not_the_holes(tmp_path: Path) -> None:
    """The vmdk/vdi/vpc ids come from the raw image's data digest: the same bytes with
    other holes (a copy, zeros written out) give the same ids, another byte others."""
    sparse, dense = tmp_path / "sparse.raw", tmp_path / "dense.raw"
    with open(sparse, "wb") as f:
        f.truncate(10 << 20)
        f.seek((3 << 20) + 7)
        f.write(b"data")
        f.seek(7 << 20)
        f.write(bytes(2 << 20))  # zeros as data: an extent, not a hole
    with open(dense, "wb") as f:
        f.write(bytes((3 << 20) + 7) + b"data")
        f.truncate(10 << 20)
    assert data_digest(str(sparse)) == data_digest(str(dense))
    with open(dense, "r+b") as f:
        f.seek((10 << 20) - 1)
        f.write(b"!")
    assert data_digest(str(sparse)) != data_digest(str(dense))


def test_data_extents_are_the_data_between_the_holes(tmp_path: Path) -> None:
    """Holes before, between and after two data extents; zeros written out are data."""
    path = tmp_path / "sparse.raw"

    def extents() -> list[tuple[int, int]]:
        fd = os.open(path, os.O_RDONLY)
        try:
            return list(data_extents(fd))
        finally:
            os.close(fd)

    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(1 * MiB)
        f.write(b"\x01" * MiB)
        f.seek(5 * MiB)
        f.write(bytes(MiB // 2))
    assert extents() == [(1 * MiB, MiB), (5 * MiB, MiB // 2)]
    with open(path, "r+b") as f:
        f.truncate(5 * MiB + 1024)  # the file now ends inside its last extent
    assert extents() == [(1 * MiB, MiB), (5 * MiB, 1024)]
    with open(path, "wb") as f:
        f.truncate(MiB)
    assert extents() == []


@pytest.mark.slow
def test_images_are_reproducible(tmp_path: Path, libdir: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        osbuild = Osbuild(libdir, tmp_path / run)
        (tmp_path / run).mkdir()
        exports = [arg for name in ["image", *REPRO_FORMATS] for arg in ("--export", name)]
        osbuild.run(repro_manifest(), *exports, "--output-directory", str(osbuild.output))
        outputs.append(osbuild.output)
        time.sleep(1.1)  # a second apart: timestamps would differ
    files = [Path("image/disk.img"), *(Path(n) / f for n, (_, f) in REPRO_FORMATS.items())]
    for name in files:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    image = outputs[0] / "image/disk.img"
    features = subprocess.run(
        ["dumpe2fs", "-h", f"{image}?offset={REPRO_ROOT[0] * SECTOR}"], capture_output=True,
        text=True, check=True, env={**os.environ, "TZ": "UTC"}).stdout
    feature_line = next(line for line in features.splitlines() if "features:" in line)
    assert "verity" in feature_line and "metadata_csum_seed" in feature_line
    assert "orphan_file" not in feature_line
    created = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(EPOCH))
    assert f"Filesystem created:       {created}" in features
    assert mtype(image, REPRO_ESP[0], "/x/y/hostname") == b"disk-test\n"
    assert mdir(image, REPRO_ESP[0], "/EFI/test") == ["grub.cfg"]
    # The derived ids are real ids: a vdi's UUID is a version 4 UUID, not zeros.
    vdi = (outputs[0] / "vdi/disk.vdi").read_bytes()
    assert uuid.UUID(bytes_le=vdi[0x188:0x198]).version == 4
    for name, (_, filename) in REPRO_FORMATS.items():
        assert same_content(image, outputs[0] / name / filename, name), name
    qcow2 = qemu_info(outputs[0] / "qcow2/disk.qcow2")
    assert qcow2["format-specific"]["data"]["compat"] == "0.10"


# --- errors through the engine: clear, one line, nothing left behind ---------------------


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The stage's own one-line error (the last 'error:' line of its output)."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return [line.strip() for line in proc.stderr.splitlines() if "error: " in line][-1]


@pytest.mark.parametrize("label, partitions, expected", [
    ("dos", [{"start": 2048, "size": 200000, "type": "83"}],
     "the partition table does not fit: partition 1 (start 2048, size 200000) ends at "
     "sector 202047, beyond the end of the disk (131072 sectors of 512 bytes); the last "
     "usable sector is 131071"),
    # A gpt table keeps the last 33 sectors for its backup: the disk's end is not usable.
    ("gpt", [{"start": 2048, "size": 131072 - 2048 - 10}],
     "the partition table does not fit: partition 1 (start 2048, size 129014) ends at "
     "sector 131061, beyond the end of the disk (131072 sectors of 512 bytes); the last "
     "usable sector is 131038"),
    ("gpt", [{"start": 20, "size": 100}],
     "the partition table does not fit: partition 1 starts at sector 20, before the first "
     "usable sector 34 of a gpt table"),
    ("dos", [{"start": 2048, "size": 4096}, {"start": 4096, "size": 4096}],
     "partition 2 (from sector 4096) overlaps partition 1 (sectors 2048-6143)"),
    ("dos", [{"size": 100}] * 5, "a dos partition table holds at most 4 partitions, not 5"),
    ("gpt", [{"size": 100, "attrs": [5]}],
     "partition 1: GPT attribute bit 5 is reserved; only bits 0-2 and 48-63 can be set"),
])
def test_sfdisk_refuses_bad_tables(osbuild: Osbuild, label: str, partitions: list,
                                   expected: str) -> None:
    disk_id = DISK_UUID if label == "gpt" else "0x1234abcd"
    manifest = {"version": "2", "pipelines": [{"name": "image", "stages": [
        stage("truncate", {"filename": "disk.img", "size": "64M"}),
        stage("sfdisk", {"label": label, "uuid": disk_id, "partitions": partitions},
              devices={"device": whole()}),
    ]}]}
    proc = osbuild.run(manifest, check=False)
    assert error_line(proc) == f"error: {expected}"
    assert leaks(osbuild.workdir) == []


def test_sfdisk_partnum_dos_id_and_ignored_fields(osbuild: Osbuild) -> None:
    """A gpt-only field in a dos table is dropped, as sfdisk does, but with a warning."""
    manifest = {"version": "2", "pipelines": [{"name": "image", "stages": [
        stage("truncate", {"filename": "disk.img", "size": "16M"}),
        stage("sfdisk", {"label": "mbr", "uuid": "cafe0042", "partitions": [
            {"start": 2048, "size": 4096, "type": "83", "partnum": 3, "name": "x"}]},
            devices={"device": whole()}),
    ]}]}
    proc = osbuild.run(manifest, "--export", "image", "--output-directory", str(osbuild.output))
    assert "warning: partition 1: 'name' has no place in a dos table and is ignored" \
        in proc.stdout + proc.stderr
    pt = table(osbuild.output / "image/disk.img")
    assert pt["label"] == "dos" and pt["id"] == "0xcafe0042"
    assert [(p["node"][-1], p["start"], p["size"]) for p in pt["partitions"]] == \
        [("3", 2048, 4096)]


def test_mkfs_on_a_too_small_device_is_a_clear_error(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "image", "stages": [
        stage("truncate", {"filename": "disk.img", "size": "64M"}),
        stage("mkfs.xfs", {"uuid": ROOT_UUID}, devices={"device": loop(2048, 20000)}),
    ]}]}
    line = error_line(osbuild.run(manifest, check=False))
    assert line == ("error: mkfs.xfs failed: size 2500 of data subvolume is too small, "
                    "minimum 4096 blocks")
    assert leaks(osbuild.workdir) == []


# --- grub2: the configuration for the kernels in a tree ----------------------------------


def fake_tree(tree: Path, kernels: list[str], initrds: list[str]) -> Path:
    boot = tree / "boot"
    boot.mkdir(parents=True)
    for version in kernels:
        (boot / f"vmlinuz-{version}").write_text(version)
    for version in initrds:
        (boot / f"initrd.img-{version}").write_text(version)
    (boot / "vmlinuz").symlink_to(f"vmlinuz-{kernels[0]}")  # Debian's link: not an entry
    (boot / "config-6.1.0-10-amd64").write_text("")
    return tree


def run_grub2(tmp_path: Path, options: dict[str, Any], ok: bool = True) -> Path:
    assert valid("org.osbuild.grub2", options), options
    tree = tmp_path / "tree"
    work = tmp_path / "work"
    work.mkdir()
    result = run_stage("org.osbuild.grub2", options, tree, work)
    assert (result.returncode == 0) == ok, result.tail
    return tree


def test_grub2_menu_newest_kernel_first_with_serial_console(tmp_path: Path) -> None:
    # Plain string order would put 6.1.0-9 before 6.1.0-10; Debian's order does not.
    fake_tree(tmp_path / "tree", ["6.1.0-1-amd64", "6.1.0-10-amd64", "6.1.0-9-amd64"],
              ["6.1.0-10-amd64"])
    tree = run_grub2(tmp_path, {
        "root_fs_uuid": ROOT_UUID, "kernel_opts": "console=ttyS0,115200n8 quiet",
        "config": {**SERIAL, "timeout": 5, "disable_recovery": True}})
    cfg = (tree / "boot/grub/grub.cfg").read_text()
    titles = [line.split("'")[1] for line in cfg.splitlines() if line.startswith("menuentry ")]
    assert titles == [f"Debian GNU/Linux, with Linux 6.1.0-{n}-amd64" for n in (10, 9, 1)]
    assert "\nserial --unit=0 --speed=115200\nterminal_input serial console\n" \
           "terminal_output serial console\nset timeout=5\n" in cfg
    first = cfg[cfg.index("menuentry "):cfg.index("}\n") + 2]
    assert first == (
        "menuentry 'Debian GNU/Linux, with Linux 6.1.0-10-amd64' --class debian "
        "--class gnu-linux --class gnu --class os "
        f"--id 'gnulinux-6.1.0-10-amd64-advanced-{ROOT_UUID}' {{\n"
        f"\tsearch --no-floppy --fs-uuid --set=root {ROOT_UUID}\n"
        "\techo 'Loading Linux 6.1.0-10-amd64 ...'\n"
        f"\tlinux /boot/vmlinuz-6.1.0-10-amd64 root=UUID={ROOT_UUID} ro "
        "console=ttyS0,115200n8 quiet\n"
        "\techo 'Loading initial ramdisk ...'\n"
        "\tinitrd /boot/initrd.img-6.1.0-10-amd64\n}\n")
    # Only the kernel that has an initrd gets an initrd line.
    assert cfg.count("\tinitrd ") == 1
    assert "set default='0'" in cfg
    defaults = (tree / "etc/default/grub").read_text().splitlines()
    assert defaults[1:] == [
        'GRUB_DEFAULT="0"', 'GRUB_TIMEOUT="5"', 'GRUB_DISTRIBUTOR="Debian"',
        'GRUB_CMDLINE_LINUX_DEFAULT=""', 'GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 quiet"',
        'GRUB_TERMINAL="serial console"', 'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"',
        'GRUB_DISABLE_RECOVERY="true"']
    env = (tree / "boot/grub/grubenv").read_bytes()
    assert len(env) == 1024
    assert env.startswith(b"# GRUB Environment Block\nkernelopts=root=UUID=")
    assert not (tree / "boot/grub/i386-pc").exists() and not (tree / "boot/efi").exists()


def test_grub2_separate_boot_labels_recovery_and_saved_entry(tmp_path: Path) -> None:
    fake_tree(tmp_path / "tree", ["6.12.9-amd64", "6.12.10-amd64"], [])
    tree = run_grub2(tmp_path, {
        "rootfs": {"label": "root"}, "bootfs": {"uuid": SRV_UUID}, "saved_entry": "entry-x",
        "write_cmdline": False, "write_defaults": False, "legacy": True,
        "uefi": {"vendor": "debian"},
        "config": {"default": "saved", "distributor": "Acme OS", "timeout_style": "hidden",
                   "terminal_output": ["console"]}})
    cfg = (tree / "boot/grub/grub.cfg").read_text()
    titles = [line.split("'")[1] for line in cfg.splitlines() if line.startswith("menuentry ")]
    assert titles == ["Acme OS GNU/Linux, with Linux 6.12.10-amd64",
                      "Acme OS GNU/Linux, with Linux 6.12.9-amd64",
                      "Acme OS GNU/Linux, with Linux 6.12.10-amd64 (recovery mode)",
                      "Acme OS GNU/Linux, with Linux 6.12.9-amd64 (recovery mode)"]
    # Kernels are at the top of the separate /boot, found by its UUID; root by label.
    assert f"\tsearch --no-floppy --fs-uuid --set=root {SRV_UUID}\n" in cfg
    assert "\tlinux /vmlinuz-6.12.10-amd64 root=LABEL=root ro\n" in cfg
    assert "\tlinux /vmlinuz-6.12.10-amd64 root=LABEL=root ro single\n" in cfg
    assert "--class acme" in cfg
    assert '  set default="${saved_entry}"\n' in cfg
    assert "terminal_output console\nset timeout_style=hidden\nset timeout=0\n" in cfg
    assert "terminal_input" not in cfg
    env = (tree / "boot/grub/grubenv").read_text()
    assert env == "# GRUB Environment Block\nsaved_entry=entry-x\n" + "#" * (1024 - 45)
    assert not (tree / "etc/default/grub").exists()
    assert (tree / "boot/efi/EFI/debian/grub.cfg").read_text() == (
        f"search.fs_uuid {SRV_UUID} root\nset prefix=($root)'/grub'\n"
        "configfile $prefix/grub.cfg\n")
    assert not (tree / "boot/efi/EFI/debian/grubx64.efi").exists()
    # legacy: GRUB's modules from the build root, as core.img will want them.
    modules = tree / "boot/grub/i386-pc"
    assert (modules / "normal.mod").read_bytes() == \
        Path("/usr/lib/grub/i386-pc/normal.mod").read_bytes()
    assert (modules / "command.lst").exists() and not (modules / "boot.img").exists()
    assert oct((modules / "normal.mod").stat().st_mode & 0o777) == "0o644"
    assert (tree / "boot/grub/fonts/unicode.pf2").exists()


def test_grub2_without_a_kernel_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "tree/boot").mkdir(parents=True)
    tree = tmp_path / "tree"
    work = tmp_path / "work"
    work.mkdir()
    result = run_stage("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID}, tree, work)
    assert result.returncode == 1
    assert result.tail[-1] == ("error: no kernel in the tree: GRUB's menu needs a "
                               "/boot/vmlinuz-<version> (or vmlinux-<version>)")


def test_grub2_menu_has_uncompressed_kernels_as_riscv64_ships_them(tmp_path: Path) -> None:
    # Debian's riscv64 kernel is /boot/vmlinux-<version>; where a version has both
    # images, the entry boots the compressed one, the name Debian's other arches use.
    boot = tmp_path / "tree/boot"
    boot.mkdir(parents=True)
    for name in ("vmlinux-6.12.9-riscv64", "initrd.img-6.12.9-riscv64",
                 "vmlinux-6.12.8-riscv64", "vmlinuz-6.12.8-riscv64"):
        (boot / name).write_text(name)
    tree = run_grub2(tmp_path, {"root_fs_uuid": ROOT_UUID,
                                "config": {"disable_recovery": True}})
    linux = [line.split()[1] for line in (tree / "boot/grub/grub.cfg").read_text().splitlines()
             if line.startswith("\tlinux ")]
    assert linux == ["/boot/vmlinux-6.12.9-riscv64", "/boot/vmlinuz-6.12.8-riscv64"]


def test_grub2_efi_src_dir_is_copied(tmp_path: Path) -> None:
    fake_tree(tmp_path / "tree", ["6.1.0-10-amd64"], [])
    # A build root directory: the host's GRUB EFI modules stand in for vendor files.
    tree = run_grub2(tmp_path, {"root_fs_uuid": ROOT_UUID, "uefi": {
        "vendor": "debian", "install": True, "efi_src_dir": "/usr/lib/grub/x86_64-efi/monolithic"}})
    efi = tree / "boot/efi/EFI"
    assert (efi / "grubx64.efi").read_bytes() == \
        Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi").read_bytes()
    assert (efi / "debian/grub.cfg").exists() and not (efi / "BOOT").exists()


def dpkg_of(tree: Path, architecture: str) -> None:
    """A tree whose dpkg is of `architecture`, as the stages read it."""
    status = tree / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: base-files\nArchitecture: amd64\n\nPackage: dpkg\n"
                      f"Status: install ok installed\nArchitecture: {architecture}\n")


def test_grub2_bios_on_an_arm64_tree_fails_clearly(tmp_path: Path) -> None:
    dpkg_of(fake_tree(tmp_path / "tree", ["6.12.10-arm64"], []), "arm64")
    tree = tmp_path / "tree"
    work = tmp_path / "work"
    work.mkdir()
    result = run_stage("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID, "legacy": True}, tree, work)
    assert result.returncode == 1
    assert result.tail[-1] == ("error: legacy: BIOS GRUB (i386-pc) cannot boot an arm64 tree; "
                               "use uefi")


def test_grub2_uefi_for_another_architecture_than_the_tree_fails(tmp_path: Path) -> None:
    dpkg_of(fake_tree(tmp_path / "tree", ["6.12.10-arm64"], []), "arm64")
    tree = run_grub2(tmp_path, {"root_fs_uuid": ROOT_UUID, "uefi": {
        "vendor": "debian", "install": True}}, ok=False)
    assert not (tree / "boot/efi/EFI/BOOT").exists()
    result = run_stage("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID, "uefi": {
        "vendor": "debian", "install": True}}, tree, tmp_path / "work")
    assert result.tail[-1] == ("error: the tree is arm64, but x86_64-efi GRUB (the build root's "
                               "architecture) is for amd64: set uefi.platform to the tree's")


def test_grub2_uefi_platform_names_the_image_and_the_package_it_needs(tmp_path: Path) -> None:
    dpkg_of(fake_tree(tmp_path / "tree", ["6.12.10-arm64"], []), "arm64")
    tree = tmp_path / "tree"
    work = tmp_path / "work"
    work.mkdir()
    options = {"root_fs_uuid": ROOT_UUID,
               "uefi": {"vendor": "debian", "install": True, "platform": "arm64-efi"}}
    assert valid("org.osbuild.grub2", options)
    result = run_stage("org.osbuild.grub2", options, tree, work)
    if Path("/usr/lib/grub/arm64-efi/monolithic/grubaa64.efi").exists():
        assert result.returncode == 0, result.tail
        assert (tree / "boot/efi/EFI/BOOT/BOOTAA64.EFI").is_file()
    else:  # the host is the build root here, and it has no arm64 GRUB
        assert result.tail[-1] == ("error: the build root has no /usr/lib/grub/arm64-efi/"
                                   "monolithic/grubaa64.efi; install grub-efi-arm64-bin:arm64 "
                                   "there")
    assert not valid("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID, "uefi": {
        "vendor": "debian", "platform": "i386-pc"}})


VERSION_PAIRS = [
    ("6.1.0-10-amd64", "6.1.0-9-amd64"), ("6.1.0-1-amd64", "6.1.0-10-amd64"),
    ("1.0~rc1", "1.0"), ("1.0", "1.0+b1"), ("1:0.1", "2.0"), ("1.0-1", "1.0-1~bpo1"),
    ("2.06-13+deb12u1", "2.06-13"), ("1.0a", "1.0"), ("1.0", "1.0."), ("0:1.0", "1.0"),
    ("6.12.10-amd64", "6.12.9-amd64"), ("1.2.3-rt-amd64", "1.2.3-amd64"), ("a", "~"),
]


def dpkg_order(a: str, b: str) -> int:
    for op, result in (("lt", -1), ("eq", 0), ("gt", 1)):
        if subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0:
            return result
    raise AssertionError(f"dpkg cannot compare {a} and {b}")


@pytest.mark.parametrize("a, b", VERSION_PAIRS)
def test_grub2_version_order_is_dpkgs(a: str, b: str) -> None:
    ours = compare_versions(a, b)
    assert (ours > 0) - (ours < 0) == dpkg_order(a, b)


def test_grub2_version_order_matches_dpkg_on_random_versions() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    strategies = hypothesis.strategies
    part = strategies.text(alphabet="0123456789abz.+~", min_size=1, max_size=6)
    version = strategies.builds(lambda u, r: f"1{u}-{r}", part, part)

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(version, version)
    def check(a: str, b: str) -> None:
        ours = compare_versions(a, b)
        assert (ours > 0) - (ours < 0) == dpkg_order(a, b), (a, b)

    check()


# --- grub2.inst: where core.img may go -------------------------------------------------


def partitioned(path: Path, script: str, size: str = "16M") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", size, str(path)], check=True)
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True)
    return path


def inst_options(label: str, location: int | None = None, fs: str = "ext4") -> dict[str, Any]:
    options: dict[str, Any] = {
        "filename": "disk.img", "platform": "i386-pc",
        "core": {"type": "mkimage", "partlabel": label, "filesystem": fs},
        "prefix": {"type": "partition", "partlabel": label, "number": 0, "path": "/boot/grub"}}
    if location is not None:
        options["location"] = location
    return options


@pytest.mark.parametrize("script, options, expected", [
    ("label: dos\nstart=40, size=2000, type=83\n", inst_options("dos"),
     r"core.img \(\d+ bytes, (\d+) sectors\) at sector 1 does not fit before the first "
     r"partition, which starts at sector 40: the gap holds 39 sectors from the location"),
    ("label: gpt\nstart=2048, size=4096, type=L\n", inst_options("gpt"),
     r"core.img \(\d+ bytes, \d+ sectors\) at sector 1 would overwrite the GPT; add a BIOS "
     r"boot partition \(21686148-6449-6E6F-744E-656564454649\) for it"),
    (f"label: gpt\nstart=2048, size=2048, type={BIOS_BOOT}\nstart=4096, size=4096, type=L\n",
     inst_options("gpt"),
     r"core.img .* at sector 1 would overwrite the GPT; set location to 2048, the start of "
     r"the BIOS boot partition"),
    ("label: gpt\nstart=2048, size=2048, type=L\n", inst_options("gpt", 2048),
     r"core.img .* at sector 2048 would overwrite partition 1, which is not a BIOS boot "
     r"partition \(21686148-6449-6E6F-744E-656564454649\)"),
    (f"label: gpt\nstart=2048, size=8, type={BIOS_BOOT}\n", inst_options("gpt", 2048),
     r"core.img .* at sector 2048 does not fit into the BIOS boot partition 1 \(8 sectors "
     r"from sector 2048\)"),
    ("label: gpt\nstart=2048, size=2048, type=L\n", inst_options("dos"),
     r"the image has a gpt partition table, but core.partlabel is dos"),
])
def test_grub2_inst_refuses_bad_locations(tmp_path: Path, script: str, options: dict,
                                          expected: str) -> None:
    assert valid("org.osbuild.grub2.inst", options)
    image = partitioned(tmp_path / "tree/disk.img", script)
    before = image.read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    result = run_stage("org.osbuild.grub2.inst", options, tmp_path / "tree", work)
    assert result.returncode == 1
    assert re.fullmatch("error: " + expected, result.tail[-1]), result.tail[-1]
    assert image.read_bytes() == before  # nothing was written


def test_grub2_inst_checks_the_prefix_partition(tmp_path: Path) -> None:
    image = partitioned(tmp_path / "tree/disk.img", "label: dos\nstart=2048, size=20480, type=83\n")
    subprocess.run(["mkfs.ext4", "-q", "-E", f"offset={2048 * SECTOR}", str(image), "10M"],
                   check=True)
    work = tmp_path / "work"
    work.mkdir()
    wrong_fs = inst_options("dos", fs="xfs")
    result = run_stage("org.osbuild.grub2.inst", wrong_fs, tmp_path / "tree", work)
    assert result.tail[-1] == "error: prefix partition 1 holds ext4, but core.filesystem is xfs"
    missing = inst_options("dos")
    missing["prefix"]["number"] = 1
    result = run_stage("org.osbuild.grub2.inst", missing, tmp_path / "tree", work)
    assert result.tail[-1] == ("error: prefix partition number 1 (GRUB's 2) is not in the "
                               "image's partition table (it has 1)")
    assert run_stage("org.osbuild.grub2.inst", inst_options("dos"), tmp_path / "tree",
                     work).returncode == 0


def test_grub2_inst_core_fills_the_gap_exactly(tmp_path: Path) -> None:
    """A gap just big enough is accepted: the check is not off by one."""
    _, core = expected_grub("(,msdos1)/boot/grub", ["biosdisk", "part_msdos", "ext2"], 1)
    first = 1 + -(-len(core) // SECTOR)
    image = partitioned(tmp_path / "tree/disk.img",
                        f"label: dos\nstart={first}, size=2000, type=83\n")
    work = tmp_path / "work"
    work.mkdir()
    result = run_stage("org.osbuild.grub2.inst", inst_options("dos"), tmp_path / "tree", work)
    assert result.returncode == 0, result.tail
    check_grub(image, "(,msdos1)/boot/grub", ["biosdisk", "part_msdos", "ext2"], 1)


# --- mtools.copy on an image file, and what FAT cannot hold -------------------------------


def fat_image(tree: Path, start: int) -> Path:
    """disk.img with a FAT file system at sector `start`, made by hand."""
    tree.mkdir(parents=True, exist_ok=True)
    part = tree / "part.img"
    subprocess.run(["mkfs.fat", "-C", "-F", "16", "-i", "12345678", str(part), str(16 * 1024)],
                   check=True, capture_output=True)
    image = tree / "disk.img"
    subprocess.run(["truncate", "-s", "20M", str(image)], check=True)
    subprocess.run(["dd", f"if={part}", f"of={image}", f"seek={start}", "conv=notrunc,sparse",
                    "status=none"], check=True)
    part.unlink()
    return image


def run_mtools(tmp_path: Path, options: dict[str, Any], source: Path) -> Any:
    assert valid("org.osbuild.mtools.copy", options), options
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return run_stage("org.osbuild.mtools.copy", options, tmp_path / "tree", work,
                     inputs={"files": {"path": source}})


def test_mtools_copy_into_an_image_file(tmp_path: Path) -> None:
    image = fat_image(tmp_path / "tree", 100)
    src = tmp_path / "src"
    (src / "EFI/BOOT").mkdir(parents=True)
    (src / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"\x00efi" * 1000)
    (src / "EFI/BOOT/a long name.cfg").write_text("long\n")
    (src / "top.txt").write_text("top\n")
    os.utime(src / "top.txt", (EPOCH, EPOCH))
    result = run_mtools(tmp_path, {"filename": "disk.img", "start": 100, "paths": [
        {"from": "input://files/EFI", "to": "/EFI"},
        {"from": "input://files/top.txt", "to": "/deep/dir/"},
        {"from": "input://files/top.txt", "to": "/renamed.txt"},
        {"from": "input://files/EFI/", "to": "/again"}]}, src)
    assert result.returncode == 0, result.tail
    assert mdir(image, 100, "/") == ["EFI", "again", "deep", "renamed.txt"]
    assert mdir(image, 100, "/EFI/BOOT") == ["BOOTX64.EFI", "a long name.cfg"]
    assert mtype(image, 100, "/EFI/BOOT/BOOTX64.EFI") == b"\x00efi" * 1000
    assert mtype(image, 100, "/EFI/BOOT/a long name.cfg") == b"long\n"
    assert mtype(image, 100, "/deep/dir/top.txt") == b"top\n"
    assert mdir(image, 100, "/again") == ["BOOT"]
    # The file's modification time is kept (FAT counts in 2 s steps, in UTC here).
    listing = subprocess.run(["mdir", "-i", fat(image, 100), "::/renamed.txt"],
                             capture_output=True, text=True, env={**os.environ, "TZ": "UTC"})
    assert time.strftime("%Y-%m-%d  %H:%M", time.gmtime(EPOCH)) in listing.stdout


def test_mtools_copy_overwrites_and_refuses_symlinks(tmp_path: Path) -> None:
    image = fat_image(tmp_path / "tree", 0)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one\n")
    options = {"filename": "disk.img", "paths": [{"from": "input://files/f", "to": "/f"}]}
    assert run_mtools(tmp_path, options, src).returncode == 0
    (src / "f").write_text("two\n")
    assert run_mtools(tmp_path, options, src).returncode == 0
    assert mtype(image, 0, "/f") == b"two\n"
    (src / "d").mkdir()
    (src / "d/link").symlink_to("../f")
    result = run_mtools(tmp_path, {"filename": "disk.img", "paths": [
        {"from": "input://files/d/", "to": "/d"}]}, src)
    assert result.returncode == 1
    assert result.tail[-1] == "error: link: FAT cannot hold symlinks"
    result = run_mtools(tmp_path, {"paths": [{"from": "input://files/f", "to": "/g"}]}, src)
    assert result.tail[-1] == ("error: no FAT file system: give a device 'device' or the "
                               "option filename")


# --- schemas --------------------------------------------------------------------------

ACCEPTED = [
    ("org.osbuild.sfdisk", {"label": "gpt", "uuid": DISK_UUID, "partitions": [
        {"start": 2048, "size": 2048, "type": BIOS_BOOT, "name": "bios", "attrs": [0, 2, 60],
         "uuid": ROOT_UUID, "partnum": 2}]}),
    ("org.osbuild.sfdisk", {"label": "mbr", "uuid": "0x14fc63d2"}),
    ("org.osbuild.mkfs.ext4", {"uuid": ROOT_UUID, "label": "root", "verity": True,
                               "orphan_file": False, "metadata_csum_seed": True,
                               "lazy_init": True}),
    ("org.osbuild.mkfs.xfs", {"uuid": ROOT_UUID, "label": "root", "agcount": 4}),
    ("org.osbuild.mkfs.btrfs", {"uuid": ROOT_UUID, "label": "root", "metadata": "dup"}),
    ("org.osbuild.mkfs.fat", {"volid": "7B7795E7", "label": "EFI-SYSTEM", "fat-size": 32,
                              "geometry": {"heads": 64, "sectors-per-track": 32}}),
    ("org.osbuild.mtools.copy", {"filename": "disk.img", "start": 2048, "sector-size": 512,
                                 "paths": [{"from": "tree:///boot/efi/", "to": "/"}]}),
    ("org.osbuild.qemu", {"filename": "disk.qcow2", "format": {"type": "qcow2",
                                                              "compat": "0.10",
                                                              "compression": False}}),
    ("org.osbuild.qemu", {"filename": "d.vmdk", "format": {
        "type": "vmdk", "subformat": "streamOptimized", "adapter_type": "lsilogic",
        "compat6": True, "compression": True}}),
    ("org.osbuild.qemu", {"filename": "d.vhd", "format": {"type": "vpc", "subformat": "dynamic",
                                                          "force_size": False}}),
    ("org.osbuild.qemu", {"filename": "d.vhdx", "format": {"type": "vhdx"}}),
    ("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID, "boot_fs_uuid": "6699-AFB5",
                           "kernel_opts": "ro", "legacy": "i386-pc",
                           "uefi": {"vendor": "fedora", "unified": True},
                           "saved_entry": "x", "write_defaults": False, "write_cmdline": False,
                           "config": {"default": "saved", "disable_recovery": True,
                                      "disable_submenu": True, "distributor": "Debian",
                                      "terminal": ["serial"], "terminal_input": ["console"],
                                      "terminal_output": ["console"], "timeout": 10,
                                      "timeout_style": "countdown",
                                      "serial": "serial --speed=115200"}}),
    ("org.osbuild.grub2.inst", inst_options("gpt", 2048, "btrfs")),
]

REJECTED = [
    ("org.osbuild.sfdisk", {"label": "sun", "uuid": DISK_UUID}),
    ("org.osbuild.sfdisk", {"label": "gpt", "uuid": DISK_UUID,
                            "partitions": [{"size": 1, "flags": 1}]}),
    ("org.osbuild.sfdisk", {"label": "gpt", "uuid": DISK_UUID,
                            "partitions": [{"size": 1, "name": 'a"b'}]}),
    ("org.osbuild.sfdisk", {"label": "gpt"}),
    ("org.osbuild.mkfs.ext4", {"label": "root"}),
    ("org.osbuild.mkfs.ext4", {"uuid": ROOT_UUID, "label": "x" * 17}),
    ("org.osbuild.mkfs.xfs", {"uuid": "not-a-uuid"}),
    ("org.osbuild.mkfs.btrfs", {"uuid": ROOT_UUID, "metadata": "raid1"}),
    ("org.osbuild.mkfs.fat", {"volid": "7B7795E7", "fat-size": 64}),
    ("org.osbuild.mkfs.fat", {"volid": "7B7795E7", "label": "TWELVE-CHARS"}),
    ("org.osbuild.mtools.copy", {"filename": "../disk.img", "paths": [
        {"from": "tree:///a", "to": "/a"}]}),
    ("org.osbuild.mtools.copy", {"paths": [{"from": "input://t/../etc", "to": "/a"}]}),
    ("org.osbuild.mtools.copy", {"paths": [{"from": "tree:///a", "to": "relative"}]}),
    ("org.osbuild.qemu", {"filename": "d.img", "format": {"type": "qed"}}),
    ("org.osbuild.qemu", {"filename": "d.img", "format": {"type": "vdi", "compat": "1.1"}}),
    ("org.osbuild.qemu", {"filename": "../d.img", "format": {"type": "raw"}}),
    ("org.osbuild.grub2", {"kernel_opts": "ro"}),
    ("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID, "rootfs": {"uuid": ROOT_UUID}}),
    ("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID, "kernel_opts": "a\nb"}),
    ("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID, "uefi": {"vendor": "../x"}}),
    ("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID, "greenboot": True}),
    ("org.osbuild.grub2", {"root_fs_uuid": ROOT_UUID, "config": {"serial": "insmod x"}}),
    ("org.osbuild.grub2.inst", {**inst_options("dos"), "platform": "powerpc-ieee1275"}),
    ("org.osbuild.grub2.inst", {**inst_options("dos"), "sector-size": 4096}),
    ("org.osbuild.grub2.inst", {**inst_options("dos"), "core": {"type": "mkimage",
                                                                "partlabel": "dos"}}),
]


@pytest.mark.parametrize("name, options", ACCEPTED)
def test_schema_accepts(name: str, options: dict[str, Any]) -> None:
    jsonschema.validate(options, schema(name), cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("name, options", REJECTED)
def test_schema_rejects(name: str, options: dict[str, Any]) -> None:
    assert not valid(name, options)


# What each stage takes besides options: the engine refuses anything else.
SECTIONS = {
    "org.osbuild.sfdisk": {"devices"},
    "org.osbuild.mkfs.ext4": {"devices"},
    "org.osbuild.mkfs.xfs": {"devices"},
    "org.osbuild.mkfs.btrfs": {"devices"},
    "org.osbuild.mkfs.fat": {"devices"},
    "org.osbuild.mtools.copy": {"devices", "inputs"},
    "org.osbuild.qemu": {"inputs"},
    "org.osbuild.grub2": set(),
    "org.osbuild.grub2.inst": set(),
}


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_meta_json(name: str) -> None:
    meta = load_meta(name)
    assert meta["summary"] and meta["description"]
    assert set(meta.get("schema_2", {})) - {"options"} == SECTIONS[name]
    assert os.access(LIBDIR / "stages" / name, os.X_OK)
    schema(name)  # a valid JSON schema
