"""Diff two file trees into upstream's diff.json shape.

    {"added_files": [...], "deleted_files": [...],
     "differences": {path: {attribute: [before, after]}}}

Paths are absolute from the tree root ("/" is the root itself) and sorted.
The attributes are "mode" (st_mode, type bits included), "uid", "gid",
"content" (sha256 of a regular file), "symlink" (the link target),
"selinux" (the security.selinux label) and "xattrs" (every other extended
attribute, as a sorted mapping). Timestamps are never compared: with a
source-epoch they are clamped anyway, and they say nothing about behaviour.

Extension: by default an added path also gets a "differences" entry whose
before values are null, so what a stage *creates* (its content, mode and
owner) is part of the golden, not just its name. `upstream=True` (the CLI's
--upstream) leaves it out, which is exactly upstream's shape.

    python3 -m verify.treediff [--upstream] A B
"""

import argparse
import base64
import hashlib
import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELINUX = "security.selinux"


@dataclass
class Entry:
    """What the diff knows about one path; content is hashed only when asked for."""

    host_path: str
    st: os.stat_result
    _xattrs: dict[str, str] | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.st.st_mode)

    def digest(self) -> str | None:
        if not self.is_file:
            return None
        if self._digest is None:
            with open(self.host_path, "rb") as f:
                self._digest = hashlib.file_digest(f, "sha256").hexdigest()
        return self._digest

    def link(self) -> str | None:
        return os.readlink(self.host_path) if self.is_link else None

    def xattrs(self) -> dict[str, str]:
        if self._xattrs is None:
            self._xattrs = read_xattrs(self.host_path)
        return self._xattrs

    def selinux(self) -> str | None:
        return self.xattrs().get(SELINUX)

    def other_xattrs(self) -> dict[str, str]:
        return {k: v for k, v in self.xattrs().items() if k != SELINUX}


def xattr_text(value: bytes) -> str:
    """Labels are NUL-terminated text; anything binary is kept readable as base64."""
    text = value[:-1] if value.endswith(b"\0") else value
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and decoded.isprintable():
        return decoded
    return "base64:" + base64.b64encode(value).decode("ascii")


def read_xattrs(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a filesystem without xattrs has none to compare
        return {}
    values = {}
    for name in sorted(names):
        try:
            values[name] = xattr_text(os.getxattr(path, name, follow_symlinks=False))
        except OSError:
            continue  # removed while we looked, or not readable: nothing to compare
    return values


def scan(root: Path) -> dict[str, Entry]:
    """Every path in the tree (the root as "/"), without following symlinks."""
    entries = {"/": Entry(str(root), os.lstat(root))}
    pending = [(str(root), "")]
    while pending:
        host_dir, rel_dir = pending.pop()
        with os.scandir(host_dir) as it:
            for item in it:
                rel = f"{rel_dir}/{item.name}"
                st = item.stat(follow_symlinks=False)
                entries[rel] = Entry(item.path, st)
                if stat.S_ISDIR(st.st_mode):
                    pending.append((item.path, rel))
    return entries


def same_content(a: Entry, b: Entry) -> bool:
    if a.st.st_size != b.st.st_size:
        return False
    return a.digest() == b.digest()


def changes(a: Entry, b: Entry) -> dict[str, list[Any]]:
    """The attributes that differ between two versions of one path."""
    found: dict[str, list[Any]] = {}
    for name in ("mode", "uid", "gid"):
        before, after = getattr(a.st, f"st_{name}"), getattr(b.st, f"st_{name}")
        if before != after:
            found[name] = [before, after]
    if (a.is_file or b.is_file) and not (a.is_file and b.is_file and same_content(a, b)):
        found["content"] = [a.digest(), b.digest()]
    if (a.is_link or b.is_link) and a.link() != b.link():
        found["symlink"] = [a.link(), b.link()]
    if a.selinux() != b.selinux():
        found["selinux"] = [a.selinux(), b.selinux()]
    if a.other_xattrs() != b.other_xattrs():
        found["xattrs"] = [a.other_xattrs(), b.other_xattrs()]
    return found


def created(b: Entry) -> dict[str, list[Any]]:
    """An added path described as a change from nothing (the extension above)."""
    found: dict[str, list[Any]] = {"mode": [None, b.st.st_mode], "uid": [None, b.st.st_uid],
                                   "gid": [None, b.st.st_gid]}
    if b.is_file:
        found["content"] = [None, b.digest()]
    if b.is_link:
        found["symlink"] = [None, b.link()]
    if b.selinux() is not None:
        found["selinux"] = [None, b.selinux()]
    if b.other_xattrs():
        found["xattrs"] = [None, b.other_xattrs()]
    return found


def diff_trees(a: Path, b: Path, upstream: bool = False) -> dict[str, Any]:
    """The diff.json document that turns tree `a` into tree `b`."""
    return diff_entries(scan(Path(a)), scan(Path(b)), upstream)


def diff_entries(before: dict[str, Any], after: dict[str, Any], upstream: bool = False
                 ) -> dict[str, Any]:
    """diff_trees of two listings: {path: an Entry, or anything with its attributes
    (image-info's listing of a tarball's members)}."""
    added = sorted(after.keys() - before.keys())
    deleted = sorted(before.keys() - after.keys())
    differences: dict[str, dict[str, list[Any]]] = {}
    for path in sorted(before.keys() & after.keys()):
        if found := changes(before[path], after[path]):
            differences[path] = found
    if not upstream:
        for path in added:
            differences[path] = created(after[path])
    return {"added_files": added, "deleted_files": deleted,
            "differences": dict(sorted(differences.items()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m verify.treediff",
                                     description="Diff two trees as upstream's diff.json.")
    parser.add_argument("a", type=Path, help="the tree before")
    parser.add_argument("b", type=Path, help="the tree after")
    parser.add_argument("--upstream", action="store_true",
                        help="exactly upstream's shape: added paths only by name")
    args = parser.parse_args(argv)
    for tree in (args.a, args.b):
        if not tree.is_dir():
            print(f"treediff: {tree} is not a directory", file=sys.stderr)
            return 2
    print(json.dumps(diff_trees(args.a, args.b, args.upstream), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
