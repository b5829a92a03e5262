"""qemu-user through binfmt_misc: registered while a build needs it, the host left as found.

Real binfmt_misc and real qemu-user-static: tiny static programs for arm64 and
riscv64 (an exit system call, made by test/elfprog.py) run on this amd64 host
only while osbuild.binfmt.emulation() holds the handlers. Other tests may
build foreign trees at the same time (xdist workers), so the host's state is
read under the engine's own lock (binfmt.MUTEX) and told apart from what builds
hold: the handlers the engine registered are listed in binfmt.OURS, and its
mount of binfmt_misc is marked by binfmt.MOUNTED, both changed only under that
lock. The checks then hold whatever runs beside them; each test-only handler
has a name and magic of its own.
"""

import fcntl
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from osbuild import binfmt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from elfprog import exit_program  # noqa: E402

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="an amd64 host")


def fake_handler(name: str) -> tuple[str, str]:
    """A handler no real program matches (its magic is no ELF header), one per test:
    tests on other xdist workers register theirs at the same time."""
    return name, f":{name}:M::\\x00{name.upper().replace('-', '')}::/bin/false:F"


PROGRAMS = {arch: exit_program(arch, 42) for arch in ("arm64", "riscv64")}


@dataclass(frozen=True)
class HostState:
    """binfmt_misc as the engine's lock shows it at one moment."""

    registered: frozenset[str]  # every handler, the host's and those builds hold
    ours: frozenset[str]  # what the engine registered and still holds for builds
    mounted: bool  # binfmt_misc is mounted
    engine_mounted: bool  # ... by the engine, for builds
    in_use: bool  # a build (this process or another) holds the handlers
    ran: int | None = None  # what the program given to host_state() returned, under the lock

    @property
    def hosts(self) -> frozenset[str]:
        """The host's own handlers: neither the engine's nor another test's stand-in host's."""
        return frozenset(n for n in self.registered - self.ours
                         if not n.startswith("osbuild-test-"))

    @property
    def host_mounted(self) -> bool:
        return self.mounted and not self.engine_mounted


def host_state(program: Path | None = None) -> HostState:
    """A snapshot taken under binfmt.MUTEX, the lock emulation() changes everything under;
    with `program`, what it returns when run at that moment."""
    binfmt.STATE.mkdir(parents=True, exist_ok=True)
    mutex = os.open(binfmt.STATE / binfmt.MUTEX, os.O_RDWR | os.O_CREAT)
    users = os.open(binfmt.STATE / binfmt.USERS, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(mutex, fcntl.LOCK_EX)
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            in_use = False
        except BlockingIOError:
            in_use = True
        ours = binfmt.STATE / binfmt.OURS
        return HostState(frozenset(binfmt.registered()),
                         frozenset(ours.read_text().split() if ours.exists() else ()),
                         (binfmt.BINFMT_MISC / "register").exists(),
                         (binfmt.STATE / binfmt.MOUNTED).exists(), in_use,
                         run(program) if program else None)
    finally:
        os.close(users)  # closing drops the locks
        os.close(mutex)


def assert_released(state: HostState, names: set[str]) -> None:
    """After a build let go: each of `names` the host lacked is gone, or another build holds
    it; with no build left, the engine holds nothing at all."""
    for name in names - state.hosts:
        assert name not in state.registered or (state.in_use and name in state.ours), \
            f"{name} is still registered: {state}"
    if not state.in_use:
        assert not state.ours and not state.engine_mounted, f"nobody holds them: {state}"


def run(path: Path) -> int:
    try:
        return subprocess.run([str(path)], check=False).returncode
    except OSError:
        return -1  # ENOEXEC: no handler


@pytest.fixture
def programs(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for arch, data in PROGRAMS.items():
        path = tmp_path / f"exit42-{arch}"
        path.write_bytes(data)
        path.chmod(0o755)
        paths[arch] = path
    return paths


def test_foreign_programs_run_while_emulation_is_held(programs: dict[str, Path]) -> None:
    if not binfmt.available_handlers():
        pytest.fail("qemu-user-static is not installed (ci/setup installs it)")
    before = host_state()
    with binfmt.emulation() as names:
        assert {"qemu-aarch64", "qemu-riscv64"} <= names
        for name in ("qemu-aarch64", "qemu-riscv64"):
            flags = (binfmt.BINFMT_MISC / name).read_text()
            assert "flags: " in flags and "F" in flags.split("flags: ")[1].split()[0]
        for arch, path in programs.items():
            assert run(path) == 42, arch
    after = host_state(programs["arm64"])
    assert (after.hosts, after.host_mounted) == (before.hosts, before.host_mounted)
    assert_released(after, {"qemu-aarch64", "qemu-riscv64"})
    # What the handlers' absence means, seen while nobody can register them again.
    assert after.ran == (42 if "qemu-aarch64" in after.registered else -1), after


def test_a_handler_the_host_lacks_is_removed_afterwards(monkeypatch: pytest.MonkeyPatch) -> None:
    name, line = fake_handler("osbuild-test-lacked")
    monkeypatch.setattr(binfmt, "available_handlers", lambda: {name: line})
    before = host_state()
    with binfmt.emulation() as names:
        assert name in names
    after = host_state()
    assert name not in before.registered
    assert_released(after, {name})
    assert (after.hosts, after.host_mounted) == (before.hosts, before.host_mounted)


def test_a_handler_the_host_had_is_left_as_found(monkeypatch: pytest.MonkeyPatch) -> None:
    name, line = fake_handler("osbuild-test-had")
    with binfmt.emulation():  # holds binfmt_misc mounted, so "the host" can register one
        (binfmt.BINFMT_MISC / "register").write_text(line)
        try:
            monkeypatch.setattr(binfmt, "available_handlers", lambda: {name: line})
            with binfmt.emulation() as names:
                assert name in names
            assert name in binfmt.registered()
        finally:
            (binfmt.BINFMT_MISC / name).write_text("-1")


def test_without_qemu_user_static_nothing_is_registered(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setattr(binfmt, "HANDLER_DIR", tmp_path)
    before = binfmt.registered()
    with binfmt.emulation() as names:
        assert names == before


# An arm64 update-rc.d that succeeds.
ARM64_TRUE = exit_program("arm64", 0)
SYSV_UNIT = "[Unit]\nDescription=a unit with a SysV twin\n[Service]\nExecStart=/bin/true\n" \
            "[Install]\nWantedBy=multi-user.target\n"


def test_systemd_stage_runs_a_foreign_trees_update_rc_d(osbuild) -> None:
    # systemctl --root hands a unit with an /etc/init.d twin to the tree's own
    # update-rc.d, chrooted: in an arm64 tree that needs qemu-user even when no
    # earlier stage of this build asked for it (the tree came from the cache).
    program = "".join(f"\\{byte:03o}" for byte in ARM64_TRUE)  # the sandbox hides tmp_path
    script = (f"mkdir -p usr/sbin etc/init.d etc/systemd/system && "
              f"printf '{program}' > usr/sbin/update-rc.d && chmod 755 usr/sbin/update-rc.d && "
              "printf '#!/bin/sh\\n' > etc/init.d/twin && chmod 755 etc/init.d/twin && "
              f"printf '{SYSV_UNIT}' > etc/systemd/system/twin.service")
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        {"type": "org.osbuild.test.script", "options": {"script": script}},
        {"type": "org.osbuild.systemd", "options": {"enabled_services": ["twin.service"]}},
    ]}]}
    proc = osbuild.run(manifest, "--export", "os", "--output-directory", str(osbuild.output),
                       check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Exec format error" not in proc.stdout
    assert (osbuild.output / "os/etc/systemd/system/multi-user.target.wants/twin.service") \
        .is_symlink()
