"""Confinement: a stage that tries to damage the host fails at every try and changes nothing.

test_build.py's test_sandbox_confinement checks what a stage sees (no routes, no
disks in /dev, the epoch); this module attacks: writes, deletions, devices, kernel
settings, mounts, the network and other processes, each from inside the sandbox
with the test-only stage org.osbuild.test.hostile, then checks the host.
"""

import base64
import hashlib
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fileserver import FileServer, sha256
from harness import Osbuild

from osbuild.buildroot import BuildRoot
from osbuild.capabilities import (
    DEFAULT_CAPABILITIES,
    LINUX_CAPABILITIES,
    WITHHELD_CAPABILITIES,
    held,
)

ROOT = Path(__file__).resolve().parent.parent.parent

# Attempts that succeed, but only inside the sandbox: its /, /tmp and /var are a
# private tmpfs, and it has its own mount and UTS namespaces. The host checks
# below prove that none of them reached the host.
PRIVATE = {
    "create /tmp/{name}", "mkdir /tmp/{name}.d",
    "create /var/{name}", "mkdir /var/{name}.d",
    # /var/lib holds the build root's /var/lib/dpkg (read-only), in the sandbox's own root.
    "create /var/lib/{name}", "mkdir /var/lib/{name}.d",
    "create /{name}", "mkdir /{name}.d",
    "mount over /etc", "create in /etc after mounting over it",
    "mount in the tree", "create in the mount in the tree",
    "set the hostname",
}

# Why some attempts fail, for the ones where the reason is the point.
EXPECTED_ERRORS = {
    "create /etc/{name}": {"EROFS"}, "create /usr/{name}": {"EROFS"},
    "open /etc/resolv.conf for writing": {"EROFS"}, "rename /etc/hostname": {"EROFS"},
    "chmod /etc/shadow": {"EROFS"}, "create /root/{name}": {"ENOENT"},
    "create in the store's sources": {"ENOENT"}, "see the store at {store}": {"ENOENT"},
    "delete the output directory's canary": {"ENOENT"},
    "create in input tree": {"EROFS"}, "delete input files's file": {"EROFS"},
    "open input files's file for writing": {"EROFS"},
    "open /dev/loop0 for writing": {"ENOENT"},
    # bwrap mounts everything but --dev-bind devices nodev
    "mknod and open the host's disk in /dev": {"EACCES"},
    "mknod and open a loop device in /run/osbuild/tree": {"EACCES"},
    "mount the host's disk": {"EACCES"},
    "open /proc/sys/vm/swappiness for writing": {"EROFS"},
    "open /proc/sys/kernel/core_pattern for writing": {"EROFS"},
    "create a cgroup in {cgroup}": {"EROFS"},
    # dropped capabilities; ENOSYS where the kernel has no such feature at all
    "switch on process accounting": {"EPERM", "ENOSYS"},
    "load a kernel module": {"EPERM", "ENOSYS"},
    "reboot (the Ctrl-Alt-Del switch)": {"EPERM"},
    "connect to the test's HTTP server": {"ECONNREFUSED"},
    "connect to an external address": {"ENETUNREACH"},
    "kill process {pid}": {"ESRCH"}, "kill process group {pid}": {"ESRCH"},
}

SYSCTLS = ("vm/swappiness", "kernel/sysrq", "kernel/core_pattern", "fs/file-max")
HOST_DIRS = ("/etc", "/usr", "/usr/local", "/root", "/home", "/var", "/var/lib", "/tmp",
             "/opt", "/srv", "/boot", "/")


def file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def etc_snapshot() -> str:
    return subprocess.run([str(ROOT / "ci/etc-snapshot")], capture_output=True, text=True,
                          check=True).stdout


def host_mounts(workdir: Path) -> set[str]:
    """Host mounts the stage could have left: in the test's directory or where it mounted.

    Other tests mount and unmount elsewhere at the same time, so only these count.
    """
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        targets = {line.split()[4] for line in f}
    return {t for t in targets if t.startswith(str(workdir)) or t in ("/etc", "/tmp/hostile-mnt")}


def host_state(workdir: Path) -> dict[str, object]:
    return {
        "etc": etc_snapshot(),
        "resolv.conf": file_hash("/etc/resolv.conf"),
        "hostname file": file_hash("/etc/hostname"),
        "hostname": socket.gethostname(),
        "sysctls": {s: Path("/proc/sys", s).read_text() for s in SYSCTLS
                    if Path("/proc/sys", s).exists()},
        "mounts": host_mounts(workdir),
    }


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A host process the stage tries to kill, in a process group of its own."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def hostile_manifest(token: str, host: dict[str, str], port: int, pid: int,
                     data: bytes) -> dict:
    root = os.stat("/")
    fstype = next((line.split()[2] for line in Path("/proc/self/mounts").read_text().splitlines()
                   if line.split()[1] == "/"), "ext4")
    return {"version": "2",
            "sources": {"org.osbuild.inline": {"items": {sha256(data): {
                "encoding": "base64", "data": base64.b64encode(data).decode()}}}},
            "pipelines": [
                victim_pipeline(),
                {"name": "os", "stages": [{
                    "type": "org.osbuild.test.hostile",
                    "options": {"token": token, "host": host, "port": port, "pid": pid,
                                "device": {"major": os.major(root.st_dev),
                                           "minor": os.minor(root.st_dev)},
                                "fstype": fstype},
                    "inputs": {
                        "tree": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                                 "references": ["name:victim"]},
                        "files": {"type": "org.osbuild.files", "origin": "org.osbuild.source",
                                  "references": {sha256(data): {}}}}}]}]}


def victim_pipeline() -> dict:
    return {"name": "victim", "stages": [{"type": "org.osbuild.test.script",
                                          "options": {"script": "echo original > victim-file"}}]}


def test_hostile_stage_changes_nothing_on_the_host(osbuild: Osbuild, server: FileServer,
                                                   sleeper: subprocess.Popen) -> None:
    token = secrets.token_hex(8)
    name = f"osbuild-hostile-{token}"
    # Another pipeline's tree, committed to the store before the hostile build.
    osbuild.run({"version": "2", "pipelines": [victim_pipeline()]})
    (victim_id,) = [p.name for p in (osbuild.store / "objects").iterdir()
                    if not p.name.startswith(".")]
    other_tree = osbuild.store / "objects" / victim_id / "tree"
    osbuild.output.mkdir()
    (osbuild.output / "canary").write_text("still here")
    host = {"store": str(osbuild.store), "output": str(osbuild.output),
            "other tree": str(other_tree), "test directory": str(osbuild.workdir)}
    data = b"a source file the stage must not change"
    manifest = hostile_manifest(token, host, server.port, sleeper.pid, data)
    before = host_state(osbuild.workdir)
    try:
        result = osbuild.build_json(manifest, "--export", "os", "--output-directory",
                                    str(osbuild.output))
        after = host_state(osbuild.workdir)
    finally:
        leftovers = [f"{top.rstrip('/')}/{name}{suffix}" for top in HOST_DIRS
                     for suffix in ("", ".d", ".link")]
        leftovers += [f"/sys/fs/cgroup/unified/{name}", f"/sys/fs/cgroup/{name}"]
        found = [p for p in leftovers if os.path.lexists(p)]
        for path in found:  # clean up before failing, so one failure does not linger
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        assert not found, f"the stage created {found} on the host"

    assert result["success"] is True
    attempts = result["metadata"]["os"]["org.osbuild.test.hostile"]["attempts"]
    cgroup = next(p for p in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup") if os.path.exists(p))
    subst = {"name": name, "pid": sleeper.pid, "store": osbuild.store, "cgroup": cgroup}
    private = {p.format(**subst) for p in PRIVATE}
    succeeded = sorted(a for a, outcome in attempts.items() if outcome["ok"] and a not in private)
    assert not succeeded, f"these attempts reached the host: {succeeded}"
    assert len(attempts) >= 100
    for attempt, code in EXPECTED_ERRORS.items():
        outcome = attempts[attempt.format(**subst)]
        assert outcome["error"].split(":")[0] in code, (attempt, outcome)
    assert attempts["mount over /etc"]["ok"], "stages cannot mount any more: revisit PRIVATE"

    # The host is as it was.
    assert after == before
    assert sleeper.poll() is None, "a process outside the sandbox was killed"
    assert server.requests == {}, "the stage reached the host's network"
    assert (other_tree / "victim-file").read_text() == "original\n"
    assert (osbuild.store / "sources" / sha256(data)).read_bytes() == data
    assert (osbuild.output / "canary").read_text() == "still here"
    for place in (osbuild.store, osbuild.output, osbuild.workdir):
        assert not list(place.rglob(f"*{token}*")), place
    # The stage's own tree is exported as it left it, minus its private mount.
    tree = osbuild.output / "os"
    assert sorted(p.name for p in tree.iterdir()) == ["mnt"]
    assert list((tree / "mnt").iterdir()) == []


# A build root without libffi cannot import ctypes, which the stage needs.
BUILD_ROOT = {"name": "build", "stages": [
    {"type": "org.osbuild.test.pythonroot"},
    {"type": "org.osbuild.test.script", "options": {
        "script": "cp -a /usr/lib/x86_64-linux-gnu/libffi.so.* usr/lib/x86_64-linux-gnu/"}}]}


def test_hostile_stage_in_a_build_root_changes_nothing(osbuild: Osbuild, server: FileServer,
                                                       sleeper: subprocess.Popen) -> None:
    """The same attempts from a sandbox whose /usr is a build pipeline's tree in the store."""
    osbuild.run({"version": "2", "pipelines": [BUILD_ROOT]})
    (build_id,) = [p.name for p in (osbuild.store / "objects").iterdir()
                   if not p.name.startswith(".")]
    build_tree = osbuild.store / "objects" / build_id / "tree"
    snapshot = [str(ROOT / "ci/etc-snapshot"), "--root", str(build_tree)]
    build_before = subprocess.run(snapshot, capture_output=True, text=True, check=True).stdout
    token = secrets.token_hex(8)
    name = f"osbuild-hostile-{token}"
    osbuild.output.mkdir()
    (osbuild.output / "canary").write_text("still here")
    host = {"store": str(osbuild.store), "output": str(osbuild.output),
            "other tree": str(build_tree), "test directory": str(osbuild.workdir)}
    data = b"another source file"
    manifest = hostile_manifest(token, host, server.port, sleeper.pid, data)
    manifest["pipelines"].insert(0, BUILD_ROOT)
    manifest["pipelines"][-1]["build"] = "name:build"
    before = host_state(osbuild.workdir)
    result = osbuild.build_json(manifest)
    assert host_state(osbuild.workdir) == before
    attempts = result["metadata"]["os"]["org.osbuild.test.hostile"]["attempts"]
    # This build root has no /etc: the sandbox's empty / shows through there.
    private = {p.format(name=name) for p in PRIVATE} | {
        f"create /etc/{name}", f"mkdir /etc/{name}.d", "symlink /etc/osbuild-hostile"}
    assert not sorted(a for a, o in attempts.items() if o["ok"] and a not in private)
    assert attempts[f"create /usr/{name}"]["error"].startswith("EROFS")
    assert subprocess.run(snapshot, capture_output=True, text=True,
                          check=True).stdout == build_before
    assert sleeper.poll() is None and server.requests == {}
    assert not [p for p in HOST_DIRS if os.path.lexists(os.path.join(p, name))]


def test_stage_sandbox_ends_with_the_stage(osbuild: Osbuild) -> None:
    """A stage's background process dies with its sandbox instead of outliving the build."""
    token = secrets.token_hex(8)
    script = f"(sleep 300; echo {token}) > /dev/null 2>&1 & echo started"
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        {"type": "org.osbuild.test.script", "options": {"script": script}}]}]}
    osbuild.run(manifest)
    left = subprocess.run(["pgrep", "-f", f"echo {token}"], capture_output=True, text=True)
    if left.stdout.strip():
        for pid in left.stdout.split():
            os.kill(int(pid), signal.SIGKILL)
    assert not left.stdout.strip(), "a process started by a stage outlived the build"


# The capabilities with host-wide effects, which the sandbox has always withheld.
HOST_WIDE = {"CAP_SYS_MODULE", "CAP_SYS_BOOT", "CAP_SYS_TIME", "CAP_SYS_RAWIO", "CAP_MAC_ADMIN",
             "CAP_MAC_OVERRIDE", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BPF", "CAP_PERFMON",
             "CAP_SYS_PACCT", "CAP_AUDIT_CONTROL"}


def test_the_default_withholds_exactly_the_host_wide_capabilities() -> None:
    assert WITHHELD_CAPABILITIES == HOST_WIDE
    assert DEFAULT_CAPABILITIES | HOST_WIDE == set(LINUX_CAPABILITIES)


def sandbox_capabilities(libdir: Path, workdir: Path, asked: set[str]) -> set[str]:
    """The effective capabilities of a process in a stage's sandbox."""
    tree = workdir / "tree"
    tree.mkdir()
    args = {"options": {"script": "grep CapEff: /proc/self/status"}, "inputs": {},
            "devices": {}, "mounts": {}, "paths": {}, "meta": {"id": "0" * 64}}
    run = BuildRoot(Path("/"), "org.osbuild.linux", libdir).run(
        "stages/org.osbuild.test.script", args, tree, workdir, capabilities=frozenset(asked))
    assert run.returncode == 0 and run.metadata is not None, run.tail
    mask = int(run.metadata["stdout"].split()[1], 16)
    return {cap for bit, cap in enumerate(LINUX_CAPABILITIES) if mask >> bit & 1}


@pytest.mark.parametrize("asked", [set(), {"CAP_SYS_TIME", "network"}, set(LINUX_CAPABILITIES)],
                         ids=["default", "one-more", "all"])
def test_a_stage_gets_the_default_and_what_it_asks_for(libdir: Path, tmp_path: Path,
                                                       asked: set[str]) -> None:
    """Never more than the engine holds: bwrap would hand out all of root's capabilities
    when asked for one it cannot grant."""
    expected = (DEFAULT_CAPABILITIES | asked) & held()
    assert sandbox_capabilities(libdir, tmp_path, asked) == expected


def test_a_stage_reads_the_build_roots_dpkg_database_and_cannot_change_it(
        libdir: Path, tmp_path: Path) -> None:
    """dpkg-query answers for the build root's packages (read-only: a write fails)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    script = ("dpkg-query -W --showformat='${Version}\\n' dpkg && "
              "! touch /var/lib/dpkg/status 2>/dev/null")
    args = {"options": {"script": script}, "inputs": {}, "devices": {}, "mounts": {},
            "paths": {}, "meta": {"id": "0" * 64}}
    run = BuildRoot(Path("/"), "org.osbuild.linux", libdir).run(
        "stages/org.osbuild.test.script", args, tree, tmp_path)
    assert run.returncode == 0 and run.metadata is not None, run.tail
    host = subprocess.run(["dpkg-query", "-W", "--showformat=${Version}\n", "dpkg"],
                          capture_output=True, text=True, check=True).stdout
    assert run.metadata["stdout"] == host
