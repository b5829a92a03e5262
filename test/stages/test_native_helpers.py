"""A foreign tree's call-outs make the files its emulated programs make, byte for byte.

org.osbuild.debs runs some of an arm64 tree's programs natively (osbuild.toolkit.foreign.STANDINS,
osbuild/toolkit/foreign.py): the build root's depmod and systemd-hwdb on the tree, the tree's
deb-systemd-helper with the build root's perl. Here each runs, the way the stage runs it,
on one copy of a real arm64 tree, and the tree's own program runs through qemu-user on
another copy with the same input; the two copies must then be the same, file for file.

The tree is Debian's arm64 packages of this host's release, extracted (nothing of it runs
but the programs compared), with the host's very versions of kmod and udev: the host
stands in for the build root, and the stage runs these programs natively only for the
tree's versions of them. dracut-install's call-out needs the tree's dracut-install and
libkmod2 (Debian 13's names) in the build root, which this host does not have: its test
makes an arm64 trixie tree and an amd64 trixie build root, and runs the call-out in the
debs stage's sandbox around that build root. debfile's uncompressed packages are compared
in test_debian.py (the same data for dpkg).
"""

import os
import platform
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from stagetest import LIBDIR, load_meta

from osbuild import binfmt
from osbuild.buildroot import TREE, BuildRoot
from osbuild.depsolve import host_mirror
from osbuild.toolkit import callserver, foreign

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
    from outside (foreign.native_standins_hook) on the tree; what it said."""
    notes = tmp_path / "notes"
    notes.mkdir(exist_ok=True)
    (notes / f"{name}.todo").write_text(note)
    hook = foreign.native_standins_hook(str(notes), [name])
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
    with callserver.serving(str(native), str(directory), ["deb-systemd-helper"]):
        called = [subprocess.run([standin, *call], env=env, capture_output=True, text=True,
                                 timeout=120) for call in HELPER_CALLS]
    ran = [emulated(emu, "deb-systemd-helper", *call, env=env) for call in HELPER_CALLS]
    assert [(r.returncode, r.stdout, r.stderr) for r in called] == [
        (r.returncode, r.stdout, r.stderr) for r in ran]
    assert (native / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    assert (native / "etc/systemd/system/osbuild-alias.service").is_symlink()
    assert_same_trees(native, emu)
    shutil.rmtree(directory)


# --- dracut-install -------------------------------------------------------------------------

# The call-out needs the build root to have the tree's versions of dracut-install and
# libkmod2, which are Debian 13's package names: here the tree and the build root are both
# trixie, the build root amd64 (made, not this host), and the call-out runs in the debs
# stage's own sandbox around it (osbuild.buildroot), the tree at the stage's tree path.
DRACUT_SUITE = "trixie"
DRACUT = foreign.CALLOUTS["dracut-install"]
# The modules the calls below copy, one that only modprobe.d names (SOFTDEP) and three
# that hook-functions' filters leave out (FILTERED): with what they depend on, the rest of
# the kernel's are cut. btrfs's own softdeps name crypto aliases (blake2b-256, xxhash64);
# mscc asks for firmware.
FILTERED = ("tun", "dummy", "brd")  # by -P's path, by -s's symbols (net, block)
DRACUT_MODULES = ("virtio_blk", "loop", "virtio_net", "isofs", "mscc", "btrfs",
                  "blake2b_generic", "xxhash_generic", "squashfs", *FILTERED)
SOFTDEP = "softdep isofs post: squashfs\n"
DESTDIR = "/var/tmp/mkinitramfs_osbt01"  # mkinitramfs's mktemp -d
# hook-functions' filters in auto_add_modules (net, block).
NET_EXCLUDE = ("/((cdc_mbim|ipheth|qmi_wwan|sierra_net|tun|veth|xen-netback)\\.ko|"
               "(isdn|net/(802|ethernet|llc|phy|team)|uwb|wan|wireless)/)")
NET_SYMBOLS = "eth_type_trans|register_virtio_device|usbnet_open"
BLOCK_SYMBOLS = ("ahci_platform_get_resources|ata_scsi_ioctl|scsi_add_host|blk_cleanup_queue|"
                 "register_mtd_blktrans|scsi_esp_register|register_virtio_device|"
                 "usb_stor_disconnect|mmc_add_host|sdhci_add_host|scsi_add_host_with_dma|"
                 "blk_mq_alloc_disk|blk_mq_alloc_request|blk_mq_destroy_queue|blk_cleanup_disk|"
                 "dw_mc_probe|dw_mci_pltfm_register|nvme_init_ctrl")


def dracut_calls(version: str) -> list[list[str]]:
    """What initramfs-tools' hook-functions (_call_dracut_install) runs for a `dep` initrd
    of this tree: the net and block filters, then apply_add_modules' sorted list."""
    firmware = (f"/lib/firmware/updates/{version}:/lib/firmware/updates:"
                f"/lib/firmware/{version}:/lib/firmware")
    head = ["-D", DESTDIR, "--kerneldir", f"/lib/modules/{version}", "--firmwaredirs",
            firmware, "-o", "-m"]
    listed = sorted({"=drivers/net/ethernet", "=drivers/net/mdio", "=drivers/net/phy",
                     "cdc_eem", "btrfs", "isofs"})  # cdc_eem: cut, -o passes over it
    return [[*head, "-P", NET_EXCLUDE, "-s", NET_SYMBOLS, "=drivers/net"],
            [*head, "-s", BLOCK_SYMBOLS, "=drivers/block"],
            [*head, *listed]]


def mmdebstrap(target: Path, architecture: str, variant: str, include: list[str],
               *extra: str) -> None:
    subprocess.run(["mmdebstrap", "--quiet", "--mode=root", f"--variant={variant}",
                    f"--architectures={architecture}", f"--include={','.join(include)}", *extra,
                    DRACUT_SUITE, str(target), host_mirror()], check=True, timeout=1200)


def in_build_root(root: Path, tree: Path, argv: list[str], tmp: Path
                  ) -> subprocess.CompletedProcess[str]:
    """`argv` in the debs stage's sandbox around `root`, the tree at its path there, run
    the way callserver._run runs a call-out: from the tree, with only PATH and LC_ALL."""
    api = tmp / "api"
    api.mkdir(exist_ok=True)
    capabilities = frozenset(load_meta("org.osbuild.debs").get("capabilities", []))
    sandbox = BuildRoot(root, "org.osbuild.linux", LIBDIR).command(tree, api, [], [],
                                                                  capabilities)
    sandbox[sandbox.index("--chdir") + 1] = TREE
    return subprocess.run([*sandbox, "env", "-i", "PATH=/usr/sbin:/usr/bin", "LC_ALL=C.UTF-8",
                           *argv], capture_output=True, text=True, timeout=600)


def keep_modules(modules: Path, wanted: tuple[str, ...]) -> None:
    """Cut the kernel's modules to `wanted` and what they depend on (modinfo's depends)."""
    paths = {p.name.split(".ko")[0].replace("-", "_"): p for p in modules.rglob("*.ko*")}
    keep: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        depends = subprocess.run(["modinfo", "-F", "depends", str(paths[name])],
                                 capture_output=True, text=True, check=True).stdout.strip()
        todo += [d.replace("-", "_") for d in depends.split(",") if d]
    for name, path in paths.items():
        if name not in keep:
            path.unlink()


def package_versions(archives: Path) -> dict[str, str]:
    """Package -> version of the .deb files mmdebstrap left in `archives` (then gone)."""
    versions = {}
    for deb in archives.glob("*.deb"):
        name, version = subprocess.run(
            ["dpkg-deb", "--show", "--showformat=${Package} ${Version}", str(deb)],
            capture_output=True, text=True, check=True).stdout.split()
        versions[name] = version
        deb.unlink()
    return versions


@pytest.fixture(scope="module")
def dracut_trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """An arm64 trixie tree with dracut-install, kmod and a kernel (a few modules, a
    modprobe.d softdep, firmware, depmod run, mkinitramfs's DESTDIR), an amd64 trixie build
    root with dracut-install and kmod and the same modprobe.d; the kernel's version."""
    base = tmp_path_factory.mktemp("dracut")
    tree, root = base / "tree", base / "root"
    # The kernel brings initramfs-tools, as in a real tree; its packages are only extracted
    # (base-files: the merged-/usr links; liblzma5 and libzstd1, which dpkg brings to a real
    # tree: trixie's libkmod2 opens them only when it meets a compressed module).
    mmdebstrap(tree, "arm64", "extract", ["base-files", "dracut-install", "kmod", "liblzma5",
                                          "libzstd1", "linux-image-cloud-arm64"],
               "--skip=cleanup/apt/cache")
    mmdebstrap(root, "amd64", "essential", ["dracut-install", "kmod"])
    versions = package_versions(tree / "var/cache/apt/archives")
    for package in DRACUT.same_versions:  # the call-out's condition, asked as the stage does
        proc = in_build_root(root, tree, ["dpkg-query", "-W", "--showformat=${Version}",
                                          package], base)
        assert proc.returncode == 0 and proc.stdout == versions.get(package), (
            f"{DRACUT_SUITE}'s {package} is {versions.get(package)} for arm64 and "
            f"{proc.stdout or proc.stderr} for amd64: the call-out would not run")
    kernels = [p.name for p in (tree / "usr/lib/modules").iterdir()]
    assert len(kernels) == 1, kernels
    version = kernels[0]
    modules = tree / "usr/lib/modules" / version
    keep_modules(modules, DRACUT_MODULES)
    for image in (tree / "boot").iterdir():
        image.unlink()
    # mscc's firmware: one in /lib/firmware, one there and (another) in updates/VERSION,
    # a second directory on hook-functions' --firmwaredirs.
    mscc = next(modules.rglob("mscc.ko*"))
    wanted = subprocess.run(["modinfo", "-F", "firmware", str(mscc)], capture_output=True,
                            text=True, check=True).stdout.split()
    assert len(wanted) >= 2, wanted
    firmware = tree / "usr/lib/firmware"
    for where, name in ((firmware, wanted[0]), (firmware, wanted[1]),
                        (firmware / "updates" / version, wanted[1])):
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(f"osbuild test firmware: {where.name}/{name}\n")
    for top in (tree, root):
        (top / "etc/modprobe.d").mkdir(parents=True, exist_ok=True)
        (top / "etc/modprobe.d/osbuild-test.conf").write_text(SOFTDEP)
    # The call-out's other condition (the stage's bind hook checks it with diff -r): the
    # kernel's dependencies bring modprobe.d files the build root has no package for here,
    # so the build root gets the tree's (what a build root made for such a tree has).
    for directory in foreign.MODPROBE_DIRS:
        ours, theirs = root / directory.lstrip("/"), tree / directory.lstrip("/")
        shutil.rmtree(ours, ignore_errors=True)
        if theirs.exists():
            shutil.copytree(theirs, ours, symlinks=True)
    # The kernel's postinst: depmod VERSION (the stage's stand-in, from the build root).
    proc = in_build_root(root, tree, ["depmod", "-b", TREE, version], base)
    assert proc.returncode == 0, proc.stderr
    # What mkinitramfs makes before the hooks run: the merged-/usr layout and the
    # kernel's files that depmod does not make.
    dest = tree / DESTDIR.lstrip("/")
    for link in sorted(p.name for p in tree.glob("lib*")) + ["bin", "sbin"]:
        (dest / "usr" / link).mkdir(parents=True)
        (dest / link).symlink_to(f"usr/{link}")
    for directory in ("conf/conf.d", "etc", "run", "scripts", f"lib/modules/{version}"):
        (dest / directory).mkdir(parents=True, exist_ok=True)
    for name in ("modules.builtin", "modules.builtin.bin", "modules.builtin.modinfo",
                 "modules.order"):
        if (modules / name).is_file():
            shutil.copy2(modules / name, dest / f"lib/modules/{version}" / name)
    dest.chmod(0o755)
    return tree, root, version


def test_dracut_install_called_out_from_a_trixie_build_root_makes_the_emulated_initrd_files(
        dracut_trees: tuple[Path, Path, str], tmp_path: Path) -> None:
    tree, root, version = dracut_trees
    native, emu = tmp_path / "native", tmp_path / "emulated"
    for copy in (native, emu):
        subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    with binfmt.emulation():
        for call in dracut_calls(version):
            # What the stage's server runs for a stand-in's request (callserver._run).
            called = in_build_root(root, native, DRACUT.command(TREE, DRACUT.program, call),
                                   tmp_path)
            ran = emulated(emu, DRACUT.program, *call)
            assert (called.returncode, called.stdout, called.stderr) == (
                ran.returncode, ran.stdout, ran.stderr), call
            assert called.returncode == 0, called.stderr
    dest = native / DESTDIR.lstrip("/")
    copied = {p.name.split(".ko")[0] for p in dest.rglob("*.ko*")}
    # It did the work: modules by directory and symbol filter, by name and dependency,
    # a softdep of btrfs's own (an alias) and the modprobe.d one, not those the filters
    # leave out, and the firmware: every copy found on --firmwaredirs (dracut-install 106
    # installs each one, each at its own path).
    assert {"virtio_net", "net_failover", "virtio_blk", "loop", "mscc", "libphy", "btrfs",
            "blake2b_generic", "isofs", "cdrom", "squashfs"} <= copied, copied
    assert not copied & set(FILTERED), copied
    found = sorted(p.read_text().split(": ")[1].split("/")[0] for p in dest.rglob("*")
                   if p.is_file() and "firmware" in p.parts)  # where each came from
    assert found == sorted(["firmware", "firmware", version]), found
    assert_same_trees(native, emu)
