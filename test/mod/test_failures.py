"""Builds that go wrong end cleanly: failing assemblers, full disks, hanging or killed stages.

Every case checks the exit status, one clear `osbuild: error:` line, that the store
holds nothing beyond the checkpoints made before the failure (no half-committed or
staged object), that the store's tmp area is empty, that no output appeared, and that
no sandbox process, mount or loop device is left. A stage that simply exits non-zero
is covered by test_build.py (test_failed_stage_reports_and_commits_nothing).
"""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import Osbuild

from osbuild.pipeline import SpaceWatch

ROOT = Path(__file__).resolve().parent.parent.parent
STAGE_PROCESS = ["/usr/bin/python3", "/run/osbuild/lib/stages/org.osbuild.test.script"]
MiB = 1024 * 1024

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")


@pytest.fixture
def osb(osbuild: Osbuild) -> Osbuild:
    return osbuild


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique `sleep` argument that finds this test's sleepers, which are killed if a
    broken engine leaves them behind (so a failing test leaks nothing either)."""
    value = str(random.randrange(10**8, 10**9))
    yield value
    for pid in pids_running(["sleep", value]):
        os.kill(pid, signal.SIGKILL)


# -- helpers -------------------------------------------------------------------


def stage(name: str, **options: object) -> dict:
    return {"type": f"org.osbuild.{name}", "options": options}


def v1_stage(name: str, **options: object) -> dict:
    return {"name": f"org.osbuild.{name}", "options": options}


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def pids_running(argv: list[str]) -> list[int]:
    return [pid for pid in all_pids() if cmdline(pid) == argv]


def pids_mentioning(text: str) -> list[int]:
    return [pid for pid in all_pids() if any(text in arg for arg in cmdline(pid))]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        children.setdefault(parent(pid), []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stored(osb: Osbuild) -> set[str]:
    """Object ids in the store; a staged (dot) entry would show up here too."""
    objects = osb.store / "objects"
    return {p.name for p in objects.iterdir()} if objects.exists() else set()


def leaks(osb: Osbuild, marker: str | None = None) -> list[str]:
    """Processes, mounts and loop devices that still refer to this test."""
    found = [f"process {pid}: {' '.join(cmdline(pid))}"
             for pid in pids_mentioning(str(osb.workdir))]
    if marker:
        found += [f"process {pid}: sleep {marker}" for pid in pids_running(["sleep", marker])]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                            text=True).stdout
    found += [line for line in (loops + mounts).splitlines()
              if str(osb.workdir) in line and "/small" not in line]
    return found


def error_line(proc: subprocess.CompletedProcess[str], returncode: int = 1) -> str:
    """The one error line of a failed build, after checking the common promises."""
    assert proc.returncode == returncode, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("osbuild: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def assert_clean(osb: Osbuild, kept: set[str], marker: str | None = None) -> None:
    assert stored(osb) == kept
    tmp = osb.store / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir())
    assert leaks(osb, marker) == []


def stage_ids(osb: Osbuild, manifest: dict) -> list[str]:
    """Every stage's id (v1: the tree's stages, then the assembler), as --inspect says."""
    doc = json.loads(osb.run(manifest, "--inspect").stdout)
    if "pipeline" in doc:
        return [s["id"] for s in doc["pipeline"]["stages"]] + [doc["output_id"]]
    return [s["id"] for p in doc["pipelines"] for s in p["stages"]]


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small file system to fill; always unmounted, also when the test fails."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def start(osb: Osbuild, manifest: dict, *args: str) -> subprocess.Popen[str]:
    path = osb.workdir / "manifest.json"
    path.write_text(json.dumps(manifest))
    cmd = [sys.executable, "-m", "osbuild", "--libdir", str(osb.libdir),
           "--store", str(osb.store), str(path), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=osb.workdir)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- failing assemblers ----------------------------------------------------------


def qemu_manifest(size: int) -> dict:
    return {"pipeline": {
        "stages": [v1_stage("test.script", script="head -c 6M /dev/urandom > big")],
        "assembler": {"name": "org.osbuild.qemu", "options": {
            "format": "qcow2", "filename": "disk.qcow2", "size": size, "pttype": "gpt",
            "ptuuid": "6d3c5a52-1b3e-4c40-9b4e-0c4f1f1b7a11",
            "root_fs_uuid": "0e5e9a9c-2f43-4f0b-8f4f-1c8e4f7c9a22"}}}}


def test_failing_qemu_assembler_commits_and_exports_nothing(osb: Osbuild) -> None:
    """The real qemu assembler fails at run time: the tree does not fit the disk."""
    manifest = qemu_manifest(4 * MiB)
    tree_id = stage_ids(osb, manifest)[0]
    proc = osb.run(manifest, "--json", "--export", "assembler", "--output-directory",
                   str(osb.output), check=False)
    line = error_line(proc)
    assert "stage org.osbuild.qemu" in line and "pipeline 'assembler'" in line
    assert "exit status 1" in line
    assert "is too small for the tree" in proc.stderr and "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)
    assert result["success"] is False and result["assembler"]["success"] is False
    assert not osb.output.exists()
    assert_clean(osb, {tree_id})  # the complete tree stays; no image object
    # The store is fine: a disk that fits builds, reusing the tree.
    fits = osb.build_json(qemu_manifest(64 * MiB), "--export", "assembler",
                          "--output-directory", str(osb.output))
    assert fits["stages"][0]["cached"] is True and fits["assembler"]["cached"] is False
    assert (osb.output / "assembler/disk.qcow2").stat().st_size > 6 * MiB


def test_assembler_that_fails_halfway_leaves_no_partial_output(osb: Osbuild) -> None:
    manifest = {"pipeline": {
        "stages": [v1_stage("test.metadata", file="a", content="A")],
        "assembler": {"name": "org.osbuild.test.script", "options": {"script":
            "cp -a $TREE/. . && head -c 1M /dev/zero > disk.img && "
            "echo assembler broke >&2 && exit 5"}}}}
    tree_id = stage_ids(osb, manifest)[0]
    proc = osb.run(manifest, "--export", "assembler", "--output-directory", str(osb.output),
                   check=False)
    line = error_line(proc)
    assert "org.osbuild.test.script" in line and "pipeline 'assembler'" in line
    assert "exit status 5" in line and "assembler broke" in proc.stderr
    assert not osb.output.exists()
    assert_clean(osb, {tree_id})


# -- full disks ----------------------------------------------------------------


@needs_root
def test_stage_filling_the_store(osb: Osbuild) -> None:
    with tmpfs(osb.workdir / "small", "8M") as small:
        osb.store = small / "store"
        manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
            stage("test.metadata", file="a", content="A"),
            stage("test.script", script="head -c 20M /dev/zero > big")]}]}
        first = stage_ids(osb, manifest)[0]
        proc = osb.run(manifest, "--checkpoint", "org.osbuild.test.metadata", check=False)
        line = error_line(proc)
        assert f"no space left on device in the store {osb.store}" in line
        assert "org.osbuild.test.script" in line and "pipeline 'os'" in line
        assert "osbuild: hint: free some space" in proc.stderr
        assert_clean(osb, {first})  # the checkpoint before the failure stays
        # The store still works: the space the failed stage took is back.
        small_build = {"version": "2", "pipelines": [{"name": "os", "stages": [
            stage("test.metadata", file="a", content="A"),
            stage("test.metadata", file="b", content="B")]}]}
        result = osb.build_json(small_build)
        assert [s["cached"] for s in result["pipelines"]["os"]["stages"]] == [True, False]
        assert shutil.disk_usage(small).used < 1 * MiB
        assert_clean(osb, {first, stage_ids(osb, small_build)[1]})


@needs_root
def test_checkpoint_copy_filling_the_store(osb: Osbuild) -> None:
    """The stage fits, keeping a copy of its tree does not: the engine's own write fails."""
    with tmpfs(osb.workdir / "small", "8M") as small:
        osb.store = small / "store"
        manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
            stage("test.script", script="head -c 5M /dev/urandom > big"),
            stage("test.metadata", file="b")]}]}
        proc = osb.run(manifest, "--checkpoint", "*", check=False)
        line = error_line(proc)
        assert line == f"osbuild: error: no space left on device in the store {osb.store}"
        assert "Traceback" not in proc.stderr
        assert_clean(osb, set())  # no half-copied object, no staged dot-directory
        proc = osb.run(manifest)  # without the checkpoint it fits
        assert_clean(osb, {stage_ids(osb, manifest)[1]})


# Fills the store, then prints far more than the kept tail and than the pipe between stage
# and engine holds (64 KiB): by the time the last line is written, the engine has read the
# first ones, while the store was still full. Then it frees the space and fails.
FILL_THE_STORE = """head -c 64M /dev/zero > big{quiet}
i=0
while [ $i -lt 100 ]; do i=$((i + 1)); printf 'rolling back %d %01000d\\n' $i 0; done
rm big
exit 1"""


@needs_root
@pytest.mark.parametrize("quiet", ["", " 2>/dev/null"], ids=["said", "silent"])
def test_store_full_while_the_stage_ran(osb: Osbuild, quiet: str) -> None:
    """dpkg into a nearly full store: ENOSPC far above the tail, space free again at exit."""
    with tmpfs(osb.workdir / "small", "8M") as small:
        osb.store = small / "store"
        manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
            stage("test.script", stream=True, script=FILL_THE_STORE.format(quiet=quiet))]}]}
        stage_id = stage_ids(osb, manifest)[0]
        proc = osb.run(manifest, check=False)
        line = error_line(proc)
        assert line == (f"osbuild: error: stage org.osbuild.test.script ({stage_id[:12]}) "
                        "in pipeline 'os' failed with exit status 1: no space left on device "
                        f"in the store {osb.store}")
        assert ("osbuild: hint: free some space there ('osbuild store prune', a smaller "
                "--cache-max-size), or point --store at a larger file system") in proc.stderr
        # head's own words (none when quiet) came 100 lines before the end, far above the
        # tail the engine keeps and shows.
        log = proc.stdout.splitlines()
        said = [i for i, text in enumerate(log) if "No space left on device" in text]
        assert len(said) == (0 if quiet else 1), log[:5]
        assert all(log[i + 1 + n].endswith(f"rolling back {n + 1} " + "0" * 1000)
                   for i in said for n in range(100)), log[:5]
        shown = proc.stderr.split("osbuild: last lines of org.osbuild.test.script's output:")[1]
        assert shown.endswith("rolling back 100 " + "0" * 1000 + "\n")
        assert "space" not in shown
        assert shutil.disk_usage(small).used < 1 * MiB  # free again when the stage ended
        assert_clean(osb, set())


@needs_root
def test_no_space_said_of_another_file_system(osb: Osbuild) -> None:
    """A stage's tool may fill an image it makes: with room in the store, that is no cause."""
    with tmpfs(osb.workdir / "small", "64M") as small:
        osb.store = small / "store"
        manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [stage(
            "test.script", stream=True,
            script="echo 'mkfs: write to disk.img: No space left on device' >&2; exit 1")]}]}
        proc = osb.run(manifest, check=False)
        line = error_line(proc)
        assert line.endswith("in pipeline 'os' failed with exit status 1"), line
        assert "hint" not in proc.stderr and "No space left on device" in proc.stderr
        assert_clean(osb, set())


@needs_root
def test_space_watch_sees_a_full_file_system_between_lines(osb: Osbuild) -> None:
    """With no output to look on, the watch still samples the file system on its own."""
    with tmpfs(osb.workdir / "small", "4M") as small:
        with SpaceWatch(small) as watch:
            assert not watch.ran_short()
            with open(small / "big", "wb") as f, pytest.raises(OSError) as full:
                while True:
                    f.write(b"\0" * MiB)
                    f.flush()
            assert full.value.errno == errno.ENOSPC
            wait_for(watch.ran_short, "the watch to see the full file system")
            (small / "big").unlink()
        assert watch.ran_short() and not watch.said
        assert shutil.disk_usage(small).free > 3 * MiB


@needs_root
def test_export_to_a_full_output_directory(osb: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [
        {"name": "big", "stages": [stage("test.script", script="head -c 6M /dev/urandom > f")]},
        {"name": "tiny", "stages": [stage("test.metadata", file="t", content="T")]}]}
    ids = stage_ids(osb, manifest)
    with tmpfs(osb.workdir / "small", "4M") as small:
        output = small / "out"
        proc = osb.run(manifest, "--export", "big", "--output-directory", str(output),
                       check=False)
        line = error_line(proc)
        assert line == f"osbuild: error: no space left on device in the output directory {output}"
        assert "--output-directory" in proc.stderr and "Traceback" not in proc.stderr
        assert list(small.iterdir()) == []  # no partial export, not even the directory
        assert_clean(osb, {ids[0]})  # the pipeline itself was built completely
        osb.run(manifest, "--export", "tiny", "--output-directory", str(output))
        assert [p.name for p in output.iterdir()] == ["tiny"]
        assert (output / "tiny/t").read_text() == "T"


# -- hanging stages ------------------------------------------------------------


def test_hanging_stage_is_killed_at_the_timeout(osb: Osbuild, marker: str) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.metadata", file="a"),
        # One sleeper in the stage, one detached into its own session: both must die.
        stage("test.script", script=f"echo started; (setsid sleep {marker} &); "
                                    f"sleep {marker}")]}]}
    first = stage_ids(osb, manifest)[0]
    began = time.monotonic()
    running = start(osb, manifest, "--stage-timeout", "2", "--checkpoint",
                    "org.osbuild.test.metadata", "--json")
    try:
        wait_for(lambda: len(pids_running(["sleep", marker])) == 2, "both sleepers")
        proc = finish(running, timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    elapsed = time.monotonic() - began
    assert elapsed < 2 + 8, elapsed
    line = error_line(proc)
    assert "stage org.osbuild.test.script" in line and "pipeline 'os'" in line
    assert "timed out after 2 s (--stage-timeout) and was killed" in line
    error = json.loads(proc.stdout)["error"]
    assert error["type"] == "StageTimeout" and error["timeout"] == 2
    assert error["pipeline"] == "os" and error["stage"] == "org.osbuild.test.script"
    assert_clean(osb, {first}, marker)


def test_hanging_stage_with_a_busy_mount_is_killed_and_unmounted(osb: Osbuild,
                                                                 marker: str) -> None:
    device = {"root": {"type": "org.osbuild.loopback",
                       "options": {"filename": "disk.img", "start": 0, "size": 16 * MiB // 512}}}
    hang = stage("test.script", script=f"cd $MOUNT_root && touch busy && sleep {marker}")
    hang["devices"] = device
    hang["mounts"] = [{"name": "root", "type": "org.osbuild.ext4", "source": "root",
                       "target": "/"}]
    mkfs = stage("test.script", script="mkfs.ext4 -q $DEVICE_root")
    mkfs["devices"] = device
    manifest = {"version": "2", "pipelines": [{"name": "image", "stages": [
        stage("test.script", script="truncate -s 16M disk.img"), mkfs, hang]}]}
    ids = stage_ids(osb, manifest)
    began = time.monotonic()
    proc = osb.run(manifest, "--stage-timeout", "3", "--checkpoint", "*", check=False)
    assert time.monotonic() - began < 3 + 10
    line = error_line(proc)
    assert "pipeline 'image'" in line and "timed out after 3 s" in line
    assert_clean(osb, set(ids[:2]), marker)  # and no mount or loop device left


def test_hanging_assembler_is_killed_and_exports_nothing(osb: Osbuild, marker: str) -> None:
    manifest = {"pipeline": {
        "stages": [v1_stage("test.metadata", file="a")],
        "assembler": {"name": "org.osbuild.test.script", "options": {
            "script": f"cp -a $TREE/. . && echo partial > disk.img && sleep {marker}"}}}}
    tree_id = stage_ids(osb, manifest)[0]
    proc = osb.run(manifest, "--stage-timeout", "1.5", "--monitor", "JSONSeqMonitor",
                   "--export", "assembler", "--output-directory", str(osb.output), check=False)
    line = error_line(proc)
    assert "pipeline 'assembler'" in line and "timed out after 1.5 s" in line
    records = [json.loads(chunk) for chunk in proc.stdout.split("\x1e") if chunk.strip()]
    assert records[-1]["result"]["success"] is False
    assert "timed out after 1.5 s" in records[-1]["result"]["error"]
    assert not osb.output.exists()
    assert_clean(osb, {tree_id}, marker)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_bad_stage_timeout_is_rejected(osb: Osbuild, value: str) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [stage("noop")]}]}
    proc = osb.run(manifest, f"--stage-timeout={value}", check=False)
    assert proc.returncode == 2
    assert "--stage-timeout" in proc.stderr.splitlines()[-1]
    assert not osb.store.exists()


# -- stages killed from outside ----------------------------------------------------


@pytest.mark.parametrize("victim, sig, expected", [
    ("stage", signal.SIGKILL, "failed with exit status 137 (killed by signal SIGKILL)"),
    ("stage", signal.SIGTERM, "failed with exit status 143 (killed by signal SIGTERM)"),
    ("sandbox", signal.SIGKILL, "was killed by signal SIGKILL"),
])
def test_stage_killed_from_outside(osb: Osbuild, marker: str, victim: str, sig: int,
                                   expected: str) -> None:
    """Say an OOM killer or an admin: the stage's process (or bwrap itself) gets a signal."""
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.metadata", file="a"),
        stage("test.script", script=f"sleep {marker}")]}]}
    first = stage_ids(osb, manifest)[0]
    proc = start(osb, manifest, "--checkpoint", "org.osbuild.test.metadata")
    try:
        wait_for(lambda: pids_running(["sleep", marker]), "the stage to start")
        tree = descendants(proc.pid)
        if victim == "stage":
            targets = [pid for pid in tree if cmdline(pid) == STAGE_PROCESS]
        else:
            targets = [pid for pid in tree
                       if parent(pid) == proc.pid and cmdline(pid)[0].endswith("bwrap")]
        assert len(targets) == 1, [cmdline(pid) for pid in tree]
        os.kill(targets[0], sig)
        result = finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = error_line(result)
    assert "stage org.osbuild.test.script" in line and "pipeline 'os'" in line
    assert expected in line
    assert_clean(osb, {first}, marker)
