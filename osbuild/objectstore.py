"""The store: built trees keyed by stage id, downloaded sources keyed by checksum.

Layout under the store directory:

    format                   "osbuild-deb store 1"; anything else is wiped and rebuilt
    lock                     every user holds LOCK_SH; migration and prune --all take LOCK_EX
    objects/<id>/tree/       the tree a stage produced
    objects/<id>/info.json   {"size", "created", "metadata"}: metadata is cached with the
                             tree so a cached build reports what a fresh one does
    objects/<id>/last-used   its mtime is the last use, for LRU eviction
    objects/<id>/lock        readers hold LOCK_SH; eviction needs LOCK_EX|LOCK_NB
    objects/.<id>.<pid>-*/   a commit being staged, renamed to objects/<id> when complete
    sources/<checksum>       downloaded files; counted in the size limit, mtime = last use;
                             a build pins those it uses (SourcePins: hard links in its tmp
                             dir), and eviction skips files with more than one link
    tmp/<pid>-<prefix>-*/    private work dirs

Every staging and tmp dir is flock'ed by its owner while alive, so one left by a
killed build (unlocked, and its pid gone) is removed the next time a store is opened.
"""

import errno
import fcntl
import json
import os
import pwd
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import interrupts
from .errors import StoreError
from .fsutil import copy_tree, disk_usage, remove_tree
from .sizes import DEFAULT_MAX_SIZE

FORMAT = "osbuild-deb store 1\n"

# Entries a store dir may hold: ours, plus upstream osbuild's (refs/, stage/, ...),
# so an upstream store is recognised as an incompatible store rather than foreign data.
OUR_NAMES = {"format", "lock", "objects", "sources", "tmp"}
UPSTREAM_NAMES = {"refs", "stage", "metadata", "cache.info"}

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]*")


@dataclass(frozen=True)
class StoredObject:
    """A committed tree, valid while the `get()` block that returned it is open."""

    id: str
    tree: Path
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """One object or source, as `ls`, `du` and eviction see it."""

    kind: Literal["object", "source"]
    id: str
    size: int
    last_used: float


class ObjectStore:
    """Use as a context manager; every other method needs the store to be open."""

    def __init__(self, path: Path, max_size: int | None = DEFAULT_MAX_SIZE):
        self.path = Path(path)
        self.max_size = max_size
        self._objects = self.path / "objects"
        self._sources = self.path / "sources"
        self._tmp = self.path / "tmp"
        self._lock_fd: int | None = None
        self._tempdirs: dict[Path, int] = {}

    # -- opening and closing ------------------------------------------------

    def __enter__(self) -> "ObjectStore":
        try:
            self._state()  # a foreign directory fails here, before anything is created
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            if self._state() != "ok":
                self._create()
            self._remove_stale()
        except OSError as e:
            self.__exit__(None, None, None)
            raise StoreError(f"cannot open store {self.path}: {e}") from e
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for path in list(self._tempdirs):
            self._drop_tempdir(path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the store lock
            self._lock_fd = None

    def _state(self) -> Literal["ok", "empty", "incompatible"]:
        """Classify the directory; one that holds anything but a store is refused."""
        if not self.path.exists():
            return "empty"
        if not self.path.is_dir():
            raise StoreError(f"{self.path} is not an osbuild store (not a directory)")
        try:
            if (self.path / "format").read_text(encoding="utf-8") == FORMAT:
                return "ok"
        except (OSError, UnicodeDecodeError):
            pass
        names = set(os.listdir(self.path))
        if not names - {"lock", "tmp"}:
            return "empty"
        if names & {"format", "objects", "sources"} and names <= OUR_NAMES | UPSTREAM_NAMES:
            return "incompatible"
        raise StoreError(
            f"{self.path} is not an osbuild store (it holds other files); "
            "refusing to use it, pick an empty or store directory"
        )

    def _create(self) -> None:
        """Create the layout, or wipe and recreate an incompatible store, while no one uses it.

        The exclusive lock is polled for, not waited for: a process that created the store
        meanwhile builds under LOCK_SH at once, and a blocking wait would last that long.
        """
        assert self._lock_fd is not None
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass  # a failed conversion drops our LOCK_SH too
            if self._state() == "ok":
                fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
                return
            time.sleep(0.05)
        state = self._state()  # someone else may have done it while we waited
        if state == "incompatible":
            print(f"osbuild: {self.path}: incompatible store format, clearing it", file=sys.stderr)
            for name in (OUR_NAMES | UPSTREAM_NAMES) - {"lock"}:
                remove_tree(self.path / name)
        if state != "ok":
            for directory in (self._objects, self._sources, self._tmp):
                directory.mkdir(exist_ok=True)
            # Written last: a crash before this leaves a store that is rebuilt next time.
            (self.path / "format").write_text(FORMAT, encoding="utf-8")
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def _remove_stale(self) -> None:
        candidates = [(p, p.name) for p in self._tmp.iterdir()]
        candidates += [(p, p.name.rsplit(".", 1)[-1]) for p in self._objects.glob(".*")]
        for path, label in candidates:
            if _is_stale(path, label):
                remove_tree(path)

    # -- private work dirs --------------------------------------------------

    @contextmanager
    def tempdir(self, prefix: str = "tmp") -> Iterator[Path]:
        """A fresh directory on the store's filesystem, so trees can be renamed into it."""
        with interrupts.deferred():  # registered before an interrupt can strike: __exit__ drops it
            path, fd = _locked_mkdtemp(f"{os.getpid()}-{prefix}-", self._tmp)
            self._tempdirs[path] = fd
        try:
            yield path
        finally:
            self._drop_tempdir(path)

    def _drop_tempdir(self, path: Path) -> None:
        fd = self._tempdirs.pop(path, None)
        try:
            remove_tree(path)
        finally:
            if fd is not None:
                os.close(fd)

    # -- objects ------------------------------------------------------------

    def contains(self, object_id: str) -> bool:
        return (self._objects / _checked(object_id) / "info.json").exists()

    @contextmanager
    def get(self, object_id: str) -> Iterator[StoredObject | None]:
        """Yield the object (or None if not stored), protected from eviction inside the block.

        A reader waits for an eviction in progress instead of treating the object as a miss.
        """
        fd = self._lock_object(_checked(object_id), fcntl.LOCK_SH)
        if fd is None:
            yield None
            return
        try:
            directory = self._objects / object_id
            info = json.loads((directory / "info.json").read_text(encoding="utf-8"))
            os.utime(directory / "last-used")
            yield StoredObject(object_id, directory / "tree", info["metadata"])
        finally:
            os.close(fd)

    def commit(self, object_id: str, tree: Path, metadata: dict, copy: bool = False) -> Path:
        """Publish `tree` atomically as `object_id`; return the stored tree's path.

        With copy=False the tree is moved in and the caller must use the returned path
        from then on. Losing a race to another process committing the same id is
        success: same id, same tree. Use `committed()` to keep the object from eviction.
        """
        with self.committed(object_id, tree, metadata, copy) as obj:
            return obj.tree

    @contextmanager
    def committed(self, object_id: str, tree: Path, metadata: dict,
                  copy: bool = False) -> Iterator[StoredObject]:
        """`commit()`, and hold the object like `get()` does inside the block.

        The hold starts before the object is published: another build's eviction cannot
        take it between the commit and a `get()`, which would lose a moved-in tree.
        """
        fd = self._commit(_checked(object_id), tree, metadata, copy)
        try:
            yield StoredObject(object_id, self._objects / object_id / "tree", metadata)
        finally:
            os.close(fd)

    def _commit(self, object_id: str, tree: Path, metadata: dict, copy: bool) -> int:
        """Publish the tree; return an fd holding LOCK_SH on the stored object."""
        held = self._lock_object(object_id, fcntl.LOCK_SH)
        if held is not None:
            os.utime(self._objects / object_id / "last-used")
            return held  # stored already, by another build or an earlier run
        staged, fd = _locked_mkdtemp(f".{object_id}.{os.getpid()}-", self._objects)
        try:
            if not copy:
                try:
                    os.rename(tree, staged / "tree")
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    copy = True
            if copy:
                copy_tree(tree, staged / "tree")
            info = {
                "size": disk_usage(staged / "tree"),
                "created": time.time(),
                "metadata": metadata,
            }
            with open(staged / "info.json", "w", encoding="utf-8") as f:
                json.dump(info, f)
                f.flush()
                os.fsync(f.fileno())
            (staged / "lock").touch()
            (staged / "last-used").touch()
            _fsync_dir(staged)
            lock = os.open(staged / "lock", os.O_RDONLY)
            try:
                fcntl.flock(lock, fcntl.LOCK_SH)  # it moves with the directory
                held = self._publish(staged, object_id)
            except BaseException:
                os.close(lock)
                raise
            if held is None:
                return lock
            os.close(lock)
            return held
        finally:
            remove_tree(staged)  # gone already unless another process won the race
            os.close(fd)

    def _publish(self, staged: Path, object_id: str) -> int | None:
        """Rename `staged` into place: None if it is stored now, else a hold on the copy
        another process published first."""
        while True:
            try:
                os.rename(staged, self._objects / object_id)
                _fsync_dir(self._objects)
                return None
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            held = self._lock_object(object_id, fcntl.LOCK_SH)
            if held is not None:
                return held
            # Evicted again before we could hold it: publish ours after all.

    def _lock_object(self, object_id: str, operation: int) -> int | None:
        """flock an object's lock file; None if the object is gone (or busy, with LOCK_NB)."""
        lock = self._objects / object_id / "lock"
        while True:
            try:
                fd = os.open(lock, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                fcntl.flock(fd, operation)
                # Evicted (and maybe re-committed) while we waited? Then look again.
                if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                    return fd
            except BlockingIOError:
                os.close(fd)
                return None
            except FileNotFoundError:
                pass
            os.close(fd)

    # -- sources ------------------------------------------------------------

    def source_dir(self) -> Path:
        """Where sources store `<checksum>` files. Write them under another name (a
        `tempdir()` or a dot-name, both ignored) and rename into place when verified."""
        return self._sources

    @contextmanager
    def source_pins(self) -> Iterator["SourcePins"]:
        """A private dir for the sources one build reads, published to the store on exit.

        Publishing also runs while a failed build unwinds: what it downloaded is kept.
        """
        with self.tempdir("sources") as path:
            pins = SourcePins(self._sources, path)
            try:
                yield pins
            finally:
                pins.publish()

    # -- size accounting and eviction ---------------------------------------

    def entries(self) -> list[Entry]:
        """Every object and source, least recently used first."""
        found = []
        for path in self._objects.iterdir():
            if path.name.startswith("."):
                continue
            try:
                info = json.loads((path / "info.json").read_text(encoding="utf-8"))
                used = (path / "last-used").stat().st_mtime
            except (FileNotFoundError, NotADirectoryError):
                continue  # evicted meanwhile
            found.append(Entry("object", path.name, info["size"], used))
        for path in self._sources.iterdir():
            if path.name.startswith("."):
                continue
            try:
                found.append(Entry("source", path.name, disk_usage(path), path.lstat().st_mtime))
            except FileNotFoundError:
                continue
        return sorted(found, key=lambda entry: entry.last_used)

    def evict(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Drop least recently used entries until the store fits in max_size.

        `keep` holds object ids and source checksums the caller still needs; what another
        running build holds (objects it reads, sources it linked) is skipped too. So the
        store ends at or below max_size unless what is kept or in use exceeds it.
        """
        if self.max_size is None:
            return []
        return [entry.id for entry in self._shrink(self.max_size, keep)]

    def prune(self, max_size: int | None = None, everything: bool = False) -> list[Entry]:
        """Shrink to max_size (default: the store's limit), or remove everything unused.

        Removing everything takes the store lock exclusively, so it refuses to run while
        a build uses the store: sources that build needs are not protected otherwise.
        """
        if not everything:
            limit = self.max_size if max_size is None else max_size
            return [] if limit is None else self._shrink(limit)
        assert self._lock_fd is not None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            raise StoreError(
                f"{self.path} is in use by a build; try again when it is done"
            ) from None
        try:
            return self._shrink(0, everything=True)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def _shrink(
        self, limit: int, keep: set[str] | frozenset[str] = frozenset(), everything: bool = False
    ) -> list[Entry]:
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        removed: list[Entry] = []
        if total <= limit and not everything:
            return removed
        with self.tempdir("evict") as trash:
            for entry in entries:
                if total <= limit and not everything:
                    break
                if entry.id not in keep and self._move_out(entry, trash):
                    total -= entry.size
                    removed.append(entry)
        return removed

    def _move_out(self, entry: Entry, trash: Path) -> bool:
        """Atomically take an entry out of the store; False if it is gone or in use."""
        if entry.kind == "source":
            try:
                if (self._sources / entry.id).lstat().st_nlink > 1:
                    return False  # pinned by a running build (SourcePins): in use
                os.rename(self._sources / entry.id, trash / f"source-{entry.id}")
                return True
            except FileNotFoundError:
                return False
        fd = self._lock_object(entry.id, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            return False
        try:
            os.rename(self._objects / entry.id, trash / entry.id)
            return True
        finally:
            os.close(fd)


class SourcePins:
    """The store's source files one build reads, held in its own dir for as long as it runs.

    A pin is a hard link to the store's file: eviction skips files with more than one
    link, and another build's eviction may take the name out of the store, but never the
    file from under us. Sources download into `path` as well (a dot-name until verified),
    and `publish()` offers them to later builds.
    """

    def __init__(self, store_sources: Path, path: Path):
        self._sources = store_sources
        self.path = path

    def __contains__(self, checksum: str) -> bool:
        return (self.path / checksum).exists()

    def pin(self, checksum: str) -> bool:
        """Pin the store's file and mark it used now (for LRU); False if there is none."""
        pin = self.path / _checked(checksum)
        try:
            os.link(self._sources / checksum, pin)
        except (FileNotFoundError, FileExistsError):
            pass  # not in the store, or pinned (or downloaded) already
        try:
            os.utime(pin)  # the store's file too: one inode
        except FileNotFoundError:
            return False
        return True

    def publish(self) -> None:
        """Offer the files this build downloaded to later builds through the store.

        Best effort: it also runs while a failed build unwinds, and a file not
        published is only downloaded again.
        """
        for pin in self.path.iterdir():
            if pin.name.startswith("."):
                continue  # a download in progress or abandoned
            try:
                os.link(pin, self._sources / pin.name)
            except OSError:
                pass  # there already (another build was faster), or no room for the name


# -- helpers ---------------------------------------------------------------


def _checked(name: str) -> str:
    """Ids and checksums become file names: refuse anything that could escape the store."""
    if not SAFE_NAME.fullmatch(name):
        raise ValueError(f"invalid store key {name!r}")
    return name


def _locked_mkdtemp(prefix: str, parent: Path) -> tuple[Path, int]:
    """A new directory flock'ed by us for as long as the returned fd is open."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return path, fd


def _is_stale(path: Path, label: str) -> bool:
    """Left by a dead process: no one holds its flock and the pid its name starts with is gone.

    Both must hold: the pid alone lies across pid namespaces, and the flock alone is not
    yet taken in the instant between a live process's mkdtemp and its flock.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    pid = label.split("-", 1)[0]
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_store_path() -> Path:
    """$XDG_CACHE_HOME/osbuild, else /var/cache/osbuild for root, else ~/.cache/osbuild."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore relative values
        return Path(xdg) / "osbuild"
    if os.geteuid() == 0:
        return Path("/var/cache/osbuild")
    home = os.environ.get("HOME", "")
    if not os.path.isabs(home):
        home = pwd.getpwuid(os.getuid()).pw_dir
    return Path(home) / ".cache" / "osbuild"
