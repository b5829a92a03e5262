"""image-info on images it did not make: built here by test/data/image_info/make_image.py.

Every run goes through the real command (loop devices, mounts, qemu-img,
sfdisk, blkid, mtools) with its scratch space in a private TMPDIR, and each
run is followed by a check that it left no scratch file, loop device or mount.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from imagemaker import mk

from osbuild.image_info.treeview import Tree
from osbuild.image_info.vercmp import evrcmp, rpmvercmp

ROOT = Path(__file__).resolve().parent.parent.parent

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the loop backend needs root")
needs_guestfs = pytest.mark.skipif(
    subprocess.run(["/usr/bin/python3", "-c", "import guestfs"], capture_output=True).returncode
    != 0, reason="python3-guestfs is not installed")


def loop_backing_files() -> list[str]:
    files = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            files.append(backing.read_text().strip())
        except OSError:
            pass
    return files


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def assert_nothing_left(scratch: Path, *paths: Path) -> None:
    """No scratch files, and no loop device or mount that refers to our files."""
    assert list(scratch.iterdir()) == []
    ours = [str(p) for p in (scratch, *paths)]
    assert not [f for f in loop_backing_files() if f.startswith(tuple(ours))]
    assert not [m for m in mount_points() if m.startswith(tuple(ours))]


def image_info(target: Path, tmp_path: Path, *args: str,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    # libguestfs keeps its appliance cache in TMPDIR unless told otherwise: a cache, not
    # scratch space, so it goes where it would go without our TMPDIR.
    env = {**os.environ, "TMPDIR": str(scratch), "LIBGUESTFS_CACHEDIR": "/var/tmp"}
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", str(target), *args],
                          capture_output=True, text=True, env=env)
    assert_nothing_left(scratch, target.parent)
    if check:
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    return proc


def report_of(target: Path, tmp_path: Path, *args: str) -> dict:
    return json.loads(image_info(target, tmp_path, *args).stdout)


@pytest.fixture(scope="module")
def bios(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("bios")
    image = work / "disk" / "bios.raw"
    image.parent.mkdir()
    (work / "build").mkdir()
    built = mk.bios_image(image, work / "build")
    return {"image": image, **built}


@pytest.fixture(scope="module")
def uefi(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("uefi")
    image = work / "disk" / "uefi.raw"
    image.parent.mkdir()
    (work / "build").mkdir()
    built = mk.uefi_image(image, work / "build")
    return {"image": image, **built}


@pytest.fixture(scope="module")
def bios_report(bios: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    if os.geteuid() != 0:
        pytest.skip("the loop backend needs root")
    return report_of(bios["image"], tmp_path_factory.mktemp("bios-report"))


def sha256_range(path: Path, start: int, end: int) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        return hashlib.sha256(f.read(end - start)).hexdigest()


def tree_keys(report: dict) -> dict:
    """The part of a report that comes from the OS tree (not the disk or the boot code)."""
    disk = {"image-format", "partition-table", "partition-table-id", "partitions",
            "filesystem", "bootloader", "grub2-bios", "esp"}
    return {k: v for k, v in report.items() if k not in disk}


# --- a dos disk with /boot and / on ext4 and GRUB for BIOS -----------------------------------


@needs_root
def test_bios_partitions(bios_report: dict) -> None:
    r = bios_report
    assert r["image-format"]["type"] == "raw"
    assert r["partition-table"] == "dos"
    assert r["partition-table-id"] == mk.DOS_ID
    boot, root = r["partitions"]
    assert boot == {"number": 1, "start": 1 * mk.MIB, "size": 8 * mk.MIB, "type": "83",
                    "partuuid": "7e57da7a-01", "bootable": True, "name": None,
                    "fstype": "ext4", "uuid": mk.BOOT_UUID, "label": "boot"}
    assert root == {"number": 2, "start": 9 * mk.MIB, "size": 32 * mk.MIB, "type": "83",
                    "partuuid": "7e57da7a-02", "bootable": False, "name": None,
                    "fstype": "ext4", "uuid": mk.ROOT_UUID, "label": "root"}


@needs_root
def test_bios_grub_hashes_equal_independent_computation(bios: dict, bios_report: dict) -> None:
    grub = bios_report["grub2-bios"]
    assert bios_report["bootloader"] == "grub"
    first = bios["first_partition"]
    # From the image's bytes...
    assert grub["boot-code"] == {"start": 0, "end": 440,
                                 "sha256": sha256_range(bios["image"], 0, 440)}
    assert grub["core-area"] == {"start": 512, "end": first,
                                 "sha256": sha256_range(bios["image"], 512, first)}
    # ...and from what the script wrote there: boot.img's code, core.img padded with zeros.
    assert grub["boot-code"]["sha256"] == hashlib.sha256(bios["boot_code"]).hexdigest()
    core_area = bios["core"] + bytes(first - 512 - len(bios["core"]))
    assert grub["core-area"]["sha256"] == hashlib.sha256(core_area).hexdigest()


@needs_root
def test_bios_boot_menus(bios_report: dict) -> None:
    # grub.cfg is on the /boot partition: found through the fstab mount.
    assert bios_report["grub-config"] == "/boot/grub/grub.cfg"
    options = f"root=UUID={mk.ROOT_UUID} ro"
    assert bios_report["grub-menu"] == [
        {"title": "Test OS", "linux": "/vmlinuz-6.1.0-10-amd64",
         "initrd": "/initrd.img-6.1.0-10-amd64", "options": f"{options} quiet"},
        {"title": "Test OS (recovery)", "linux": "/vmlinuz-6.1.0-10-amd64",
         "initrd": "/initrd.img-6.1.0-10-amd64", "options": f"{options} single"},
        {"title": "Test OS, older kernel", "submenu": "Advanced options",
         "linux": "/vmlinuz-6.1.0-9-amd64", "initrd": "/initrd.img-6.1.0-9-amd64",
         "options": options},
    ]
    # Newest first by rpmvercmp: 10 > 10~rc1 > 9 (the file names sort otherwise).
    assert [e["id"] for e in bios_report["bootmenu"]] == [
        "y-6.1.0-10", "z-6.1.0-10~rc1", "x-6.1.0-9"]
    assert bios_report["bootmenu"][0]["linux"] == "/vmlinuz-6.1.0-10"
    assert bios_report["boot-environment"] == {"saved_entry": "0"}


@needs_root
def test_bios_tree(bios_report: dict) -> None:
    r = bios_report
    # /etc/os-release is an absolute link: resolved in the image, not on the host.
    assert r["os-release"]["ID"] == "testos"
    assert r["os-release"]["VERSION_ID"] == "1.2"
    assert r["packages"] == [
        {"name": "base-files", "version": "13.8", "arch": "amd64"},
        {"name": "libc6", "version": "2.41-12", "arch": "amd64"},
        {"name": "tzdata", "version": "2025b-4", "arch": "all"},
    ]
    assert r["hostname"] == "testhost"
    assert r["machine-id"] == "0123456789abcdef0123456789abcdef"
    assert r["timezone"] == "Europe/Berlin"
    assert r["locale"] == {"LANG": "en_GB.UTF-8"}
    assert r["keyboard"] == {"XKBMODEL": "pc105", "XKBLAYOUT": "de", "KEYMAP": "de-latin1"}
    assert r["passwd"] == ["root:x:0:0:root:/root:/bin/bash",
                           "tester:x:1000:1000:Test User:/home/tester:/bin/sh"]
    assert r["groups"] == ["root:x:0:", "sudo:x:27:tester", "tester:x:1000:"]
    assert r["fstab"] == [
        [f"/dev/disk/by-uuid/{mk.BOOT_UUID}", "/boot", "ext4", "defaults", "0", "2"],
        [f"UUID={mk.ROOT_UUID}", "/", "ext4", "errors=remount-ro", "0", "1"],
    ]
    assert r["services-enabled"] == ["getty@.service", "hello.service"]
    assert r["services-disabled"] == ["idle.service"]  # fixed.service is static
    assert r["services-masked"] == ["noisy.service"]
    assert r["default-target"] == "multi-user.target"
    # sshd takes the first value: the included file's, before the main file's.
    assert r["sshd_config"] == {"PermitRootLogin": "no", "PasswordAuthentication": "yes",
                                "Subsystem": ["sftp /usr/lib/sftp"]}
    assert r["ssh_config"] == {"SendEnv": ["LANG LC_*"], "HashKnownHosts": "yes"}
    assert r["sudoers"] == {
        "/etc/sudoers": ["Defaults env_reset", "root ALL=(ALL:ALL) ALL",
                         "@includedir /etc/sudoers.d"],
        "/etc/sudoers.d/tester": ["tester ALL=(ALL) NOPASSWD: ALL"],
    }
    assert r["sysctl.d"] == {"/etc/sysctl.d/90-test.conf": ["vm.swappiness = 10"]}
    assert r["modprobe"] == {"/etc/modprobe.d/blacklist.conf": ["blacklist floppy"]}
    assert r["tmpfiles.d"] == {"/etc/tmpfiles.d/test.conf": ["d /run/test 0755 root root -"]}
    assert r["udev-rules"] == {"/etc/udev/rules.d/70-test.rules": ['SUBSYSTEM=="net", NAME="lan0"']}
    assert r["cloud-init"] == {"/etc/cloud/cloud.cfg.d/10-test.cfg": {
        "datasource_list": ["NoCloud"], "users": ["default"]}}
    assert r["chrony"] == {"pool": ["2.debian.pool.ntp.org iburst"],
                           "sourcedir": ["/etc/chrony/sources.d"],
                           "server": ["10.0.0.1 iburst"], "makestep": ["1 3"]}
    assert r["apt-sources"] == {
        "/etc/apt/sources.list": [],
        "/etc/apt/sources.list.d/debian.sources": [{
            "Types": "deb", "URIs": "http://mirror.example/debian", "Suites": "trixie",
            "Components": "main",
            "Signed-By": "/usr/share/keyrings/debian-archive-keyring.gpg"}],
    }
    assert r["selinux"]["config"] == {"SELINUX": "permissive", "SELINUXTYPE": "default"}
    assert r["firewall-enabled"] == ["dhcpv6-client", "ssh"]
    # A `..` link leading out of the tree is clamped at its root: the host's
    # /proc/cmdline must not show up.
    assert "kernel-cmdline" not in r


@needs_root
def test_bios_selinux_label_from_xattr(bios_report: dict, tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.touch()
    try:
        os.setxattr(probe, "security.selinux", b"system_u:object_r:etc_t:s0\0")
    except OSError:
        pytest.skip("this host cannot set security.selinux xattrs")
    assert bios_report["selinux"]["labels"] == {"/etc/hostname": mk.SELINUX_LABEL}


# --- a GPT disk with an ESP (FAT) and an xfs root ----------------------------------------


@needs_root
def test_uefi_gpt_image(uefi: dict, tmp_path: Path) -> None:
    r = report_of(uefi["image"], tmp_path)
    assert r["partition-table"] == "gpt"
    assert r["partition-table-id"] == mk.GPT_ID
    esp, root = r["partitions"]
    assert esp == {"number": 1, "start": 1 * mk.MIB, "size": 16 * mk.MIB,
                   "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                   "partuuid": mk.ESP_PARTUUID.lower(), "bootable": False, "name": "ESP",
                   "fstype": "vfat", "uuid": mk.ESP_UUID, "label": "ESP"}
    assert root == {"number": 2, "start": 17 * mk.MIB, "size": 300 * mk.MIB,
                    "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                    "partuuid": mk.ROOT_PARTUUID.lower(), "bootable": False, "name": "root",
                    "fstype": "xfs", "uuid": mk.ROOT_UUID, "label": "root"}
    assert r["esp"] == [{
        "partition": 1, "label": "ESP", "uuid": mk.ESP_UUID,
        "files": {"/EFI/BOOT/BOOTX64.EFI": uefi["efi_sha256"],
                  "/EFI/testos/grubx64.efi": uefi["efi_sha256"],
                  "/EFI/testos/grub.cfg": uefi["stub_sha256"]},
        "configs": {"/EFI/testos/grub.cfg": [f"search.fs_uuid {mk.ROOT_UUID} root",
                                             "configfile ($root)/boot/grub/grub.cfg"]},
        "efi-binaries": {"/EFI/BOOT/BOOTX64.EFI": "x86_64", "/EFI/testos/grubx64.efi": "x86_64"},
    }]
    assert uefi["efi_sha256"] == hashlib.sha256(mk.EFI_BINARY.read_bytes()).hexdigest()
    assert r["bootloader"] == "grub"  # by its EFI binary: the MBR has no boot code
    assert "grub2-bios" not in r
    # The tree comes from the xfs root (mounted ro,norecovery), found by PARTUUID in fstab.
    assert r["os-release"]["ID"] == "testos"
    assert [e["title"] for e in r["grub-menu"]][:2] == ["Test OS", "Test OS (recovery)"]
    assert r["services-enabled"] == ["getty@.service", "hello.service"]


# --- the same disk in other formats, compressed, and a bare file system --------------------


@needs_root
@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vdi", "vpc"])
def test_image_formats(fmt: str, bios: dict, bios_report: dict, tmp_path: Path) -> None:
    image = tmp_path / f"disk.{fmt}"
    options = ["-o", "compat=1.1"] if fmt == "qcow2" else []
    subprocess.run(["qemu-img", "convert", "-O", fmt, *options, str(bios["image"]), str(image)],
                   check=True)
    r = report_of(image, tmp_path)
    assert r["image-format"]["type"] == fmt
    if fmt == "qcow2":
        assert r["image-format"]["compat"] == "1.1"
    without_format = {k: v for k, v in r.items() if k != "image-format"}
    assert without_format == {k: v for k, v in bios_report.items() if k != "image-format"}


@needs_root
def test_compressed_raw_image(bios: dict, bios_report: dict, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw.xz"
    with open(image, "wb") as out:
        subprocess.run(["xz", "-c", "-T0", str(bios["image"])], stdout=out, check=True)
    r = report_of(image, tmp_path)
    assert r["image-format"]["type"] == "raw"
    assert r["image-format"]["compression"] == "xz"
    assert r["grub2-bios"] == bios_report["grub2-bios"]
    assert r["partitions"] == bios_report["partitions"]


@needs_root
def test_filesystem_image(bios: dict, bios_report: dict, tmp_path: Path) -> None:
    image = tmp_path / "root.ext4"
    shutil.copyfile(bios["root_fs"], image)
    r = report_of(image, tmp_path)
    assert r["filesystem"] == {"fstype": "ext4", "uuid": mk.ROOT_UUID, "label": "root"}
    assert "partitions" not in r and "grub2-bios" not in r
    assert r["os-release"] == bios_report["os-release"]
    assert r["packages"] == bios_report["packages"]
    # /boot is a partition of the disk this file system came from: not here.
    assert "grub-menu" not in r


@pytest.mark.parametrize("fat_size", ["12", "16", "32"])
def test_bare_fat_image_is_a_file_system(fat_size: str, tmp_path: Path) -> None:
    """A FAT boot sector ends in 0x55AA like an MBR; it is still no partition table."""
    image = tmp_path / "in" / "esp.img"
    image.parent.mkdir()
    mk.run("truncate", "-s", "40M", str(image))
    mk.run("mkfs.fat", "-F", fat_size, "-i", mk.ESP_VOLID, "-n", "ESP", str(image))
    r = report_of(image, tmp_path)
    assert r["filesystem"] == {"fstype": "vfat", "uuid": mk.ESP_UUID, "label": "ESP"}
    assert not {"partition-table", "partition-table-id", "partitions"} & set(r)
    assert r["bootloader"] == "unknown" and "esp" not in r
    # vfat cannot be mounted here: no tree keys, but no error either.
    assert tree_keys(r) == {}


def test_empty_dos_table_stays_a_partition_table(tmp_path: Path) -> None:
    """The other side of the FAT check: a dos label without partitions is still a table."""
    image = tmp_path / "in" / "empty.img"
    image.parent.mkdir()
    mk.run("truncate", "-s", "8M", str(image))
    mk.run("sfdisk", "-q", str(image), stdin=f"label: dos\nlabel-id: {mk.DOS_ID}\n")
    r = report_of(image, tmp_path)
    assert (r["partition-table"], r["partition-table-id"], r["partitions"]) == \
        ("dos", mk.DOS_ID, [])
    assert "filesystem" not in r


def tree_without_os_release(root: Path) -> None:
    """What a /boot or a tree in the making holds: configuration, but no os-release."""
    mk.write(root, "etc/hostname", "bare\n")
    mk.write(root, "etc/fstab", f"UUID={mk.ROOT_UUID} / ext4 defaults 0 1\n")
    mk.write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    mk.write(root, "etc/kernel/cmdline", f"root=UUID={mk.ROOT_UUID}  ro\n")
    mk.link(root, "etc/localtime", "/usr/share/zoneinfo/Europe/Berlin")


@needs_root
@pytest.mark.parametrize("fstype", ["ext4", "btrfs"])
def test_filesystem_image_without_os_release(fstype: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree_without_os_release(tree)
    image = tmp_path / "in" / f"root.{fstype}"
    image.parent.mkdir()
    mk.run("truncate", "-s", "128M", str(image))
    if fstype == "ext4":
        mk.run("mkfs.ext4", "-q", "-U", mk.ROOT_UUID, "-d", str(tree), str(image))
    else:
        mk.run("mkfs.btrfs", "-q", "-U", mk.ROOT_UUID, "--rootdir", str(tree), str(image))
    r = report_of(image, tmp_path)
    assert r["filesystem"]["fstype"] == fstype
    assert tree_keys(r) == {
        "hostname": "bare",
        "fstab": [[f"UUID={mk.ROOT_UUID}", "/", "ext4", "defaults", "0", "1"]],
        "passwd": ["root:x:0:0:root:/root:/bin/sh"],
        "kernel-cmdline": f"root=UUID={mk.ROOT_UUID} ro",
        "timezone": "Europe/Berlin",
    }


@needs_root
def test_partition_without_os_release_is_not_taken_for_the_root(tmp_path: Path) -> None:
    """On a partitioned disk os-release still picks the root: a data partition is no tree."""
    tree = tmp_path / "tree"
    tree_without_os_release(tree)
    fs = tmp_path / "data.ext4"
    mk.run("mkfs.ext4", "-q", "-U", mk.ROOT_UUID, "-d", str(tree), str(fs), "8M")
    image = tmp_path / "in" / "disk.img"
    image.parent.mkdir()
    mk.run("truncate", "-s", "10M", str(image))
    mk.run("sfdisk", "-q", str(image), stdin="label: dos\nstart=2048, type=83\n")
    mk.place(image, fs, mk.MIB)
    r = report_of(image, tmp_path)
    assert r["partitions"][0]["fstype"] == "ext4"
    assert tree_keys(r) == {}


# --- trees: a directory and tarballs ------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    mk.populate_tree(root)
    return root


def test_directory(tree: Path, tmp_path: Path) -> None:
    r = report_of(tree, tmp_path)
    assert "image-format" not in r and "partitions" not in r
    assert r["os-release"]["ID"] == "testos"  # not the host's, despite the absolute link
    assert "kernel-cmdline" not in r  # the `..` link does not reach the host's /proc
    assert r["services-enabled"] == ["getty@.service", "hello.service"]
    assert [e["id"] for e in r["bootmenu"]] == ["y-6.1.0-10", "z-6.1.0-10~rc1", "x-6.1.0-9"]
    assert len(r["grub-menu"]) == 3
    if "security.selinux" in os.listxattr(tree / "etc/hostname"):
        assert r["selinux"]["labels"] == {"/etc/hostname": mk.SELINUX_LABEL}


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_tarball(compression: str | None, tree: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "out" / f"rootfs.tar{'.' + compression if compression else ''}"
    tarball.parent.mkdir()
    cmd = ["tar", "--numeric-owner", "--selinux", "-C", str(tree), "-cf", str(tarball)]
    if compression:
        cmd.insert(1, f"--use-compress-program={compression}")
    subprocess.run([*cmd, "."], check=True)
    from_tar = report_of(tarball, tmp_path)
    from_dir = report_of(tree, tmp_path)
    assert from_tar == from_dir
    assert from_tar["packages"][0]["name"] == "base-files"


def test_tarball_member_cannot_escape(tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    (evil / "etc").mkdir(parents=True)
    (evil / "etc/os-release").write_text("ID=evil\n")
    # etc/escape -> / (a link), then etc/escape/<name> written through it.
    tarball = tmp_path / "out" / "evil.tar"
    tarball.parent.mkdir()
    target = tmp_path / "victim"
    target.mkdir()
    (evil / "etc/escape").symlink_to(target)
    subprocess.run(["tar", "-C", str(evil), "-cf", str(tarball), "etc"], check=True)
    (evil / "etc/escape").unlink()
    (evil / "etc/escape").mkdir()
    (evil / "etc/escape/owned").write_text("x")
    subprocess.run(["tar", "-C", str(evil), "-rf", str(tarball), "etc/escape/owned"], check=True)
    r = report_of(tarball, tmp_path)
    assert r["os-release"] == {"ID": "evil"}
    assert list(target.iterdir()) == []


# --- errors and cleanup ------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "text", "empty-qcow2", "fake-gzip"])
def test_errors_are_one_line(case: str, tmp_path: Path) -> None:
    target = tmp_path / "in" / "thing"
    target.parent.mkdir()
    if case == "text":
        target.write_text("hello, not an image\n" * 100)
    elif case == "empty-qcow2":
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), "64M"],
                       check=True)
    elif case == "fake-gzip":
        target.write_bytes(b"\x1f\x8b" + b"garbage" * 100)  # looks gzip, is not
    proc = image_info(target, tmp_path, "--backend", "loop" if os.geteuid() == 0 else "auto",
                      check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("image-info: error: ")
    assert str(target) in lines[0]


def test_bad_backend_is_a_usage_error(tmp_path: Path) -> None:
    proc = image_info(tmp_path, tmp_path, "--backend", "nbd", check=False)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def _interrupt_when(condition, image: Path, scratch: Path) -> bool:
    """Run image-info, SIGTERM it as soon as `condition(scratch)` holds; True if it did.

    Whatever the moment, the run must end cleanly and leave nothing behind.
    """
    proc = subprocess.Popen([sys.executable, "-m", "osbuild.image_info", str(image)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    hit = False
    while proc.poll() is None:
        if condition(scratch):
            proc.send_signal(signal.SIGTERM)
            hit = True
            break
        time.sleep(0.001)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    assert_nothing_left(scratch, image.parent)
    return hit


def _converting(scratch: Path) -> bool:
    return any(scratch.glob("image-info-*/image.raw"))


def _mounted(scratch: Path) -> bool:
    return any(m.startswith(str(scratch)) for m in mount_points())


@needs_root
@pytest.mark.parametrize("phase", [_converting, _mounted], ids=["converting", "mounted"])
def test_sigterm_leaves_nothing_behind(phase, uefi: dict, tmp_path: Path) -> None:
    image = tmp_path / "disk" / "uefi.qcow2"
    image.parent.mkdir()
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(uefi["image"]), str(image)],
                   check=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    hits = sum(_interrupt_when(phase, image, scratch) for _ in range(5))
    assert hits >= 1, "never caught the run in that phase"


def test_console_script() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("image-info") == "osbuild.image_info.cli:main"


# --- pieces: version order, chroot-like reads ------------------------------------------------


@pytest.mark.parametrize("a, b, expected", [
    ("1.0", "1.0", 0), ("1.0", "2.0", -1), ("2.0.1", "2.0", 1), ("1.10", "1.9", 1),
    ("1.0a", "1.0", 1), ("1.0", "1.0a", -1), ("1.a", "1.1", -1), ("1.001", "1.1", 0),
    ("1.0~rc1", "1.0", -1), ("1.0~rc1", "1.0~rc2", -1), ("1.0~~", "1.0~", -1),
    ("1.0^", "1.0", 1), ("1.0^git1", "1.0.1", -1), ("1.0^git1", "1.0^git2", -1),
    ("1.0^", "1.0^git1", -1), ("1.0_1", "1.0.1", 0), ("6.1.0-10", "6.1.0-9", 1),
    ("a", "1", -1), ("5.14.0-70.el9", "5.14.0-162.el9", -1), ("", "1", -1), ("1", "", 1),
])
def test_rpmvercmp(a: str, b: str, expected: int) -> None:
    assert rpmvercmp(a, b) == expected
    assert rpmvercmp(b, a) == -expected


def test_evrcmp_epoch_first() -> None:
    assert evrcmp("1:1.0", "2.0") == 1
    assert evrcmp("0:2.0", "2.0") == 0
    assert evrcmp("1:1.0-1", "1:1.0-2") == -1


def test_tree_resolution_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/real").write_text("inside")
    (root / "etc/abs").symlink_to("/etc/real")
    (root / "etc/up").symlink_to("../../../../etc/real")
    (root / "etc/loop1").symlink_to("loop2")
    (root / "etc/loop2").symlink_to("loop1")
    (root / "etc/host").symlink_to("/proc/self/environ")
    (root / "etc/fifo-ish").symlink_to("/dev/zero")
    view = Tree(root)
    assert view.read_text("etc/abs") == "inside"
    assert view.read_text("/etc/up") == "inside"
    assert view.read_text("etc/loop1") is None
    assert view.read_text("etc/host") is None
    assert view.read_text("etc/fifo-ish") is None
    assert view.readlink("etc/abs") == "/etc/real"
    assert view.resolve("etc/../../..") == root


def test_a_directory_where_a_file_belongs_is_no_file(tmp_path: Path) -> None:
    """/etc/hostname as a directory: no hostname, no failure, no crash; the same for a
    FIFO, and a link is not read where links are not followed."""
    root = tmp_path / "root"
    (root / "etc/hostname").mkdir(parents=True)
    os.mkfifo(root / "etc/fifo")
    (root / "etc/real").write_bytes(b"\x7fELF and more")
    (root / "etc/link").symlink_to("real")
    view = Tree(root)
    assert view.read_text("etc/hostname") is None and view.read_text("etc/fifo") is None
    assert view.read_bytes("etc/real", 4, follow=False) == b"\x7fELF"
    assert view.read_bytes("etc/link", 4) == b"\x7fELF"
    assert view.read_bytes("etc/link", 4, follow=False) is None
    assert view.failures == []
    report = report_of(root, tmp_path)
    assert "hostname" not in report and "errors" not in report, report.get("errors")


# --- libguestfs and the real sample ------------------------------------------------------


class GuestfsEnv:
    """backend_guestfs's environment for the appliance, with a chosen KVM probe result."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        from osbuild.image_info import backend_guestfs

        self.module = backend_guestfs
        self.monkeypatch = monkeypatch
        self.probes: list[str] = []
        for name in ("LIBGUESTFS_BACKEND", "LIBGUESTFS_BACKEND_SETTINGS", "OSBUILD_BOOT_ACCEL"):
            monkeypatch.delenv(name, raising=False)

    def __call__(self, kvm: bool, machine: str = "x86_64") -> dict[str, str]:
        from osbuild import accel

        def probe() -> accel.Accel:
            self.probes.append(machine)
            return accel.KVM if kvm else accel.TCG

        self.monkeypatch.setattr(self.module.accel, "probe", probe)
        self.monkeypatch.setattr(self.module.platform, "machine", lambda: machine)
        return self.module._environment(Path("/scratch"))


@pytest.fixture
def guestfs_env(monkeypatch: pytest.MonkeyPatch) -> GuestfsEnv:
    return GuestfsEnv(monkeypatch)


def test_guestfs_uses_tcg_unless_the_kvm_probe_passes(guestfs_env: GuestfsEnv) -> None:
    env = guestfs_env(kvm=False)
    assert env["LIBGUESTFS_BACKEND"] == "direct"
    assert env["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg"
    assert env["LIBGUESTFS_TMPDIR"] == "/scratch"
    assert "LIBGUESTFS_BACKEND_SETTINGS" not in guestfs_env(kvm=True)
    assert guestfs_env.probes == ["x86_64", "x86_64"]


def test_guestfs_own_settings_skip_the_probe(guestfs_env: GuestfsEnv,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBGUESTFS_BACKEND_SETTINGS", "force_kvm")
    assert guestfs_env(kvm=False)["LIBGUESTFS_BACKEND_SETTINGS"] == "force_kvm"
    assert guestfs_env.probes == []


def test_guestfs_off_x86_uses_kvm_only_when_asked(guestfs_env: GuestfsEnv,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert guestfs_env(kvm=True, machine="aarch64")["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg"
    monkeypatch.setenv("OSBUILD_BOOT_ACCEL", "kvm")
    assert "LIBGUESTFS_BACKEND_SETTINGS" not in guestfs_env(kvm=False, machine="aarch64")
    assert guestfs_env.probes == []


def test_guestfs_probe_honours_osbuild_boot_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real probe, with its override: no qemu is started for either answer."""
    from osbuild import accel
    from osbuild.image_info import backend_guestfs

    monkeypatch.delenv("LIBGUESTFS_BACKEND_SETTINGS", raising=False)
    monkeypatch.setattr(backend_guestfs.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(accel, "kvm_runs_kernel", lambda *a: pytest.fail("probed"))
    for wanted, settings in (("tcg", "force_tcg"), ("kvm", None)):
        monkeypatch.setenv("OSBUILD_BOOT_ACCEL", wanted)
        accel.probe.cache_clear()
        env = backend_guestfs._environment(Path("/scratch"))
        assert env.get("LIBGUESTFS_BACKEND_SETTINGS") == settings
    accel.probe.cache_clear()


@pytest.mark.slow
@needs_guestfs
def test_guestfs_backend_matches_loop(bios: dict, tmp_path: Path) -> None:
    guestfs = report_of(bios["image"], tmp_path, "--backend", "guestfs")
    if os.geteuid() != 0:
        assert guestfs["os-release"]["ID"] == "testos"
        return
    loop = report_of(bios["image"], tmp_path, "--backend", "loop")
    assert guestfs == loop


@pytest.mark.slow
@needs_root
@needs_guestfs
def test_rootless_run_uses_guestfs(uefi: dict, tmp_path: Path) -> None:
    """As an ordinary user (nobody), auto picks libguestfs and reports what root sees."""
    if shutil.which("runuser") is None:
        pytest.skip("runuser is not installed")
    as_root = report_of(uefi["image"], tmp_path)
    # nobody cannot enter pytest's private tmp_path: a world-readable place of our own.
    shared = Path(tempfile.mkdtemp(prefix="image-info-test-", dir="/var/tmp"))
    try:
        shared.chmod(0o755)
        image = shared / "uefi.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(uefi["image"]), str(image)],
                       check=True)
        image.chmod(0o644)
        scratch, cache = shared / "scratch", shared / "cache"
        for directory in (scratch, cache):
            directory.mkdir()
            shutil.chown(directory, "nobody")
        # The system Python: pytest's own may live where nobody cannot read. The
        # appliance cache (~370 MB) goes with the test instead of into /var/tmp.
        cmd = ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={ROOT}",
               f"TMPDIR={scratch}", f"LIBGUESTFS_CACHEDIR={cache}",
               "/usr/bin/python3", "-m", "osbuild.image_info", str(image)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert_nothing_left(scratch, shared)
        as_nobody = json.loads(proc.stdout)
    finally:
        shutil.rmtree(shared)
    assert as_nobody["image-format"]["type"] == "qcow2"
    assert {k: v for k, v in as_nobody.items() if k != "image-format"} == \
        {k: v for k, v in as_root.items() if k != "image-format"}


@pytest.mark.slow
@needs_root
def test_default_sample(default_sample: dict, tmp_path: Path) -> None:
    image = default_sample["image"]
    start = time.monotonic()
    r = report_of(image, tmp_path)
    seconds = time.monotonic() - start
    print(f"image-info on {image.name} ({image.stat().st_size >> 20} MiB qcow2, "
          f"{r['image-format']['virtual-size'] >> 30} GiB virtual): {seconds:.1f} s")
    assert r["image-format"]["type"] == "qcow2"
    assert r["partition-table"] == "dos"
    [root] = r["partitions"]
    assert root["fstype"] == "ext4" and root["bootable"] is True
    assert r["bootloader"] == "grub"
    assert set(r["grub2-bios"]) == {"boot-code", "core-area"}
    assert sha256_len(r["grub2-bios"]["boot-code"]["sha256"])
    assert r["grub2-bios"]["core-area"]["end"] == root["start"]
    kernels = [e for e in r["grub-menu"] if e["linux"] and "vmlinuz-" in e["linux"]]
    assert kernels and all(e["initrd"] and "root=UUID=" in e["options"] for e in kernels)
    names = {p["name"] for p in r["packages"]}
    assert {"linux-image-amd64", "openssh-server", "systemd"} <= names
    assert r["os-release"]["ID"] == "debian"
    assert r["os-release"]["VERSION_ID"] == "13"
    assert "ssh.service" in r["services-enabled"]
    assert r["hostname"] == "debian13"
    assert seconds < 30  # a few seconds alone; generous for a loaded 2-core machine


def sha256_len(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# --- where image-info could not look: "errors", never an empty answer -----------------------


def fat_root_dir(image: Path, start: int) -> int:
    """Where the root directory of the FAT12/16 file system at `start` of `image` begins."""
    with open(image, "rb") as f:
        f.seek(start)
        boot = f.read(512)
    sector = int.from_bytes(boot[11:13], "little")
    reserved, fats = int.from_bytes(boot[14:16], "little"), boot[16]
    return start + (reserved + fats * int.from_bytes(boot[22:24], "little")) * sector


def poke(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def broken_esps(tmp_path: Path) -> Path:
    """Two ESPs: the first with a root directory of no entries (mdir fails on it), the second
    with a file whose first cluster lies past the end (mcopy fails on it) and a good one."""
    image = tmp_path / "in" / "esps.raw"
    image.parent.mkdir()
    mk.run("truncate", "-s", "40M", str(image))
    starts = (1 * mk.MIB, 20 * mk.MIB)
    mk.run("sfdisk", "-q", str(image), stdin="label: gpt\n" + "".join(
        f"start={s // mk.SECTOR}, size={16 * mk.MIB // mk.SECTOR}, type=U\n" for s in starts))
    for start in starts:
        mk.run("mkfs.fat", "-F", "16", "-n", "ESP", "--offset", str(start // mk.SECTOR),
               str(image), str(16 * 1024))
    second = f"{image}@@{starts[1]}"
    for name, text in (("GOOD.TXT", "good\n"), ("BAD.TXT", "bad\n")):
        (tmp_path / name).write_text(text)
        mk.run("env", "MTOOLS_SKIP_CHECK=1", "mcopy", "-i", second, str(tmp_path / name),
               f"::/{name}")
    poke(image, starts[0] + 17, b"\0\0")  # BPB_RootEntCnt: blkid still sees a FAT
    root = fat_root_dir(image, starts[1])
    with open(image, "rb") as f:
        f.seek(root)
        entries = f.read(16 * 32)
    entry = next(i for i in range(0, len(entries), 32) if entries[i:i + 11] == b"BAD     TXT")
    poke(image, root + entry + 26, (0xFFF0).to_bytes(2, "little"))  # its first cluster
    return image


def test_esp_mtools_cannot_read_is_an_error(broken_esps: Path, tmp_path: Path) -> None:
    proc = image_info(broken_esps, tmp_path)
    r = json.loads(proc.stdout)
    assert [p["fstype"] for p in r["partitions"]] == ["vfat", "vfat"]
    # The first ESP is not reported as empty: it is not reported, and the errors say why.
    [esp] = r["esp"]
    assert esp["partition"] == 2
    assert esp["files"] == {"/BAD.TXT": None,
                            "/GOOD.TXT": hashlib.sha256(b"good\n").hexdigest()}
    first, second = r["errors"]
    assert first == {"reader": "esp", "error": 'mdir: File "::/" not found (partition 1)'}
    assert second["reader"] == "esp" and second["error"].endswith("(/BAD.TXT on partition 2)")
    assert second["error"] != "(/BAD.TXT on partition 2)"  # mcopy's own line comes first
    assert proc.stderr.count("image-info: warning: ") == 2


def test_esp_without_mtools_is_an_error(broken_esps: Path, tmp_path: Path) -> None:
    """Not a failure of the whole report, nor an empty ESP: the ESP's error."""
    tools = tmp_path / "bin"  # what reading the disk needs, but mtools
    tools.mkdir()
    for tool in ("qemu-img", "blkid", "sfdisk"):
        found = shutil.which(tool)
        assert found is not None
        (tools / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(tools)}
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", str(broken_esps)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert "esp" not in r
    assert r["errors"] == [
        {"reader": "esp", "error": f"mdir is not installed on this host (partition {n})"}
        for n in (1, 2)]


def test_ambivalent_partition_is_an_error(tmp_path: Path) -> None:
    """Two superblocks in one partition: blkid cannot tell, and the report says so."""
    image, fs, fat = tmp_path / "in" / "disk.raw", tmp_path / "fs.ext4", tmp_path / "fs.fat"
    image.parent.mkdir()
    for path in (image, fs, fat):
        mk.run("truncate", "-s", "24M" if path == image else "16M", str(path))
    mk.run("sfdisk", "-q", str(image), stdin="label: dos\nstart=2048, type=83\n")
    mk.run("mkfs.ext4", "-q", str(fs))
    mk.run("mkfs.fat", "-F", "16", str(fat))
    with open(fat, "rb") as f:
        poke(fs, 0, f.read(512))  # ext4 leaves its first 1024 bytes alone
    mk.place(image, fs, mk.MIB)
    r = report_of(image, tmp_path)
    assert r["partitions"][0]["fstype"] is None
    [error] = r["errors"]
    assert error["reader"] == "partitions"
    assert "ambivalent result" in error["error"] and error["error"].endswith("(partition 1)")


@needs_root
def test_root_that_does_not_mount_is_an_error(tmp_path: Path) -> None:
    """A file system larger than its partition: the kernel refuses it, the report says so."""
    tree, fs, image = tmp_path / "tree", tmp_path / "root.ext4", tmp_path / "in" / "disk.raw"
    mk.write(tree, "etc/os-release", "ID=testos\n")
    image.parent.mkdir()
    mk.run("truncate", "-s", "10M", str(image))
    mk.run("sfdisk", "-q", str(image), stdin="label: dos\nstart=2048, size=16384, type=83\n")
    mk.run("mkfs.ext4", "-q", "-d", str(tree), str(fs), "16M")
    with open(fs, "rb") as src:
        poke(image, mk.MIB, src.read(8 * mk.MIB))
    r = report_of(image, tmp_path)
    assert r["partitions"][0]["fstype"] == "ext4"
    assert "os-release" not in r
    [error] = r["errors"]
    assert error["reader"] == "partitions"
    assert error["error"].endswith("(partition 1: it may have held the tree)")


def test_unreadable_file_is_an_error_not_absent(tmp_path: Path) -> None:
    """As a user who may not read /etc/sudoers: not "no sudoers", but an error."""
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))  # where another user may look
    try:
        base.chmod(0o755)
        tree = base / "tree"
        mk.write(tree, "etc/os-release", "ID=testos\n")
        mk.write(tree, "etc/sudoers", "root ALL=(ALL) ALL\n", 0o440)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "osbuild.image_info", str(tree)], capture_output=True, text=True, cwd=ROOT)
    finally:
        shutil.rmtree(base)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["os-release"] == {"ID": "testos"} and "sudoers" not in r
    assert r["errors"] == [{"reader": "sudoers", "error": "/etc/sudoers: Permission denied"}]


def test_zone_file_that_does_not_parse_is_an_error(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    mk.write(tree, "etc/firewalld/firewalld.conf", "DefaultZone=public\n")
    mk.write(tree, "usr/lib/firewalld/zones/public.xml", "<zone><service name='ssh'>\n")
    r = report_of(tree, tmp_path)
    assert "firewall-enabled" not in r
    [error] = r["errors"]
    assert error["reader"] == "firewall-enabled"
    assert error["error"].startswith("/usr/lib/firewalld/zones/public.xml: ")


@needs_root
def test_an_unreadable_zone_file_names_the_key_it_keeps_out() -> None:
    """The same reader name whether a zone file cannot be parsed or cannot be read."""
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))  # where another user may look
    try:
        base.chmod(0o755)
        tree = base / "tree"
        mk.write(tree, "etc/firewalld/firewalld.conf", "DefaultZone=public\n")
        mk.write(tree, "etc/firewalld/zones/public.xml", "<zone/>\n", 0o600)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "osbuild.image_info", str(tree)], capture_output=True, text=True, cwd=ROOT)
    finally:
        shutil.rmtree(base)
    r = json.loads(proc.stdout)
    assert "firewall-enabled" not in r
    assert r["errors"] == [{"reader": "firewall-enabled",
                            "error": "/etc/firewalld/zones/public.xml: Permission denied"}]


@needs_root
def test_tarball_that_does_not_fit_is_an_error(tmp_path: Path) -> None:
    """Scratch space that runs out while unpacking: not a tree with files missing."""
    tree, tarball, scratch = tmp_path / "tree", tmp_path / "in" / "tree.tar", tmp_path / "tmp"
    mk.write(tree, "etc/os-release", "ID=testos\n")
    (tree / "etc/big").write_bytes(os.urandom(512 * 1024))
    tarball.parent.mkdir()
    scratch.mkdir()
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tarball), "."], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(scratch)],
                   check=True)
    try:
        proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", str(tarball)],
                              capture_output=True, text=True, env={**os.environ,
                                                                   "TMPDIR": str(scratch)})
        assert list(scratch.iterdir()) == []
    finally:
        subprocess.run(["umount", str(scratch)], check=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"image-info: error: {tarball}: cannot extract /etc/big: " \
        "No space left on device\n"
