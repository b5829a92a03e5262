"""image-info --diff --files: the files of two OS trees, compared as the goldens compare them.

The comparison is treediff's (the one test/cases' goldens are made with,
as verify.treediff): added and removed paths, and per changed path its mode, owner, group,
sha256, symlink target, SELinux label and other xattrs; timestamps never.
Listings come from where the attributes are true: a directory or an image's
tree mounted through loop devices is walked live, and a tarball's members are
read from its headers, since an unprivileged extraction would not keep their
owners and modes. libguestfs copies files out the same way, so --files needs
the loop backend for images.
"""

import hashlib
import json
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osbuild.image_info import ImageInfoError, source, treediff

TAR_TYPES = {tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG,
             tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
             tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
             tarfile.FIFOTYPE: stat.S_IFIFO}
XATTR_PREFIX = "SCHILY.xattr."


@dataclass
class Stat:
    st_mode: int
    st_uid: int
    st_gid: int
    st_size: int


@dataclass
class TarEntry:
    """A tarball member with the attributes treediff compares (an Entry's interface)."""

    st: Stat
    target: str | None = None
    sha256: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.st.st_mode)

    def digest(self) -> str | None:
        return self.sha256

    def link(self) -> str | None:
        return self.target

    def selinux(self) -> str | None:
        return self.attrs.get(treediff.SELINUX)

    def other_xattrs(self) -> dict[str, str]:
        return {k: v for k, v in self.attrs.items() if k != treediff.SELINUX}


def tar_listing(path: Path, command: list[str] | None) -> dict[str, TarEntry]:
    """Every member of a tarball by absolute path ("/" the root), content hashed."""
    entries: dict[str, TarEntry] = {}
    try:
        with source.tar_stream(path, command) as archive:
            for member in archive:
                name = "/" + source.member_name(member.name)
                if member.islnk():  # a hard link: the file it names, under this name too
                    linked = entries.get("/" + source.member_name(member.linkname))
                    if linked is not None:
                        entries[name] = linked
                    continue
                kind = TAR_TYPES.get(member.type)
                if kind is None:
                    continue
                digest = None
                if member.isreg():
                    reader = archive.extractfile(member)
                    assert reader is not None
                    sha = hashlib.sha256()
                    while chunk := reader.read(1 << 20):
                        sha.update(chunk)
                    digest = sha.hexdigest()
                attrs = {k.removeprefix(XATTR_PREFIX): v.rstrip("\0")
                         for k, v in member.pax_headers.items() if k.startswith(XATTR_PREFIX)}
                entries[name] = TarEntry(Stat(kind | member.mode, member.uid, member.gid,
                                              member.size), member.linkname or None, digest,
                                         dict(sorted(attrs.items())))
    except tarfile.TarError as exc:
        raise ImageInfoError(f"{path}: not a readable tarball: {exc}") from None
    return entries


def live_listing(root: Path) -> dict[str, Any]:
    """A tree on the host (a directory, or an image's tree as the loop backend mounts it)."""
    return treediff.scan(root)


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """treediff's document; added paths with what they were created with."""
    return treediff.diff_entries(before, after)


def _attribute(name: str, value: Any) -> str:
    if value is None:
        return "none"
    if name == "mode":
        return f"{value:o}"
    if name == "content":
        return value[:12]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def render(doc: dict[str, Any]) -> str:
    """The files' changes as lines: + added (with what it is), - removed, ~ changed."""
    added, deleted = set(doc["added_files"]), doc["deleted_files"]
    lines = []
    for path in sorted({*added, *deleted, *doc["differences"]}):
        if path in deleted:
            lines.append(f"- {path}")
            continue
        found = doc["differences"].get(path, {})
        if path in added:
            what = ", ".join(f"{k} {_attribute(k, v[1])}" for k, v in found.items())
            lines.append(f"+ {path}: {what}")
        else:
            what = "; ".join(f"{k} {_attribute(k, v[0])} -> {_attribute(k, v[1])}"
                             for k, v in found.items())
            lines.append(f"~ {path}: {what}")
    return "\n".join(lines) + "\n" if lines else "no differences\n"
