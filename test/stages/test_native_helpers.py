"""A foreign tree's call-outs make the files its emulated programs make, byte for byte.

org.osbuild.debs runs some of an arm64 tree's programs natively (osbuild.debian.STANDINS,
osbuild/nativecalls.py): the build root's depmod and systemd-hwdb on the tree, the tree's
deb-systemd-helper with the build root's perl. Here each runs, the way the stage runs it,
on one copy of a real arm64 tree, and the tree's own program runs through qemu-user on
another copy with the same input; the two copies must then be the same, file for file.

The tree is Debian's arm64 packages of this host's release, extracted (nothing of it runs
but the programs compared), with the host's very versions of kmod and udev: the host
stands in for the build root, and the stage runs these programs natively only for the
tree's versions of them. dracut-install's call-out needs dracut-install in the build
root, which this host does not have; debfile's uncompressed packages are compared in
test_debian.py (the same data for dpkg).
"""

import os
import platform
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from osbuild import binfmt, debian, nativecalls
from osbuild.depsolve import host_mirror

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mmdebstrap need root"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="an amd64 host runs arm64 trees"),
]

# The kernel's modules the depmod comparison keeps (with what they need): a few, not 1000.
MODULES = ("isofs", "loop", "virtio_blk", "virtio_net", "net_failover", "failover")
UNIT = "osbuild-test.service"
# A postinst's calls of deb-systemd-helper for a unit (what dh_installsystemd writes).
HELPER_CALLS = (["unmask", UNIT], ["--quiet", "was-enabled", UNIT], ["enable", UNIT],
                ["update-state", UNIT], ["--quiet", "was-enabled", UNIT])
HWDB = """# osbuild test
usb:v1D6Bp0002*
 ID_MODEL_FROM_DATABASE=osbuild test hub

evdev:input:b0003v046Dp*
 KEYBOARD_KEY_70039=leftctrl
"""


def host_version(package: str) -> str:
    proc = subprocess.run(["dpkg-query", "-W", "--showformat=${Version}", package],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        pytest.fail(f"this host has no {package}: ci/apt-packages.txt should install it")
    return proc.stdout


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.partition("=")[2].strip('"')
    pytest.fail("/etc/os-release names no VERSION_CODENAME")


@pytest.fixture(scope="module")
def arm64_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kmod, udev (at the host's versions), init-system-helpers and a cloud kernel, arm64."""
    tree = tmp_path_factory.mktemp("arm64") / "tree"
    pinned = [f"{p}={host_version(p)}" for p in ("kmod", "udev")]
    include = [*pinned, "init-system-helpers", "perl-base", "linux-image-cloud-arm64"]
    subprocess.run(["mmdebstrap", "--quiet", "--mode=root", "--variant=extract",
                    "--architectures=arm64", f"--include={','.join(include)}", codename(),
                    str(tree), host_mirror()], check=True, timeout=1200)
    # A few modules, not a thousand; no kernel image.
    for module in list((tree / "lib/modules").rglob("*.ko*")):
        if module.name.split(".ko")[0] not in MODULES:
            module.unlink()
    for image in (tree / "boot").iterdir():
        image.unlink()
    return tree


@pytest.fixture
def twins(arm64_tree: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two copies of the tree (the call-out's and the emulated program's), emulation held."""
    copies = tmp_path / "native", tmp_path / "emulated"
    for copy in copies:
        subprocess.run(["cp", "-a", str(arm64_tree), str(copy)], check=True)
    with binfmt.emulation() as handlers:
        assert "qemu-aarch64" in handlers or os.path.exists(
            "/proc/sys/fs/binfmt_misc/qemu-aarch64"), handlers
        yield copies


def files(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path under `root`: its kind, mode and content (a link's target)."""
    found = {}
    for directory, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(directory, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            else:
                content = b""
            found[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_mode, content)
    return found


def assert_same_trees(native: Path, emulated: Path) -> None:
    a, b = files(native), files(emulated)
    differ = sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
    assert not differ, f"the call-out's tree and the emulated program's differ: {differ[:10]}"


def emulated(tree: Path, *argv: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """The tree's own program, through qemu-user."""
    return subprocess.run(["chroot", str(tree), *argv], capture_output=True, text=True,
                          env=env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=600)


def noted_work(tree: Path, name: str, note: str, tmp_path: Path) -> str:
    """What the stage does once packages are configured: the stand-in's noted call, run
    from outside (debian.native_standins_hook) on the tree; what it said."""
    notes = tmp_path / "notes"
    notes.mkdir(exist_ok=True)
    (notes / f"{name}.todo").write_text(note)
    hook = debian.native_standins_hook(str(notes), [name])
    proc = subprocess.run(["sh", "-c", hook, "hook", str(tree)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_depmod_from_outside_makes_the_emulated_depmods_files(
        twins: tuple[Path, Path], tmp_path: Path) -> None:
    native, emu = twins
    kernels = [p.name for p in (native / "lib/modules").iterdir()]
    assert len(kernels) == 1, kernels
    version = kernels[0]
    noted_work(native, "depmod", f"{version}\n", tmp_path)
    proc = emulated(emu, "depmod", version)  # the kernel's postinst: depmod VERSION
    assert proc.returncode == 0, proc.stderr
    dep = (native / "lib/modules" / version / "modules.dep").read_text()
    assert "virtio_net.ko: kernel/drivers/net/net_failover.ko" in dep, dep  # it did the work
    assert_same_trees(native, emu)


def test_systemd_hwdb_from_outside_makes_the_emulated_hwdb_bin(
        twins: tuple[Path, Path], tmp_path: Path) -> None:
    native, emu = twins
    for tree in twins:  # a small hwdb instead of udev's 10 MB, the same in both
        shipped = tree / "lib/udev/hwdb.d"
        for source in shipped.iterdir():
            source.unlink()
        (shipped / "60-osbuild-test.hwdb").write_text(HWDB)
    # Whether the build root's (this host's) systemd-hwdb records the tree's path in
    # hwdb.bin (systemd 252 does): then the stand-in's work is the tree's own, emulated.
    subprocess.run(["systemd-hwdb", "--root", str(native), "--usr", "update"], check=True)
    made = [p for p in native.rglob("hwdb.bin") if not p.is_symlink()]
    assert len(made) == 1 and made[0].stat().st_size > 0, made
    records_root = f"{native}/".encode() in made[0].read_bytes()
    said = noted_work(native, "systemd-hwdb", "--usr update\n", tmp_path)
    assert ("hwdb.bin names the tree's path" in said) == records_root, said
    proc = emulated(emu, "systemd-hwdb", "--usr", "update")  # udev's postinst
    assert proc.returncode == 0, proc.stderr
    assert_same_trees(native, emu)


def test_deb_systemd_helper_called_out_makes_the_emulated_scripts_links_and_state(
        twins: tuple[Path, Path], tmp_path: Path) -> None:
    native, emu = twins
    for tree in twins:
        (tree / "lib/systemd/system").mkdir(parents=True, exist_ok=True)
        (tree / "lib/systemd/system" / UNIT).write_text(
            "[Unit]\nDescription=osbuild test\n[Service]\nExecStart=/bin/true\n"
            "[Install]\nWantedBy=multi-user.target\nAlias=osbuild-alias.service\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DPKG_MAINTSCRIPT_PACKAGE": "osbuild-test",
           "DPKG_MAINTSCRIPT_NAME": "postinst"}
    directory = tmp_path / "callouts"
    directory.mkdir()
    standin = str(directory / "deb-systemd-helper")
    with nativecalls.serving(str(native), str(directory), ["deb-systemd-helper"]):
        called = [subprocess.run([standin, *call], env=env, capture_output=True, text=True,
                                 timeout=120) for call in HELPER_CALLS]
    ran = [emulated(emu, "deb-systemd-helper", *call, env=env) for call in HELPER_CALLS]
    assert [(r.returncode, r.stdout, r.stderr) for r in called] == [
        (r.returncode, r.stdout, r.stderr) for r in ran]
    assert (native / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    assert (native / "etc/systemd/system/osbuild-alias.service").is_symlink()
    assert_same_trees(native, emu)
    shutil.rmtree(directory)
