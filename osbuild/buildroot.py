"""Run one stage confined in bubblewrap on a build root's /usr.

The sandbox is not a security boundary; it keeps stages from touching the
host by accident: the build root is read-only, /dev is private, /run and
/tmp are fresh tmpfs, /proc/sys and /sys are read-only, there is no network,
capabilities with host-wide effects are withheld (osbuild/capabilities.py), and
only the tree, the inputs, the API directory and explicitly handed-in devices and
mounts are visible. A module's .meta.json may ask for more ("capabilities").
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import interrupts
from .api import API_DIR as API
from .capabilities import NETWORK, granted
from .errors import BuildRootError, ToolMissing

LIB = "/run/osbuild/lib"
TREE = "/run/osbuild/tree"
INPUTS = "/run/osbuild/inputs"
MOUNTS = "/run/osbuild/mounts"

# Directories that merged-/usr systems have as symlinks and others as real dirs.
TOP_LEVEL_USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

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
    timed_out: bool = False


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if not path:
        raise ToolMissing("bubblewrap (bwrap) is not installed", hint="apt-get install bubblewrap")
    return path


# How long a killed sandbox may take to empty before bwrap itself is killed.
SANDBOX_EXIT_SECONDS = 10.0


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (this kernel has no /proc/<pid>/task/<tid>/children)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{name}/stat").read_text() if name.isdigit() else ""
        except OSError:  # exited meanwhile
            continue
        if stat and int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(name))
    return found


def kill_sandbox(proc: subprocess.Popen) -> None:
    """Kill a sandbox with everything in it; return only once all of it is gone.

    SIGKILL to bwrap alone leaves its pid namespace to die in its own time, and a
    stage process still writing races the removal of the tree ("Directory not
    empty"). So the namespace's init, bwrap's child, is killed instead: the kernel
    lets it exit only when every other process of the namespace is gone, and bwrap
    exits right after it. A Ctrl-C meanwhile is held back until then.
    """
    held: list[BaseException] = []
    inits = _children(proc.pid)
    for pid in inits:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not inits:  # bwrap is still setting up: nothing runs inside yet
        proc.kill()
    deadline: float | None = time.monotonic() + SANDBOX_EXIT_SECONDS
    while proc.returncode is None:
        try:
            proc.wait(timeout=None if deadline is None else max(0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            deadline = None
        except BaseException as exc:  # deferred: re-raised once the sandbox is gone
            held.append(exc)
    if held:
        raise held[0]


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

    def command(self, tree: Path, api_dir: Path, binds: list[Bind], devices: list[str],
                capabilities: frozenset[str] = frozenset()) -> list[str]:
        """The bwrap command line; `capabilities` are the module's own (see capabilities.py)."""
        network = NETWORK in capabilities
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
        # dpkg's record of the build root, read-only: a stage may ask dpkg-query which
        # version of a tool it runs (debs runs some in place of the tree's, if the same).
        if (self.root / "var/lib/dpkg").is_dir():
            cmd += ["--ro-bind", str(self.root / "var/lib/dpkg"), "/var/lib/dpkg"]
        cmd += ["--dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys"]
        # bwrap leaves /proc/sys writable for root: most sysctls are global, so a
        # stage writing one would retune the host's kernel. Net sysctls still show
        # the sandbox's own network namespace through this bind.
        cmd += ["--ro-bind", "/proc/sys", "/proc/sys",
                "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
        cmd += ["--tmpfs", "/run", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        cmd += ["--ro-bind", str(self.libdir), LIB]
        cmd += ["--bind", str(api_dir), API]
        cmd += ["--bind", str(tree), TREE]
        for bind in binds:
            cmd += ["--ro-bind" if bind.readonly else "--bind", str(bind.source), bind.target]
        for device in devices:
            cmd += ["--dev-bind", device, device]
        # bwrap keeps root's capabilities by default: start from none and add the
        # granted ones (bwrap applies these options in order).
        cmd += ["--cap-drop", "ALL"]
        for cap in granted(capabilities):
            cmd += ["--cap-add", cap]
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
        capabilities: frozenset[str] = frozenset(),
        timeout: float | None = None,
    ) -> StageRun:
        """Run `executable` (a path relative to the libdir) through the runner.

        `workdir` is a private temporary directory for the API files. `capabilities`
        are what the module's meta.json asks for beyond the default. After `timeout`
        seconds the sandbox is killed with everything in its pid namespace, however deep
        or detached (see kill_sandbox).
        """
        self.check()
        api_dir = Path(tempfile.mkdtemp(prefix="api-", dir=workdir))
        args = dict(arguments, tree=TREE)
        (api_dir / "arguments").write_text(json.dumps(args), encoding="utf-8")
        cmd = self.command(tree, api_dir, binds or [], devices or [], capabilities)
        cmd += ["/usr/bin/python3", f"{LIB}/runners/{self.runner}", f"{LIB}/{executable}"]
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            kill_sandbox(proc)

        # A timer, not a read timeout: a hung stage may print nothing at all.
        timer = threading.Timer(timeout, expire) if timeout is not None else None
        # A session of its own keeps a terminal's Ctrl-C away from bwrap: bwrap dying
        # of it would leave its namespace to die unobserved; kill_sandbox() waits for it.
        proc = interrupts.popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, on_interrupt=kill_sandbox,
        )
        try:
            if timer is not None:
                timer.daemon = True
                timer.start()
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                tail.append(line)
                if on_output:
                    on_output(line)
            returncode = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                kill_sandbox(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        metadata = None
        meta_path = api_dir / "metadata"
        if returncode == 0 and meta_path.exists():
            try:
                metadata = json.loads(meta_path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise BuildRootError(f"{executable} returned metadata that is not JSON: {e}") from e
        shutil.rmtree(api_dir, ignore_errors=True)
        return StageRun(returncode, metadata, list(tail), expired.is_set() and returncode != 0)
