"""Reading an OS tree the way its own system would see it, and never outside it.

A tree from an image is untrusted: /etc/os-release is usually a symlink to
/usr/lib/os-release, and followed naively on the host it would report the
host's file; a crafted link (/etc/hostname -> /root/.ssh/id_rsa, or a chain of
`..`) could leak anything. So every path is resolved component by component
as if the tree were `/`: absolute link targets restart at the tree's root,
`..` stops at it, and only regular files are read.

A path that is not there reads as None (or []); one that is there but cannot
be read (EACCES for a user without root, EIO on a damaged file system) reads
the same, and is noted in `failures`, which the report turns into "errors".
"""

import errno
import os
import stat
from collections import deque
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

MAX_LINKS = 40  # what the kernel allows in one lookup, so link loops end
MAX_READ = 64 * 1024 * 1024  # no config file is this big; a huge one is not read whole

# What a path that is not there (or is no regular file) fails with: no failure to note.
NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO)

LabelGetter = Callable[[str], str | None]


class Tree:
    """An OS tree at `root` on the host, read with chroot semantics.

    `labels` answers SELinux labels when they cannot be read from the files
    themselves (a tarball's xattrs, or libguestfs); by default they come from
    the `security.selinux` xattr of the file in the tree.
    """

    def __init__(self, root: Path, labels: LabelGetter | None = None):
        self.root = root
        self._labels = labels
        self.failures: list[str] = []  # "path: reason" of what was there but not readable

    def note_failure(self, path: str, exc: OSError) -> None:
        """Note that `path` (in the tree) could not be read, unless it is simply not there."""
        if exc.errno not in NOT_THERE:
            self.failures.append(f"/{path.lstrip('/')}: {exc.strerror or exc}")

    def _walk(self, path: str, follow_last: bool) -> Path | None:
        parts = deque(p for p in path.split("/") if p not in ("", "."))
        current: list[str] = []
        links = 0
        while parts:
            name = parts.popleft()
            if name == "..":
                if current:
                    current.pop()
                continue
            host = self.root.joinpath(*current, name)
            try:
                st = os.lstat(host)
            except OSError as exc:
                self.note_failure("/".join((*current, name)), exc)
                return None
            if stat.S_ISLNK(st.st_mode) and (parts or follow_last):
                links += 1
                if links > MAX_LINKS:
                    return None
                target = os.readlink(host)
                if target.startswith("/"):
                    current = []
                parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if parts and not stat.S_ISDIR(st.st_mode):
                return None
            current.append(name)
        return self.root.joinpath(*current)

    def resolve(self, path: str) -> Path | None:
        """The host path `path` leads to, all links followed; None if it does not exist."""
        return self._walk(path, follow_last=True)

    def lresolve(self, path: str) -> Path | None:
        """Like resolve, but a link at the end is not followed (for readlink, labels)."""
        return self._walk(path, follow_last=False)

    def is_dir(self, path: str) -> bool:
        host = self.resolve(path)
        return host is not None and host.is_dir()

    def is_file(self, path: str) -> bool:
        host = self.resolve(path)
        return host is not None and stat.S_ISREG(os.stat(host).st_mode)

    def exists(self, path: str) -> bool:
        return self.resolve(path) is not None

    def read_bytes(self, path: str, limit: int = MAX_READ, follow: bool = True
                   ) -> bytes | None:
        """Up to `limit` bytes of a regular file; None for anything missing or not a
        regular file (a directory, a FIFO, a device), and, without `follow`, for a link."""
        host = self.resolve(path) if follow else self.lresolve(path)
        if host is None:
            return None
        try:
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.note_failure(path, exc)  # unreadable is not "not there": the report says so
            return None
        try:
            # Checked on the descriptor: the name may have been swapped since it resolved.
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(limit)
        except OSError as exc:
            self.note_failure(path, exc)
            return None
        finally:
            os.close(fd)

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode("utf-8", errors="replace")

    def readlink(self, path: str) -> str | None:
        host = self.lresolve(path)
        if host is None or not host.is_symlink():
            return None
        return os.readlink(host)

    def listdir(self, path: str, pattern: str = "*") -> list[str]:
        """Sorted names in a directory matching `pattern`; [] if it is not a directory."""
        host = self.resolve(path)
        if host is None or not host.is_dir():
            return []
        try:
            return sorted(n for n in os.listdir(host) if fnmatch(n, pattern))
        except OSError as exc:
            self.note_failure(path, exc)
            return []

    def label(self, path: str) -> str | None:
        """The SELinux label of `path` (not following a final link), if it has one."""
        if self._labels is not None:
            return self._labels(path)
        host = self.lresolve(path)
        if host is None:
            return None
        try:
            value = os.getxattr(host, "security.selinux", follow_symlinks=False)
        except OSError:
            return None
        return value.rstrip(b"\0").decode("utf-8", errors="replace") or None
