#!/usr/bin/env python3
"""`make bench`: time the default sample against the plain baseline on this machine.

Each measured once, one tool at a time: a cold build (empty store), a fully
cached rebuild, a rebuild after changing only the hostname, image-info on the
built image beside libguestfs's virt-inspector, and bench/baseline.sh doing
just the necessary work by hand; then the built image's boot metrics
(osbuild-boot-test --json, logged in on the console). With --foreign, samples of other
architectures are built cold too, each in an empty store, and compared with
the default sample's cold build (the goal: at most 3x).
"""

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from osbuild.depsolve import host_mirror  # noqa: E402


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, **env} if env else None)
    return time.monotonic() - start


# libguestfs works here only with these (with KVM its qemu aborts).
GUESTFS_ENV = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}


def with_hostname(manifest: dict, hostname: str) -> dict:
    changed = copy.deepcopy(manifest)
    for pipeline in changed["pipelines"]:
        for stage in pipeline.get("stages", []):
            if stage["type"] == "org.osbuild.hostname":
                stage["options"]["hostname"] = hostname
                return changed
    raise SystemExit("bench: the sample has no org.osbuild.hostname stage")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "samples/debian13-qcow2.json")
    parser.add_argument("--export", default="qcow2")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--foreign", type=Path, nargs="*", default=[], metavar="MANIFEST",
                        help="pinned samples of other architectures to build cold as well")
    args = parser.parse_args()
    osbuild = [sys.executable, "-m", "osbuild"]
    manifest = json.loads(args.manifest.read_text())
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        build = [*osbuild, "--store", str(work / "store"), "--output-directory",
                 str(work / "out"), "--export", args.export]
        results["cold build"] = timed([*build, str(args.manifest)])
        results["fully cached rebuild"] = timed([*build, str(args.manifest)])
        changed = work / "hostname.json"
        changed.write_text(json.dumps(with_hostname(manifest, "bench-changed")))
        results["rebuild after hostname change"] = timed([*build, str(changed)])
        image = next((work / "out" / args.export).iterdir())
        results["image-info (root, loop)"] = timed(
            [sys.executable, "-m", "osbuild.image_info", str(image)])
        if shutil.which("virt-inspector"):
            results["virt-inspector (libguestfs)"] = timed(
                ["virt-inspector", "-a", str(image)], GUESTFS_ENV)
        boot = subprocess.run([sys.executable, "-m", "verify.cli", str(image), "--login",
                               "root:debian", "--json"], capture_output=True, text=True)
        metrics: dict[str, Any] = (json.loads(boot.stdout) if boot.stdout.strip()
                                   else {"reason": boot.stderr})
        if not args.skip_baseline:
            (work / "baseline").mkdir()
            results["baseline script"] = timed(
                ["bash", str(ROOT / "bench/baseline.sh"), str(work / "baseline"), host_mirror()])
        shutil.rmtree(work / "store", ignore_errors=True)
        foreign: dict[str, float] = {}
        for sample in args.foreign:
            store = work / f"store-{sample.stem}"
            foreign[f"cold build {sample.stem}"] = timed(
                [*osbuild, "--store", str(store), "--output-directory",
                 str(work / f"out-{sample.stem}"), "--export", "qcow2", str(sample)])
            shutil.rmtree(store, ignore_errors=True)
    baseline = results.get("baseline script")
    print(f"{'measurement':40} {'seconds':>8} {'vs baseline':>12}")
    for name, seconds in results.items():
        ratio = f"{seconds / baseline:.2f}x" if baseline else "-"
        print(f"{name:40} {seconds:8.1f} {ratio:>12}")
    print(f"\nboot of the default sample ({metrics.get('accelerator', '?')}): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in metrics.get("seconds", {}).items())
          + f"; {metrics.get('system-state') or metrics.get('reason')}")
    for unit in metrics.get("blame", [])[:5]:
        print(f"  {unit['seconds']:7.2f} s  {unit['unit']}")
    for name, seconds in foreign.items():
        print(f"{name:40} {seconds:8.1f} {seconds / results['cold build']:>11.2f}x"
              " the default sample's cold build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
