"""mkfs.xfs prototype files: a tree described for `mkfs.xfs -p`, which cannot copy a directory.

The format is whitespace separated, so names and symlink targets with
whitespace cannot be written, nor can sockets: those are refused in words.
Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import os
import stat
from typing import IO

from osbuild.api import fail

PROTO_TYPES = {
    stat.S_IFREG: "-",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFBLK: "b",
    stat.S_IFCHR: "c",
    stat.S_IFIFO: "p",
}


def proto_token(text: str, what: str, path: str, fs: str) -> str:
    # The prototype format is whitespace separated and ends directories with "$".
    if not text or text == "$" or any(c.isspace() for c in text):
        fail(f"{fs} cannot hold {path!r}: its {what} cannot be written in a mkfs.xfs "
             "prototype file")
    return text


def proto_mode(st: os.stat_result, path: str, fs: str) -> str:
    kind = PROTO_TYPES.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        fail(f"{fs} cannot hold {path!r}: mkfs.xfs prototype files cannot create sockets")
    suid = "u" if st.st_mode & stat.S_ISUID else "-"
    sgid = "g" if st.st_mode & stat.S_ISGID else "-"
    return f"{kind}{suid}{sgid}{st.st_mode & 0o777:03o}"


def write_proto(tree: str, out: IO[str], sticky: list[tuple[str, int]], fs: str) -> None:
    """Describe `tree` in mkfs.xfs's prototype format; collect sticky paths for later.

    `fs` names the file system in errors about what the format cannot hold.
    """
    root = os.lstat(tree)
    out.write("osbuild\n0 0\n")
    out.write(f"{proto_mode(root, '/', fs)} {root.st_uid} {root.st_gid}\n")
    if root.st_mode & stat.S_ISVTX:
        sticky.append(("/", root.st_mode))

    def directory(path: str, rel: str, depth: int) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name_rel = f"{rel}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            name = proto_token(entry.name, "name", name_rel, fs)
            line = f"{'  ' * depth}{name} {proto_mode(st, name_rel, fs)} {st.st_uid} {st.st_gid}"
            if st.st_mode & stat.S_ISVTX:
                sticky.append((name_rel, st.st_mode))
            if stat.S_ISREG(st.st_mode):
                line += f" {proto_token(entry.path, 'path', name_rel, fs)}"
            elif stat.S_ISLNK(st.st_mode):
                line += f" {proto_token(os.readlink(entry.path), 'symlink target', name_rel, fs)}"
            elif stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
                line += f" {os.major(st.st_rdev)} {os.minor(st.st_rdev)}"
            out.write(line + "\n")
            if stat.S_ISDIR(st.st_mode):
                directory(entry.path, name_rel, depth + 1)
                out.write(f"{'  ' * (depth + 1)}$\n")

    directory(tree, "", 1)
    out.write("$\n")

