"""Run one stage confined in bubblewrap on a build root's /usr.

The sandbox is not a security boundary; it keeps stages from touching the
host by accident: the build root is read-only, /dev is private, /run and
/tmp are fresh tmpfs, there is no network, and only the tree, the inputs,
the API directory and explicitly handed-in devices and mounts are visible.
"""

import json
import os
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BuildRootError, ToolMissing

LIB = "/run/osbuild/lib"
TREE = "/run/osbuild/tree"
API = "/run/osbuild/api"
INPUTS = "/run/osbuild/inputs"
MOUNTS = "/run/osbuild/mounts"

# Directories that merged-/usr systems have as symlinks and others as real dirs.
TOP_LEVEL_USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# Capabilities a stage never needs; everything else root has is kept so that
# chown, chroot, mknod and friends work on the tree.
DROPPED_CAPS = (
    "CAP_SYS_MODULE",
    "CAP_SYS_BOOT",
    "CAP_SYS_TIME",
    "CAP_SYS_RAWIO",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BPF",
    "CAP_PERFMON",
)

TAIL_LINES = 20


@dataclass(frozen=True)
class Bind:
    """A host path made visible in the sandbox."""

    source: Path
    target: str
    readonly: bool = True


@dataclass
class StageRun:
    """What came back from one stage run."""

    returncode: int
    metadata: dict[str, Any] | None
    tail: list[str]


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if not path:
        raise ToolMissing("bubblewrap (bwrap) is not installed", hint="apt-get install bubblewrap")
    return path


class BuildRoot:
    """A sandbox whose /usr (and /etc) come from `root`: a build pipeline's tree or the host."""

    def __init__(self, root: Path, runner: str, libdir: Path, source_epoch: int | None = None):
        self.root = root
        self.runner = runner
        self.libdir = libdir
        self.source_epoch = source_epoch

    def check(self) -> None:
        """Fail early and clearly when the build root cannot run a stage."""
        if not (self.root / "usr").is_dir():
            raise BuildRootError(f"build root {self.root} has no /usr: "
                                 "the build pipeline made no OS tree")
        python = self.root / "usr/bin/python3"
        if not os.path.lexists(python):
            raise BuildRootError(f"build root {self.root} has no /usr/bin/python3, "
                                 "which stages need")
        if not (self.libdir / "runners" / self.runner).is_file():
            raise BuildRootError(f"runner {self.runner} not found in {self.libdir / 'runners'}")

    def command(self, tree: Path, api_dir: Path, binds: list[Bind],
                devices: list[str], network: bool = False) -> list[str]:
        # No user namespace: stages must be able to give files to any uid/gid.
        cmd = [bwrap_path(), "--unshare-ipc", "--unshare-pid", "--unshare-uts",
               "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        if not network:
            cmd.append("--unshare-net")
        cmd += ["--ro-bind", str(self.root / "usr"), "/usr"]
        for name in TOP_LEVEL_USR_LINKS:
            path = self.root / name
            if path.is_symlink():
                cmd += ["--symlink", os.readlink(path), f"/{name}"]
            elif path.is_dir():
                cmd += ["--ro-bind", str(path), f"/{name}"]
        # Debian's /usr needs /etc: alternatives, ld.so.cache, dpkg config.
        if (self.root / "etc").is_dir():
            cmd += ["--ro-bind", str(self.root / "etc"), "/etc"]
            # A stage that declares it needs the network resolves names like the host.
            resolv = Path(os.path.realpath("/etc/resolv.conf"))
            if network and resolv.is_file() and os.path.lexists(self.root / "etc/resolv.conf"):
                cmd += ["--ro-bind", str(resolv), "/etc/resolv.conf"]
        cmd += ["--dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys"]
        cmd += ["--tmpfs", "/run", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        cmd += ["--ro-bind", str(self.libdir), LIB]
        cmd += ["--bind", str(api_dir), API]
        cmd += ["--bind", str(tree), TREE]
        for bind in binds:
            cmd += ["--ro-bind" if bind.readonly else "--bind", str(bind.source), bind.target]
        for device in devices:
            cmd += ["--dev-bind", device, device]
        cmd += ["--cap-add", "ALL"]
        for cap in DROPPED_CAPS:
            cmd += ["--cap-drop", cap]
        env = {
            "PATH": "/usr/sbin:/usr/bin",
            "PYTHONPATH": LIB,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "LC_ALL": "C.UTF-8",
            "HOME": "/root",
            "container": "bwrap-osbuild",
        }
        if self.source_epoch is not None:
            env["SOURCE_DATE_EPOCH"] = str(self.source_epoch)
        cmd += ["--clearenv"]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        cmd += ["--chdir", "/"]
        return cmd

    def run(
        self,
        executable: str,
        arguments: dict[str, Any],
        tree: Path,
        workdir: Path,
        binds: list[Bind] | None = None,
        devices: list[str] | None = None,
        on_output: Callable[[str], None] | None = None,
        network: bool = False,
    ) -> StageRun:
        """Run `executable` (a path relative to the libdir) through the runner.

        `workdir` is a private temporary directory for the API files.
        """
        self.check()
        api_dir = Path(tempfile.mkdtemp(prefix="api-", dir=workdir))
        args = dict(arguments, tree=TREE)
        (api_dir / "arguments").write_text(json.dumps(args), encoding="utf-8")
        cmd = self.command(tree, api_dir, binds or [], devices or [], network)
        cmd += ["/usr/bin/python3", f"{LIB}/runners/{self.runner}", f"{LIB}/{executable}"]
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                tail.append(line)
                if on_output:
                    on_output(line)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        metadata = None
        meta_path = api_dir / "metadata"
        if returncode == 0 and meta_path.exists():
            try:
                metadata = json.loads(meta_path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise BuildRootError(f"{executable} returned metadata that is not JSON: {e}") from e
        shutil.rmtree(api_dir, ignore_errors=True)
        return StageRun(returncode, metadata, list(tail))
