"""What the input is, and how it becomes something readable.

A directory is read in place. A tarball (plain or compressed) is unpacked into
a scratch directory, but only the parts of the tree the report reads, so a
whole root file system is not written out for a handful of files. A disk or
file system image in any format qemu-img knows is read as a raw file: raw is
used as is, anything else (qcow2, vmdk, ...) is converted to a sparse raw
scratch file, which takes about a second for a typical image (qemu-nbd would
avoid the copy, but it needs the nbd kernel module, which build hosts often
lack). A compressed raw image (raw.xz, as the v1 qemu assembler writes) is
decompressed the same way.

All scratch space is in one ExitStack, so it is removed whatever happens.
"""

import contextlib
import errno
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from osbuild import interrupts
from osbuild.fsutil import remove_tree
from osbuild.image_info import ImageInfoError
from osbuild.image_info.disk import IMAGE_FORMATS, image_format, run

# Leading bytes of compressed streams, and the command that decompresses each.
COMPRESSIONS: list[tuple[bytes, list[str]]] = [
    (b"\x1f\x8b", ["gzip", "-dc"]),
    (b"\xfd7zXZ\x00", ["xz", "-dc"]),
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]),
    (b"BZh", ["bzip2", "-dc"]),
]
TAR_MAGIC_OFFSET = 257
# How a member fails that clashes with another one (a file where a directory is).
CLASHES = (errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.ELOOP,
           errno.ENOENT)
SELINUX_PAX_KEYS = ("SCHILY.xattr.security.selinux", "RHT.security.selinux")
# "tar", not the stricter "data": a tree's absolute symlinks are kept (and resolved
# inside the tree by treeview). Pythons before 3.11.4 have no filters: see _stays_inside.
FILTER: dict[str, Any] = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}


def scratch_dir(stack: contextlib.ExitStack) -> Path:
    """A private directory removed when `stack` closes.

    In $TMPDIR or else /var/tmp, not /tmp: a converted image can be gigabytes
    (sparse), more than a tmpfs /tmp may hold.
    """
    base = os.environ.get("TMPDIR") or "/var/tmp"
    with interrupts.deferred():  # the directory and its removal come together
        path = Path(tempfile.mkdtemp(prefix="image-info-", dir=base))
        stack.callback(remove_tree, path)
    return path


def _decompressor(head: bytes) -> list[str] | None:
    return next((cmd for magic, cmd in COMPRESSIONS if head.startswith(magic)), None)


def _is_tar(head: bytes) -> bool:
    return head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + 5] == b"ustar"


@contextlib.contextmanager
def _decompressed(path: Path, command: list[str]) -> Iterator[IO[bytes]]:
    """The decompressed stream of `path`; the decompressor is gone when this exits."""
    with open(path, "rb") as raw:
        try:
            proc = subprocess.Popen(
                command, stdin=raw, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
        except FileNotFoundError:
            raise ImageInfoError(f"{path}: {command[0]} is needed to decompress it") from None
    assert proc.stdout is not None
    try:
        yield proc.stdout
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


def _read_head(stream: IO[bytes], size: int = 512) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def classify(path: Path) -> tuple[str, list[str] | None]:
    """("directory" | "tarball" | "compressed-image" | "image", decompressor command)."""
    if not path.exists() and not path.is_symlink():
        raise ImageInfoError(f"{path}: no such file or directory")
    if path.is_dir():
        return "directory", None
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise ImageInfoError(f"{path}: cannot read: {exc.strerror}") from None
    command = _decompressor(head)
    if command is None:
        return ("tarball" if _is_tar(head) else "image"), None
    with _decompressed(path, command) as stream:
        inner = _read_head(stream)
    return ("tarball" if _is_tar(inner) else "compressed-image"), command


def _wanted(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + "/") for p in prefixes)


def _stays_inside(dest: Path, name: str, is_link: bool) -> bool:
    """Whether writing member `name` lands inside `dest`, links extracted earlier included.

    Checked here rather than left to tarfile's extraction filters, which Python
    3.11 has only from 3.11.4 on (Debian 12's system Python is 3.11.2).
    """
    if ".." in name.split("/"):
        return False
    root = os.path.realpath(dest)
    # A link member replaces whatever is at its name; anything else writes through it.
    where = os.path.dirname(name) if is_link else name
    real = os.path.realpath(os.path.join(root, where))
    return real == root or real.startswith(root + os.sep)


@contextlib.contextmanager
def tar_stream(path: Path, command: list[str] | None) -> Iterator[tarfile.TarFile]:
    """The tarball read once, in order (decompressed by `command` unless None)."""
    with contextlib.ExitStack() as stack:
        if command is None:
            stream: IO[bytes] = stack.enter_context(open(path, "rb"))
        else:
            stream = stack.enter_context(_decompressed(path, command))
        yield stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))


def member_name(name: str) -> str:
    """A member's path relative to the tree's root ("" for the root: "/", ".", "./")."""
    name = name.lstrip("/").removeprefix("./").rstrip("/")
    return "" if name == "." else name


def extract_tarball(
    path: Path, command: list[str] | None, dest: Path, prefixes: Iterable[str] | None = None
) -> dict[str, str]:
    """Unpack the parts of a tarball under `prefixes` (None: all) into `dest`; return labels.

    Symlinks at the top (lib -> usr/lib on merged-/usr systems) and under the
    prefixes are kept, so paths resolve as in the tree. Device nodes are
    skipped (they need root and are never read). Labels come from the pax
    xattr records tar --selinux writes, keyed by absolute path.
    """
    wanted = tuple(prefixes) if prefixes is not None else None
    labels: dict[str, str] = {}
    extracted: set[str] = set()
    try:
        with tar_stream(path, command) as archive:
            for member in archive:
                name = member_name(member.name)
                for key in SELINUX_PAX_KEYS:
                    if key in member.pax_headers:
                        labels["/" + name] = member.pax_headers[key].rstrip("\0")
                if not name or not (member.isreg() or member.isdir() or member.issym()
                                    or member.islnk()):
                    continue
                top_link = member.issym() and "/" not in name
                if wanted is not None and not (top_link or _wanted(name, wanted)):
                    continue
                if member.islnk():
                    target = member_name(member.linkname)
                    if target not in extracted:
                        continue
                    member.linkname = target
                if not _stays_inside(dest, name, member.issym() or member.islnk()):
                    continue
                member.name = name
                try:
                    # set_attrs=False: files stay readable and removable without root.
                    archive.extract(member, dest, set_attrs=False, **FILTER)
                except tarfile.TarError:
                    continue  # a member that would leave dest: not ours to read
                except OSError as exc:
                    if exc.errno in CLASHES:
                        continue  # it clashes with another member: the tree has one of them
                    # Scratch space full, an I/O error: the tree would lack what follows,
                    # and the report would say "not there" of what it never saw.
                    raise ImageInfoError(f"{path}: cannot extract /{name}: "
                                         f"{exc.strerror or exc}") from None
                extracted.add(name)
    except tarfile.TarError as exc:
        raise ImageInfoError(f"{path}: not a readable tarball: {exc}") from None
    return labels


def decompress_image(path: Path, command: list[str], dest: Path) -> Path:
    """A compressed raw image, decompressed (sparse) into `dest`."""
    target = dest / "image.raw"
    block = 1024 * 1024
    zero = bytes(block)
    with open(path, "rb") as raw, open(target, "wb") as out:
        try:
            proc = subprocess.Popen(command, stdin=raw, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise ImageInfoError(f"{path}: {command[0]} is needed to decompress it") from None
        assert proc.stdout is not None and proc.stderr is not None
        done = False
        try:
            while chunk := proc.stdout.read(block):
                # Holes for zero blocks: a mostly empty image stays small.
                if chunk == zero[: len(chunk)]:
                    out.seek(len(chunk), os.SEEK_CUR)
                else:
                    out.write(chunk)
            out.truncate()
            error = proc.stderr.read().decode(errors="replace").strip()
            done = True
        finally:
            proc.stdout.close()
            proc.stderr.close()
            # At the end of its output the decompressor may not have exited yet:
            # wait for it; kill it only when reading failed half way.
            if not done and proc.poll() is None:
                proc.kill()
            proc.wait()
    if proc.returncode != 0:
        why = error.splitlines()[-1] if error else f"{command[0]} failed"
        raise ImageInfoError(f"{path}: cannot decompress: {why}")
    return target


def raw_image(path: Path, stack: contextlib.ExitStack) -> tuple[Path, dict]:
    """(a raw file with the image's content, the image-format report)."""
    fmt = image_format(path)
    if fmt["type"] not in IMAGE_FORMATS:
        raise ImageInfoError(f"{path}: unsupported image format '{fmt['type']}'")
    if fmt["type"] == "raw":
        return path, fmt
    target = scratch_dir(stack) / "image.raw"
    # -S: zero runs become holes; -U: the image may be open elsewhere (read-only here).
    run(["qemu-img", "convert", "-U", "-O", "raw", "-S", "4k", str(path), str(target)],
        f"{path}: converting to raw")
    return target, fmt
