"""The v1 qemu assembler through the engine: v1 manifests on the host build root.

The OS tree is made by test stages plus org.osbuild.grub2 (a fake kernel is
enough for GRUB's menu). Images are checked with the tools a user would use:
sfdisk --json, blkid on offsets, debugfs, mtools, read-only loop mounts made
here (and always undone), qemu-img; GRUB's boot code and core.img byte for
byte against boot.img and a core.img made here; and the images boot under
qemu (TCG) with SeaBIOS and OVMF until GRUB loads the kernel.
"""

import contextlib
import json
import lzma
import os
import re
import subprocess
import time
from collections.abc import Iterator
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
    leaks,
    mdir,
    mtype,
    probe,
    sh,
    table,
)
from stagetest import load_meta, run_stage

MiB = 1024 * 1024
EPOCH = 1_700_000_000
KERNEL = "6.1.0-10-amd64"
ROOT_UUID = "6e4ff95f-f662-45ee-a82a-bdf44a2d0b75"
BOOT_UUID = "0c8d3bd5-4c5e-4d6b-9b2f-63a8b1e8b7a1"
DISK_UUID = "d21a7c8e-0f3e-4d6e-8a53-0e1d2c3b4a59"
DOS_ID = "0x1a2b3c4d"
ESP_VOLID = "7B77-95E7"
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GRUB_CONFIG = {"serial": "serial --unit=0 --speed=115200", "terminal": ["serial", "console"],
               "timeout": 1, "timeout_style": "menu"}

TREE_SCRIPT = " && ".join([
    "mkdir -p boot etc srv/data",
    f"echo kernel > boot/vmlinuz-{KERNEL}",
    "echo qemu-test > etc/hostname",
    "printf 'secret\\n' > etc/shadow-test && chmod 0600 etc/shadow-test",
    "ln -s hostname etc/hostname-link",
    "echo payload > srv/data/file",
])


# --- manifests ----------------------------------------------------------------------------


def schema() -> dict[str, Any]:
    meta = load_meta("org.osbuild.qemu", kind="assemblers")
    assert meta["summary"] and meta["description"] and set(meta) == {
        "summary", "description", "schema"}
    full = {"type": "object", **meta["schema"]}
    jsonschema.Draft202012Validator.check_schema(full)
    return full


def valid(options: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(schema()).is_valid(options)


def grub_options(**extra: Any) -> dict[str, Any]:
    options = {"root_fs_uuid": ROOT_UUID, "legacy": True, "config": GRUB_CONFIG, **extra}
    meta = load_meta("org.osbuild.grub2")
    jsonschema.validate(options, {"type": "object", **meta["schema"]},
                        cls=jsonschema.Draft202012Validator)
    return options


def manifest(assembler: dict[str, Any], grub: dict[str, Any] | None = None,
             script: str = TREE_SCRIPT, finish: str | None = None) -> dict[str, Any]:
    """A v1 manifest without a build pipeline: the host is the build root.

    `finish` is a script run on the tree after org.osbuild.grub2.
    """
    assert valid(assembler), assembler
    stages = [{"name": "org.osbuild.test.script", "options": {"script": script}},
              {"name": "org.osbuild.grub2", "options": grub or grub_options()}]
    if finish:
        stages.append({"name": "org.osbuild.test.script", "options": {"script": finish}})
    return {"pipeline": {"stages": stages,
                         "assembler": {"name": "org.osbuild.qemu", "options": assembler}}}


def dos_options(**extra: Any) -> dict[str, Any]:
    return {"format": "raw", "filename": "disk.img", "size": 64 * MiB, "ptuuid": DOS_ID,
            "root_fs_uuid": ROOT_UUID, **extra}


GPT_BIOS = (2048, 2048)
GPT_ESP = (4096, 65536)
GPT_BOOT = (69632, 65536)
GPT_SIZE = 256 * MiB
# sfdisk ends a partition without a size at the last 1 MiB boundary before the backup GPT.
GPT_ROOT = (135168, (GPT_SIZE // SECTOR - 33) // 2048 * 2048 - 135168)


def gpt_options(**extra: Any) -> dict[str, Any]:
    """BIOS boot partition, vfat ESP at /boot/efi, ext4 /boot, btrfs root filling the rest."""
    return {"format": "raw", "filename": "disk.img", "size": GPT_SIZE, "ptuuid": DISK_UUID,
            "pttype": "gpt", "bootloader": {"type": "grub2", "platform": "i386-pc"},
            "partitions": [
                {"start": GPT_BIOS[0], "size": GPT_BIOS[1], "type": BIOS_BOOT},
                {"start": GPT_ESP[0], "size": GPT_ESP[1], "type": ESP_GUID, "name": "ESP",
                 "filesystem": {"type": "vfat", "uuid": ESP_VOLID, "label": "ESP",
                                "mountpoint": "/boot/efi"}},
                {"start": GPT_BOOT[0], "size": GPT_BOOT[1], "filesystem": {
                    "type": "ext4", "uuid": BOOT_UUID, "label": "boot", "mountpoint": "/boot"}},
                {"filesystem": {"type": "btrfs", "uuid": ROOT_UUID, "label": "root",
                                "mountpoint": "/"}}],
            **extra}


GPT_GRUB = grub_options(boot_fs_uuid=BOOT_UUID, uefi={"vendor": "debian", "install": True})


# --- tools ----------------------------------------------------------------------------------


def assemble(osbuild: Osbuild, m: dict[str, Any], out: str = "output") -> Path:
    """Build `m` and export the assembler; return the image."""
    output = osbuild.workdir / out
    osbuild.run(m, "--export", "assembler", "--output-directory", str(output))
    assert leaks(osbuild.workdir) == []
    files = list((output / "assembler").iterdir())
    assert [f.name for f in files] == [m["pipeline"]["assembler"]["options"]["filename"]]
    assert oct(files[0].stat().st_mode & 0o777) == "0o644"
    return files[0]


def names(listing: str) -> list[str]:
    """Entry names of a `debugfs ls -l` listing, without . and .."""
    found = [line.split()[-1] for line in listing.splitlines() if line.strip()]
    return sorted(n for n in found if n not in (".", ".."))


@contextlib.contextmanager
def mounted(image: Path, start: int, size: int, mountpoint: Path) -> Iterator[Path]:
    """Mount one partition read-only through its own loop device; always undone."""
    mountpoint.mkdir()
    dev = sh("losetup", "--find", "--show", "--read-only", "--offset", str(start * SECTOR),
             "--sizelimit", str(size * SECTOR), str(image)).strip()
    try:
        subprocess.run(["mount", "-o", "ro", dev, str(mountpoint)], check=True)
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The assembler's own one-line error (the last 'error:' line of the output)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return [line.strip() for line in proc.stderr.splitlines() if "error: " in line][-1]


# --- dos, the default layout: one ext4 root, GRUB for BIOS ------------------------------------


@pytest.fixture(scope="module")
def dos_store(tmp_path_factory: pytest.TempPathFactory, libdir: Path) -> Osbuild:
    """A store whose OS tree is built once; every format below reuses it."""
    return Osbuild(libdir, tmp_path_factory.mktemp("dos"))


@pytest.fixture(scope="module")
def dos_image(dos_store: Osbuild) -> Path:
    return assemble(dos_store, manifest(dos_options()), "raw")


def check_dos(image: Path) -> None:
    pt = table(image)
    assert (pt["label"], pt["id"]) == ("dos", DOS_ID)
    assert [(p["start"], p["size"], p["type"], p.get("bootable", False))
            for p in pt["partitions"]] == [(2048, 64 * MiB // SECTOR - 2048, "83", True)]
    root = probe(image, 2048)
    assert (root["TYPE"], root["UUID"]) == ("ext4", ROOT_UUID)
    assert debugfs(image, 2048, "cat /etc/hostname") == "qemu-test\n"


def test_dos_default_layout(dos_image: Path) -> None:
    check_dos(dos_image)
    assert dos_image.stat().st_size == 64 * MiB
    assert dos_image.stat().st_blocks * 512 < 32 * MiB  # still sparse
    assert re.search(r"Mode:\s+0600", debugfs(dos_image, 2048, "stat /etc/shadow-test"))
    assert 'Fast link dest: "hostname"' in debugfs(dos_image, 2048, "stat /etc/hostname-link")
    assert debugfs(dos_image, 2048, "cat /srv/data/file") == "payload\n"
    cfg = debugfs(dos_image, 2048, "cat /boot/grub/grub.cfg")
    assert f"search --no-floppy --fs-uuid --set=root {ROOT_UUID}" in cfg
    assert "normal.mod" in debugfs(dos_image, 2048, "ls -l /boot/grub/i386-pc")
    subprocess.run(["e2fsck", "-fn", f"{dos_image}?offset={2048 * SECTOR}"],
                   capture_output=True, check=True)


def test_dos_grub_in_the_mbr_gap(dos_image: Path) -> None:
    check_grub(dos_image, "(,msdos1)/boot/grub", ["biosdisk", "part_msdos", "ext2"], 1)
    mbr = dos_image.read_bytes()[:512]
    assert mbr[440:444] == bytes.fromhex("4d3c2b1a")  # the disk id stays
    assert mbr[446] == 0x80  # and the boot flag of partition 1


@pytest.mark.slow
def test_dos_image_boots_with_bios(dos_image: Path, tmp_path: Path) -> None:
    """SeaBIOS runs boot.img, core.img finds /boot/grub, the menu's entry reads the kernel.

    The fake kernel is too short for GRUB: its complaint proves the file was found.
    """
    log = tmp_path / "serial.log"
    assert boot_until(dos_image, log, f"premature end of file /boot/vmlinuz-{KERNEL}"), \
        log.read_text(errors="replace")[-2000:]
    assert f"Debian GNU/Linux, with Linux {KERNEL}" in log.read_text(errors="replace")


FORMATS = {
    "qcow2": {"qcow2_compat": "0.10"},
    "vmdk": {"vmdk_subformat": "streamOptimized"},
    "vdi": {},
    "vpc": {},
    "vhdx": {},
    "raw.xz": {},
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_formats(dos_store: Osbuild, tmp_path: Path, fmt: str) -> None:
    image = assemble(dos_store, manifest(dos_options(format=fmt, filename=f"disk.{fmt}",
                                                     **FORMATS[fmt])), f"out-{fmt}")
    back = tmp_path / "back.raw"
    if fmt == "raw.xz":
        with lzma.open(image) as f:
            back.write_bytes(f.read())
        assert image.read_bytes()[:6] == b"\xfd7zXZ\0"
    else:
        info = json.loads(sh("qemu-img", "info", "-f", fmt, "--output=json", str(image)))
        assert info["format"] == fmt
        assert info["virtual-size"] == 64 * MiB
        if fmt == "qcow2":
            assert info["format-specific"]["data"]["compat"] == "0.10"
        if fmt == "vmdk":
            assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
        sh("qemu-img", "convert", "-f", fmt, "-O", "raw", str(image), str(back))
    assert back.stat().st_size == 64 * MiB
    check_dos(back)


# --- gpt: BIOS boot partition, vfat ESP, ext4 /boot, btrfs root ----------------------------------


@pytest.fixture(scope="module")
def gpt_image(tmp_path_factory: pytest.TempPathFactory, libdir: Path) -> Path:
    osbuild = Osbuild(libdir, tmp_path_factory.mktemp("gpt"))
    return assemble(osbuild, manifest(gpt_options(), GPT_GRUB))


def test_gpt_partition_table(gpt_image: Path) -> None:
    pt = table(gpt_image)
    assert (pt["label"], pt["id"]) == ("gpt", DISK_UUID.upper())
    assert [(p["start"], p["size"], p["type"]) for p in pt["partitions"]] == [
        (*GPT_BIOS, BIOS_BOOT), (*GPT_ESP, ESP_GUID), (*GPT_BOOT, LINUX_GUID),
        (*GPT_ROOT, LINUX_GUID)]
    assert pt["partitions"][1]["name"] == "ESP"


def test_gpt_file_systems(gpt_image: Path) -> None:
    esp = probe(gpt_image, GPT_ESP[0])
    assert (esp["TYPE"], esp["UUID"], esp["LABEL"]) == ("vfat", ESP_VOLID, "ESP")
    boot = probe(gpt_image, GPT_BOOT[0])
    assert (boot["TYPE"], boot["UUID"], boot["LABEL"]) == ("ext4", BOOT_UUID, "boot")
    root = probe(gpt_image, GPT_ROOT[0])
    assert (root["TYPE"], root["UUID"], root["LABEL"]) == ("btrfs", ROOT_UUID, "root")


def test_gpt_esp_holds_the_trees_boot_efi(gpt_image: Path) -> None:
    assert mdir(gpt_image, GPT_ESP[0], "/") == ["EFI"]
    assert mdir(gpt_image, GPT_ESP[0], "/EFI") == ["BOOT", "debian"]
    assert mdir(gpt_image, GPT_ESP[0], "/EFI/debian") == ["grub.cfg", "grubx64.efi"]
    stub = mtype(gpt_image, GPT_ESP[0], "/EFI/debian/grub.cfg").decode()
    assert stub.startswith(f"search.fs_uuid {BOOT_UUID} root\n")
    efi = Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi").read_bytes()
    assert mtype(gpt_image, GPT_ESP[0], "/EFI/BOOT/BOOTX64.EFI") == efi


def test_gpt_each_file_system_holds_its_part(gpt_image: Path, tmp_path: Path) -> None:
    # /boot: the kernel and GRUB, and an empty efi directory where the ESP is mounted.
    assert names(debugfs(gpt_image, GPT_BOOT[0], "ls -l /")) == [
        "efi", "grub", "lost+found", f"vmlinuz-{KERNEL}"]
    assert names(debugfs(gpt_image, GPT_BOOT[0], "ls -l /efi")) == []
    assert "normal.mod" in debugfs(gpt_image, GPT_BOOT[0], "ls -l /grub/i386-pc")
    # /: everything else, with an empty /boot.
    with mounted(gpt_image, *GPT_ROOT, tmp_path / "root") as root:
        assert (root / "etc/hostname").read_text() == "qemu-test\n"
        assert (root / "srv/data/file").read_text() == "payload\n"
        assert oct((root / "etc/shadow-test").stat().st_mode & 0o777) == "0o600"
        assert os.readlink(root / "etc/hostname-link") == "hostname"
        assert (root / "boot").is_dir() and list((root / "boot").iterdir()) == []
    assert leaks(tmp_path) == []


def test_gpt_grub_in_the_bios_boot_partition(gpt_image: Path) -> None:
    check_grub(gpt_image, "(,gpt3)/grub", ["biosdisk", "part_gpt", "ext2"], GPT_BIOS[0])
    assert gpt_image.read_bytes()[446 + 4] == 0xEE  # the protective MBR stays


@pytest.mark.slow
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_gpt_image_boots(gpt_image: Path, tmp_path: Path, firmware: str) -> None:
    """BIOS: core.img in the BIOS boot partition reads /boot; UEFI: OVMF starts the ESP's GRUB.

    Either way GRUB finds the kernel at the top of the /boot file system.
    """
    log = tmp_path / "serial.log"
    fw = ["-bios", "/usr/share/ovmf/OVMF.fd"] if firmware == "uefi" else []
    assert boot_until(gpt_image, log, f"premature end of file /vmlinuz-{KERNEL}", fw,
                      timeout=240), log.read_text(errors="replace")[-2000:]


# --- gpt, the default layout with an xfs root ---------------------------------------------------


def test_gpt_default_layout_xfs_root(osbuild: Osbuild, tmp_path: Path) -> None:
    size = 400 * MiB
    options = {"format": "raw", "filename": "xfs.img", "size": size, "ptuuid": DISK_UUID,
               "pttype": "gpt", "root_fs_uuid": ROOT_UUID, "root_fs_type": "xfs",
               "bootloader": {"type": "grub2"}}
    image = assemble(osbuild, manifest(options))
    pt = table(image)
    root = (4096, (size // SECTOR - 33) // 2048 * 2048 - 4096)
    assert [(p["start"], p["size"], p["type"]) for p in pt["partitions"]] == [
        (2048, 2048, BIOS_BOOT), (*root, LINUX_GUID)]
    found = probe(image, root[0])
    assert (found["TYPE"], found["UUID"]) == ("xfs", ROOT_UUID)
    check_grub(image, "(,gpt2)/boot/grub", ["biosdisk", "part_gpt", "xfs"], 2048)
    with mounted(image, *root, tmp_path / "root") as mnt:
        assert (mnt / "etc/hostname").read_text() == "qemu-test\n"
        assert (mnt / "boot/grub/grub.cfg").is_file()
    assert leaks(tmp_path) == []


# --- a size too small, and other errors ------------------------------------------------------


def build_error(osbuild: Osbuild, m: dict[str, Any], output: str = "") -> str:
    """The build's one-line error; nothing is exported and nothing is left attached.

    `output` must be in what the assembler printed before it.
    """
    proc = osbuild.run(m, "--export", "assembler", "--output-directory",
                       str(osbuild.output), check=False)
    line = error_line(proc)
    assert output in proc.stdout + proc.stderr
    assert not osbuild.output.exists()
    assert leaks(osbuild.workdir) == []
    return line


BIG_TREE = TREE_SCRIPT + " && head -c 12M /dev/urandom > srv/big"


def test_disk_too_small_for_the_tree(osbuild: Osbuild) -> None:
    size = 8 * MiB
    line = build_error(osbuild, manifest(dos_options(size=size), script=BIG_TREE))
    match = re.fullmatch(rf"error: size {size} bytes is too small for the tree: partition 1 "
                         rf"\(/, ext4, {size - MiB} bytes\) is too small for its part of it: "
                         r"it needs at least about (\d+) bytes", line)
    assert match and int(match.group(1)) > 12 * MiB, line


def test_partition_too_small_for_its_part(osbuild: Osbuild) -> None:
    """The ESP gets GRUB's EFI images (two copies of about 4 MiB): 1 MiB is not enough."""
    options = gpt_options()
    options["partitions"][1]["size"] = 2048
    options["partitions"][2]["start"] = GPT_ESP[0] + 2048
    line = build_error(osbuild, manifest(options, GPT_GRUB))
    assert re.fullmatch(r"error: partition 2 \(/boot/efi, vfat, 1048576 bytes\) is too small "
                        r"for its part of the tree: it needs at least about \d+ bytes", line), line


def test_mkfs_out_of_space_is_named_as_too_small(osbuild: Osbuild) -> None:
    """The data fits the estimate, but not with ext4's journal and inode tables."""
    options = dos_options(partitions=[{"start": 2048, "size": 12 * MiB // SECTOR, "filesystem": {
        "type": "ext4", "uuid": ROOT_UUID, "mountpoint": "/"}}])
    script = TREE_SCRIPT + " && head -c 11M /dev/urandom > srv/big"
    # Without GRUB's modules in the tree (legacy false): only the big file counts.
    line = build_error(osbuild, manifest(options, grub_options(legacy=False), script),
                       output="Could not allocate")  # mkfs's own words are in the log
    assert re.fullmatch(r"error: partition 1 \(/, ext4, 12582912 bytes\) is too small for its "
                        r"part of the tree: its data \(about \d+ bytes\) and the structures of "
                        r"mkfs.ext4 do not fit", line), line


def test_partition_table_that_does_not_fit(osbuild: Osbuild) -> None:
    line = build_error(osbuild, manifest(dos_options(size=512 * 1024)))
    assert line == ("error: the partition table does not fit: partition 1 starts at sector "
                    "2048, beyond the end of the disk (1024 sectors of 512 bytes); the last "
                    "usable sector is 1023")


def small_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("x\n")
    return tree


def run_assembler(tmp_path: Path, options: dict[str, Any], tree: Path,
                  source_epoch: int | None = None, out: str = "out") -> tuple[Any, Path]:
    output, work = tmp_path / out, tmp_path / f"work-{out}"
    output.mkdir()
    work.mkdir()
    result = run_stage("org.osbuild.qemu", options, output, work, kind="assemblers",
                       inputs={"tree": {"path": tree}}, source_epoch=source_epoch)
    return result, output


def stage_error(result: Any) -> str:
    errors = [line for line in result.tail if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1, result.tail
    return errors[0]


@pytest.mark.parametrize("change, expected", [
    ({"bootloader": {"type": "zipl"}},
     "bootloader zipl boots IBM Z (s390x) disks; this assembler installs only grub2 for BIOS "
     "(platform i386-pc)"),
    ({"bootloader": {"type": "grub2", "platform": "powerpc-ieee1275"}},
     "bootloader platform 'powerpc-ieee1275': only i386-pc (BIOS) is supported; UEFI images "
     "need no boot loader here, only a vfat ESP mounted at /boot/efi"),
    ({"partitions": [{"filesystem": {"type": "ext4", "uuid": ROOT_UUID,
                                     "mountpoint": "/srv"}}]},
     "no partition has the root file system (a filesystem with mountpoint /)"),
    ({"partitions": [{"size": 8192, "filesystem": {"type": "ext4", "uuid": ROOT_UUID,
                                                   "mountpoint": "/"}},
                     {"filesystem": {"type": "vfat", "uuid": "not-hex!", "mountpoint": "/efi"}}]},
     "partition 2: vfat uuid 'not-hex!' is not a volume id of 8 hex digits like 7B77-95E7"),
    ({"partitions": [{"filesystem": {"type": "ext4", "uuid": ROOT_UUID, "mountpoint": "/"}},
                     {"filesystem": {"type": "ext4", "uuid": ROOT_UUID, "mountpoint": "/"}}]},
     "partition 2: mountpoint / is used twice"),
    ({"pttype": "gpt", "ptuuid": DISK_UUID, "bootloader": {"type": "grub2"},
      "partitions": [{"filesystem": {"type": "ext4", "uuid": ROOT_UUID, "mountpoint": "/"}}]},
     f"GRUB for BIOS on a gpt disk needs a BIOS boot partition (type {BIOS_BOOT}) for its "
     "core image"),
])
def test_errors(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    options = {**dos_options(), **change}
    assert valid(options)
    result, output = run_assembler(tmp_path, options, small_tree(tmp_path))
    assert stage_error(result) == f"error: {expected}"
    assert list(output.iterdir()) == []  # nothing half-made is left


def test_mountpoint_through_a_symlink_is_refused(tmp_path: Path) -> None:
    tree = small_tree(tmp_path)
    (tree / "boot").symlink_to("/etc")
    options = dos_options(partitions=[
        {"size": 16384, "filesystem": {"type": "ext4", "uuid": ROOT_UUID, "mountpoint": "/"}},
        {"filesystem": {"type": "ext4", "uuid": BOOT_UUID, "mountpoint": "/boot"}}])
    result, output = run_assembler(tmp_path, options, tree)
    assert stage_error(result) == \
        "error: mountpoint /boot is a symlink or lies below one in the tree"
    assert list(output.iterdir()) == []


# --- reproducibility ----------------------------------------------------------------------------


def test_same_tree_gives_the_same_image(tmp_path: Path, libdir: Path) -> None:
    """Two stores make two copies of the tree (other inode, access and change times);
    with SOURCE_DATE_EPOCH the assembler makes the same bytes from both: table, vfat
    ESP, ext4 root and GRUB."""
    # v1 has no source-epoch: the tree's mtimes are pinned by a last script.
    pin = f"find . -exec touch -h -d @{EPOCH} {{}} +"
    options = {"format": "raw", "filename": "disk.img", "size": 96 * MiB, "ptuuid": DISK_UUID,
               "pttype": "gpt", "bootloader": {"type": "grub2"}, "partitions": [
                   {"start": 2048, "size": 2048, "type": BIOS_BOOT},
                   {"start": 4096, "size": 32768, "type": ESP_GUID, "filesystem": {
                       "type": "vfat", "uuid": ESP_VOLID, "mountpoint": "/boot/efi"}},
                   {"filesystem": {"type": "ext4", "uuid": ROOT_UUID, "mountpoint": "/"}}]}
    m = manifest(options, grub_options(uefi={"vendor": "debian", "install": True}), finish=pin)
    trees, images = [], []
    for run in ("a", "b"):
        osbuild = Osbuild(libdir, tmp_path / run)
        (tmp_path / run).mkdir()
        osbuild.run(m, "--export", "tree", "--output-directory", str(osbuild.output))
        trees.append(osbuild.output / "tree")
        time.sleep(1.1)
    assert trees[0].joinpath("etc/hostname").stat().st_ctime != \
        trees[1].joinpath("etc/hostname").stat().st_ctime
    for i, tree in enumerate(trees):
        result, output = run_assembler(tmp_path, options, tree, EPOCH, f"image-{i}")
        assert result.returncode == 0, result.tail
        images.append(output / "disk.img")
    assert images[0].read_bytes() == images[1].read_bytes()
    created = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(EPOCH))
    header = subprocess.run(["dumpe2fs", "-h", f"{images[0]}?offset={36864 * SECTOR}"],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "TZ": "UTC"}).stdout
    assert f"Filesystem created:       {created}" in header
    hostname = debugfs(images[0], 36864, "stat /etc/hostname")
    assert hostname.count(f"0x{EPOCH:08x}:00000000") == 4  # c-, a-, m- and crtime
    assert mtype(images[0], 4096, "/EFI/debian/grub.cfg").startswith(b"search.fs_uuid ")


# --- schema -------------------------------------------------------------------------------------

ACCEPTED = [
    dos_options(),
    dos_options(format="qcow2", qcow2_compat="1.1", root_fs_type="btrfs", pttype="mbr"),
    dos_options(format="vmdk", vmdk_subformat="monolithicSparse", bootloader={"type": "grub2"}),
    gpt_options(),
    gpt_options(format="vhdx", bootloader={"type": "zipl"}),
    {"format": "raw.xz", "filename": "d.raw.xz", "size": 1 << 30, "ptuuid": DOS_ID,
     "partitions": [{"bootable": True, "type": "83", "filesystem": {
         "type": "xfs", "uuid": ROOT_UUID, "mountpoint": "/"}}]},
]

REJECTED = [
    {k: v for k, v in dos_options().items() if k != "root_fs_uuid"},  # no root at all
    {k: v for k, v in dos_options().items() if k != "ptuuid"},
    dos_options(format="iso"),
    dos_options(size=1000),
    dos_options(size="64M"),
    dos_options(filename="dir/disk.img"),
    dos_options(pttype="sun"),
    dos_options(root_fs_type="vfat"),
    dos_options(bootloader={"type": "lilo"}),
    dos_options(bootloader={"type": "grub2", "menu": True}),
    dos_options(qcow2_compat="2.0"),
    dos_options(root_fs_uuid="not-a-uuid"),
    dos_options(partitions=[{"filesystem": {"type": "ext4", "uuid": ROOT_UUID}}]),
    dos_options(partitions=[{"filesystem": {"type": "ntfs", "uuid": ROOT_UUID,
                                            "mountpoint": "/"}}]),
    dos_options(partitions=[{"filesystem": {"type": "ext4", "uuid": ROOT_UUID,
                                            "mountpoint": "/boot/../etc"}}]),
    dos_options(partitions=[{"filesystem": {"type": "ext4", "uuid": ROOT_UUID,
                                            "mountpoint": "boot"}}]),
    dos_options(partitions=[{"start": 2048, "fsopts": "x"}]),
    dos_options(extra=True),
]


@pytest.mark.parametrize("options", ACCEPTED)
def test_schema_accepts(options: dict[str, Any]) -> None:
    assert valid(options)


@pytest.mark.parametrize("options", REJECTED)
def test_schema_rejects(options: dict[str, Any]) -> None:
    assert not valid(options)
