#!/usr/bin/env python3
"""`make bench`: time the default sample against the plain baseline on this machine.

Each measured once, one tool at a time: a cold build (empty store), a fully
cached rebuild, a rebuild after changing only the hostname, image-info on the
built image beside libguestfs's virt-inspector, and bench/baseline.sh doing
just the necessary work by hand; then the built image's boot metrics
(osbuild-boot-test --json, logged in on the console). With --foreign, samples of other
architectures are built cold too, each in an empty store, and compared with
the default sample's cold build. Last, bench/check-images-parallel times the
golden cases with one worker and with two.

Every figure is printed beside its goal and beside the previous run, and the
run is appended to bench/results.jsonl with the commit it measured; the README's
table is then rewritten from it (bench/results.py keeps the goals). A benchmark,
not a test: a missed goal reads "not met" and the exit status stays 0.
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

import results  # noqa: E402  (bench/results.py: the goals and the results file)

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


def check_images() -> dict[str, float]:
    """bench/check-images-parallel's wall times; none when it fails (it says why)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        figures = Path(tmp) / "figures.json"
        proc = subprocess.run([sys.executable, str(ROOT / "bench/check-images-parallel"),
                               "--figures", str(figures)])
        if proc.returncode != 0 or not figures.exists():
            print("bench: check-images-parallel failed: its figures are left out",
                  file=sys.stderr)
            return {}
        return {str(name): float(seconds)
                for name, seconds in json.loads(figures.read_text()).items()}


def given_figure(text: str) -> tuple[str, float]:
    name, sep, seconds = text.rpartition("=")
    try:
        if sep and name.strip():
            return name.strip(), float(seconds)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not NAME=SECONDS: {text!r}")


def record(figures: dict[str, float], path: Path) -> None:
    """Print the table beside the previous run, append this run, rewrite the README's table."""
    try:
        previous = results.last_run(path)
    except results.ResultsError as e:
        print(f"bench: {e}: no previous run to compare with", file=sys.stderr)
        previous = None
    run = results.new_run(figures)
    print("\n" + results.format_table(run, previous))
    results.append(run, path)
    print(f"\nrecorded in {path}")
    if path.resolve() == results.RESULTS:
        try:
            results.update_readme(results=path)
        except (results.ResultsError, OSError) as e:
            print(f"bench: README's table not rewritten: {e}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "samples/debian13-qcow2.json")
    parser.add_argument("--export", default="qcow2")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--foreign", type=Path, nargs="*", default=[], metavar="MANIFEST",
                        help="pinned samples of other architectures to build cold as well")
    parser.add_argument("--skip-check-images", action="store_true")
    parser.add_argument("--figure", type=given_figure, action="append", default=[],
                        metavar="NAME=SECONDS", help="a figure measured elsewhere, to record "
                        "with this run (e.g. 'make test=1130')")
    parser.add_argument("--results", type=Path, default=results.RESULTS,
                        help="the results file to append this run to")
    args = parser.parse_args()
    osbuild = [sys.executable, "-m", "osbuild"]
    manifest = json.loads(args.manifest.read_text())
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        build = [*osbuild, "--store", str(work / "store"), "--output-directory",
                 str(work / "out"), "--export", args.export]
        figures["cold build"] = timed([*build, str(args.manifest)])
        figures["fully cached rebuild"] = timed([*build, str(args.manifest)])
        changed = work / "hostname.json"
        changed.write_text(json.dumps(with_hostname(manifest, "bench-changed")))
        figures["rebuild after hostname change"] = timed([*build, str(changed)])
        image = next((work / "out" / args.export).iterdir())
        figures["image-info (root, loop)"] = timed(
            [sys.executable, "-m", "osbuild.image_info", str(image)])
        if shutil.which("virt-inspector"):
            figures["virt-inspector (libguestfs)"] = timed(
                ["virt-inspector", "-a", str(image)], GUESTFS_ENV)
        boot = subprocess.run([sys.executable, "-m", "verify.cli", str(image), "--login",
                               "root:debian", "--json"], capture_output=True, text=True)
        metrics: dict[str, Any] = (json.loads(boot.stdout) if boot.stdout.strip()
                                   else {"reason": boot.stderr})
        if not args.skip_baseline:
            (work / "baseline").mkdir()
            figures["baseline script"] = timed(
                ["bash", str(ROOT / "bench/baseline.sh"), str(work / "baseline"), host_mirror()])
        shutil.rmtree(work / "store", ignore_errors=True)
        for sample in args.foreign:
            store = work / f"store-{sample.stem}"
            figures[f"cold build {sample.stem}"] = timed(
                [*osbuild, "--store", str(store), "--output-directory",
                 str(work / f"out-{sample.stem}"), "--export", "qcow2", str(sample)])
            shutil.rmtree(store, ignore_errors=True)
    print(f"boot of the default sample ({metrics.get('accelerator', '?')}): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in metrics.get("seconds", {}).items())
          + f"; {metrics.get('system-state') or metrics.get('reason')}", flush=True)
    for unit in metrics.get("blame", [])[:5]:
        print(f"  {unit['seconds']:7.2f} s  {unit['unit']}", flush=True)
    if not args.skip_check_images:
        figures.update(check_images())
    figures.update(args.figure)
    record(figures, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
