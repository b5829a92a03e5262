"""File systems made from a directory, without loop devices or mounts.

The sandbox of an assembler cannot attach loop devices or mount, so mkfs itself
fills the file system from a directory: mkfs.ext4 -d (straight into an image
file, at an offset), mkfs.btrfs --rootdir, and mkfs.xfs from a prototype file
(osbuild.toolkit.disk.proto). A tree that does not fit is TooSmall, checked up front
from the tree's size (tree_usage) and mapped from mkfs's own failure, so the
caller can say which size is too small. Stdlib only, like osbuild.api: it runs
on the build root's Python.
"""

import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence

from osbuild.api import fail
from osbuild.toolkit import tool
from osbuild.toolkit.disk.blockdev import source_date_epoch
from osbuild.toolkit.disk.proto import write_proto
from osbuild.toolkit.disk.sparse import data_extents

FS_BLOCK = 4096
FS_INODE = 256
# Up-front check: the file system's own structures (journal, inode tables,
# allocation groups, btrfs metadata copies) need room beyond the data.
FS_MARGIN = 1.05
MIN_XFS = 300 * 1024 * 1024  # mkfs.xfs 6.1 refuses smaller file systems

# Phrases mkfs tools use when the data does not fit.
NO_SPACE = ("could not allocate", "no space left", "not enough space", "enospc")


class TooSmall(Exception):
    """The content does not fit the file system's size; the caller names which size."""

    def __init__(self, need: int, tool: str | None = None):
        super().__init__(need, tool)
        self.need = need
        self.tool = tool

    def __str__(self) -> str:
        if self.tool:
            return (f"its data (about {self.need} bytes) and the structures of {self.tool} "
                    "do not fit")
        return f"it needs at least about {self.need} bytes"


def walk(path: str) -> Iterator[os.DirEntry]:
    """Every entry below `path`, depth first in name order, without following symlinks."""
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        yield entry
        if entry.is_dir(follow_symlinks=False):
            yield from walk(entry.path)


def round_up(n: int, to: int = FS_BLOCK) -> int:
    return (n + to - 1) // to * to


def tree_usage(tree: str) -> int:
    """Bytes the tree's content takes in a file system: blocks, inodes, directories."""
    seen: set[tuple[int, int]] = set()
    total = FS_BLOCK + FS_INODE  # the root directory
    for entry in walk(tree):
        st = entry.stat(follow_symlinks=False)
        if (st.st_dev, st.st_ino) in seen:
            continue  # another name of a hard-linked file
        seen.add((st.st_dev, st.st_ino))
        total += FS_INODE
        if stat.S_ISREG(st.st_mode):
            # Sparse files stay sparse; st_blocks counts what is really there.
            total += min(round_up(st.st_size), round_up(st.st_blocks * 512))
        elif stat.S_ISDIR(st.st_mode):
            total += FS_BLOCK
        elif stat.S_ISLNK(st.st_mode) and st.st_size >= 60:
            total += FS_BLOCK  # shorter targets live in the inode
    return total


def run_mkfs(cmd: Sequence[str], what: str, need: int,
             env: dict[str, str] | None = None) -> None:
    """Run a mkfs that fills a file system: TooSmall when it ran out of space."""
    proc = tool.run(cmd, what, env=env, check=False)
    if proc.returncode == 0:
        return
    if any(phrase in (proc.stderr + proc.stdout).lower() for phrase in NO_SPACE):
        raise TooSmall(need, what)
    fail(f"{what} failed: {tool.reason(proc.stderr or proc.stdout, proc.returncode)}")


def _header_number(text: str, name: str) -> int:
    match = re.search(rf"^{name}:\s+(\d+)", text, re.M)
    if match is None:
        fail(f"dumpe2fs did not report the {name.lower()}")
    return int(match.group(1))


def ext4_used_inodes(spec: str) -> list[int]:
    """The inodes in use in an ext4 file system, from its inode bitmaps (dumpe2fs)."""
    proc = tool.run(["dumpe2fs", spec], "dumpe2fs", check=False)
    if proc.returncode != 0:
        fail("dumpe2fs cannot read the new ext4 file system: "
             f"{tool.reason(proc.stderr, proc.returncode)}")
    count, per_group = (_header_number(proc.stdout, name)
                        for name in ("Inode count", "Inodes per group"))
    used = []
    for group, ranges in enumerate(re.findall(r"^\s+Free inodes: ?(.*)$", proc.stdout, re.M)):
        free: set[int] = set()
        for item in filter(None, (r.strip() for r in ranges.split(","))):
            first, _, last = item.partition("-")
            free.update(range(int(first), int(last or first) + 1))
        start = group * per_group + 1
        used += [i for i in range(start, min(start + per_group, count + 1)) if i not in free]
    return used


def ext4_from_dir(source: str, image: str, uuid: str, size: int, need: int,
                  label: str | None = None, offset: int = 0) -> None:
    """An ext4 file system of `size` bytes at byte `offset` of `image`, holding `source`.

    Deterministic settings: usage type "default" (not the size-dependent
    small/floppy types), the directory hash seed is the UUID, and
    SOURCE_DATE_EPOCH is mke2fs's clock. mke2fs -d copies access and change
    times from the source, which differ between two copies of the same tree,
    so with SOURCE_DATE_EPOCH every inode's atime and ctime become it. mke2fs
    does not copy the root directory's mode and mtime: debugfs sets them afterwards.
    """
    root = os.lstat(source)
    env = dict(os.environ)
    epoch = source_date_epoch()
    if epoch is not None:
        env["E2FSPROGS_FAKE_TIME"] = str(epoch)
    extended = f"hash_seed={uuid},root_owner={root.st_uid}:{root.st_gid}"
    if offset:
        extended += f",offset={offset}"
    cmd = ["mkfs.ext4", "-q", "-F", "-T", "default", "-U", uuid, "-E", extended, "-d", source]
    if label is not None:
        cmd += ["-L", label]
    run_mkfs([*cmd, image, f"{size // 1024}k"], "mkfs.ext4", need, env)
    spec = f"{image}?offset={offset}" if offset else image
    # mke2fs -d copies neither the root directory's mode nor its mtime.
    commands = [f"set_inode_field / mode 0{stat.S_IFDIR | stat.S_IMODE(root.st_mode):o}",
                f"set_inode_field / mtime @{int(root.st_mtime)}"]
    if epoch is not None:
        for ino in ext4_used_inodes(spec):
            if ino == 2 or ino >= 11:  # the root and what mke2fs made; not the reserved ones
                commands += [f"set_inode_field <{ino}> atime @{epoch}",
                             f"set_inode_field <{ino}> ctime @{epoch}"]
    with tempfile.NamedTemporaryFile("w", prefix="debugfs-", suffix=".txt") as script:
        script.write("\n".join(commands) + "\n")
        script.flush()
        proc = tool.run(["debugfs", "-w", "-f", script.name, spec], "debugfs", env=env,
                        check=False)
    # debugfs reports command errors on stderr but still exits 0.
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        fail("debugfs cannot set the root directory's mode and inode times: "
             f"{tool.reason(proc.stderr, proc.returncode)}")


def btrfs_from_dir(source: str, image: str, uuid: str, size: int, need: int,
                   label: str | None = None) -> None:
    """A btrfs file system in the `size`-byte file `image`, holding `source`.

    mkfs.btrfs grows a too small image file instead of failing, so the size
    is checked afterwards; what btrfs-progs 6.2 drops is reported as warnings.
    """
    cmd = ["mkfs.btrfs", "-q", "-f", "-U", uuid, "--rootdir", source]
    if label is not None:
        cmd += ["-L", label]
    run_mkfs([*cmd, image], "mkfs.btrfs", need)
    actual = os.stat(image).st_size
    if actual > size:
        raise TooSmall(actual)
    check_btrfs_inodes(source, image)


# An inode item in `btrfs inspect-internal dump-tree` output.
BTRFS_INODE = re.compile(
    r"key \((\d+) INODE_ITEM 0\).*?\n.*?\n\s*block group \d+ mode (\d+) links \d+ "
    r"uid (\d+) gid (\d+) rdev (\d+)"
)
BTRFS_ROOT_INODE = 256


def check_btrfs_inodes(tree: str, image: str) -> None:
    """Warn about what mkfs.btrfs --rootdir silently dropped.

    btrfs-progs 6.2 (Debian 12) stores every device node with device number
    0 and gives the root directory mode 0755 owned by root; nothing offline
    can fix that in the image. Device nodes in /dev are hidden by devtmpfs on
    a booted system, so this is a warning, not a failure.
    """
    proc = tool.run(["btrfs", "inspect-internal", "dump-tree", "-t", "fs", image],
                    "btrfs inspect-internal", check=False)
    if proc.returncode != 0:
        fail(f"cannot inspect the btrfs image: {tool.reason(proc.stderr, proc.returncode)}")
    inodes = {int(m[0]): (int(m[1], 8), int(m[2]), int(m[3]), int(m[4]))
              for m in BTRFS_INODE.findall(proc.stdout)}
    root = os.lstat(tree)
    got = inodes.get(BTRFS_ROOT_INODE)
    if got and got[:3] != (root.st_mode, root.st_uid, root.st_gid):
        print(f"warning: mkfs.btrfs made the root directory {got[0]:o} {got[1]}:{got[2]} "
              f"instead of {root.st_mode:o} {root.st_uid}:{root.st_gid}", file=sys.stderr)
    wanted = sum(1 for e in walk(tree) if is_device(e.stat(follow_symlinks=False)))
    lost = sum(1 for mode, _uid, _gid, rdev in inodes.values()
               if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and rdev == 0)
    if wanted and lost:
        print(f"warning: mkfs.btrfs lost the device numbers of {lost} of {wanted} device "
              "nodes (they read as 0:0 in the image)", file=sys.stderr)


def is_device(st: os.stat_result) -> bool:
    return (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and st.st_rdev != 0


def xfs_from_dir(source: str, image: str, uuid: str, size: int, need: int,
                 label: str | None = None, fs: str = "the xfs file system") -> None:
    """An xfs file system in the `size`-byte file `image`, holding `source`.

    mkfs.xfs of Debian 12 (xfsprogs 6.1) cannot copy a directory, only a
    prototype file. Its limits: names and symlink targets with whitespace and
    sockets are refused; hard links become copies; extended attributes and
    timestamps are lost. The sticky bit, which it cannot carry, is set with
    xfs_db afterwards.
    """
    if size < MIN_XFS:
        raise TooSmall(max(need, MIN_XFS))
    sticky: list[tuple[str, int]] = []
    with tempfile.NamedTemporaryFile("w", prefix="proto-", suffix=".txt") as proto:
        write_proto(source, proto, sticky, fs)
        proto.flush()
        cmd = ["mkfs.xfs", "-q", "-f", "-m", f"uuid={uuid}", "-p", proto.name]
        if label is not None:
            cmd += ["-L", label]
        run_mkfs([*cmd, image], "mkfs.xfs", need)
    # Batches keep the command line short however many sticky directories there are.
    for i in range(0, len(sticky), 100):
        cmd = ["xfs_db", "-x"]
        for path, mode in sticky[i : i + 100]:
            cmd += ["-c", f"path {path}", "-c", f"write core.mode 0{mode:o}"]
        proc = tool.run([*cmd, image], "xfs_db", check=False)
        if proc.returncode != 0 or proc.stderr.strip():
            fail("xfs_db cannot set the sticky bit: "
                 f"{tool.reason(proc.stderr, proc.returncode)}")


def copy_sparse(source: str, target: str, offset: int) -> None:
    """Copy file `source` into file `target` at byte `offset`, only its data, not its holes.

    copy_file_range lets the kernel share or copy the blocks without passing
    them through here; holes stay holes in the (sparse) target.
    """
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    dst = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for pos, length in data_extents(src):
            hole = pos + length
            while pos < hole:
                done = os.copy_file_range(src, dst, hole - pos, pos, offset + pos)
                if done == 0:
                    fail(f"{source} ended early while copying it into {target}")
                pos += done
    finally:
        os.close(src)
        os.close(dst)

