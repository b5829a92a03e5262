"""The object store: atomic commits, locking, stale cleanup, LRU eviction, and its CLI."""

import fcntl
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from osbuild import objectstore
from osbuild.errors import StoreError
from osbuild.objectstore import FORMAT, ObjectStore, default_store_path
from osbuild.sizes import DEFAULT_MAX_SIZE, format_size, parse_size

ROOT = Path(__file__).resolve().parents[2]
ID_A, ID_B, ID_C = ("a" * 64, "b" * 64, "c" * 64)
SRC_1, SRC_2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64

HOLDER = """
import sys
from pathlib import Path
from osbuild.objectstore import ObjectStore
with ObjectStore(Path(sys.argv[1])) as store, store.get(sys.argv[2]) as obj:
    print("held" if obj else "missing", flush=True)
    sys.stdin.readline()
"""


def make_tree(path: Path, size: int = 4096, name: str = "data") -> Path:
    path.mkdir()
    (path / name).write_bytes(os.urandom(size))
    return path


def commit(store: ObjectStore, object_id: str, size: int = 4096) -> Path:
    with store.tempdir() as work:
        return store.commit(object_id, make_tree(work / "tree", size), {"id": object_id})


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def store_listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "osbuild.store_cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


# -- commit and get ----------------------------------------------------------


def test_commit_then_get(tmp_path):
    with ObjectStore(tmp_path / "store") as store:
        with store.tempdir() as work:
            tree = make_tree(work / "tree", 10000)
            os.chmod(tree, 0o750)
            os.link(tree / "data", tree / "hardlink")
            os.symlink("data", tree / "link")
            content = (tree / "data").read_bytes()
            stored = store.commit(ID_A, tree, {"packages": ["x"]})
            assert not tree.exists()  # moved, not copied
        assert stored == tmp_path / "store/objects" / ID_A / "tree"
        assert store.contains(ID_A) and not store.contains(ID_B)
        with store.get(ID_A) as obj:
            assert obj is not None
            assert obj.tree == stored and obj.metadata == {"packages": ["x"]}
            assert (obj.tree / "data").read_bytes() == content
            assert os.readlink(obj.tree / "link") == "data"
            assert (obj.tree / "hardlink").stat().st_ino == (obj.tree / "data").stat().st_ino
            assert obj.tree.stat().st_mode & 0o777 == 0o750
        with store.get(ID_B) as obj:
            assert obj is None
        info = json.loads((stored.parent / "info.json").read_text())
        # The hardlinked file is counted once: the tree is one dir plus one 10000-byte file.
        assert info["size"] == objectstore.disk_usage(stored)
        assert info["size"] < 2 * 12288


def test_commit_copy_keeps_source_and_attributes(tmp_path):
    source = make_tree(tmp_path / "source", 5000)
    os.chmod(source / "data", 0o640)
    os.chown(source / "data", 1234, 5678)
    with ObjectStore(tmp_path / "store") as store:
        stored = store.commit(ID_A, source, {}, copy=True)
    assert (source / "data").exists()
    st = (stored / "data").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert (stored / "data").read_bytes() == (source / "data").read_bytes()


def test_commit_of_existing_id_is_success(tmp_path):
    with ObjectStore(tmp_path / "store") as store:
        first = commit(store, ID_A)
        data = (first / "data").read_bytes()
        assert commit(store, ID_A) == first
        # Force the lost-race path: staging succeeds, the final rename finds the object.
        store.contains = lambda object_id: False  # type: ignore[method-assign]
        assert commit(store, ID_A) == first
        assert (first / "data").read_bytes() == data  # the first commit's tree is kept
    assert os.listdir(tmp_path / "store/objects") == [ID_A]
    assert os.listdir(tmp_path / "store/tmp") == []


def test_commit_rejects_unsafe_ids(tmp_path):
    with ObjectStore(tmp_path / "store") as store:
        for bad in ("../x", ".hidden", "a/b", ""):
            with pytest.raises(ValueError):
                store.contains(bad)


def commit_worker(job: tuple[str, str, float, bool]) -> tuple[str, str]:
    store_path, object_id, start, copy = job
    with ObjectStore(Path(store_path)) as store, store.tempdir() as work:
        tree = work / "tree"
        tree.mkdir()
        (tree / "data").write_text(object_id)
        time.sleep(max(0.0, start - time.time()))
        stored = store.commit(object_id, tree, {"id": object_id}, copy=copy)
        return str(stored), (stored / "data").read_text()


def test_concurrent_commits_of_the_same_id_all_succeed(tmp_path):
    store_path = tmp_path / "store"
    ids = [f"{n:064x}" for n in range(6)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(commit_worker, [(str(store_path), "f" * 64, 0.0, False)] * 4)  # warm up
        for round_, object_id in enumerate(ids):
            start = time.time() + 0.3
            jobs = [(str(store_path), object_id, start, (round_ + n) % 2 == 0) for n in range(4)]
            results = pool.map(commit_worker, jobs)
            expected = str(store_path / "objects" / object_id / "tree")
            assert results == [(expected, object_id)] * 4
    assert sorted(os.listdir(store_path / "objects")) == sorted(ids + ["f" * 64])
    assert os.listdir(store_path / "tmp") == []


# -- stale state -------------------------------------------------------------


def test_interrupted_commit_is_cleaned_at_next_open(tmp_path):
    store_path = tmp_path / "store"
    with ObjectStore(store_path):
        pass
    pid = dead_pid()
    staged = store_path / "objects" / f".{ID_A}.{pid}-k3j4"
    staged.mkdir()
    make_tree(staged / "tree")
    (staged / "info.json").write_text('{"size": 1, "created": 0, "metadata": {}}')
    (store_path / "objects" / f".{ID_B}.junk").mkdir()
    stale_tmp = store_path / "tmp" / f"{pid}-tmp-x1y2"
    stale_tmp.mkdir()
    make_tree(stale_tmp / "sub")
    os.chmod(stale_tmp / "sub", 0o500)
    with ObjectStore(store_path) as store:
        assert os.listdir(store_path / "objects") == []
        assert os.listdir(store_path / "tmp") == []
        assert not store.contains(ID_A) and store.entries() == []


def test_live_work_dirs_survive_another_open(tmp_path):
    store_path = tmp_path / "store"
    with ObjectStore(store_path) as first, first.tempdir() as work:
        # A staging dir of a live commit: flock'ed and named after a live pid.
        staged, fd = objectstore._locked_mkdtemp(f".{ID_A}.{os.getpid()}-", store_path / "objects")
        try:
            with ObjectStore(store_path):
                pass
            assert work.is_dir() and staged.is_dir()
        finally:
            os.close(fd)
            shutil.rmtree(staged)


def test_exit_removes_own_tempdirs_even_read_only(tmp_path):
    with ObjectStore(tmp_path / "store") as store:
        pending = store.tempdir("build")
        work = pending.__enter__()  # never exited: the store's exit must clean it
        make_tree(work / "tree")
        os.chmod(work / "tree" / "data", 0o400)
        os.chmod(work / "tree", 0o500)
        assert work.name.startswith(f"{os.getpid()}-build-")
    assert os.listdir(tmp_path / "store/tmp") == []


def test_remove_tree_handles_read_only_dirs_as_non_root():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to switch to an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="osbuild-test-rm-"))
    try:
        os.chown(base, 65534, 65534)
        victim = base / "victim"
        make_tree(victim)
        (victim / "locked").mkdir()
        (victim / "locked" / "file").write_text("x")
        (victim / "empty-locked").mkdir()
        for path in (victim, *victim.rglob("*")):
            os.lchown(path, 65534, 65534)
        os.chmod(victim / "locked", 0o000)
        os.chmod(victim / "empty-locked", 0o500)
        os.chmod(victim, 0o500)
        code = "import sys; from pathlib import Path; from osbuild.fsutil import remove_tree; "
        code += "remove_tree(Path(sys.argv[1]))"
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            + [sys.executable, "-c", code, str(victim)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert not victim.exists()
    finally:
        shutil.rmtree(base)


# -- format checks -----------------------------------------------------------


def test_empty_dir_becomes_a_store_and_is_kept_on_reopen(tmp_path):
    store_path = tmp_path / "store"
    store_path.mkdir()
    with ObjectStore(store_path) as store:
        commit(store, ID_A)
    assert (store_path / "format").read_text() == FORMAT
    with ObjectStore(store_path) as store:
        assert store.contains(ID_A)


@pytest.mark.parametrize("layout", ["old-format", "upstream"])
def test_incompatible_store_is_rebuilt(tmp_path, capfd, layout):
    store_path = tmp_path / "store"
    (store_path / "objects" / ID_A / "tree").mkdir(parents=True)
    if layout == "old-format":
        (store_path / "format").write_text("osbuild-deb store 0\n")
        (store_path / "sources").mkdir()
        (store_path / "sources" / SRC_1).write_text("old")
    else:  # upstream osbuild's layout: no format file
        (store_path / "sources" / "org.osbuild.files").mkdir(parents=True)
        (store_path / "refs").mkdir()
        (store_path / "cache.info").write_text("{}")
    with ObjectStore(store_path) as store:
        assert store.entries() == []
    assert sorted(os.listdir(store_path)) == ["format", "lock", "objects", "sources", "tmp"]
    assert (store_path / "format").read_text() == FORMAT
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "incompatible store format" in err[0]


@pytest.mark.parametrize("extra", [[], ["objects"]])
def test_foreign_directory_is_refused_and_untouched(tmp_path, extra):
    target = tmp_path / "home"
    (target / "docs").mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    for name in extra:
        (target / name).mkdir()
    before = store_listing(target)
    with pytest.raises(StoreError, match="is not an osbuild store"):
        with ObjectStore(target):
            pass
    assert store_listing(target) == before
    assert (target / "notes.txt").read_text() == "mine"


def test_file_is_not_a_store(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        ObjectStore(tmp_path / "file").__enter__()


# -- eviction ----------------------------------------------------------------


def add_source(store: ObjectStore, checksum: str, size: int) -> None:
    (store.source_dir() / checksum).write_bytes(os.urandom(size))


def test_lru_eviction_over_objects_and_sources(tmp_path):
    with ObjectStore(tmp_path / "store", max_size=None) as store:
        for object_id in (ID_A, ID_B, ID_C):
            commit(store, object_id, 65536)
        add_source(store, SRC_1, 65536)
        add_source(store, SRC_2, 65536)
        stamps = {ID_A: 100, SRC_1: 200, ID_B: 300, SRC_2: 400, ID_C: 500}
        for key, stamp in stamps.items():
            path = (
                store.source_dir() / key
                if key.startswith("sha256:")
                else (tmp_path / "store/objects" / key / "last-used")
            )
            os.utime(path, (stamp, stamp))
        assert [e.id for e in store.entries()] == list(stamps)
        assert store.evict() == []  # unlimited

        with store.get(ID_A):  # a use makes it the most recent
            pass
        assert [e.id for e in store.entries()][-1] == ID_A
        sizes = {e.id: e.size for e in store.entries()}
        assert all(size >= 65536 for size in sizes.values())

        # Room for all but two entries; SRC_1 is oldest but the caller still needs it.
        store.max_size = sum(sizes.values()) - sizes[ID_B] - sizes[SRC_2]
        assert store.evict(keep={SRC_1}) == [ID_B, SRC_2]
        assert [e.id for e in store.entries()] == [SRC_1, ID_C, ID_A]
        assert not store.contains(ID_B) and not (store.source_dir() / SRC_2).exists()

        with store.source_pins() as pins:  # a use makes it the most recent
            assert pins.pin(SRC_1) and not pins.pin(SRC_2)
        assert [e.id for e in store.entries()][-1] == SRC_1
        assert store.evict() == []  # fits now
        assert [e.id for e in store.prune(max_size=sizes[SRC_1])] == [ID_C, ID_A]
        assert os.listdir(tmp_path / "store/tmp") == []


def test_pinned_sources_are_not_evicted_and_downloads_are_published(tmp_path):
    with ObjectStore(tmp_path / "store", max_size=0) as store:
        add_source(store, SRC_1, 4096)
        with store.source_pins() as pins:
            assert pins.pin(SRC_1) and SRC_1 in pins and SRC_2 not in pins
            (pins.path / SRC_2).write_bytes(b"downloaded")
            (pins.path / ".tmp-123-partial").write_bytes(b"half")
            assert store.evict() == []  # pinned: a running build reads it
            assert (store.source_dir() / SRC_1).exists()
        assert not pins.path.exists()
        assert sorted(os.listdir(store.source_dir())) == [SRC_1, SRC_2]  # not the partial
        assert (store.source_dir() / SRC_2).read_bytes() == b"downloaded"
        assert sorted(store.evict()) == [SRC_1, SRC_2]  # unpinned: evicted
        assert os.listdir(tmp_path / "store/tmp") == []


def test_object_held_by_another_process_is_not_evicted(tmp_path):
    store_path = tmp_path / "store"
    with ObjectStore(store_path, max_size=0) as store:
        commit(store, ID_A)
        commit(store, ID_B)
        add_source(store, SRC_1, 4096)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(store_path), ID_A],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            assert sorted(store.evict()) == sorted([ID_B, SRC_1])
            assert store.contains(ID_A)
            assert store.prune(everything=False) == []
            # Removing everything needs the store to itself.
            with pytest.raises(StoreError, match="in use by a build"):
                store.prune(everything=True)
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        assert store.evict() == [ID_A]
        commit(store, ID_B)
        assert [e.id for e in store.prune(everything=True)] == [ID_B]


def test_contended_object_is_waited_for_not_a_miss(tmp_path):
    with ObjectStore(tmp_path / "store") as store:
        commit(store, ID_A)
        lock = tmp_path / "store/objects" / ID_A / "lock"
        results: list = []
        for evicted in (False, True):
            results.clear()
            fd = os.open(lock, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)  # as an eviction in progress holds it

            def reader():
                with store.get(ID_A) as obj:
                    results.append(obj)

            thread = threading.Thread(target=reader)
            thread.start()
            time.sleep(0.3)
            assert thread.is_alive() and results == []  # waiting, not a miss
            if evicted:
                with store.tempdir() as trash:
                    os.rename(lock.parent, trash / ID_A)
                    os.close(fd)
                    thread.join(timeout=10)
            else:
                os.close(fd)
                thread.join(timeout=10)
            assert not thread.is_alive()
            assert (results[0] is None) == evicted
            if not evicted:
                assert results[0].tree == lock.parent / "tree"


# -- the CLI -----------------------------------------------------------------


def test_cli_ls_du_prune(tmp_path):
    store_path = tmp_path / "store"
    with ObjectStore(store_path) as store:
        commit(store, ID_A, 8192)
        add_source(store, SRC_1, 16384)
        os.utime(tmp_path / "store/objects" / ID_A / "last-used", (1000, 1000))
        sizes = {e.id: e.size for e in store.entries()}

    result = run_cli("--store", str(store_path), "ls")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["object", "source"]
    assert lines[0].endswith(ID_A) and lines[1].endswith(SRC_1)
    assert format_size(sizes[SRC_1]) in lines[1]

    result = run_cli("ls", "--json", "--store", str(store_path))
    entries = json.loads(result.stdout)
    assert [(e["kind"], e["id"], e["size"]) for e in entries] == [
        ("object", ID_A, sizes[ID_A]),
        ("source", SRC_1, sizes[SRC_1]),
    ]
    assert entries[0]["last_used"] == 1000

    report = json.loads(run_cli("du", "--json", "--store", str(store_path)).stdout)
    total = sizes[ID_A] + sizes[SRC_1]
    assert report == {
        "objects": sizes[ID_A],
        "sources": sizes[SRC_1],
        "total": total,
        "limit": DEFAULT_MAX_SIZE,
    }
    result = run_cli("--store", str(store_path), "du", "--max-size", "unlimited")
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1].split() == ["limit:", "unlimited"]

    result = run_cli("--store", str(store_path), "prune", "--max-size", str(sizes[SRC_1]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"removed object {ID_A} ({format_size(sizes[ID_A])})"
    result = run_cli("--store", str(store_path), "prune", "--all")
    assert result.returncode == 0, result.stderr
    assert f"removed source {SRC_1}" in result.stdout
    assert json.loads(run_cli("ls", "--json", "--store", str(store_path)).stdout) == []


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["prune", "--max-size", "12X"], 2, "invalid size '12X'"),
        (["prune", "--all", "--max-size", "1G"], 2, "not allowed with"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "required"),
        (["ls"], 1, "is not an osbuild store"),
        (["--store", "/nonexistent/osbuild-store", "du"], 1, "does not exist"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, code, message):
    (tmp_path / "foreign.txt").write_text("x")
    if "--store" not in args:
        args = ["--store", str(tmp_path), *args]
    result = run_cli(*args)
    assert result.returncode == code
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("osbuild-store: error: ") and message in result.stderr


# -- helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1024", 1024),
        ("0", 0),
        ("512M", 512 * 1024**2),
        ("20G", 20 * 1024**3),
        ("20g", 20 * 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("4 KB", 4096),
        ("2T", 2 * 1024**4),
        ("unlimited", None),
        ("Unlimited", None),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1", "12X", "1.2.3G", "20 GB extra", "none"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_format_size():
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(20 * 1024**3) == "20.0 GiB"
    assert format_size(None) == "unlimited"


def test_default_store_path(monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/srv/cache")
    assert default_store_path() == Path("/srv/cache/osbuild")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # ignored, as the XDG spec says
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_store_path() == Path("/var/cache/osbuild")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", "/home/user")
    assert default_store_path() == Path("/home/user/.cache/osbuild")
    monkeypatch.setenv("HOME", "")
    assert default_store_path().is_absolute()
