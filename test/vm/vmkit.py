"""The boot tests' toolkit: built images, the shared-store builder, the guest checks.

A plain module (not conftest.py) so that test modules can import its types.
"""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from runshare import LOCK, locked

from verify import bootlog, qemu

KEY_PLACEHOLDER = "@SSH_PUBLIC_KEY@"
# The samples' documented root password (README): the samples carry no SSH key.
SAMPLE_LOGIN = ("root", "debian")


@dataclass
class VMImage:
    """A built image and what its manifest promises about it."""

    name: str
    path: Path
    manifest: dict[str, Any]
    uefi: bool = False
    key: Path | None = None  # root's SSH key, when the manifest injects one
    arch: str = "x86_64"  # qemu's name: osbuild-boot-test --arch

    def options(self, stage_type: str) -> dict[str, Any]:
        for pipeline in self.manifest["pipelines"]:
            for stage in pipeline.get("stages", []):
                if stage["type"] == stage_type:
                    return dict(stage.get("options", {}))
        raise AssertionError(f"{self.name}: no {stage_type} stage in the manifest")

    @property
    def hostname(self) -> str:
        return str(self.options("org.osbuild.hostname")["hostname"])

    @property
    def root_fs(self) -> dict[str, Any]:
        fstab = self.options("org.osbuild.fstab")["filesystems"]
        return next(fs for fs in fstab if fs.get("path") == "/")

    @property
    def services(self) -> list[str]:
        return list(self.options("org.osbuild.systemd").get("enabled_services", []))

    @property
    def disabled_services(self) -> list[str]:
        return list(self.options("org.osbuild.systemd").get("disabled_services", []))


def with_options(manifest: dict[str, Any], options: dict[str, dict[str, Any]]
                 ) -> dict[str, Any]:
    """The manifest with `options` (stage type -> options) merged into those stages'."""
    found = set()
    for pipeline in manifest["pipelines"]:
        for stage in pipeline.get("stages", []):
            if stage["type"] in options:
                stage["options"] = {**stage.get("options", {}), **options[stage["type"]]}
                found.add(stage["type"])
    assert found == set(options), f"no stage of type {set(options) - found} to change"
    return manifest


class Builder:
    """Pins and builds images into the run's shared store, one build at a time."""

    def __init__(self, shared: Path, store: Path):
        self.shared = shared
        self.store = store
        self.lock = shared / LOCK

    def key(self) -> Path:
        key = self.shared / "id_ed25519"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            "osbuild-boot-test", "-f", str(key)], check=True)
        return key

    def build(self, template: Path, export: str = "qcow2", uefi: bool = False,
              arch: str = "x86_64", variant: str = "",
              options: dict[str, dict[str, Any]] | None = None) -> VMImage:
        """The template's image; a `variant` (its name's suffix) has `options` merged into
        the options of the stages of those types."""
        name = template.stem + (f"-{variant}" if variant else "")
        with locked(self.lock):
            key = self.key()
            pinned = self._pinned(template, key)
            if variant:
                # A variant has the very packages of its template's pinned manifest.
                base = json.loads(pinned.read_text())
                pinned = pinned.with_name(f"{name}.json")
                pinned.write_text(json.dumps(with_options(base, options or {}), indent=2))
            manifest = json.loads(pinned.read_text())
            out = self.shared / "out" / name
            if not out.exists():
                proc = subprocess.run(
                    [sys.executable, "-m", "osbuild", "--store", str(self.store),
                     "--output-directory", str(out), "--export", export, str(pinned)],
                    capture_output=True, text=True)
                if proc.returncode != 0:
                    shutil.rmtree(out, ignore_errors=True)
                    raise AssertionError(f"building {name} failed:\n{proc.stdout[-3000:]}"
                                         f"\n{proc.stderr[-3000:]}")
        images = sorted((out / export).iterdir())
        assert len(images) == 1, f"{name}: expected one image in the export, got {images}"
        injects_key = KEY_PLACEHOLDER in template.read_text()
        return VMImage(name, images[0], manifest, uefi, key if injects_key else None, arch)

    def _pinned(self, template: Path, key: Path) -> Path:
        """The template pinned by osbuild-mpp once per run, with the run's SSH key in it."""
        pinned = self.shared / "pinned" / f"{template.stem}.json"
        if not pinned.exists():
            pinned.parent.mkdir(exist_ok=True)
            raw = self.shared / "pinned" / f".{template.stem}.raw.json"
            subprocess.run([sys.executable, "-m", "osbuild.mpp", str(template), str(raw)],
                           check=True)
            pinned.write_text(raw.read_text().replace(
                KEY_PLACEHOLDER, key.with_suffix(".pub").read_text().strip()))
            raw.unlink()
        return pinned


Runner = Callable[[str], tuple[int, str]]


class Guest:
    """Commands in a booted guest, over SSH when the image has our key, else the console."""

    def __init__(self, vm: qemu.VM, image: VMImage):
        self.vm = vm
        self.image = image
        if image.key:
            ssh = vm.ssh(image.key)
            ssh.wait()

            def run(cmd: str) -> tuple[int, str]:
                proc = ssh.run(cmd, check=False)
                return proc.returncode, proc.stdout + proc.stderr
        else:
            console = vm.console()
            console.login(*SAMPLE_LOGIN, timeout=vm.accel.seconds(180))

            def run(cmd: str) -> tuple[int, str]:
                res = console.run(cmd, timeout=vm.accel.seconds(180))
                return res.returncode, res.output
        self.run: Runner = run
        self.via = "ssh" if image.key else "console"
        self.boot: bootlog.BootResult | None = None  # how the boot went, set by whoever booted

    def output(self, cmd: str) -> str:
        rc, out = self.run(cmd)
        if rc != 0:
            self.fail([f"{cmd!r} exited with {rc}: {out.strip()[-500:]}"])
        return out.strip()

    def fail(self, problems: list[str]) -> None:
        """Fail the test with the problems, the failed units, the artifacts and the console."""
        _, failed = self.run("systemctl list-units --state=failed --plain --no-legend "
                             "--no-pager")
        message = "; ".join(problems)
        where = self.vm.save_artifacts(message)
        pytest.fail(f"{self.image.name} (via {self.via}): {message}\n"
                    f"failed units: {failed.strip() or 'none'}\nartifacts: {where}\n"
                    f"--- serial console ---\n{bootlog.console_tail(self.vm.serial_log())}",
                    pytrace=False)

    def check_manifest(self) -> dict[str, str]:
        """What the manifest promises, checked inside: hostname, root fs, services, and the
        system `running` (not degraded).

        Returns the facts read, for more checks by the caller.
        """
        problems = []
        facts = {
            "hostname": self.output("hostname"),
            "uuid": self.output("findmnt -no UUID /"),
            "fstype": self.output("findmnt -no FSTYPE /"),
            "state": self.output("systemctl is-system-running --wait || true"),
        }
        if facts["hostname"] != self.image.hostname:
            problems.append(f"hostname {facts['hostname']!r}, manifest says "
                            f"{self.image.hostname!r}")
        root = self.image.root_fs
        if facts["uuid"].lower() != root["uuid"].lower():
            problems.append(f"root file system UUID {facts['uuid']}, manifest says "
                            f"{root['uuid']}")
        if facts["fstype"] != root["vfs_type"]:
            problems.append(f"root file system is {facts['fstype']}, manifest says "
                            f"{root['vfs_type']}")
        for service in self.image.services:
            rc, state = self.run(f"systemctl is-active {service}")
            if state.strip() != "active":
                problems.append(f"{service} is {state.strip() or rc}, manifest enables it")
        for service in self.image.disabled_services:
            _, state = self.run(f"systemctl is-active {service}")
            if state.strip() == "active":
                problems.append(f"{service} is active, manifest disables it")
        # Our own images: a failed unit (degraded) is a bug to fix, not a boot that passed.
        if facts["state"] != "running":
            problems.append(f"systemctl is-system-running: {facts['state']}")
        if problems:
            self.fail(problems)  # names the failed units
        return facts

    def boots_from_its_root(self, module: str) -> dict[str, str]:
        """check_manifest, and a root on `module` that the initramfs has the module of and
        GRUB read the kernel from (GRUB's prefix on it: BOOT_IMAGE=/boot/...).

        Returns check_manifest's facts.
        """
        facts = self.check_manifest()
        if facts["fstype"] != module:
            self.fail([f"the root file system is {facts['fstype']}, expected {module}"])
        initramfs = self.output("lsinitramfs /boot/initrd.img-$(uname -r)")
        if f"/fs/{module}/{module}.ko" not in initramfs:
            self.fail([f"the initramfs has no {module} module"])
        cmdline = self.output("cat /proc/cmdline")
        if not cmdline.startswith("BOOT_IMAGE=/boot/vmlinuz-"):
            self.fail([f"/proc/cmdline does not start with BOOT_IMAGE=/boot/vmlinuz-: "
                       f"{cmdline!r}"])
        return facts
