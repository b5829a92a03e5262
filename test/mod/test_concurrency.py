"""Several `osbuild` processes on one store at once give what serial runs give.

Every round starts its builds together (`Popen`, one `--store`): overlapping v1
and v2 manifests with shared prefix stages, a shared build pipeline, tree
inputs, downloads several builds need at once, and identical manifests (two of
them exporting into the same output directory). Each build's exported trees
(paths, contents, modes, owners, mtimes) and its `--json` result must equal a
serial run of the same manifest in a fresh store. Further rounds build disk
images on loop devices, evict under a small `--cache-max-size`, and keep the
store on loop-mounted ext4, btrfs and xfs.
"""

import base64
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fileserver import FileServer, serving, sha256

from osbuild.fsutil import remove_tree
from osbuild.objectstore import ObjectStore

EPOCH = 1_700_000_000
ROUNDS = 3
MiB = 1024 * 1024

# Deterministic payloads: the serial and the concurrent runs must download the same bytes.
SHARED = {f"/shared-{i}": random.Random(i).randbytes(300_000) for i in (1, 2)}
OWN = {"/own-c": random.Random(3).randbytes(200_000)}
INLINE = b"inline data, the same in every manifest\n"

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OSBUILD_SOURCES_BACKOFF": "0.05"}
FS_JOBS = ("a", "a-checkpoint", "b", "c")


# -- manifests --------------------------------------------------------------


def stage(name: str, **options: Any) -> dict:
    return {"type": f"org.osbuild.{name}", "options": options}


def v1_stage(name: str, **options: Any) -> dict:
    return {"name": f"org.osbuild.{name}", "options": options}


def files_input(*checksums: str) -> dict:
    return {"files": {"type": "org.osbuild.files", "origin": "org.osbuild.source",
                      "references": {c: {} for c in checksums}}}


def tree_input(pipeline: str) -> dict:
    return {"tree": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                     "references": [f"name:{pipeline}"]}}


def copy_files(targets: dict[str, str]) -> dict:
    """A copy stage taking source files (checksum -> path in the tree)."""
    return {"type": "org.osbuild.copy", "inputs": files_input(*targets),
            "options": {"paths": [{"from": f"input://files/{c}", "to": f"tree://{path}"}
                                  for c, path in targets.items()]}}


def copy_tree(pipeline: str, to: str = "tree:///") -> dict:
    return {"type": "org.osbuild.copy", "inputs": tree_input(pipeline),
            "options": {"paths": [{"from": "input://tree/", "to": to}]}}


def loopback(start: int, size: int | None = None) -> dict:
    options: dict[str, Any] = {"filename": "disk.img", "start": start}
    if size is not None:
        options["size"] = size
    return {"type": "org.osbuild.loopback", "options": options}


BUILD = {"name": "build", "stages": [stage("test.pythonroot")]}


def sources(server: FileServer, paths: list[str]) -> dict:
    """Curl items for the server's files at `paths`, and one inline item."""
    return {
        "org.osbuild.curl": {"items": {sha256(server.files[p]): {"url": server.url(p)}
                                       for p in paths}},
        "org.osbuild.inline": {"items": {sha256(INLINE): {
            "encoding": "base64", "data": base64.b64encode(INLINE).decode()}}},
    }


def v2_manifest(server: FileServer, tail: str, own: str | None = None) -> dict:
    """`build` and `base` are the same in every tail; `os` shares its first stage too."""
    shared = {sha256(SHARED["/shared-1"]): "/srv/data/shared-1",
              sha256(SHARED["/shared-2"]): "/srv/data/shared-2",
              sha256(INLINE): "/srv/data/inline"}
    base = {"name": "base", "source-epoch": EPOCH, "stages": [
        stage("mkdir", paths=[{"path": "/etc", "mode": 0o755},
                              {"path": "/srv/data", "mode": 0o750, "parents": True}]),
        copy_files(shared),
        stage("test.metadata", file="base", content="base", sleep=0.3),
        stage("hostname", hostname="base"),
    ]}
    script = (f"mkdir -p opt/{tail} && printf '{tail}\\n' > opt/{tail}/data && "
              f"chmod 0640 opt/{tail}/data && ln -s ../../srv/data opt/{tail}/link && "
              f"chmod 1777 opt/{tail} && cat srv/data/inline > opt/{tail}/inline")
    tail_stages = [
        copy_tree("base"),
        stage("test.metadata", file=f"tail-{tail}", content=tail, sleep=0.1),
        stage("test.script", script=script),
        stage("hostname", hostname=f"host-{tail}"),
    ]
    paths = list(SHARED)
    if own is not None:
        tail_stages.append(copy_files({sha256(OWN[own]): f"/srv/{own.strip('/')}"}))
        paths.append(own)
    return {"version": "2", "sources": sources(server, paths), "pipelines": [
        BUILD, base,
        {"name": "os", "source-epoch": EPOCH, "stages": tail_stages},
        {"name": "py", "build": "name:build", "source-epoch": EPOCH,
         "stages": [stage("test.metadata", file="py", content=tail, sleep=0.1)]},
    ]}


def v1_manifest() -> dict:
    """Host build root; v1 has no source-epoch, so the last stage pins every mtime."""
    return {"pipeline": {
        "stages": [v1_stage("mkdir", paths=[{"path": "/etc"}]),
                   v1_stage("hostname", hostname="v1"),
                   v1_stage("test.metadata", file="vone", content="one", sleep=0.2),
                   v1_stage("test.script", script=f"find . -exec touch -h -d @{EPOCH} {{}} +")],
        "assembler": {"name": "org.osbuild.tar", "options": {"filename": "os.tar"}}}}


def v1_build_manifest() -> dict:
    """The same build pipeline as the v2 manifests' `build`, from v1."""
    return {"pipeline": {
        "build": {"pipeline": {"stages": [v1_stage("test.pythonroot")]},
                  "runner": "org.osbuild.linux"},
        "stages": [v1_stage("test.metadata", file="vbuild", content="two", sleep=0.2)]}}


def disk_manifest(name: str) -> dict:
    """A partitioned ext4 image filled through a loop-mounted file system."""
    start, size = 2048, 22 * MiB // 512
    return {"version": "2", "pipelines": [
        {"name": "tree", "source-epoch": EPOCH, "stages": [
            stage("mkdir", paths=[{"path": "/etc"}]),
            stage("hostname", hostname=name),
            stage("test.metadata", file="disk", content=name, sleep=0.2)]},
        {"name": "image", "source-epoch": EPOCH, "stages": [
            stage("truncate", filename="disk.img", size="24M"),
            {**stage("sfdisk", label="dos", uuid="0x14fc63d2",
                     partitions=[{"start": start, "size": size, "type": "83"}]),
             "devices": {"device": loopback(0)}},
            {**stage("mkfs.ext4", uuid="6e4ff95f-f662-45ee-a82a-bdf44a2d0b75", label="root"),
             "devices": {"device": loopback(start, size)}},
            {**copy_tree("tree", "mount://root/"),
             "devices": {"root": loopback(start, size)},
             "mounts": [{"name": "root", "type": "org.osbuild.ext4", "source": "root",
                         "target": "/"}]},
        ]}]}


# -- running builds ---------------------------------------------------------


@dataclass(frozen=True)
class Job:
    name: str
    manifest: dict
    exports: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    output: str = ""  # output directory name; jobs may share one
    loose: tuple[str, ...] = ()  # exports whose mtimes nothing pins (v1 has no source-epoch)


@dataclass
class Outcome:
    result: dict[str, Any]  # --json, without what differs between a fresh and a cached run
    trees: dict[str, dict[str, tuple]]


def main_jobs(server: FileServer) -> list[Job]:
    a = v2_manifest(server, "a")
    return [
        Job("a", a, ("os", "py"), output="a"),
        Job("a-again", a, ("os", "py"), output="a"),  # same output directory as "a"
        Job("a-checkpoint", a, ("os",), ("--checkpoint", "*"), output="a-checkpoint"),
        Job("b", v2_manifest(server, "b"), ("os", "py"), ("--checkpoint", "base"), output="b"),
        Job("c", v2_manifest(server, "c", own="/own-c"), ("os",), output="c"),
        Job("v1", v1_manifest(), ("tree", "assembler"), output="v1", loose=("assembler",)),
        Job("v1-build", v1_build_manifest(), ("tree",), output="v1-build", loose=("tree",)),
    ]


def command(libdir: Path, store: Path, manifest: Path, job: Job, output: Path) -> list[str]:
    cmd = [sys.executable, "-m", "osbuild", "--libdir", str(libdir), "--store", str(store),
           "--json", str(manifest), *job.args]
    for name in job.exports:
        cmd += ["--export", name]
    if job.exports:
        cmd += ["--output-directory", str(output / job.output)]
    return cmd


def run_jobs(libdir: Path, workdir: Path, store: Path, jobs: list[Job], concurrent: bool,
             *args: str) -> dict[str, Outcome]:
    """Run the jobs all at once (or one after the other); every one must succeed."""
    output = workdir / "out"
    manifests = workdir / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    cmds = []
    for job in jobs:
        path = manifests / f"{job.name}.json"
        path.write_text(json.dumps(job.manifest))
        cmds.append(command(libdir, store, path, job, output) + list(args))
    finished: list[tuple[int, str, str]] = []
    if concurrent:
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=ENV) for cmd in cmds]
        try:
            for proc in procs:
                out, err = proc.communicate(timeout=300)
                finished.append((proc.returncode, out, err))
        finally:
            for proc in procs:  # a build still running after a failure: it cleans up on TERM
                if proc.poll() is None:
                    proc.terminate()
                    proc.communicate(timeout=60)
    else:
        for cmd in cmds:
            done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
            finished.append((done.returncode, done.stdout, done.stderr))
    failed = [f"{job.name}: exit {rc}\n{err}"
              for job, (rc, _, err) in zip(jobs, finished, strict=True) if rc != 0]
    assert not failed, "\n".join(failed)
    outcomes = {}
    for job, (_, out, _) in zip(jobs, finished, strict=True):
        trees = {name: snapshot(output / job.output / name, name not in job.loose)
                 for name in job.exports}
        outcomes[job.name] = Outcome(comparable(json.loads(out)), trees)
    for directory in output.iterdir() if output.exists() else []:
        partial = [p.name for p in directory.iterdir() if p.name.startswith(".")]
        assert not partial, f"partial exports left in {directory}: {partial}"
    return outcomes


def comparable(doc: Any) -> Any:
    """The --json result minus run-dependent fields: durations, cache hits and the log
    (a cached stage prints nothing: v2 `log`, v1 `output`)."""
    if isinstance(doc, dict):
        return {k: comparable(v) for k, v in doc.items()
                if k not in ("duration", "cached", "log", "output")}
    if isinstance(doc, list):
        return [comparable(v) for v in doc]
    return doc


def snapshot(root: Path, mtimes: bool = True) -> dict[str, tuple]:
    """Every path under root (root included) with type, mode, owner, mtime and content."""
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                body: str | None = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    body = hashlib.file_digest(f, "sha256").hexdigest()
            else:
                body = None
            rel = os.path.normpath(os.path.relpath(path, root))
            entries[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid,
                            st.st_mtime_ns if mtimes else None, body)
    assert entries, f"nothing exported at {root}"
    return entries


def assert_same(outcomes: dict[str, Outcome], reference: dict[str, Outcome]) -> None:
    assert outcomes.keys() <= reference.keys()
    for name, outcome in outcomes.items():
        assert outcome.result == reference[name].result, f"{name}: --json differs"
        for export, tree in outcome.trees.items():
            expected = reference[name].trees[export]
            diff = sorted(k for k in tree.keys() | expected.keys()
                          if tree.get(k) != expected.get(k))
            assert not diff, f"{name}/{export} differs from the serial run at {diff[:5]}"


def assert_store_clean(store: Path) -> None:
    """Nothing left of any build's work: no temp dirs, staged commits or partial downloads."""
    assert not list((store / "tmp").iterdir())
    assert not [p.name for p in (store / "objects").iterdir() if p.name.startswith(".")]
    assert not [p.name for p in (store / "sources").iterdir() if p.name.startswith(".")]


def leaks(workdir: Path) -> list[str]:
    """Loop devices and mounts that still refer to this test's files (tests run in parallel)."""
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    mounts = subprocess.run(["findmnt", "-rn", "-o", "SOURCE,TARGET"], capture_output=True,
                            text=True).stdout
    return [line for line in (loops + mounts).splitlines() if str(workdir) in line]


# -- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def files_server() -> Iterator[FileServer]:
    """test/fileserver.py's server, shared by the module: the serial reference and
    every round download the same files from it."""
    state = FileServer()
    for path, data in {**SHARED, **OWN}.items():
        state.add(path, data)
    for path in SHARED:
        state.delay[path] = 0.3  # several builds are mid-download of it at once
    with serving(state):
        yield state


@pytest.fixture(scope="module")
def serial(libdir: Path, files_server: FileServer,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """The reference: every job of a round, one after the other, in a fresh store."""
    work = tmp_path_factory.mktemp("serial")
    return run_jobs(libdir, work, work / "store", main_jobs(files_server), concurrent=False)


@pytest.fixture(params=["ext4", "btrfs", "xfs"])
def mounted_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A fresh file system of that type on a loop device, always torn down."""
    kind = request.param
    image, mountpoint = tmp_path / f"{kind}.img", tmp_path / "mnt"
    mountpoint.mkdir()
    # The smallest sizes each mkfs accepts comfortably; the file is sparse.
    size = {"ext4": "160M", "btrfs": "256M", "xfs": "320M"}[kind]
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run([f"mkfs.{kind}", "-q", *(["-f"] if kind != "ext4" else []), str(image)],
                   check=True, capture_output=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount", "-t", kind, device, str(mountpoint)], check=True)
        try:
            yield mountpoint
        finally:
            if subprocess.run(["umount", str(mountpoint)]).returncode != 0:
                subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    # The kernel may finish the detach (and the file system's last references)
    # a moment after losetup returns: allow it a few seconds.
    deadline = time.monotonic() + 10
    while leaks(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leaks(tmp_path) == []


# -- tests ------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_rounds_match_serial_runs(libdir: Path, files_server: FileServer,
                                             serial: dict[str, Outcome], tmp_path: Path) -> None:
    jobs = main_jobs(files_server)
    assert len(jobs) >= 4
    # The v1 build pipeline is the v2 one: one store object serves both formats.
    assert (serial["v1-build"].result["build"]["stages"][0]["id"]
            == serial["a"].result["pipelines"]["build"]["id"])
    for round_ in range(ROUNDS):
        work = tmp_path / f"round-{round_}"
        before = {p: files_server.count(p) for p in SHARED}
        outcomes = run_jobs(libdir, work, work / "store", jobs, concurrent=True)
        assert_same(outcomes, serial)
        assert_store_clean(work / "store")
        for path in SHARED:  # downloaded for this fresh store, and verified by every build
            assert files_server.count(path) > before[path]


@pytest.mark.slow
def test_concurrent_disk_images_on_loop_devices(libdir: Path, tmp_path: Path) -> None:
    jobs = [Job(f"disk-{i}", disk_manifest(f"disk-{i}"), ("image",), output=f"disk-{i}")
            for i in range(4)]
    try:
        reference = run_jobs(libdir, tmp_path / "serial", tmp_path / "serial/store", jobs,
                             concurrent=False)
        outcomes = run_jobs(libdir, tmp_path / "concurrent", tmp_path / "concurrent/store", jobs,
                            concurrent=True)
        for job in jobs:
            assert outcomes[job.name].result == reference[job.name].result
            images = [tmp_path / run / "out" / job.name / "image/disk.img"
                      for run in ("serial", "concurrent")]
            contents = [image_contents(image, tmp_path / "scratch") for image in images]
            assert contents[0] == contents[1], f"{job.name}: images differ"
            assert contents[1][1]["etc/hostname"][-1] == sha256(f"{job.name}\n".encode())[7:]
        assert_store_clean(tmp_path / "concurrent/store")
    finally:
        assert leaks(tmp_path) == []


def image_contents(image: Path, scratch: Path) -> tuple[str, dict[str, tuple]]:
    """The partition table and the files of the root file system, which must be clean.

    Not the bytes: writing through a kernel mount stamps inode change times and the
    journal with the time of day, so two builds of one image never match bit for bit.
    """
    table = subprocess.run(["sfdisk", "--dump", str(image)], capture_output=True, text=True,
                           check=True).stdout
    table = "\n".join(line.replace(str(image), "IMAGE") for line in table.splitlines()
                      if not line.startswith("device:"))
    remove_tree(scratch)
    scratch.mkdir()
    part = scratch / "root.img"
    subprocess.run(["dd", f"if={image}", f"of={part}", "bs=512", "skip=2048", "status=none"],
                   check=True)
    fsck = subprocess.run(["e2fsck", "-fn", str(part)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    (scratch / "root").mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {scratch / 'root'}", str(part)],
                   capture_output=True, check=True)
    return table, snapshot(scratch / "root")


@pytest.mark.slow
def test_size_limit_holds_under_concurrency(libdir: Path, files_server: FileServer,
                                            tmp_path: Path) -> None:
    """Builds that evict must never take what another running build holds.

    The promise (osbuild/objectstore.py): when a build ends, it evicts least recently
    used entries until the store fits in --cache-max-size, sparing what it still needs
    and whatever another running build holds (objects it reads, sources it fetched).
    So once every build has ended, the store is at or below the limit as long as one
    build's own entries fit in it.
    """
    limit = 3 * MiB
    payloads = {}
    jobs = []
    for i in range(6):
        own = f"/evict-{i}"
        data = random.Random(100 + i).randbytes(250_000)
        files_server.add(own, data)
        manifest = {"version": "2", "sources": sources(files_server, ["/shared-1", own]),
                    "pipelines": [
            {"name": "big", "source-epoch": EPOCH, "stages": [
                stage("test.script", script=f"head -c 600000 /dev/zero | tr '\\0' {i} > big")]},
            {"name": "os", "source-epoch": EPOCH, "stages": [
                copy_tree("big"),
                # The sleep spreads the ends of the builds: earlier ones evict while
                # later ones hold `big` and their downloaded files.
                stage("test.metadata", file="waited", content=str(i), sleep=0.3 * i),
                copy_files({sha256(data): "/own", sha256(SHARED["/shared-1"]): "/shared"}),
            ]}]}
        payloads[i] = data
        jobs.append(Job(f"evict-{i}", manifest, ("os",), output=f"evict-{i}"))
    store = tmp_path / "store"
    for round_ in range(2):
        outcomes = run_jobs(libdir, tmp_path / f"round-{round_}", store, jobs, True,
                            "--cache-max-size", str(limit))
        for i, job in enumerate(jobs):
            tree = outcomes[job.name].trees["os"]
            assert tree["own"][-1] == hashlib.sha256(payloads[i]).hexdigest()
            assert tree["big"][-1] == hashlib.sha256(str(i).encode() * 600_000).hexdigest()
        with ObjectStore(store, max_size=None) as opened:
            entries = opened.entries()
        assert sum(e.size for e in entries) <= limit
        assert_store_clean(store)
    # Eviction did happen: far more was built than the store kept.
    assert len([e for e in entries if e.kind == "object"]) < 2 * len(jobs)


@pytest.mark.slow
def test_store_on_other_file_systems(libdir: Path, files_server: FileServer,
                                     serial: dict[str, Outcome], mounted_fs: Path) -> None:
    # The v2 jobs: moves, copies (checkpoints, exports: reflinks on btrfs and xfs)
    # and sources between the store's dirs on that file system.
    jobs = [job for job in main_jobs(files_server) if job.name in FS_JOBS]
    outcomes = run_jobs(libdir, mounted_fs / "work", mounted_fs / "store", jobs, concurrent=True)
    assert_same(outcomes, serial)
    assert_store_clean(mounted_fs / "store")
    # The same store again: everything cached, still the same results.
    again = run_jobs(libdir, mounted_fs / "again", mounted_fs / "store", jobs, concurrent=True)
    assert_same(again, serial)


# Another store user that evicts everything it can, as fast as it can.
EVICTOR = """
import sys
from pathlib import Path
from osbuild.objectstore import ObjectStore
store, ready, stop = (Path(arg) for arg in sys.argv[1:])
with ObjectStore(store, max_size=0) as opened:
    ready.touch()
    while not stop.exists():
        opened.evict()
"""


def test_committed_object_is_held_against_another_process_evicting(tmp_path: Path) -> None:
    """A build moves its last tree into the store: it must hold it from that moment on,
    or another build's eviction can take it before the build reads it back."""
    store, ready, stop = tmp_path / "store", tmp_path / "ready", tmp_path / "stop"
    count = 200
    with ObjectStore(store, max_size=None) as opened:
        evictor = subprocess.Popen([sys.executable, "-c", EVICTOR, str(store), str(ready),
                                    str(stop)], env={**ENV, "PYTHONPATH": str(ROOT)})
        try:
            while not ready.exists():
                assert evictor.poll() is None, "the evicting process died"
                time.sleep(0.01)
            for i in range(count):
                tree = tmp_path / f"tree-{i}"
                tree.mkdir()
                (tree / "file").write_text(str(i))
                object_id = hashlib.sha256(str(i).encode()).hexdigest()
                with opened.committed(object_id, tree, {"i": i}) as obj:
                    assert (obj.tree / "file").read_text() == str(i)
                    assert obj.metadata == {"i": i}
        finally:
            stop.touch()
            evictor.wait(30)
        assert evictor.returncode == 0
        kept = [e for e in opened.entries() if e.kind == "object"]
    assert len(kept) < count / 2  # the evictor really took objects the moment they were free
    assert not list((store / "tmp").iterdir())


# A build's last step: rename its finished export over OUTPUT/NAME.
REPLACER = """
import os, sys
from pathlib import Path
from osbuild.fsutil import replace_tree
output = Path(sys.argv[1])
for i in range(100):
    new = output / f".export.partial-{os.getpid()}"
    new.mkdir()
    (new / "by").write_text(str(os.getpid()))
    replace_tree(new, output / "export")
"""


def test_exports_into_one_output_directory_at_once(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", REPLACER, str(tmp_path)],
                              env={**ENV, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, errors
    assert os.listdir(tmp_path) == ["export"]  # no partial or old copies left
    assert int((tmp_path / "export/by").read_text()) in {proc.pid for proc in procs}


def test_opening_a_store_being_created_does_not_wait_for_a_build(tmp_path: Path) -> None:
    """Two builds start on a fresh store: one creates it and builds under the shared
    lock at once; the other must not wait for the exclusive lock until that build ends."""
    store = tmp_path / "store"
    with ObjectStore(store):  # the first build, running
        layout = (store / "format").read_text()
        (store / "format").unlink()  # as the second build saw it: not yet created
        opened = threading.Event()

        def second_build() -> None:
            with ObjectStore(store):
                opened.set()

        thread = threading.Thread(target=second_build, daemon=True)
        thread.start()
        time.sleep(0.3)
        assert not opened.is_set()  # nothing to use yet
        (store / "format").write_text(layout)  # the first build finished creating it
        assert opened.wait(5), "the second build waited for the first one to end"
    thread.join(5)
    assert not thread.is_alive()
