"""The shared toolkit of stages: paths in the tree, files, directories, locations.

Stages work on a tree that is not the root of the system running them, so every
path an option or a constant names must mean what it will mean in the booted
image: symlinks in the tree are followed, an absolute one counting from the
tree's root. And nothing a manifest or a crafted tree says may make a stage
touch the build root or the host: a `..` that climbs out of the tree, in a path
or in a symlink, is refused. Every stage does this the same way, here.

Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import os
import posixpath
import stat
from typing import Any

import osbuild.api

# As the kernel's MAXSYMLINKS: a loop of symlinks is an error, not a hang.
MAX_SYMLINKS = 40

# URL scheme -> the key of the stage's arguments that names the places.
SCHEMES = {"input": "inputs", "mount": "mounts"}


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def tree_path(root: str, path: str, follow: bool = True) -> str:
    """Return the host path of `path` in the tree at `root`, as the booted image resolves it.

    Symlinks are followed inside the tree: absolute targets count from `root`.
    A `..` that climbs above `root`, in `path` or in a symlink, ends the stage
    rather than being clamped, so nothing outside is ever touched. With `follow`
    false a symlink in the last component is kept, not resolved (for replacing
    or linking it). Missing components are fine: the result names what to create.
    """
    return os.path.join(root, *_resolve(root, path, follow))


def _resolve(root: str, path: str, follow: bool) -> list[str]:
    """The components of tree_path's result below `root`."""
    todo = _components(path)
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not done:
                osbuild.api.fail(f"{path} leads outside of {root}")
            done.pop()
            continue
        here = os.path.join(root, *done, part)
        if (todo or follow) and os.path.islink(here):
            hops += 1
            if hops > MAX_SYMLINKS:
                osbuild.api.fail(f"{path}: too many levels of symbolic links")
            link = os.readlink(here)
            if link.startswith("/"):
                done = []
            todo[:0] = _components(link)
            continue
        done.append(part)
    return done


def make_dirs(root: str, path: str, mode: int = 0o755) -> str:
    """Create directory `path` of the tree at `root` and its missing parents; return its host path.

    New directories get exactly `mode`, whatever the umask, so trees do not depend
    on who builds them; existing ones are left as they are. For the parents of a
    host path `p` that tree_path returned, pass os.path.relpath(dirname(p), root):
    a resolved path resolves to itself.
    """
    parts = _resolve(root, path, follow=True)
    here = root
    for part in parts:
        here = os.path.join(here, part)
        if os.path.isdir(here) and not os.path.islink(here):
            continue
        if os.path.lexists(here):
            osbuild.api.fail(f"{here} exists and is not a directory")
        os.mkdir(here)
        os.chmod(here, mode)  # os.mkdir's mode is filtered by the umask
    return os.path.join(root, *parts)


def write_file(root: str, path: str, content: "str | bytes", mode: int = 0o644,
               owner: tuple[int, int] | None = None) -> str:
    """Write `content` (text or bytes) to `path` in the tree at `root`; return its host path.

    The file gets exactly `mode` and, when given, `owner` as (uid, gid).
    Whatever is at `path` is replaced, never written through: a symlink there
    gives way to the new file, so its target (maybe outside the tree, maybe a
    file another package owns) is untouched. Missing parents are made by make_dirs.
    """
    if posixpath.basename(path) in ("", ".", ".."):
        osbuild.api.fail(f"{path} is not a file name")
    target = tree_path(root, path, follow=False)
    make_dirs(root, os.path.relpath(os.path.dirname(target), root))
    if os.path.isdir(target) and not os.path.islink(target):
        osbuild.api.fail(f"{path} is a directory in the tree")
    if os.path.lexists(target):
        os.unlink(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask
        if owner is not None:
            os.fchown(fd, *owner)
        f.write(content.encode("utf-8") if isinstance(content, str) else content)
    return target


def split_url(url: str, args: dict[str, Any]) -> tuple[str, str]:
    """Return (host root, path inside it) for a location option.

    A location is a plain path in the tree, tree:///<path>, mount://<name>/<path>
    or input://<name>/<path>. `args` holds "tree" and the stage's "mounts" and
    "inputs" as the engine passes them; a stage that must not reach one kind
    leaves its key out, and a URL naming it then fails.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return args["tree"], url
    if scheme == "tree":
        return args["tree"], rest
    name, _, path = rest.partition("/")
    key = SCHEMES.get(scheme)
    places = (args.get(key) if key else None) or {}
    if name not in places:
        osbuild.api.fail(f"{url}: the stage has no {scheme} named '{name}'")
    return places[name]["path"], path


def locate(url: str, args: dict[str, Any], follow: bool = True) -> str:
    """Return the host path of a location option (see split_url), resolved by tree_path."""
    root, path = split_url(url, args)
    return tree_path(root, path, follow)


def disk_usage(path: "str | os.PathLike[str]") -> int:
    """Bytes allocated for `path` and everything under it, hardlinked files counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    pending = [str(path)]
    while pending:
        current = pending.pop()
        st = os.lstat(current)
        if stat.S_ISDIR(st.st_mode):
            pending.extend(entry.path for entry in os.scandir(current))
        elif st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
    return total
