"""Loop devices and mounts of v2 stages, with real losetup, mkfs and mount.

Types, options, names and targets are validated once, before the build
(osbuild/validate.py, tested here through the manifest); open_devices and
mount_all get the model and check what only the run can know.

Other processes (another test worker, say) may attach loop devices at the same
time, so leaks are judged only by what belongs to this test: loop devices whose
backing file and mounts whose target lie under the test's own directory.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from osbuild import devices as devmod
from osbuild import formats
from osbuild import mounts as mntmod
from osbuild.devices import loopback, open_devices
from osbuild.errors import ManifestError, OsbuildError
from osbuild.interrupts import run_to_end
from osbuild.model import Device, Mount
from osbuild.mounts import mount_all
from osbuild.validate import validate

ROOT = Path(__file__).resolve().parent.parent.parent
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def loops_under(base: Path) -> set[str]:
    """Loop devices (per losetup) whose backing file is under `base`."""
    out = json.loads(run("losetup", "--list", "--json", "-O", "NAME,BACK-FILE") or "{}")
    found = set()
    for dev in out.get("loopdevices", []):
        back = (dev.get("back-file") or "").removesuffix(" (deleted)")
        if back == str(base) or back.startswith(f"{base}/"):
            found.add(dev["name"])
    return found


def mounts_under(base: Path) -> set[str]:
    """Mount points (per findmnt) at or under `base`."""
    out = json.loads(run("findmnt", "--list", "--json", "-o", "TARGET"))
    return {
        m["target"]
        for m in out["filesystems"]
        if m["target"] == str(base) or m["target"].startswith(f"{base}/")
    }


def state(base: Path) -> tuple[set[str], set[str]]:
    return loops_under(base), mounts_under(base)


@pytest.fixture
def work(tmp_path: Path):
    """A private directory; whatever a test leaves in it is removed, then reported."""
    base = tmp_path.resolve()
    yield base
    mounts, loops = mounts_under(base), loops_under(base)
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", target], check=False)
    for dev in loops:
        subprocess.run(["losetup", "--detach", dev], check=False)
    assert not mounts and not loops, f"left behind: mounts {mounts}, loop devices {loops}"


def sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def loop_spec(filename: str, **options) -> Device:
    return Device("org.osbuild.loopback", {"filename": filename, **options})


def mount_spec(name: str, mtype: str, source: str, target: str, **options) -> Mount:
    return Mount(name, f"org.osbuild.{mtype}", source, target, options)


def attached_to(device: str, image: Path) -> bool:
    backing = Path("/sys/block") / Path(device).name / "loop" / "backing_file"
    try:
        return backing.read_text().strip().removesuffix(" (deleted)") == str(image)
    except OSError:
        return False


def wait_detached(device: str, image: Path, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while attached_to(device, image):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def mkfs(device: str, fstype: str) -> None:
    run(f"mkfs.{fstype}", *(["-F"] if fstype == "ext4" else ["-f"]), "-q", device)


def single_fs(work: Path, fstype: str, size: int) -> Path:
    """A tree holding fs.img, formatted with `fstype` through a loop device."""
    image = sparse(work / "tree" / "fs.img", size)
    with loopback(image, 0, None) as dev:
        mkfs(dev, fstype)
    return work / "tree"


# --- schemas ---------------------------------------------------------------


VALID_DEVICES = [
    {"filename": "disk.img", "start": 2048, "size": 409600},
    {"filename": "disk.img"},
    {"filename": "/images/disk.img", "sector-size": 4096, "lock": True, "partscan": True},
]
INVALID_DEVICES = [
    {},
    {"filename": "disk.img", "offset": 2048},
    {"filename": "../disk.img"},
    {"filename": "a/../../disk.img"},
    {"filename": "disk.img", "start": -1},
    {"filename": "disk.img", "size": 0},
    {"filename": "disk.img", "sector-size": 1000},
    {"filename": "disk.img", "lock": "yes"},
]


@pytest.mark.parametrize("options", VALID_DEVICES)
def test_loopback_schema_accepts(options):
    jsonschema.Draft202012Validator(devmod.SCHEMAS["org.osbuild.loopback"]).validate(options)


@pytest.mark.parametrize("options", INVALID_DEVICES)
def test_loopback_schema_rejects(options):
    validator = jsonschema.Draft202012Validator(devmod.SCHEMAS["org.osbuild.loopback"])
    assert not validator.is_valid(options)


@pytest.mark.parametrize(
    "mtype, options, valid",
    [
        ("ext4", {}, True),
        ("ext4", {"readonly": True, "norecovery": True}, True),
        ("ext4", {"subvol": "root"}, False),
        ("xfs", {"norecovery": True}, True),
        ("xfs", {"readonly": "yes"}, False),
        ("btrfs", {"subvol": "@root", "compress": "zstd:3", "readonly": False}, True),
        ("btrfs", {"subvol": "root,ro"}, False),
        ("btrfs", {"compress": "zstd,ro"}, False),
        ("fat", {"uid": 0, "gid": 0, "umask": "077", "shortname": "winnt"}, True),
        ("fat", {"umask": "0777"}, False),
    ],
)
def test_mount_schemas(mtype, options, valid):
    validator = jsonschema.Draft202012Validator(mntmod.SCHEMAS[f"org.osbuild.{mtype}"])
    assert validator.is_valid(options) is valid


def test_schemas_are_valid_json_schemas():
    for schema in [*devmod.SCHEMAS.values(), *mntmod.SCHEMAS.values()]:
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["additionalProperties"] is False


def stage_problems(devices: dict, mounts: list | None = None) -> list[str]:
    """What validation says about a stage with these devices and mounts (as manifest JSON)."""
    stage = {"type": "org.osbuild.mkdir", "options": {"paths": [{"path": "/a"}]},
             "devices": devices}
    if mounts is not None:
        stage["mounts"] = mounts
    description = {"version": "2", "pipelines": [{"name": "os", "stages": [stage]}]}
    with pytest.raises(ManifestError) as info:
        validate(formats.load(description, "org.osbuild.linux"), ROOT)
    return info.value.problems


DISK = {"type": "org.osbuild.loopback", "options": {"filename": "disk.img"}}
ROOT_MOUNT = {"name": "root", "type": "org.osbuild.ext4", "source": "disk", "target": "/"}
AT = "pipelines[0].stages[0]"


@pytest.mark.parametrize("devices, expected", [
    ({"d": {"type": "org.osbuild.loopback", "options": {"filename": "../outside.img"}}},
     f"{AT}.devices.d.options.filename: '../outside.img' does not match"),
    ({"d": {"type": "org.osbuild.loopback", "options": {"filename": "disk.img", "offset": 1}}},
     f"{AT}.devices.d.options: Additional properties are not allowed ('offset' was unexpected)"),
    ({"d": {"type": "org.osbuild.luks2", "options": {}}},
     f"{AT}.devices.d.type: unknown device type 'org.osbuild.luks2'"),
])
def test_devices_are_validated_before_the_build(devices, expected):
    assert any(p.startswith(expected) for p in stage_problems(devices)), expected


@pytest.mark.parametrize("mount, expected", [
    ({**ROOT_MOUNT, "target": "boot"}, f"{AT}.mounts[0].target: 'boot' does not match '^/'"),
    ({**ROOT_MOUNT, "target": "/a/../b"}, f"{AT}.mounts[0].target: must not contain '..'"),
    ({**ROOT_MOUNT, "type": "org.osbuild.vfat"},
     f"{AT}.mounts[0].type: unknown mount type 'org.osbuild.vfat'"),
    ({**ROOT_MOUNT, "options": {"subvol": "x"}},
     f"{AT}.mounts[0].options: Additional properties are not allowed ('subvol' was unexpected)"),
    ({**ROOT_MOUNT, "partition": 1},
     f"{AT}.mounts[0]: Additional properties are not allowed ('partition' was unexpected)"),
    ({**ROOT_MOUNT, "source": "nodev"}, f"{AT}.mounts[0].source: unknown device 'nodev'"),
])
def test_mounts_are_validated_before_the_build(mount, expected):
    assert any(p.startswith(expected) for p in stage_problems({"disk": DISK}, [mount])), expected


def test_a_mount_name_used_twice_is_refused_before_the_build():
    twice = [ROOT_MOUNT, {**ROOT_MOUNT, "target": "/b"}]
    assert stage_problems({"disk": DISK}, twice) == [
        f"{AT}.mounts[1].name: duplicate mount name 'root'"]


# --- loopback --------------------------------------------------------------


def test_loopback_offset_and_sizelimit(work):
    image = sparse(work / "disk.img", 8 * MiB)
    with open(image, "r+b") as f:
        f.seek(1 * MiB)
        f.write(b"MARK-AT-1MiB")
        f.seek(3 * MiB - 4)
        f.write(b"LAST")
    before = state(work)
    with loopback(image, 1 * MiB, 2 * MiB) as dev:
        assert dev.startswith("/dev/loop")
        assert int(run("blockdev", "--getsize64", dev)) == 2 * MiB
        with open(dev, "rb") as f:
            assert f.read(12) == b"MARK-AT-1MiB"
            f.seek(2 * MiB - 4)
            assert f.read() == b"LAST"
        assert loops_under(work) == {dev}
    assert state(work) == before
    assert not attached_to(dev, image)


def test_loopback_without_size_runs_to_the_end(work):
    image = sparse(work / "disk.img", 8 * MiB)
    with loopback(image, 3 * MiB, None) as dev:
        assert int(run("blockdev", "--getsize64", dev)) == 5 * MiB
    assert not attached_to(dev, image)


def test_loopback_sector_size(work):
    image = sparse(work / "disk.img", 8 * MiB)
    with loopback(image, 0, None, sector_size=4096) as dev:
        assert run("blockdev", "--getss", dev).strip() == "4096"
    with loopback(image, 0, None) as dev:
        assert run("blockdev", "--getss", dev).strip() == "512"


def test_loopback_lock_holds_a_bsd_lock(work):
    image = sparse(work / "disk.img", 4 * MiB)

    def try_lock(dev: str) -> bool:
        fd = os.open(dev, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    with loopback(image, 0, None, lock=True) as dev:
        assert not try_lock(dev)
    assert wait_detached(dev, image)
    with loopback(image, 0, None) as dev:
        assert try_lock(dev)


def test_concurrent_attach_gets_distinct_devices(work):
    images = [sparse(work / f"d{i}.img", 2 * MiB) for i in range(4)]
    barrier = threading.Barrier(len(images))
    got: dict[int, str] = {}
    errors: list[BaseException] = []
    release = threading.Event()

    def worker(i: int) -> None:
        try:
            barrier.wait()
            with loopback(images[i], 0, None) as dev:
                got[i] = dev
                release.wait(30)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(got) + len(errors) < len(images) and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(got.values())) == len(images)
    assert state(work) == (set(), set())


# --- open_devices ----------------------------------------------------------


def test_open_devices_errors_are_one_line_and_leave_nothing(work):
    tree = work / "tree"
    sparse(tree / "disk.img", 4 * MiB)  # 8192 sectors
    outside = sparse(work / "outside.img", 4 * MiB)
    (tree / "link.img").symlink_to(outside)
    (tree / "images").mkdir()
    cases = [
        ({"d": loop_spec("missing.img")}, "image file 'missing.img' does not exist"),
        ({"d": loop_spec("disk.img", start=8192)}, "beyond the end of 'disk.img'"),
        ({"d": loop_spec("disk.img", start=4096, size=4097)}, "runs past the end"),
        ({"d": loop_spec("disk.img", start=1024, **{"sector-size": 4096})}, "beyond the end"),
        ({"d": loop_spec("link.img")}, "leads outside the tree"),
        ({"d": loop_spec("images")}, "'images' is not a regular file"),
        # The good device is never attached: everything is checked first.
        ({"ok": loop_spec("disk.img"), "bad": loop_spec("missing.img")}, "device 'bad'"),
    ]
    for devices, expected in cases:
        with pytest.raises(OsbuildError) as info:
            with contextlib.ExitStack() as stack:
                open_devices(devices, tree, stack)
        message = str(info.value)
        assert expected in message
        assert "\n" not in message
        assert state(work) == (set(), set()), devices


def test_open_devices_full_range_and_absolute_filename(work):
    tree = work / "tree"
    image = sparse(tree / "images" / "disk.img", 4 * MiB)
    with contextlib.ExitStack() as stack:
        devs = open_devices(
            {
                "whole": loop_spec("/images/disk.img", start=0, size=8192),
                "tail": loop_spec("images/disk.img", start=8191),
            },
            tree,
            stack,
        )
        assert int(run("blockdev", "--getsize64", devs["whole"])) == 4 * MiB
        assert int(run("blockdev", "--getsize64", devs["tail"])) == 512
        assert all(attached_to(d, image) for d in devs.values())
    assert state(work) == (set(), set())


# --- two partitions, nested mounts -----------------------------------------

P1_START, P1_SIZE = 2048, 65536
P2_START, P2_SIZE = 67584, 61440


def partitioned_disk(tree: Path) -> Path:
    image = sparse(tree / "disk.img", 64 * MiB)
    table = (
        "label: dos\n"
        f"start={P1_START}, size={P1_SIZE}, type=83\n"
        f"start={P2_START}, size={P2_SIZE}, type=83\n"
    )
    subprocess.run(["sfdisk", "-q", str(image)], input=table, text=True, check=True)
    return image


DEVICES = {
    "root": loop_spec("disk.img", start=P1_START, size=P1_SIZE),
    "bootdev": loop_spec("disk.img", start=P2_START, size=P2_SIZE),
}
MOUNTS = [
    mount_spec("root", "ext4", "root", "/"),
    mount_spec("boot", "ext4", "bootdev", "/boot"),
]


def debugfs_cat(image: Path, start: int, size: int, path: str) -> str:
    with loopback(image, start * 512, size * 512) as dev:
        return run("debugfs", "-R", f"cat {path}", dev)


def test_two_partitions_nested_mounts(work):
    tree, mnt = work / "tree", work / "mnt"
    image = partitioned_disk(tree)
    table_before = run("sfdisk", "--dump", str(image))
    before = state(work)
    with contextlib.ExitStack() as stack:
        devs = open_devices(DEVICES, tree, stack)
        assert devs["root"] != devs["bootdev"]
        for dev in devs.values():
            mkfs(dev, "ext4")
        paths = mount_all(MOUNTS, devs, mnt, stack)
        assert paths == {"root": str(mnt), "boot": str(mnt / "boot")}
        assert run("findmnt", "-n", "-o", "SOURCE", str(mnt)).strip() == devs["root"]
        assert run("findmnt", "-n", "-o", "SOURCE", str(mnt / "boot")).strip() == devs["bootdev"]
        (mnt / "etc").mkdir()
        (mnt / "etc" / "hostname").write_text("debian\n")
        (mnt / "boot" / "vmlinuz").write_text("kernel\n")
    assert state(work) == before
    # Each file landed on its own file system, and the partition table survived.
    assert debugfs_cat(image, P1_START, P1_SIZE, "/etc/hostname") == "debian\n"
    assert debugfs_cat(image, P2_START, P2_SIZE, "/vmlinuz") == "kernel\n"
    assert run("sfdisk", "--dump", str(image)) == table_before
    # Mounted again, read-only: the same view comes back, and nothing can be written.
    ro = [dataclasses.replace(m, options={"readonly": True}) for m in MOUNTS]
    with contextlib.ExitStack() as stack:
        paths = mount_all(ro, open_devices(DEVICES, tree, stack), mnt, stack)
        assert (mnt / "etc" / "hostname").read_text() == "debian\n"
        assert (mnt / "boot" / "vmlinuz").read_text() == "kernel\n"
        with pytest.raises(OSError, match="Read-only"):
            (mnt / "boot" / "new").write_text("x")
    with contextlib.ExitStack() as stack:
        mount_all(MOUNTS[:1], open_devices(DEVICES, tree, stack), mnt, stack)
        assert list((mnt / "boot").iterdir()) == []
    assert state(work) == before


def prepared_disk(work: Path) -> Path:
    tree = work / "tree"
    partitioned_disk(tree)
    with contextlib.ExitStack() as stack:
        for dev in open_devices(DEVICES, tree, stack).values():
            mkfs(dev, "ext4")
    return tree


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_cleanup_when_the_block_raises(work, exc_type):
    tree, mnt = prepared_disk(work), work / "mnt"
    before = state(work)
    with pytest.raises(exc_type):
        with contextlib.ExitStack() as stack:
            devs = open_devices(DEVICES, tree, stack)
            mount_all(MOUNTS, devs, mnt, stack)
            assert mounts_under(work) == {str(mnt), str(mnt / "boot")}
            assert len(loops_under(work)) == 2
            raise exc_type("stage interrupted")
    assert state(work) == before
    assert not any(attached_to(d, tree / "disk.img") for d in devs.values())


def test_busy_mount_is_detached_lazily_and_its_user_named(work, monkeypatch):
    """A file kept open in /boot: unmounted lazily, and the device's user is named."""
    monkeypatch.setattr(devmod, "RELEASE_TIME", 1.0)
    tree, mnt = prepared_disk(work), work / "mnt"
    with pytest.raises(OsbuildError) as error:
        with contextlib.ExitStack() as stack:
            devs = open_devices(DEVICES, tree, stack)
            mount_all(MOUNTS, devs, mnt, stack)
            busy = open(mnt / "boot" / "held", "w")  # keeps /boot busy past the unmount
    try:
        assert mounts_under(work) == set()
        assert not attached_to(devs["root"], tree / "disk.img")
        assert str(error.value) == (
            f"loop device {devs['bootdev']} "
            f"({tree / 'disk.img'}) is still in use 1 s after its detach: "
            f"pid {os.getpid()} ({Path('/proc/self/comm').read_text().strip()}) uses a file "
            f"on it (fd {busy.fileno()})"
        )
    finally:
        busy.close()
    # The kernel frees the device once the lazily unmounted file system lets go.
    assert wait_detached(devs["bootdev"], tree / "disk.img")
    assert state(work) == (set(), set())


def test_detach_waits_for_a_late_user_to_let_go(work):
    """A device still open when detached goes with its last user; the engine waits for
    that, so the next stage never reads an image a file system may still write to."""
    image = sparse(work / "disk.img", 4 * MiB)
    with loopback(image, 0, None) as dev:
        threading.Timer(3.0, os.close, [os.open(dev, os.O_RDONLY)]).start()
        started = time.monotonic()
    assert time.monotonic() - started >= 2.5
    assert not attached_to(dev, image)


def test_ctrl_c_in_a_running_build_cleans_up(work):
    """A real SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
    tree, mnt = prepared_disk(work), work / "mnt"
    script = textwrap.dedent(
        f"""
        import contextlib, json, sys, time
        from pathlib import Path
        from osbuild import devices
        from osbuild.devices import open_devices
        from osbuild.model import Device, Mount
        from osbuild.mounts import mount_all
        devices.RELEASE_TIME = 1.0  # the file it holds keeps the device until it exits
        with contextlib.ExitStack() as stack:
            devs = open_devices({DEVICES!r}, Path({str(tree)!r}), stack)
            mount_all({MOUNTS!r}, devs, Path({str(mnt)!r}), stack)
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        assert len(mounts_under(work)) == 2
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err
    assert state(work) == (set(), set())


def test_ctrl_c_during_cleanup_still_cleans_up(work):
    """Ctrl-C while a busy unmount is being retried: the cleanup finishes first."""
    tree, mnt = prepared_disk(work), work / "mnt"
    script = textwrap.dedent(
        f"""
        import contextlib, sys
        from pathlib import Path
        from osbuild import devices
        from osbuild.devices import open_devices
        from osbuild.model import Device, Mount
        from osbuild.mounts import mount_all
        devices.RELEASE_TIME = 1.0  # the file it holds keeps the device until it exits
        with contextlib.ExitStack() as stack:
            devs = open_devices({DEVICES!r}, Path({str(tree)!r}), stack)
            mount_all({MOUNTS[:1]!r}, devs, Path({str(mnt)!r}), stack)
            held = open(Path({str(mnt)!r}) / "held", "w")
            print("cleanup", flush=True)
        print("cleaned", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout.readline() == "cleanup\n"
        time.sleep(0.3)  # inside the retries of the busy "/"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err and out == ""
    assert "is still in use 1 s after its detach" in err
    deadline = time.monotonic() + 5
    while loops_under(work) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state(work) == (set(), set())


def test_run_to_end_survives_ctrl_c():
    """Ctrl-C reaches the group; the tool finishes and the interrupt is handed back."""
    script = textwrap.dedent(
        """
        from osbuild.interrupts import run_to_end
        result, interrupt = run_to_end(["sh", "-c", "sleep 1; echo finished"])
        print(result.returncode, result.stdout.strip(), type(interrupt).__name__)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    time.sleep(0.4)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out.split() == ["0", "finished", "KeyboardInterrupt"]


def test_run_to_end_without_interrupt():
    result, interrupt = run_to_end(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert interrupt is None


# --- mount errors ----------------------------------------------------------


def test_fat_mount_is_refused_clearly_before_anything_is_mounted(work):
    tree, mnt = prepared_disk(work), work / "mnt"
    mounts = [MOUNTS[0], mount_spec("efi", "fat", "bootdev", "/boot/efi")]
    with pytest.raises(OsbuildError) as info:
        with contextlib.ExitStack() as stack:
            mount_all(mounts, open_devices(DEVICES, tree, stack), mnt, stack)
    message = str(info.value)
    assert "mount 'efi'" in message and "vfat" in message and "mtools" in message
    assert "\n" not in message
    assert state(work) == (set(), set())


@pytest.mark.parametrize(
    "mounts, expected",
    [
        ([mount_spec("root", "ext4", "nodev", "/")], "source 'nodev' is not a device"),
        # A mount without a source passes validation: no device node to mount.
        ([Mount("root", "org.osbuild.ext4", None, "/")], "source 'None' is not a device"),
        ([MOUNTS[0], mount_spec("efi", "fat", "bootdev", "/efi")], "cannot be mounted"),
    ],
)
def test_mount_errors_before_mounting(work, mounts, expected):
    devices = {"root": "/dev/null-not-used", "bootdev": "/dev/null-not-used"}
    with pytest.raises(OsbuildError) as info:
        with contextlib.ExitStack() as stack:
            mount_all(mounts, devices, work / "mnt", stack)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    assert mounts_under(work) == set()


def test_failed_mount_names_the_mount_and_says_why(work):
    tree, mnt = prepared_disk(work), work / "mnt"
    mounts = [MOUNTS[0], mount_spec("boot", "xfs", "bootdev", "/boot")]  # it is ext4
    with pytest.raises(OsbuildError) as info:
        with contextlib.ExitStack() as stack:
            mount_all(mounts, open_devices(DEVICES, tree, stack), mnt, stack)
    message = str(info.value)
    assert message.startswith("mount 'boot': mounting /dev/loop")
    assert "wrong fs type" in message and "\n" not in message
    assert state(work) == (set(), set())


def test_symlink_in_mounted_root_cannot_lead_a_mount_outside(work):
    tree, mnt = prepared_disk(work), work / "mnt"
    outside = work / "outside"
    outside.mkdir()
    with contextlib.ExitStack() as stack:
        mount_all(MOUNTS[:1], open_devices(DEVICES, tree, stack), mnt, stack)
        (mnt / "boot").symlink_to(outside)
    with pytest.raises(OsbuildError, match="leads outside the mount root"):
        with contextlib.ExitStack() as stack:
            mount_all(MOUNTS, open_devices(DEVICES, tree, stack), mnt, stack)
    assert state(work) == (set(), set())
    assert list(outside.iterdir()) == []


# --- xfs and btrfs ---------------------------------------------------------


def test_xfs_mount(work):
    tree, mnt = single_fs(work, "xfs", 320 * MiB), work / "mnt"
    devices = {"disk": loop_spec("fs.img")}
    with contextlib.ExitStack() as stack:
        paths = mount_all([mount_spec("root", "xfs", "disk", "/")], open_devices(
            devices, tree, stack), mnt, stack)
        assert run("findmnt", "-n", "-o", "FSTYPE", paths["root"]).strip() == "xfs"
        Path(paths["root"], "file").write_text("on xfs\n")
    ro = [mount_spec("root", "xfs", "disk", "/", readonly=True, norecovery=True)]
    with contextlib.ExitStack() as stack:
        paths = mount_all(ro, open_devices(devices, tree, stack), mnt, stack)
        assert "ro" in run("findmnt", "-n", "-o", "OPTIONS", paths["root"]).split(",")
        assert Path(paths["root"], "file").read_text() == "on xfs\n"
    assert state(work) == (set(), set())


def test_btrfs_subvol_and_compress(work):
    tree, mnt = single_fs(work, "btrfs", 160 * MiB), work / "mnt"
    devices = {"disk": loop_spec("fs.img")}
    top = [mount_spec("top", "btrfs", "disk", "/")]
    with contextlib.ExitStack() as stack:
        paths = mount_all(top, open_devices(devices, tree, stack), mnt, stack)
        run("btrfs", "-q", "subvolume", "create", f"{paths['top']}/@root")
    sub = [mount_spec("root", "btrfs", "disk", "/", subvol="@root", compress="zstd")]
    with contextlib.ExitStack() as stack:
        paths = mount_all(sub, open_devices(devices, tree, stack), mnt, stack)
        options = run("findmnt", "-n", "-o", "OPTIONS", paths["root"]).strip().split(",")
        assert "compress=zstd:3" in options or "compress=zstd" in options
        assert "subvol=/@root" in options
        Path(paths["root"], "file").write_text("in a subvolume\n")
    with contextlib.ExitStack() as stack:
        paths = mount_all(top, open_devices(devices, tree, stack), mnt, stack)
        assert Path(paths["top"], "@root", "file").read_text() == "in a subvolume\n"
        assert not Path(paths["top"], "file").exists()
    assert state(work) == (set(), set())
