"""Deterministic tar archives of a tree: shared by the tar assembler (v1) and stage (v2).

GNU tar writes the archive, entries sorted by name; a compressor may follow
in a pipe. Nothing in the output depends on the machine or the moment:
pax headers carry no pid, atime or ctime, mtimes are clamped to
SOURCE_DATE_EPOCH when it is set, and every compressor runs with settings
whose output does not depend on the machine (gzip -n has no name or time
stamp; multi-threaded xz and zstd give the same bytes for any number of
threads). The archive is written under a temporary name and renamed, so a
failure never leaves a truncated archive behind.

Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import os
import shutil
import subprocess
import tempfile

import osbuild.api

# Compressor command lines; each reads tar's stream on stdin and writes to stdout.
COMPRESSORS = {
    "gzip": ["gzip", "-n", "-c"],
    "xz": ["xz", "-c", "--threads=0"],
    "zstd": ["zstd", "-q", "-c", "-T0"],
    "bzip2": ["bzip2", "-c"],
    "lzip": ["lzip", "-c"],
    # The .lzma format has no multi-threaded mode, so it is single-threaded anyway.
    "lzma": ["xz", "--format=lzma", "-c"],
    "lzop": ["lzop", "-c"],
}

# File name endings and their compression, as tar --auto-compress knows them.
SUFFIXES = {
    ".gz": "gzip", ".tgz": "gzip", ".taz": "gzip",
    ".xz": "xz", ".txz": "xz",
    ".zst": "zstd", ".tzst": "zstd",
    ".bz2": "bzip2", ".tbz": "bzip2", ".tbz2": "bzip2", ".tz2": "bzip2",
    ".lz": "lzip",
    ".lzma": "lzma", ".tlz": "lzma",
    ".lzo": "lzop",
}

# Default pax header names contain the pid; atime and ctime change on every read.
PAX_OPTION = "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"


def compression_for_name(filename: str) -> str | None:
    """The compression a file name's ending asks for (tar's --auto-compress), or None."""
    _, ext = os.path.splitext(filename)
    return SUFFIXES.get(ext.lower())


def compressor(compression: str | None) -> list[str] | None:
    """The command line of a compression, checked to exist in the build root; None for none."""
    if not compression:
        return None
    command = COMPRESSORS.get(compression)
    if command is None:
        osbuild.api.fail(f"unknown compression {compression!r}")
    if shutil.which(command[0]) is None:
        osbuild.api.fail(
            f"compression {compression} needs {command[0]}, which the build root does not have"
        )
    return command


def tar_command(tree: str, fmt: str = "posix", acls: bool = True, selinux: bool = True,
                xattrs: bool = True, numeric_owner: bool = True, sparse: bool = False,
                transform: str | None = None, names_from: str | None = None) -> list[str]:
    """tar's command line to write the archive of `tree` to stdout.

    Without `names_from` the archive holds the whole tree as "./...". With it,
    the members are the NUL-separated names in that file, in its order,
    taken verbatim (a name starting with "-" is a name, not an option).
    """
    cmd = ["tar", "--create", "--file=-", f"--directory={tree}", f"--format={fmt}"]
    if numeric_owner:
        cmd += ["--numeric-owner"]
    cmd += ["--sort=name"]
    # Other formats have pax headers only for ACLs and xattrs; without them tar
    # refuses the option.
    if fmt == "posix" or acls or selinux or xattrs:
        cmd += [PAX_OPTION]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        cmd += [f"--mtime=@{epoch}", "--clamp-mtime"]
    if acls:
        cmd += ["--acls"]
    if selinux:
        cmd += ["--selinux"]
    if xattrs:
        cmd += ["--xattrs", "--xattrs-include=*"]
    if sparse:
        cmd += ["--sparse"]
    if transform:
        cmd += [f"--transform={transform}"]
    if names_from is None:
        return cmd + ["."]
    return cmd + ["--null", "--verbatim-files-from", f"--files-from={names_from}"]


def last_line(data: bytes) -> str:
    """The tool's last words, without tar's "Try 'tar --help'" hint after a usage error."""
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("Try '")]
    return lines[-1] if lines else "no error output"


def write_archive(command: list[str], compress: list[str] | None, target: str) -> None:
    """Run tar `command` (through `compress`) into file `target`, mode 0644, atomically."""
    fd, partial = tempfile.mkstemp(prefix=".partial-", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryFile() as errors:
            tar = subprocess.Popen(
                command, stdout=subprocess.PIPE if compress else out, stderr=errors
            )
            comp = None
            if compress:
                comp = subprocess.Popen(compress, stdin=tar.stdout, stdout=out, stderr=errors)
                assert tar.stdout is not None
                tar.stdout.close()  # so the compressor sees EOF and tar sees EPIPE
            tar_status = tar.wait()
            comp_status = comp.wait() if comp else 0
            if tar_status != 0 or comp_status != 0:
                errors.seek(0)
                failed = "tar" if tar_status != 0 else compress[0]  # type: ignore[index]
                osbuild.api.fail(f"{failed} failed: {last_line(errors.read())}")
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
