"""Devices and mounts through the engine: loop devices and filesystems in v2 stages."""

import subprocess
from pathlib import Path

import pytest
from harness import Osbuild

MiB = 1024 * 1024
SECTOR = 512


def script(text: str, devices: dict | None = None, mounts: list | None = None) -> dict:
    stage: dict = {"type": "org.osbuild.test.script", "options": {"script": text}}
    if devices:
        stage["devices"] = devices
    if mounts:
        stage["mounts"] = mounts
    return stage


def loop(start: int, size: int) -> dict:
    return {"type": "org.osbuild.loopback",
            "options": {"filename": "disk.img", "start": start, "size": size}}


def leaks(workdir: Path) -> list[str]:
    """Loop devices and mounts that still refer to this test's files (tests run in parallel)."""
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                            text=True).stdout
    return [line for line in (loops + mounts).splitlines() if str(workdir) in line]


def debugfs_cat(image: Path, offset: int, path: str) -> str:
    part = image.with_suffix(".part")
    subprocess.run(["dd", f"if={image}", f"of={part}", "bs=512", f"skip={offset}",
                    "status=none"], check=True)
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(part)], capture_output=True,
                          text=True, check=True).stdout


def disk_manifest(final: dict) -> dict:
    root_start, root_size = 2048, 40 * MiB // SECTOR
    boot_start, boot_size = root_start + root_size, 20 * MiB // SECTOR
    layout = (f"label: dos\\nstart={root_start}, size={root_size}, type=83\\n"
              f"start={boot_start}, size={boot_size}, type=83\\n")
    return {"version": "2", "pipelines": [{"name": "image", "stages": [
        script(f"truncate -s 64M disk.img && printf '{layout}' | sfdisk -q disk.img"),
        script("mkfs.ext4 -q -U 11111111-2222-3333-4444-555555555555 $DEVICE_root && "
               "mkfs.ext4 -q $DEVICE_boot",
               devices={"root": loop(root_start, root_size), "boot": loop(boot_start, boot_size)}),
        final,
    ]}]}


def test_stage_writes_into_nested_mounts(osbuild: Osbuild) -> None:
    final = script(
        "echo root-file > $MOUNT_root/hello && echo boot-file > $MOUNT_boot/kernel && "
        "test $MOUNT_boot = /run/osbuild/mounts/boot && ls /run/osbuild/mounts/boot/kernel",
        devices={"root": loop(2048, 40 * MiB // SECTOR),
                 "boot": loop(2048 + 40 * MiB // SECTOR, 20 * MiB // SECTOR)},
        mounts=[{"name": "root", "type": "org.osbuild.ext4", "source": "root", "target": "/"},
                {"name": "boot", "type": "org.osbuild.ext4", "source": "boot",
                 "target": "/boot"}])
    osbuild.run(disk_manifest(final), "--export", "image", "--output-directory",
                str(osbuild.output))
    image = osbuild.output / "image/disk.img"
    assert debugfs_cat(image, 2048, "/hello") == "root-file\n"
    assert debugfs_cat(image, 2048 + 40 * MiB // SECTOR, "/kernel") == "boot-file\n"
    assert leaks(osbuild.workdir) == []


def test_failing_stage_with_mounts_leaks_nothing(osbuild: Osbuild) -> None:
    final = script("touch $MOUNT_root/x; exit 3",
                   devices={"root": loop(2048, 40 * MiB // SECTOR)},
                   mounts=[{"name": "root", "type": "org.osbuild.ext4", "source": "root",
                            "target": "/"}])
    proc = osbuild.run(disk_manifest(final), check=False)
    assert proc.returncode == 1 and "exit status 3" in proc.stderr
    assert leaks(osbuild.workdir) == []


@pytest.mark.parametrize("start, size, expected", [
    (2048, 10**9, "beyond the end"),
    (10**9, 2048, "beyond the end"),
])
def test_out_of_range_device_is_a_clear_error(osbuild: Osbuild, start: int, size: int,
                                              expected: str) -> None:
    final = script("true", devices={"root": loop(start, size)})
    proc = osbuild.run(disk_manifest(final), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert leaks(osbuild.workdir) == []


def test_fat_mount_says_to_use_mtools(osbuild: Osbuild) -> None:
    final = script("true", devices={"root": loop(2048, 40 * MiB // SECTOR)},
                   mounts=[{"name": "esp", "type": "org.osbuild.fat", "source": "root",
                            "target": "/"}])
    proc = osbuild.run(disk_manifest(final), check=False)
    assert proc.returncode != 0
    assert "mtools" in proc.stderr and "Traceback" not in proc.stderr


def test_disk_too_small_for_the_tree_is_named_as_such(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [
        {"name": "os", "stages": [script("head -c 30000000 /dev/urandom > big")]},
        {"name": "image", "stages": [
            script("truncate -s 24M disk.img && printf 'label: dos\\nstart=2048\\n' | "
                   "sfdisk -q disk.img"),
            {"type": "org.osbuild.mkfs.ext4", "options": {"uuid": "6e4ff95f-f662-45ee-a82a-"
                                                                  "bdf44a2d0b75"},
             "devices": {"device": loop(2048, 22 * MiB // SECTOR)}},
            {"type": "org.osbuild.copy",
             "inputs": {"tree": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                                 "references": ["name:os"]}},
             "options": {"paths": [{"from": "input://tree/", "to": "mount://root/"}]},
             "devices": {"root": loop(2048, 22 * MiB // SECTOR)},
             "mounts": [{"name": "root", "type": "org.osbuild.ext4", "source": "root",
                         "target": "/"}]},
        ]}]}
    proc = osbuild.run(manifest, "--export", "image", "--output-directory",
                       str(osbuild.output), check=False)
    assert proc.returncode == 1
    assert "the disk or partition is too small for the tree" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert leaks(osbuild.workdir) == []
    assert not osbuild.output.exists()
