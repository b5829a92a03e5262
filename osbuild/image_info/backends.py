"""How the file systems inside an image are reached, and which of them form the OS tree.

Two backends give the same view: "loop" (root: a read-only loop device per
file system and read-only mounts; fast) and "guestfs" (anyone: libguestfs
boots a small appliance VM that mounts them; slow). `auto` takes loop when
running as root and guestfs otherwise.

Finding the tree is the same for both: the largest mountable file system that
holds an os-release is the root (on btrfs also its `@` or `root` subvolume,
the usual layouts), and a bare file system image is the tree with or without
one; then the root's fstab says where the other partitions belong (/boot,
/var, ...), and those that can be mounted are mounted there.
FAT file systems (the ESP) are not mounted: this kernel has no vfat driver,
and the ESP is read with mtools instead (see bootloader). A file system that
does not mount is not silently left out: mount_os returns why, for the
report's "errors" (what it held is missing from the tree).
"""

import contextlib
import os
from pathlib import Path

from osbuild.image_info import ImageInfoError
from osbuild.image_info.backend_types import Backend, MountFailed, Unmount
from osbuild.image_info.disk import Filesystem, Layout, Partition
from osbuild.image_info.tree import fstab_entries
from osbuild.image_info.treeview import Tree

MOUNTABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs")
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
BTRFS_ROOT_SUBVOLUMES = ("@", "root")
BACKENDS = ("auto", "loop", "guestfs")


def mount_options(fstype: str, extra: list[str]) -> list[list[str]]:
    """Read-only option sets to try in order; nothing may write to the image.

    xfs refuses a read-only device with a dirty log unless told not to replay
    it; ext4 likewise, so its second try skips the journal (noload). xfs also
    refuses a second file system with the UUID of a mounted one (another copy
    of the same image, or the host's own root made from the same build): nouuid.
    """
    if fstype == "xfs":
        return [["ro", "norecovery", "nouuid", *extra]]
    if fstype.startswith("ext"):
        return [["ro", *extra], ["ro", "noload", *extra]]
    return [["ro", *extra]]


def choose(name: str) -> str:
    if name == "auto":
        return "loop" if os.geteuid() == 0 else "guestfs"
    if name == "loop" and os.geteuid() != 0:
        raise ImageInfoError("the loop backend needs root; use --backend guestfs")
    return name


def open_backend(name: str, image: Path, stack: contextlib.ExitStack) -> Backend:
    """The backend `name` (loop or guestfs) on a raw `image`, released with `stack`."""
    # Imported only when chosen: the guestfs path runs under the system Python too,
    # which may lack what the loop backend's engine modules need (jsonschema).
    if name == "loop":
        from osbuild.image_info.backend_loop import LoopBackend

        return LoopBackend(image, stack)
    from osbuild.image_info.backend_guestfs import GuestfsBackend

    return GuestfsBackend(image, stack)


def _mount(backend: Backend, part: Partition | None, fs: Filesystem, target: str,
           extra: list[str]) -> Unmount:
    errors = []
    for options in mount_options(fs.fstype or "", extra):
        try:
            return backend.mount(part, target, fs.fstype or "", options)
        except MountFailed as exc:
            errors.append(str(exc))
    raise MountFailed(errors[-1])


def _is_root(backend: Backend, prefix: str = "") -> bool:
    return any(backend.exists(prefix + path) for path in OS_RELEASE)


def _source_matches(source: str, part: Partition) -> bool:
    """Whether an fstab source (UUID=..., /dev/disk/by-label/..., ...) names `part`."""
    key, sep, value = source.partition("=")
    if not sep:
        kinds = {"by-uuid": "UUID", "by-label": "LABEL", "by-partuuid": "PARTUUID",
                 "by-partlabel": "PARTLABEL"}
        parts = source.split("/")
        if len(parts) == 5 and source.startswith("/dev/disk/") and parts[3] in kinds:
            key, value = kinds[parts[3]], parts[4]
        else:
            return False
    value = value.strip("\"'")
    candidates = {
        "UUID": part.fs.uuid, "LABEL": part.fs.label, "PARTUUID": part.partuuid,
        "PARTLABEL": part.name,
    }
    have = candidates.get(key.upper())
    if have is None:
        return False
    if key.upper() in ("UUID", "PARTUUID"):
        return have.lower() == value.lower()
    return have == value


def _subvol(options: str) -> list[str]:
    return [o for o in options.split(",") if o.startswith(("subvol=", "subvolid="))]


def has_mountable(layout: Layout) -> bool:
    """Whether any file system of `layout` could hold the tree (worth starting a backend)."""
    filesystems = [layout.filesystem] if layout.filesystem else \
        [p.fs for p in layout.partitions or []]
    return any(fs.fstype in MOUNTABLE for fs in filesystems)


def mount_os(backend: Backend, layout: Layout, paths: tuple[str, ...] | None
             ) -> tuple[Tree | None, list[str]]:
    """Mount the OS tree of `layout` (root first, then fstab's others): the tree (None if
    there is none) and the file systems that would not mount, one line each.
    `paths`: what the report reads (a backend that copies copies those; None: all).

    On a partitioned disk the root is the largest file system with an os-release;
    a bare file system image is the tree whether it has one or not.
    """
    if layout.filesystem is not None:
        candidates: list[tuple[Partition | None, Filesystem]] = [(None, layout.filesystem)]
    else:
        parts = sorted(layout.partitions or [], key=lambda p: -p.size)
        candidates = [(p, p.fs) for p in parts]
    candidates = [(p, fs) for p, fs in candidates if fs.fstype in MOUNTABLE]
    root = None
    failed: list[str] = []
    for part, fs in candidates:
        try:
            unmount = _mount(backend, part, fs, "/", [])
        except MountFailed as exc:
            where = "the image" if part is None else f"partition {part.number}"
            failed.append(f"{exc} ({where}: it may have held the tree)")
            continue
        if _is_root(backend):
            root = part
            break
        subvol = next((s for s in BTRFS_ROOT_SUBVOLUMES
                       if fs.fstype == "btrfs" and _is_root(backend, s + "/")), None)
        if subvol is not None:
            unmount()
            _mount(backend, part, fs, "/", [f"subvol={subvol}"])
            root = part
            break
        if part is None:
            # A bare file system image is all there is: without an os-release it is
            # still the tree (a /boot, a tree in the making), and reports what it has.
            break
        unmount()
    else:
        return None, failed
    for source, target, _vfstype, options in _fstab(backend):
        if target == "/" or not target.startswith("/"):
            continue
        for part in layout.partitions or []:
            if part is root or part.fs.fstype not in MOUNTABLE:
                continue
            if _source_matches(source, part):
                try:
                    _mount(backend, part, part.fs, target, _subvol(options))
                except MountFailed as exc:
                    failed.append(f"{exc} ({target}, partition {part.number}, is not in "
                                  "the report)")
                break
    return backend.tree(paths), failed


def _fstab(backend: Backend) -> list[tuple[str, str, str, str]]:
    entries = fstab_entries(backend.read_text("etc/fstab") or "")
    # Parents before children: /var before /var/log.
    return sorted(entries, key=lambda e: e[1].count("/") if e[1] != "/" else 0)
