"""The rootless backend: libguestfs mounts the file systems inside its appliance VM.

The appliance is a small VM booted with the host's kernel (supermin needs one
installed: linux-image-cloud-amd64 in ci/apt-packages.txt), started directly
by libguestfs (LIBGUESTFS_BACKEND=direct, no libvirt). It uses KVM only when
osbuild.accel's probe has seen KVM run that same host kernel to its end; where
/dev/kvm exists but guests hang or qemu aborts (the build hosts), it runs under
TCG (force_tcg), which makes a run take tens of seconds instead of the loop
backend's two. The libguestfs binding is in the system Python
(python3-guestfs), so it is driven through guestfs_server.py over a pipe.

The report is the same as the loop backend's: the files the report reads
(report.wanted_paths: tree.PATHS, bootloader.PATHS, sbom.PATHS with --sbom) are
copied out of the appliance into a scratch
directory and read there with the same code; the SELinux labels of the key
files are asked for one by one, since an unprivileged copy cannot keep them.
"""

import contextlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

from osbuild import accel
from osbuild.image_info import ImageInfoError, tree
from osbuild.image_info.backend_types import MountFailed, Unmount
from osbuild.image_info.disk import Partition
from osbuild.image_info.source import extract_tarball, scratch_dir
from osbuild.image_info.treeview import Tree

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("guestfs_server.py")


def _environment(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    # libguestfs's sockets and temporary files: in our scratch space, removed with it
    # even if the appliance dies. (Its appliance cache stays where libguestfs keeps it.)
    env["LIBGUESTFS_TMPDIR"] = str(scratch)
    # libvirt is neither running nor wanted here: qemu is started directly.
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    # The user's own settings win, and spare the probe.
    if "LIBGUESTFS_BACKEND_SETTINGS" not in env and not _kvm_usable():
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return env


def _kvm_usable() -> bool:
    """Whether the appliance may use KVM; libguestfs would take a broken KVM and hang or abort.

    osbuild.accel boots the host's kernel under KVM, the very kernel the appliance
    boots, and honours OSBUILD_BOOT_ACCEL=kvm|tcg.
    """
    if platform.machine() != "x86_64":
        # The probe runs qemu-system-x86_64; elsewhere KVM is used only when asked for.
        return os.environ.get("OSBUILD_BOOT_ACCEL") == "kvm"
    try:
        return accel.probe().name == "kvm"
    except OSError:
        return False  # no qemu to probe with: libguestfs reports that itself


class GuestfsBackend:
    name = "guestfs"

    def __init__(self, image: Path, stack: contextlib.ExitStack):
        self.image = image
        self.scratch = scratch_dir(stack)
        self.log: IO[str] = stack.enter_context(tempfile.TemporaryFile("w+"))
        try:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVER), str(image)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self.log, text=True, env=_environment(self.scratch),
                cwd=self.scratch)
        except FileNotFoundError:
            raise ImageInfoError(f"the guestfs backend needs {SYSTEM_PYTHON} "
                                 "with python3-guestfs") from None
        stack.callback(self._stop)
        self._answer()  # "ready" once the appliance has booted

    def _stop(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _answer(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            lines = [x.strip() for x in self.log.read().splitlines() if x.strip()]
            why = lines[-1] if lines else "it exited"
            raise ImageInfoError(f"libguestfs failed: {why}")
        answer = json.loads(line)
        if "error" in answer:
            raise ImageInfoError(f"libguestfs: {answer['error']}")
        return answer["ok"]

    def call(self, op: str, *args: Any) -> Any:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, "args": list(args)}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # _answer reports why the server is gone
        return self._answer()

    def mount(self, part: Partition | None, target: str, fstype: str,
              options: list[str]) -> Unmount:
        device = "/dev/sda" if part is None else f"/dev/sda{part.number}"
        try:
            self.call("mount", device, target, ",".join(options))
        except ImageInfoError as exc:
            raise MountFailed(f"mounting {device} ({fstype}) at {target}: {exc}") from None
        return lambda: self.call("umount", target)

    def exists(self, path: str) -> bool:
        return bool(self.call("exists", "/" + path.lstrip("/")))

    def read_text(self, path: str) -> str | None:
        path = "/" + path.lstrip("/")
        if not self.call("is_file", path):
            return None
        return str(self.call("cat", path))

    def _fetch(self, path: str, dest: Path) -> None:
        """Copy `path` of the guest to `dest`, recreating links on the way instead of following
        them (what a link leads to is fetched as a path of its own, when it is needed)."""
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            guest = "/" + "/".join(parts[:i])
            local = dest / "/".join(parts[:i])
            if self.call("is_symlink", guest):
                if not local.is_symlink():
                    local.parent.mkdir(parents=True, exist_ok=True)
                    local.symlink_to(self.call("readlink", guest))
                return
            if not self.call("exists", guest):
                return
        guest = "/" + path
        local = dest / path
        local.parent.mkdir(parents=True, exist_ok=True)
        if self.call("is_dir", guest):
            archive = self.scratch / "fetch.tar"
            self.call("tar_out", guest, str(archive))
            local.mkdir(exist_ok=True)
            extract_tarball(archive, None, local)
            archive.unlink()
        elif self.call("is_file", guest):
            self.call("download", guest, str(local))

    def tree(self, paths: tuple[str, ...] | None) -> Tree:
        dest = self.scratch / "tree"
        dest.mkdir()
        if paths is None:  # --packages-verify reads every installed file: one tar of all of it
            archive = self.scratch / "tree.tar"
            self.call("tar_out", "/", str(archive))
            extract_tarball(archive, None, dest)
            archive.unlink()
        for path in paths or ():
            self._fetch(path, dest)
        labels = {p: self.call("xattr", p, "security.selinux") for p in tree.LABELLED_FILES}
        return Tree(dest, labels=labels.get)
