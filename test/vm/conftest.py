"""Fixtures for the boot tests: images built once into a store shared by the session.

Every test/vm image but the default sample (test/conftest.py's default_sample,
built once per run from an empty store) is pinned from its template
(test/data/vm/*.yaml, or a sample) with osbuild-mpp and built with
`python3 -m osbuild` into one store
that all pytest-xdist workers of the run share: builds are serialized by a
lock (they share a build root, so the second one reuses it), boots run in
parallel. The session's SSH key replaces the templates' @SSH_PUBLIC_KEY@.
OSBUILD_VM_STORE=DIR keeps the store across runs; otherwise it is removed
when the last worker is done. Failed boots leave their serial log and a
screendump under the run's basetemp (printed in the failure message), or under
OSBUILD_BOOT_ARTIFACTS when set.

The session ends with a leak check: no qemu process, harness temp dir, mount
or loop device of this suite may be left, passed or failed.
"""

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from runshare import run_root, shared_dir
from vmkit import Builder, Guest, VMImage

from verify import qemu
from verify.boot import require_running

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATES = ROOT / "test/data/vm"

VMS = pytest.StashKey[list[qemu.VM]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """A failed test's VMs keep their logs and a screendump, named in the report.

    The report is made before the fixtures' teardown, so qemu still runs.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        for vm in item.stash.get(VMS, []):
            if vm.running():
                path = vm.save_artifacts(f"{item.nodeid} failed")
                report.sections.append(("boot artifacts", str(path)))


def _leaks(paths: list[Path]) -> list[str]:
    """Mounts and loop devices under `paths`, and this process's VM leftovers."""
    found = qemu.leftovers()
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                            text=True).stdout.splitlines()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
    for path in map(str, paths):
        found += [f"mount {m}" for m in mounts if m.startswith(path)]
        found += [f"loop device {loop}" for loop in loops if path in loop]
    return found


@pytest.fixture(scope="session", autouse=True)
def vm_leak_check(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the session: fail if a qemu, temp dir, mount or loop device was left."""
    yield
    left = _leaks([run_root(tmp_path_factory)])
    if left:
        pytest.fail("left behind by the boot tests: " + "; ".join(left), pytrace=False)


@pytest.fixture(scope="session")
def vm_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where failed boots leave their logs and screendumps."""
    env = os.environ.get(qemu.ARTIFACTS_ENV)
    path = Path(env) if env else run_root(tmp_path_factory) / "boot-artifacts"
    os.environ[qemu.ARTIFACTS_ENV] = str(path)  # for verify.boot.boot() callers too
    return path


@pytest.fixture(scope="session")
def vm_builder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builder]:
    """The run's shared store, removed by the last worker to leave (unless OSBUILD_VM_STORE)."""
    with shared_dir(tmp_path_factory, "vm-shared") as shared:
        kept = os.environ.get("OSBUILD_VM_STORE")
        yield Builder(shared, Path(kept) if kept else shared / "store")


@pytest.fixture(scope="session")
def uefi_sample(vm_builder: Builder) -> VMImage:
    return vm_builder.build(ROOT / "samples/src/debian13-uefi-qcow2.yaml", uefi=True)


@pytest.fixture(scope="session")
def xfs_web_image(vm_builder: Builder) -> VMImage:
    """An xfs root that also serves HTTP with lighttpd: one boot checks both."""
    return vm_builder.build(TEMPLATES / "xfs-web.yaml")


@pytest.fixture(scope="session")
def default_image(default_sample: dict[str, Any]) -> VMImage:
    """The default sample: test/conftest.py's `default_sample`, built once per run from
    an empty store (its pinned manifest is the one vm_builder would pin: the sample
    has no SSH key to inject)."""
    return VMImage("debian13-qcow2", default_sample["image"], default_sample["manifest"])


@pytest.fixture
def boot_vm(vm_artifacts: Path, request: pytest.FixtureRequest
            ) -> Callable[..., tuple[qemu.VM, Guest]]:
    """boot_vm(image, forwards=...) -> (vm, guest): booted, checked up, stopped after the test."""
    stack = ExitStack()
    request.addfinalizer(stack.close)
    request.node.stash[VMS] = vms = []

    def boot(image: VMImage, forwards: tuple[int, ...] = (22,)) -> tuple[qemu.VM, Guest]:
        vm = stack.enter_context(qemu.VM(image.path, uefi=image.uefi, arch=image.arch,
                                         forwards=forwards, name=image.name,
                                         artifacts=vm_artifacts))
        vms.append(vm)
        # An image with our key also has the boot marker, which must say `running` (a
        # failed unit in our image is a bug); the samples stop at a login, and
        # Guest.check_manifest asks systemd inside.
        result = vm.wait_boot(until="marker" if image.key else "login")
        if image.key:
            result = require_running(vm, result)
        if not result.success:
            pytest.fail(f"{image.name} did not boot: {result.report()}", pytrace=False)
        guest = Guest(vm, image)
        guest.boot = result
        return vm, guest

    return boot
