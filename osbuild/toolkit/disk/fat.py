"""FAT content written with mtools, without mounting: this kernel has no vfat driver.

Directories are copied in sorted order with their files' modification times,
the time zone is UTC and mtools stamps what it creates with SOURCE_DATE_EPOCH,
so the same files give the same bytes. Stdlib only, like osbuild.api: it runs
on the build root's Python.
"""

import os
from collections.abc import Iterator

from osbuild.api import fail
from osbuild.toolkit import tool


def mtools_env() -> dict[str, str]:
    """mtools settings that do not depend on the build root's configuration or clock zone.

    FAT stores local time, so the zone is fixed to UTC; mtools itself honours
    SOURCE_DATE_EPOCH for what it creates. The geometry check is skipped since
    images need not have a "standard" floppy or disk geometry.
    """
    env = dict(os.environ)
    env.update({"TZ": "UTC", "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0",
                "MTOOLS_LOWER_CASE": "0", "MTOOLSRC": "/dev/null"})
    return env


def fat_target(path: str, offset: int = 0) -> str:
    """mtools' name of a FAT file system at byte `offset` of an image or device."""
    return f"{path}@@{offset}" if offset else path


def fat_path(path: str) -> str:
    return "::" + ("/" + path.strip("/") if path.strip("/") else "/")


def fat_walk(source: str) -> Iterator[tuple[str, list[str]]]:
    """(directory relative to `source`, its files) for every directory, sorted, parents first."""
    for here, dirs, files in os.walk(source):
        dirs.sort()
        rel = os.path.relpath(here, source)
        rel = "" if rel == "." else rel
        for name in dirs + files:
            full = os.path.join(here, name)
            if os.path.islink(full):
                fail(f"{os.path.join(rel, name)}: FAT cannot hold symlinks")
            if name in files and not os.path.isfile(full):
                fail(f"{os.path.join(rel, name)}: FAT can hold only regular files and "
                     "directories")
        yield rel, sorted(files)


class FatFs:
    """A FAT file system that mtools writes to: `target` is an image@@offset or a device."""

    def __init__(self, target: str):
        self.target = target
        self.env = mtools_env()
        self.dirs: set[str] = {""}  # directories known to exist

    def mkdirs(self, path: str) -> None:
        """Make directory `path` and its missing parents; existing ones stay."""
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            here = "/".join(parts[:i])
            if here in self.dirs:
                continue
            # mmd fails on an existing directory, even with "-D s": look first.
            probe = tool.run(["mdir", "-b", "-i", self.target, fat_path(here)],
                             f"looking for {here} in the FAT file system", env=self.env,
                             check=False, quiet=True)
            if probe.returncode != 0:
                tool.run(["mmd", "-i", self.target, fat_path(here)],
                         f"making {here} in the FAT file system", env=self.env)
            self.dirs.add(here)

    def copy(self, source: str, dest: str) -> None:
        """Copy file or directory `source` (a host path) to path `dest` in the file system.

        A directory's content lands in `dest`, which is created with its parents;
        a file becomes `dest`. Everything is copied in sorted order with its
        modification time (mcopy -m), so the same tree gives the same bytes;
        existing files are overwritten.
        """
        if os.path.islink(source):
            fail(f"{source}: FAT cannot hold symlinks")
        if os.path.isdir(source):
            for rel, files in fat_walk(source):
                where = "/".join(p for p in (dest.strip("/"), rel) if p)
                self.mkdirs(where)
                if files:
                    srcs = [os.path.join(source, rel, f) for f in files]
                    self.mcopy(srcs, fat_path(where).rstrip("/") + "/")
            return
        if not os.path.isfile(source):
            fail(f"{source}: FAT can hold only regular files and directories")
        self.mkdirs(os.path.dirname(dest.strip("/")))
        self.mcopy([source], fat_path(dest))

    def mcopy(self, sources: list[str], dest: str) -> None:
        tool.run(["mcopy", "-m", "-p", "-Q", "-D", "o", "-i", self.target, *sources, dest],
                 f"copying to {dest}", env=self.env)

