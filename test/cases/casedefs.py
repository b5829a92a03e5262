"""What each golden case builds: one shared base tree, then the stage under test.

`tools/gen-golden --manifests` writes every case directory's a.json and
b.json (or a.mpp.json/b.mpp.json templates, pinned when the case runs) and
case.json from here; test_meta.py checks the committed files still match, so
this file and the case directories cannot drift apart.

The base tree is made only from real stages (mkdir, copy from
org.osbuild.inline sources, ln, chmod, chown) and the files under
test/cases/base/, never from the Debian archive: pinned pool files vanish at
point releases, and a base that changed with the archive would make every
golden flaky. Stages that need tools (useradd, systemctl, grub-mkimage,
mkfs.*) take them from the host, which is the build root of every case.
Only the cases marked network (debs, mmdebstrap, debconf, which needs
debconf in the tree) use the archive; their goldens compare package names,
what dpkg says that point releases do not move (casekit.dpkg_view) and the
debconf answers (casekit.debconf_view), not versions or file contents.
"""

import base64
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASE_FILES = HERE / "base"
sys.path.insert(0, str(HERE.parent))

from elfprog import exit_program  # noqa: E402
from matrix import CELLS, DEFAULT_CELL, Cell  # noqa: E402

# 2025-01-01T00:00:00Z: every pipeline's source-epoch, so timestamps (shadow's
# last-change day, mkfs clocks, tar headers) are the same on every run.
EPOCH = 1735689600
MIRROR = "http://mirror.example/debian"  # casekit.MIRROR_PLACEHOLDER: the host's mirror at run time
SUITE = "trixie"

# Directories git cannot hold (empty ones) and modes that differ from 0755/0644.
BASE_DIRS = {
    "/root": 0o700, "/home": 0o755, "/tmp": 0o1777, "/var": 0o755, "/var/tmp": 0o1777,
    "/var/lib": 0o755, "/var/cache": 0o755, "/var/log": 0o755, "/srv": 0o755,
    "/usr/bin": 0o755, "/usr/sbin": 0o755, "/etc/default": 0o755,
    "/etc/apt/apt.conf.d": 0o755, "/etc/apt/sources.list.d": 0o755,
    "/etc/systemd/system/multi-user.target.wants": 0o755,
}
BASE_FILE_MODES = {"/etc/shadow": "0640", "/etc/gshadow": "0640"}
BASE_LINKS = {
    "/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib",
    "/etc/os-release": "../usr/lib/os-release",
    "/etc/localtime": "/usr/share/zoneinfo/Etc/UTC",
    "/usr/share/zoneinfo/UTC": "Etc/UTC",
    "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service":
        "/usr/lib/systemd/system/systemd-networkd.service",
}

ROOT_UUID = "6e4ff95f-f662-45ee-a82a-bdf44a2d0b75"
DOS_DISK_ID = "0x14fc63d2"
GPT_DISK_ID = "d209c89e-ea5e-4a8a-9cd7-1e6a03de2d27"
SECTOR = 512
MiB = 1024 * 1024
HASH_ALICE = ("$6$saltsalt$Q1bpxd0WMhNZAGE9O8VFMZZdhSsa0Rs9kvTKHsqN/8cxgX8V0Pqq1lUHaGpTbM6D"
              "u9pUUa9l3")
KEY_ALICE = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0lq8OQ5Cd3CzXyHJfLDWa8nTYZOsEz8tmQTLMi0d3h "
             "alice@example")


def stage(name: str, options: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A v2 stage; `extra` carries inputs, devices and mounts."""
    return {"type": f"org.osbuild.{name}", "options": options or {}, **extra}


def loop(filename: str, start: int = 0, size: int | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {"filename": filename, "start": start}
    if size is not None:
        options["size"] = size
    return {"type": "org.osbuild.loopback", "options": options}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def inline(data: bytes) -> dict[str, Any]:
    return {"encoding": "base64", "data": base64.b64encode(data).decode("ascii")}


# -- the base tree ---------------------------------------------------------------


def base_files(cell: Cell | None = None) -> dict[str, bytes]:
    """Every file under test/cases/base, as tree path -> content; for another cell
    than the default, made to look like that cell's tree (see cell_files)."""
    files = {}
    for dirpath, _, filenames in os.walk(BASE_FILES):
        for name in filenames:
            host = Path(dirpath) / name
            files["/" + str(host.relative_to(BASE_FILES))] = host.read_bytes()
    if cell is not None and cell.name != DEFAULT_CELL:
        files = cell_files(files, cell)
    return dict(sorted(files.items()))


# The base's fake kernel, and each release's kernel version for the cells' bases.
BASE_KERNEL = "6.12.27-amd64"
KERNEL_VERSIONS = {"bookworm": "6.1.0-37", "trixie": "6.12.27"}
RELEASES = {"bookworm": ("12", "12.11"), "trixie": ("13", "13.0")}


def cell_files(files: dict[str, bytes], cell: Cell) -> dict[str, bytes]:
    """The base as a tree of `cell`: its release in os-release, its kernel (riscv64's
    uncompressed, as Debian ships it), dpkg's architecture, and for a foreign cell an
    /etc/init.d twin of ssh.service with an update-rc.d of the cell's architecture,
    which systemctl runs in the tree (through qemu-user)."""
    files = dict(files)
    version = f"{KERNEL_VERSIONS[cell.suite]}-{cell.architecture}"
    image = "vmlinux" if cell.architecture == "riscv64" else "vmlinuz"
    kernel = files.pop(f"/boot/vmlinuz-{BASE_KERNEL}")
    initrd = files.pop(f"/boot/initrd.img-{BASE_KERNEL}")
    files[f"/boot/{image}-{version}"] = kernel
    files[f"/boot/initrd.img-{version}"] = initrd
    number, full = RELEASES[cell.suite]
    files["/usr/lib/os-release"] = files["/usr/lib/os-release"].replace(
        b'"13 (trixie)"', f'"{number} ({cell.suite})"'.encode()).replace(
        b"(trixie)", f"({cell.suite})".encode()).replace(
        b'VERSION_ID="13"', f'VERSION_ID="{number}"'.encode()).replace(
        b"VERSION_CODENAME=trixie", f"VERSION_CODENAME={cell.suite}".encode()).replace(
        b"DEBIAN_VERSION_FULL=13.0", f"DEBIAN_VERSION_FULL={full}".encode())
    files["/var/lib/dpkg/arch-native"] = f"{cell.architecture}\n".encode()
    files["/var/lib/dpkg/arch"] = f"{cell.architecture}\n".encode()
    if cell.architecture != CELLS[DEFAULT_CELL].architecture:
        files["/usr/sbin/update-rc.d"] = exit_program(cell.architecture, 0)
        files["/etc/init.d/ssh"] = b"#!/bin/sh\n# the SysV twin of ssh.service\n"
    return files


def base_directories(files: dict[str, bytes]) -> dict[str, int]:
    dirs = dict(BASE_DIRS)
    for path in files:
        parent = os.path.dirname(path)
        while parent != "/":
            dirs.setdefault(parent, 0o755)
            parent = os.path.dirname(parent)
    return dict(sorted(dirs.items()))


def executable(data: bytes) -> bool:
    return data.startswith((b"#!", b"\x7fELF"))


def base(cell: Cell | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The base stages (of `cell`'s tree, default: the default cell's) and the
    inline source items they copy from."""
    files = base_files(cell)
    modes = dict(BASE_FILE_MODES)
    modes.update({path: "0755" for path, data in files.items() if executable(data)})
    items = {sha256(data): inline(data) for data in files.values()}
    references: dict[str, dict[str, Any]] = {checksum: {} for checksum in sorted(items)}
    stages = [
        stage("mkdir", {"paths": [{"path": path, "mode": mode, "parents": True}
                                  for path, mode in base_directories(files).items()]}),
        stage("copy", {"paths": [{"from": f"input://files/{sha256(data)}", "to": f"tree://{path}"}
                                 for path, data in files.items()]},
              inputs={"files": {"type": "org.osbuild.files", "origin": "org.osbuild.source",
                                "references": references}}),
        stage("ln", {"paths": [{"target": target, "link_name": link, "symbolic": True}
                               for link, target in BASE_LINKS.items()]}),
        stage("chmod", {"items": {path: {"mode": mode} for path, mode in modes.items()}}),
        stage("chown", {"items": {path: {"group": 42} for path in BASE_FILE_MODES}}),
    ]
    return stages, {"org.osbuild.inline": {"items": dict(sorted(items.items()))}}


def v2(pipelines: list[dict[str, Any]], sources: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest: dict[str, Any] = {"version": "2", "pipelines": pipelines}
    if sources:
        manifest["sources"] = sources
    return manifest


def tree_pipeline(stages: list[dict[str, Any]], name: str = "tree") -> dict[str, Any]:
    return {"name": name, "source-epoch": EPOCH, "stages": stages}


def merge_sources(*docs: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for doc in docs:
        for kind, body in doc.items():
            merged.setdefault(kind, {"items": {}})["items"].update(body["items"])
    for body in merged.values():
        body["items"] = dict(sorted(body["items"].items()))
    return merged


# -- disk helpers ----------------------------------------------------------------

def dos_disk(size_mib: int) -> list[dict[str, Any]]:
    """A sparse disk.img with one bootable Linux partition from 1 MiB to the end."""
    return [
        stage("truncate", {"filename": "disk.img", "size": f"{size_mib}M"}),
        stage("sfdisk", {"label": "dos", "uuid": DOS_DISK_ID,
                         "partitions": [{"start": 2048, "size": part_sectors(size_mib),
                                         "type": "83", "bootable": True}]},
              devices={"device": loop("disk.img")}),
    ]


def part_sectors(size_mib: int) -> int:
    return (size_mib - 1) * MiB // SECTOR


def partition(size_mib: int) -> dict[str, Any]:
    return {"device": loop("disk.img", 2048, part_sectors(size_mib))}


# -- the cases -------------------------------------------------------------------
# Each case: `before` (stages after the base, in a and b), `stages` (only in b),
# optional `pipelines` (b's pipelines before "tree"), `config` (case.json extras:
# network, volatile, image). A case builds a and b, exports "tree" and diffs.

USERS = {
    "alice": {"uid": 1000, "groups": ["sudo", "users"], "description": "Alice Example",
              "home": "/home/alice", "shell": "/bin/bash", "password": HASH_ALICE,
              "key": KEY_ALICE},
    "root": {"password": "$6$rootsalt$8tfz5H3Xn.7J2vGJ8jlm9V0cYhZmXqJxT1mR1a7wq8g7fX5wYH0eP4"
                         "rjQ2yM0n7Q1A9u1t2xVvN8vJ0rJ7c8K/"},
}

IMAGE_PIPELINE = {"name": "image", "source-epoch": EPOCH, "stages": dos_disk(16)}


def stage_cases() -> dict[str, dict[str, Any]]:
    """Stage name -> case spec."""
    ext4_disk = [*dos_disk(64), stage("mkfs.ext4", {"uuid": ROOT_UUID, "label": "root"},
                                      devices=partition(64))]
    motd = b"Welcome to the golden image.\n"
    return {
        "org.osbuild.apt.config": {"stages": [stage("apt.config", {
            "filename": "99norecommends",
            "config": {"APT": {"Install-Recommends": False, "Install-Suggests": False},
                       "Acquire": {"Languages": ["none"], "Retries": 3}}})]},
        "org.osbuild.apt.sources": {"stages": [stage("apt.sources", {"sources": [
            {"uris": [MIRROR], "suites": [SUITE, f"{SUITE}-updates"], "components": ["main"],
             "signed_by": "/usr/share/keyrings/debian-archive-keyring.gpg"},
            {"types": ["deb"], "uris": ["http://mirror.example/debian-security"],
             "suites": [f"{SUITE}-security"], "components": ["main", "contrib"],
             "enabled": False}]})]},
        "org.osbuild.chmod": {"stages": [stage("chmod", {"items": {
            "/etc/hostname": {"mode": "0600"},
            "/usr/lib/systemd": {"mode": "go-rx", "recursive": True}}})]},
        "org.osbuild.chown": {"stages": [stage("chown", {"items": {
            "/etc/hostname": {"user": 1, "group": "adm"},
            "/usr/share/zoneinfo": {"user": "daemon", "recursive": True}}})]},
        "org.osbuild.copy": {
            "stages": [stage("copy", {"paths": [
                {"from": f"input://motd/{sha256(motd)}", "to": "tree:///etc/motd"},
                {"from": "tree:///etc/hostname", "to": "tree:///etc/hostname.orig"},
                {"from": "tree:///usr/share/zoneinfo/", "to": "tree:///srv/"},
                {"from": "tree:///etc/hosts", "to": "tree:///etc/localtime",
                 "remove_destination": True}]},
                inputs={"motd": {"type": "org.osbuild.files", "origin": "org.osbuild.source",
                                 "references": {sha256(motd): {}}}})],
            "sources": {"org.osbuild.inline": {"items": {sha256(motd): inline(motd)}}}},
        # b fails (failure.json): the record is osbuild's one-line error and that the
        # failed stage committed and exported nothing.
        "org.osbuild.error": {"stages": [stage("error", {"returncode": 3})]},
        "org.osbuild.fstab": {"stages": [stage("fstab", {"filesystems": [
            {"uuid": ROOT_UUID, "vfs_type": "ext4", "path": "/", "options": "errors=remount-ro",
             "passno": 1},
            {"uuid": "7B77-95E7", "vfs_type": "vfat", "path": "/boot/efi", "options": "umask=0077",
             "passno": 2},
            {"label": "swap", "vfs_type": "swap", "path": "none", "options": "sw"},
            {"device": "tmpfs", "vfs_type": "tmpfs", "path": "/tmp", "options": "mode=1777"}]})]},
        "org.osbuild.groups": {"stages": [stage("groups", {"groups": {
            "docker": {"gid": 990}, "developers": {}}})]},
        "org.osbuild.grub2": {"stages": [stage("grub2", {
            "rootfs": {"uuid": ROOT_UUID}, "kernel_opts": "console=ttyS0,115200n8 quiet",
            "uefi": {"vendor": "debian"},
            "config": {"timeout": 3, "serial": "serial --unit=0 --speed=115200",
                       "terminal": ["serial", "console"]}})]},
        "org.osbuild.grub2.inst": {
            "before": ext4_disk,
            "stages": [stage("grub2.inst", {
                "filename": "disk.img", "platform": "i386-pc",
                "core": {"type": "mkimage", "partlabel": "dos", "filesystem": "ext4"},
                "prefix": {"type": "partition", "partlabel": "dos", "number": 0,
                           "path": "/boot/grub"}})],
            "config": {"image": "disk.img"}},
        "org.osbuild.hostname": {"stages": [stage("hostname", {"hostname": "golden"})]},
        "org.osbuild.kernel-cmdline": {"stages": [stage("kernel-cmdline", {
            "root_fs_uuid": ROOT_UUID, "kernel_opts": "ro console=ttyS0"})]},
        "org.osbuild.keymap": {"stages": [stage("keymap", {
            "keymap": "de-latin1", "font": "eurlatgr",
            "x11-keymap": {"layouts": ["de", "us"], "options": ["grp:alt_shift_toggle"]}})]},
        "org.osbuild.ln": {"stages": [stage("ln", {"paths": [
            {"target": "/usr/share/zoneinfo/Europe/Berlin", "link_name": "/srv/berlin",
             "symbolic": True},
            {"target": "/etc/hosts", "link_name": "/etc/hosts.hardlink"}]})]},
        "org.osbuild.locale": {"stages": [stage("locale", {"language": "en_US.UTF-8"})]},
        "org.osbuild.machine-id": {"stages": [stage("machine-id", {"first-boot": "yes"})]},
        "org.osbuild.mkdir": {"stages": [stage("mkdir", {"paths": [
            {"path": "/srv/data/cache", "mode": 0o750, "parents": True},
            {"path": "/etc/default", "exist_ok": True},
            {"path": "tree:///opt", "mode": 0o700}]})]},
        "org.osbuild.mkfs.btrfs": {
            "before": dos_disk(256),
            "stages": [stage("mkfs.btrfs", {"uuid": ROOT_UUID, "label": "root"},
                             devices=partition(256))],
            # mkfs.btrfs picks internal UUIDs and the time itself.
            "config": {"image": "disk.img",
                       "volatile": {"diff.json": [["differences", "/disk.img", "content"]]}}},
        "org.osbuild.mkfs.ext4": {
            "before": dos_disk(64),
            "stages": [stage("mkfs.ext4", {"uuid": ROOT_UUID, "label": "root"},
                             devices=partition(64))],
            "config": {"image": "disk.img"}},
        "org.osbuild.mkfs.fat": {
            "before": dos_disk(64),
            "stages": [stage("mkfs.fat", {"volid": "7b7795e7", "label": "ESP", "fat-size": 16},
                             devices=partition(64))],
            "config": {"image": "disk.img"}},
        "org.osbuild.mkfs.xfs": {
            "before": dos_disk(320),
            "stages": [stage("mkfs.xfs", {"uuid": ROOT_UUID, "label": "root"},
                             devices=partition(320))],
            # mkfs.xfs cannot be told which time to write.
            "config": {"image": "disk.img",
                       "volatile": {"diff.json": [["differences", "/disk.img", "content"]]}}},
        "org.osbuild.modprobe": {"stages": [stage("modprobe", {
            "filename": "golden.conf",
            "commands": [
                {"command": "blacklist", "modulename": "floppy"},
                {"command": "install", "modulename": "cramfs", "cmdline": "/bin/false"}]})]},
        "org.osbuild.mtools.copy": {
            "before": [stage("truncate", {"filename": "esp.img", "size": "32M"}),
                       stage("mkfs.fat", {"volid": "7b7795e7", "label": "ESP"},
                             devices={"device": loop("esp.img")})],
            "stages": [stage("mtools.copy", {"filename": "esp.img", "paths": [
                {"from": "tree:///boot/", "to": "/EFI/debian"},
                {"from": "tree:///etc/hostname", "to": "/hostname.txt"}]})],
            "config": {"image": "esp.img"}},
        "org.osbuild.noop": {"stages": [stage("noop")]},
        "org.osbuild.qemu": {
            "pipelines": [IMAGE_PIPELINE],
            "stages": [stage("qemu", {"filename": "disk.qcow2", "format": {"type": "qcow2"}},
                             inputs={"image": {"type": "org.osbuild.files",
                                               "origin": "org.osbuild.pipeline",
                                               "references": {"name:image": {
                                                   "file": "disk.img"}}}})],
            "config": {"image": "disk.qcow2"}},
        "org.osbuild.remove": {"stages": [stage("remove", {
            "paths": ["/etc/fstab", "/usr/share/zoneinfo/Europe", "/etc/nonexistent"],
            "recursive": True, "missing_ok": True})]},
        "org.osbuild.sfdisk": {
            "before": [stage("truncate", {"filename": "disk.img", "size": "64M"})],
            "stages": [stage("sfdisk", {"label": "gpt", "uuid": GPT_DISK_ID, "partitions": [
                {"start": 2048, "size": 2048, "type": "21686148-6449-6E6F-744E-656564454649",
                 "name": "BIOS"},
                {"start": 4096, "size": 40960, "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                 "name": "ESP"},
                {"start": 45056, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                 "uuid": "b3a64b7a-8a8a-4a35-9f3c-6d0c4e5c1d2e", "name": "root"}]},
                devices={"device": loop("disk.img")})],
            "config": {"image": "disk.img"}},
        "org.osbuild.sysctld": {"stages": [stage("sysctld", {"filename": "golden.conf", "config": [
            {"key": "net.ipv4.ip_forward", "value": "1"},
            {"key": "kernel.*", "value": "0"},
            {"key": "-kernel.sysrq"}]})]},
        "org.osbuild.systemd": {"stages": [stage("systemd", {
            "enabled_services": ["ssh.service", "apt-daily.timer", "serial-getty@ttyS0.service"],
            "disabled_services": ["systemd-networkd.service"],
            "masked_services": ["getty@tty1.service"],
            "masked_generators": ["systemd-gpt-auto-generator"],
            "default_target": "multi-user.target"})]},
        "org.osbuild.systemd.unit": {"stages": [stage("systemd.unit", {
            "unit": "ssh.service", "dropin": "golden.conf",
            "config": {"Unit": {"After": ["network-online.target"]},
                       "Service": {"Restart": "always"}}})]},
        "org.osbuild.tar": {
            "pipelines": [tree_pipeline([], name="os")],  # filled with the base below
            "stages": [stage("tar", {"filename": "rootfs.tar.gz"},
                             inputs={"tree": {"type": "org.osbuild.tree",
                                              "origin": "org.osbuild.pipeline",
                                              "references": ["name:os"]}})],
            "config": {"image": "rootfs.tar.gz"}},
        "org.osbuild.test": {"stages": [stage("test", {
            "script": "/usr/local/bin/golden-check",
            "content": "#!/bin/sh\nsystemctl is-system-running --wait\n"})]},
        "org.osbuild.timezone": {"stages": [stage("timezone", {"zone": "Europe/Berlin"})]},
        "org.osbuild.tmpfilesd": {"stages": [stage("tmpfilesd", {
            "filename": "golden.conf", "config": [
                {"type": "d", "path": "/var/lib/golden", "mode": "0750", "user": "root",
                 "group": "adm"},
                {"type": "L+", "path": "/etc/golden", "argument": "/var/lib/golden"}]})]},
        "org.osbuild.truncate": {"stages": [
            stage("truncate", {"filename": "/var/lib/sparse.img", "size": "1M"}),
            stage("truncate", {"filename": "etc/hostname", "size": 5})]},
        "org.osbuild.users": {"stages": [stage("users", {"users": USERS})]},
        # Network: need the archive (variant essential plus debconf: small and quick).
        "org.osbuild.debs": {
            "empty_a": True,
            "template": [stage("debs", {}, inputs={"packages": PINNED_PACKAGES})],
            "config": NETWORK_CONFIG},
        "org.osbuild.debconf": {
            "template_before": [stage("debs", {}, inputs={"packages": PINNED_PACKAGES})],
            "stages": [stage("debconf", {"selections": [
                {"package": "tzdata", "question": "tzdata/Areas", "type": "select",
                 "value": "Europe"},
                {"package": "golden", "question": "golden/answer", "type": "string",
                 "value": "forty-two"}]})],
            # The debconf database's bytes follow the archive's package versions.
            "config": {"network": True,
                       "volatile": {"diff.json": [["differences", "*", "content"]],
                                    "packages.json": [["packages", "*"]]}}},
        "org.osbuild.mmdebstrap": {
            "empty_a": True,
            "stages": [stage("mmdebstrap", {"suite": SUITE, "mirror": MIRROR,
                                            "variant": "essential"})],
            "config": NETWORK_CONFIG},
    }


# The matrix (test/matrix.py) in the golden cases. A stage runs in other cells
# than the default only when what it does depends on the cell, and CELL_DEPENDENT
# says how (test_cells.py holds each stage to it):
#   "output": what it writes follows the tree's release or architecture, so its
#             cells' goldens are not all the same (the archive cases install
#             that cell's essential set, a foreign one through qemu-user);
#   "foreign-run": it runs a program of the tree's architecture (through
#             qemu-user), and its goldens are the default cell's, once per
#             foreign architecture: the same result by the foreign path.
# A stage that runs only host tools on the tree (users, groups, ...) writes the
# same bytes in every cell and has no cell cases. The others start from the base
# made to look like the cell's tree (cell_files); each cell's case lives in
# <stage>/<cell>/ with goldens of its own.
CELL_DEPENDENT = {
    "org.osbuild.debs": "output",
    "org.osbuild.mmdebstrap": "output",
    "org.osbuild.grub2": "output",  # the kernel's name and the console
    "org.osbuild.systemd": "foreign-run",  # systemctl runs the tree's update-rc.d
}
CELL_CASES = {
    "org.osbuild.debs": ("debian12-amd64", "debian12-arm64", "debian13-arm64",
                         "debian13-riscv64"),
    "org.osbuild.mmdebstrap": ("debian13-arm64",),
    "org.osbuild.grub2": ("debian12-arm64", "debian13-arm64", "debian13-riscv64"),
    "org.osbuild.systemd": ("debian13-arm64", "debian13-riscv64"),
}
CONSOLES = {"amd64": "ttyS0", "arm64": "ttyAMA0", "riscv64": "ttyS0"}


def cell_case(stage_name: str, cell: Cell, spec: dict[str, Any]) -> dict[str, Any]:
    """The default cell's case `spec`, in `cell`."""
    foreign = cell.architecture != CELLS[DEFAULT_CELL].architecture
    spec = {**spec, "cell": cell.name}
    if stage_name == "org.osbuild.debs":
        options = {"architecture": cell.architecture} if foreign else {}
        spec["template"] = [stage("debs", options, inputs={
            "packages": pinned_packages(cell.suite, cell.architecture)})]
    elif stage_name == "org.osbuild.mmdebstrap":
        spec["stages"] = [stage("mmdebstrap", {
            "suite": cell.suite, "mirror": MIRROR, "variant": "essential",
            "architectures": [cell.architecture]})]
    elif stage_name == "org.osbuild.grub2":
        options = dict(spec["stages"][0]["options"])
        options["kernel_opts"] = f"console={CONSOLES[cell.architecture]},115200n8 quiet"
        spec["stages"] = [stage("grub2", options)]
    return spec


def cell_cases(cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """"<stage>[<cell>]" -> spec, for every stage and cell in CELL_CASES."""
    return {f"{name}[{cell}]": cell_case(name, CELLS[cell], cases[name])
            for name, cells in CELL_CASES.items() for cell in cells}


def pinned_packages(suite: str = SUITE, architecture: str = "amd64") -> dict[str, Any]:
    """The essential set plus debconf of one release and architecture, pinned by osbuild-mpp."""
    return {"type": "org.osbuild.files", "origin": "org.osbuild.source",
            "mpp-depsolve": {"suite": suite, "architecture": architecture,
                             "variant": "essential", "packages": ["debconf"]}}


PINNED_PACKAGES = pinned_packages()
# What the archive decides is not the stage's behaviour: compare package names
# and the shape of the diff, not versions, file lists or contents.
NETWORK_CONFIG = {"network": True,
                  "volatile": {"diff.json": [["added_files"], ["differences"]],
                               "packages.json": [["packages", "*"]]}}


def v1_base() -> list[dict[str, Any]]:
    """v1 stages take no inputs, so the assembler cases' tree is made from options alone."""
    return [
        {"name": "org.osbuild.mkdir", "options": {"paths": [
            {"path": p, "parents": True} for p in ("/etc", "/boot", "/usr/lib", "/var/lib")]}},
        {"name": "org.osbuild.hostname", "options": {"hostname": "golden"}},
        {"name": "org.osbuild.fstab", "options": {"filesystems": [
            {"uuid": ROOT_UUID, "vfs_type": "ext4", "path": "/", "passno": 1}]}},
        {"name": "org.osbuild.kernel-cmdline", "options": {"root_fs_uuid": ROOT_UUID}},
        {"name": "org.osbuild.ln", "options": {"paths": [
            {"target": "usr/lib", "link_name": "/lib", "symbolic": True}]}},
    ]


# v1 has no source-epoch: file times are the build's, so no image is
# byte-reproducible and only its name, mode and owner are compared (image-info,
# when it exists, checks what is inside).
V1_VOLATILE = {"diff.json": [["differences", "*", "content"]]}


def assembler_cases() -> dict[str, dict[str, Any]]:
    return {
        "assemblers/org.osbuild.noop": {"assembler": {"name": "org.osbuild.noop"}},
        "assemblers/org.osbuild.tar": {
            "assembler": {"name": "org.osbuild.tar",
                          "options": {"filename": "tree.tar.xz", "compression": "xz"}},
            "config": {"image": "tree.tar.xz", "volatile": V1_VOLATILE}},
        "assemblers/org.osbuild.rawfs": {
            "assembler": {"name": "org.osbuild.rawfs",
                          "options": {"filename": "root.ext4", "root_fs_uuid": ROOT_UUID,
                                      "size": 32 * MiB}},
            "config": {"image": "root.ext4", "volatile": V1_VOLATILE}},
        "assemblers/org.osbuild.qemu": {
            "assembler": {"name": "org.osbuild.qemu", "options": {
                "format": "qcow2", "filename": "disk.qcow2", "size": 64 * MiB,
                "ptuuid": GPT_DISK_ID, "pttype": "gpt", "root_fs_uuid": ROOT_UUID}},
            "config": {"image": "disk.qcow2", "volatile": V1_VOLATILE}},
    }


# -- manifests -------------------------------------------------------------------


def stage_manifests(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """file name -> document for one stage case: a/b as .json, or .mpp.json to pin."""
    base_stages, base_sources = base(CELLS[spec["cell"]] if "cell" in spec else None)
    if spec.get("empty_a"):
        a_stages: list[dict[str, Any]] = []
        a_sources: dict[str, Any] = {}
    elif "template_before" in spec:
        a_stages, a_sources = list(spec["template_before"]), {}
    else:
        a_stages, a_sources = [*base_stages, *spec.get("before", [])], base_sources
    b_stages = [*a_stages, *spec.get("template", []), *spec.get("stages", [])]
    b_sources = merge_sources(a_sources, spec.get("sources", {}))
    pipelines = []
    for pipeline in spec.get("pipelines", []):
        if pipeline["name"] == "os" and not pipeline["stages"]:
            pipeline = tree_pipeline(base_stages, name="os")
        pipelines.append(pipeline)
    a_name = "a.mpp.json" if "template_before" in spec else "a.json"
    b_name = "b.mpp.json" if "template" in spec or "template_before" in spec else "b.json"
    return {a_name: v2([tree_pipeline(a_stages)], a_sources),
            b_name: v2([*pipelines, tree_pipeline(b_stages)], b_sources)}


def assembler_manifests(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"a.json": {"pipeline": {"stages": v1_base(),
                                    "assembler": {"name": "org.osbuild.noop"}}},
            "b.json": {"pipeline": {"stages": v1_base(), "assembler": spec["assembler"]}}}


def all_cases() -> dict[str, dict[str, Any]]:
    """Case name -> {file name: JSON document}, case.json included."""
    cases = {}
    stages = stage_cases()
    for name, spec in {**stages, **cell_cases(stages)}.items():
        cases[name] = {**stage_manifests(spec), "case.json": case_config(spec)}
    for name, spec in assembler_cases().items():
        cases[name] = {**assembler_manifests(spec),
                       "case.json": case_config(spec, export="assembler")}
    return dict(sorted(cases.items()))


def case_config(spec: dict[str, Any], export: str = "tree") -> dict[str, Any]:
    config = {"export": export, "network": False, "image": None, "volatile": {}}
    config.update(spec.get("config", {}))
    if "cell" in spec:
        config["cell"] = spec["cell"]
    return config
