"""SIGINT and SIGTERM at the points where a build holds the most: nothing may be left behind.

The real-image test runs one image build (mmdebstrap against the Debian archive, a
loop-mounted ext4 image, qemu-img convert, exports) as a sequence that shares one
store, and interrupts it at each kill point once:

    (a) package install: dpkg running under mmdebstrap in the sandbox   SIGINT
    (b) copying the tree into the loop-mounted image (org.osbuild.copy)  SIGTERM
    (c) qemu-img convert (org.osbuild.qemu)                              SIGINT
    (d) exporting a big tree to --output-directory                       SIGTERM

(e), a download, is test_build_sources.py's. After each interrupt the build must
have exited within seconds with status 130 and one line on stderr, and left no
mount, loop device, process, temp dir or partial output; the store must be
consistent and the next run must reuse what was committed. The kill is timed by
polling /proc for the process that marks the point among the build's descendants.

The fast tests use test-only stages for what a real build hits only by chance:
busy stage processes racing the removal of their tree, a terminal's Ctrl-C that
reaches bwrap too, a storm of signals during the teardown of a loop-mounted stage,
and an interrupted export that replaces an older one.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Osbuild

from osbuild.devices import device_users

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "test/data/interrupt/image.json"
MIRROR_PLACEHOLDER = "http://mirror.example/debian"

EXIT_INTERRUPTED = 130
STOP_SECONDS = 15  # from the signal to the exit of osbuild, cleanup included
POLL_SECONDS = 0.01


# -- processes --------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: with the pid, names a process across pid reuse
    comm: str
    argv: tuple[str, ...]

    def alive(self) -> bool:
        current = read_proc(self.pid)
        return current is not None and current.start == self.start


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie is dead; only its parent's wait is missing
        return None
    return Proc(pid, int(fields[1]), int(fields[19]), comm,
                tuple(a.decode(errors="replace") for a in argv if a))


def descendants(root: int) -> list[Proc]:
    """Every live process below `root`, sandboxed ones included (their host pids)."""
    table = [p for p in (read_proc(int(n)) for n in os.listdir("/proc") if n.isdigit()) if p]
    children: dict[int, list[Proc]] = {}
    for proc in table:
        children.setdefault(proc.ppid, []).append(proc)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def command_line(proc: Proc) -> str:
    return " ".join(proc.argv)


# -- host state ---------------------------------------------------------------


def mounts_under(path: Path) -> list[str]:
    out = subprocess.run(["findmnt", "--list", "--json", "-o", "TARGET"], capture_output=True,
                         text=True, check=True).stdout
    targets = [m["target"] for m in json.loads(out)["filesystems"]]
    return [t for t in targets if t == str(path) or t.startswith(f"{path}/")]


def loops_under(path: Path) -> list[str]:
    """Loop devices backed by a file under `path` (deleted files too)."""
    out = subprocess.run(["losetup", "--list", "--json", "-O", "NAME,BACK-FILE"],
                         capture_output=True, text=True, check=True).stdout
    devices = json.loads(out)["loopdevices"] if out.strip() else []
    return [f"{d['name']} {d['back-file']}" for d in devices
            if (d.get("back-file") or "").startswith(f"{path}/")]


def processes_mentioning(path: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-f", str(path)], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if line.split()[0] != str(os.getpid())]


def store_problems(store: Path) -> list[str]:
    """What a consistent store must not have: staging or temp leftovers, broken objects."""
    problems = [f"tmp/{p.name}" for p in (store / "tmp").iterdir()]
    for obj in (store / "objects").iterdir():
        if obj.name.startswith("."):
            problems.append(f"objects/{obj.name} (a commit being staged)")
            continue
        missing = {"tree", "info.json", "lock", "last-used"} - set(os.listdir(obj))
        if missing:
            problems.append(f"objects/{obj.name} lacks {sorted(missing)}")
        else:
            json.loads((obj / "info.json").read_text())
    problems += [f"sources/{p.name}" for p in (store / "sources").iterdir()
                 if p.name.startswith(".")]
    return problems


def objects(store: Path) -> set[str]:
    return {p.name for p in (store / "objects").iterdir() if not p.name.startswith(".")}


# -- builds -------------------------------------------------------------------


class Build:
    """One osbuild run in the background; JSON-seq progress and stderr go to files.

    It runs in a session of its own, as on a terminal, so that signalling its process
    group is what a Ctrl-C there does.
    """

    def __init__(self, osbuild: Osbuild, manifest: Path | dict, name: str, *args: str):
        if isinstance(manifest, dict):
            path = osbuild.workdir / f"{name}.json"
            path.write_text(json.dumps(manifest))
            manifest = path
        self.name = name
        self.records = osbuild.workdir / f"{name}.jsonseq"
        self.stderr = osbuild.workdir / f"{name}.stderr"
        cmd = [sys.executable, "-m", "osbuild", "--libdir", str(osbuild.libdir),
               "--store", str(osbuild.store), "--output-directory", str(osbuild.output),
               "--monitor", "JSONSeqMonitor", *args, str(manifest)]
        with open(self.records, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=osbuild.workdir, start_new_session=True)

    def results(self) -> list[dict]:
        """The stage results reported so far, in order."""
        text = self.records.read_text(errors="replace")
        records = [json.loads(r) for r in text.split("\x1e") if r.strip()]
        return [r["result"] for r in records if "id" in r.get("result", {})]

    def wait_for(self, what: str, match: Callable[[Proc], bool],
                 timeout: float = 900) -> list[Proc]:
        """Poll until a descendant matches; return all descendants at that moment."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name}: osbuild ended ({self.proc.returncode}) before "
                            f"{what}:\n{self.stderr.read_text()[-2000:]}")
            procs = descendants(self.proc.pid)
            if any(match(p) for p in procs):
                return procs
            time.sleep(POLL_SECONDS)
        pytest.fail(f"{self.name}: no {what} within {timeout} s")

    def interrupt(self, *signals: signal.Signals, group: bool = False,
                  spacing: float = 0.02) -> float:
        """Send `signals` to osbuild alone (the engine must stop its children itself), or
        with `group` to its process group like a terminal; return how long it took to exit."""
        start = time.monotonic()
        for number, sig in enumerate(signals):
            if number:
                time.sleep(spacing)
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name}: osbuild still runs 60 s after {signals[0].name}")
        return time.monotonic() - start

    def stop(self) -> None:
        """Used when a test fails half-way: end the build the gentle way first."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def builds(tmp_path: Path) -> Iterator[list[Build]]:
    """The builds a test starts; stopped, and whatever they leaked released, at its end."""
    started: list[Build] = []
    yield started
    for build in started:
        build.stop()
    # A failed test reported its leaks already; they must not linger for the rest of the suite.
    for target in sorted(mounts_under(tmp_path), reverse=True):
        subprocess.run(["umount", "--lazy", target], check=False)
    for loop in loops_under(tmp_path):
        subprocess.run(["losetup", "--detach", loop.split()[0]], check=False)
    # Gigabytes of trees and images: pytest keeps the last runs' temp dirs; the logs stay.
    for big in ("store", "output"):
        shutil.rmtree(tmp_path / big, ignore_errors=True)


@pytest.fixture(scope="module")
def image_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed manifest with the host's mirror filled in."""
    from osbuild.depsolve import DepsolveError, host_mirror

    try:
        mirror = host_mirror().rstrip("/")
    except DepsolveError as e:
        pytest.skip(f"no Debian mirror: {e}")
    path = tmp_path_factory.mktemp("interrupt") / "image.json"
    path.write_text(MANIFEST.read_text().replace(MIRROR_PLACEHOLDER, mirror))
    return path


def stage_ids(osbuild: Osbuild, manifest: Path) -> dict[str, list[tuple[str, str]]]:
    """pipeline -> [(stage type, id)] from --inspect."""
    described = json.loads(osbuild.run(manifest, "--inspect").stdout)
    return {p["name"]: [(s["type"], s["id"]) for s in p["stages"]]
            for p in described["pipelines"]}


def assert_interrupted_cleanly(osbuild: Osbuild, build: Build, sig: signal.Signals,
                               seen: list[Proc], exports: set[str] = frozenset(),
                               more: tuple[signal.Signals, ...] = (), group: bool = False) -> None:
    """Everything the issue promises after an interrupt, but what the next run shows."""
    elapsed = build.interrupt(sig, *more, group=group)
    err = build.stderr.read_text()
    where = f"{build.name} ({sig.name})"
    assert build.proc.returncode == EXIT_INTERRUPTED, f"{where}: {err[-3000:]}"
    assert elapsed < STOP_SECONDS, f"{where}: took {elapsed:.1f} s to stop"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], f"{where}: stderr was:\n{err[-3000:]}"
    assert not mounts_under(osbuild.workdir), where
    loops = loops_under(osbuild.workdir)
    used = [device_users(line.split()[0]) for line in loops]
    assert not loops, f"{where}: {loops}, used by: {used}"
    alive = [f"{p.pid} {p.comm}: {command_line(p)}" for p in seen if p.alive()]
    assert not alive, f"{where}: processes outlived the build: {alive}"
    assert not processes_mentioning(osbuild.workdir), where
    assert not store_problems(osbuild.store), f"{where}: {store_problems(osbuild.store)}"
    left = sorted(p.name for p in osbuild.output.iterdir()) if osbuild.output.exists() else []
    assert set(left) <= exports, f"{where}: the output directory holds {left}"


# -- test-only stages: fast, no network -----------------------------------------------


def script(text: str, **extra: object) -> dict:
    return {"type": "org.osbuild.test.script", "options": {"script": text}, **extra}


LOOP = {"type": "org.osbuild.loopback", "options": {"filename": "disk.img"}}
ROOT_MOUNT = [{"name": "root", "type": "org.osbuild.ext4", "source": "root", "target": "/"}]

# Busy writers: processes creating files as fast as they can until they are killed, so
# a sandbox that is not waited for to its end races the removal of what they write into.
# A full file system does not end them: the stage must still be running when it is killed.
WRITER = ("import itertools, os, sys, time\n"
          "for i in itertools.count():\n"
          "    d = f'{sys.argv[1]}/{os.getpid()}/{i % 256}'\n"
          "    try:\n"
          "        os.makedirs(d, exist_ok=True)\n"
          "        open(f'{d}/{i}', 'w').close()\n"
          "    except OSError:\n"
          "        time.sleep(0.01)\n")


def writing_into(where: str) -> dict:
    return script(f"for n in 1 2 3 4; do python3 -c {shlex.quote(WRITER)} {where} & done; wait")


def writers_running(p: Proc) -> bool:
    return p.comm.startswith("python") and any("itertools" in a for a in p.argv)


@pytest.mark.parametrize("group", [False, True], ids=["osbuild", "process-group"])
def test_interrupted_sandbox_is_gone_before_its_tree(osbuild: Osbuild, builds: list[Build],
                                                     group: bool) -> None:
    """SIGINT to osbuild, or a terminal's Ctrl-C to its whole group (bwrap included).

    The race it guards against is lost only now and then, hence a few rounds.
    """
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [writing_into(".")]}]}
    for attempt in range(3):
        build = Build(osbuild, manifest, f"writers-{attempt}")
        builds.append(build)
        seen = build.wait_for("writers", writers_running, timeout=60)
        time.sleep(0.3)
        assert_interrupted_cleanly(osbuild, build, signal.SIGINT, build_tree(seen, build),
                                   group=group)
        assert objects(osbuild.store) == set()


def build_tree(seen: list[Proc], build: Build) -> list[Proc]:
    """What runs at the kill, taken again: writers that started after the first look."""
    return seen + descendants(build.proc.pid)


def test_more_signals_do_not_cut_the_cleanup_short(osbuild: Osbuild, builds: list[Build]) -> None:
    """A loop-mounted stage gets SIGTERM, then more signals while it is being torn down."""
    build = Build(osbuild, {"version": "2", "pipelines": [{"name": "image", "stages": [
        {"type": "org.osbuild.truncate", "options": {"filename": "disk.img", "size": "256M"}},
        {"type": "org.osbuild.mkfs.ext4", "options": {
            "uuid": "3b9e4c2a-5d1f-4e8a-9c7b-2f6d8e1a0b4c"}, "devices": {"device": LOOP}},
        {**writing_into("$MOUNT_root"), "devices": {"root": LOOP}, "mounts": ROOT_MOUNT},
    ]}]}, "storm")
    builds.append(build)
    seen = build.wait_for("writers in the mounted image", writers_running, timeout=60)
    time.sleep(0.5)
    assert mounts_under(osbuild.store) and loops_under(osbuild.store)
    assert_interrupted_cleanly(osbuild, build, signal.SIGTERM, build_tree(seen, build),
                               more=(signal.SIGINT, signal.SIGTERM, signal.SIGINT))


def test_interrupted_export_keeps_the_previous_output(osbuild: Osbuild,
                                                      builds: list[Build]) -> None:
    def manifest(version: str) -> dict:
        return {"version": "2", "pipelines": [{"name": "tree", "stages": [script(
            f"echo {version} > version; head -c 300M /dev/zero | tr '\\0' x > ballast")]}]}

    osbuild.run(manifest("one"), "--output-directory", str(osbuild.output), "--export", "tree")
    build = Build(osbuild, manifest("two"), "export", "--export", "tree")
    builds.append(build)
    partial = f"{osbuild.output}/.tree.partial"
    seen = build.wait_for("the export", lambda p: p.comm == "cp" and any(
        a.startswith(partial) for a in p.argv), timeout=60)
    assert_interrupted_cleanly(osbuild, build, signal.SIGINT, seen, exports={"tree"})
    assert (osbuild.output / "tree/version").read_text() == "one\n"
    assert (osbuild.output / "tree/ballast").stat().st_size == 300 * 1024**2
    # The next run replaces the whole export in one step, and leaves nothing beside it.
    osbuild.run(manifest("two"), "--output-directory", str(osbuild.output), "--export", "tree")
    assert (osbuild.output / "tree/version").read_text() == "two\n"
    assert sorted(p.name for p in osbuild.output.iterdir()) == ["tree"]


def cached_ids(results: list[dict]) -> set[str]:
    return {r["id"] for r in results if r["cached"]}


@pytest.mark.slow
def test_interrupting_a_real_image_build_leaves_nothing(osbuild: Osbuild, image_manifest: Path,
                                                        builds: list[Build]) -> None:
    ids = stage_ids(osbuild, image_manifest)
    os_last, image_last, qcow2_last = (ids[p][-1][1] for p in ("os", "image", "qcow2"))

    # (a) SIGINT while dpkg installs packages inside the sandbox.
    build = Build(osbuild, image_manifest, "a", "--export", "qcow2")
    builds.append(build)
    seen = build.wait_for("dpkg installing", lambda p: p.comm == "dpkg" and any(
        a in p.argv for a in ("--unpack", "--install", "--configure")))
    assert_interrupted_cleanly(osbuild, build, signal.SIGINT, seen, exports=set())
    assert objects(osbuild.store) == set(), "nothing of the OS tree may be committed"

    # (b) SIGTERM while the tree is copied into the loop-mounted ext4 partition. The OS
    # tree is built to the end first and committed.
    build = Build(osbuild, image_manifest, "b", "--export", "qcow2")
    builds.append(build)
    seen = build.wait_for("cp into the mounted image", lambda p: p.comm == "cp" and any(
        a.startswith("/run/osbuild/mounts") for a in p.argv))
    assert mounts_under(osbuild.store), "the kill point holds a mount"
    assert loops_under(osbuild.store), "the kill point holds a loop device"
    assert_interrupted_cleanly(osbuild, build, signal.SIGTERM, seen, exports=set())
    assert os_last in objects(osbuild.store)
    assert image_last not in objects(osbuild.store)

    # (c) SIGINT during qemu-img convert; the OS tree is reused from the store.
    build = Build(osbuild, image_manifest, "c", "--export", "qcow2")
    builds.append(build)
    seen = build.wait_for("qemu-img convert", lambda p: p.comm == "qemu-img"
                          and "convert" in p.argv)
    assert_interrupted_cleanly(osbuild, build, signal.SIGINT, seen, exports=set())
    assert os_last in cached_ids(build.results())
    assert {os_last, image_last} <= objects(osbuild.store)
    assert qcow2_last not in objects(osbuild.store)

    # (d) SIGTERM while the OS tree is exported, after the image was exported whole.
    build = Build(osbuild, image_manifest, "d", "--export", "qcow2", "--export", "os")
    builds.append(build)
    partial = f"{osbuild.output}/.os.partial"
    seen = build.wait_for("the export of os", lambda p: p.comm == "cp" and any(
        a.startswith(partial) for a in p.argv))
    assert_interrupted_cleanly(osbuild, build, signal.SIGTERM, seen, exports={"qcow2"})
    assert {os_last, image_last} <= cached_ids(build.results())
    assert qcow2_last in objects(osbuild.store)
    check = subprocess.run(["qemu-img", "check", str(osbuild.output / "qcow2/disk.qcow2")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # The next run builds nothing: every stage comes from the store.
    result = osbuild.build_json(image_manifest, "--output-directory", str(osbuild.output),
                                "--export", "qcow2", "--export", "os")
    stages = [s for p in result["pipelines"].values() for s in p["stages"]]
    assert stages and all(s["cached"] for s in stages), stages
    assert sorted(p.name for p in osbuild.output.iterdir()) == ["os", "qcow2"]
    assert (osbuild.output / "os/etc/hostname").read_text() == "interrupted\n"
    ballast = osbuild.output / "os/var/ballast"
    assert [f.stat().st_size for f in sorted(ballast.iterdir())] == [128 * 1024**2] * 6
    assert not store_problems(osbuild.store)
    assert not mounts_under(osbuild.workdir) and not loops_under(osbuild.workdir)
