"""Empty file systems on a device or in part of an image: ext4, xfs, btrfs, FAT.

Each is made with the UUID (or FAT volume id) it is given; ext4 and FAT also
take their times from SOURCE_DATE_EPOCH, so the same request gives the same
bytes. Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import os

from osbuild.toolkit import tool
from osbuild.toolkit.disk.blockdev import SECTOR, source_date_epoch


def feature(name: str, on: bool | None) -> list[str]:
    """mke2fs -O syntax: a feature on, or "^feature" off; nothing when not asked."""
    if on is None:
        return []
    return [name if on else f"^{name}"]


def mkfs_ext4(device: str, uuid: str, label: str | None = None, lazy_init: bool | None = None,
              verity: bool | None = None, orphan_file: bool | None = None,
              metadata_csum_seed: bool | None = None) -> None:
    """mkfs.ext4, reproducibly: the directory hash seed is the UUID, time is SOURCE_DATE_EPOCH."""
    cmd = ["mkfs.ext4", "-q", "-F", "-U", uuid]
    if label is not None:
        cmd += ["-L", label]
    extended = [f"hash_seed={uuid}"]
    if lazy_init is not None:
        flag = int(lazy_init)
        extended += [f"lazy_itable_init={flag}", f"lazy_journal_init={flag}"]
    cmd += ["-E", ",".join(extended)]
    features = (feature("verity", verity) + feature("orphan_file", orphan_file)
                + feature("metadata_csum_seed", metadata_csum_seed))
    if features:
        cmd += ["-O", ",".join(features)]
    env = dict(os.environ)
    epoch = source_date_epoch()
    if epoch is not None:
        env["E2FSPROGS_FAKE_TIME"] = str(epoch)
    tool.run([*cmd, device], "mkfs.ext4", env=env)


def mkfs_xfs(device: str, uuid: str, label: str | None = None,
             agcount: int | None = None) -> None:
    cmd = ["mkfs.xfs", "-q", "-f", "-m", f"uuid={uuid}"]
    if label is not None:
        cmd += ["-L", label]
    if agcount is not None:
        cmd += ["-d", f"agcount={agcount}"]
    tool.run([*cmd, device], "mkfs.xfs")


def mkfs_btrfs(device: str, uuid: str, label: str | None = None,
               metadata: str | None = None) -> None:
    cmd = ["mkfs.btrfs", "-q", "-f", "-U", uuid]
    if label is not None:
        cmd += ["-L", label]
    if metadata is not None:
        cmd += ["-m", metadata]
    tool.run([*cmd, device], "mkfs.btrfs")


def mkfs_fat(device: str, volid: str, label: str | None = None, fat_size: int | None = None,
             geometry: dict[str, int] | None = None, offset: int = 0,
             size: int | None = None) -> None:
    """mkfs.fat with --invariant: fixed timestamps; the volume id is the given one.

    With `offset` and `size` (bytes) the file system is made in that part of
    an image file, e.g. a partition, with no loop device.
    """
    cmd = ["mkfs.fat", "-I", "--invariant", "-i", volid]
    if label is not None:
        cmd += ["-n", label]
    if fat_size is not None:
        cmd += ["-F", str(fat_size)]
    if geometry is not None:
        cmd += ["-g", f"{geometry['heads']}/{geometry['sectors-per-track']}"]
    if offset:
        cmd += [f"--offset={offset // SECTOR}"]
    blocks = [str(size // 1024)] if size is not None else []  # mkfs.fat counts KiB
    tool.run([*cmd, device, *blocks], "mkfs.fat")

