"""The distro x architecture matrix: the cells images are built, inspected and booted in.

One table, used by the golden cases (test/cases), the boot tests (test/vm)
and `make check-matrix`. A cell names its sample template (samples/src) and
how qemu boots it. MATRIX (the environment variable, cell names separated by
spaces) picks cells; empty means every cell.
"""

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Cell:
    name: str  # <distro><release>-<dpkg architecture>, the test ids' suffix
    suite: str
    architecture: str  # dpkg's name
    machine: str  # qemu's (osbuild-boot-test --arch)
    sample: str | None  # samples/src/<sample>.yaml, the cell's bootable image
    uefi: bool = True

    @property
    def template(self) -> Path:
        assert self.sample, f"{self.name} has no sample yet"
        return ROOT / "samples/src" / f"{self.sample}.yaml"


CELLS = {c.name: c for c in (
    Cell("debian12-amd64", "bookworm", "amd64", "x86_64", "debian12-qcow2", uefi=False),
    Cell("debian13-amd64", "trixie", "amd64", "x86_64", "debian13-uefi-qcow2"),
    Cell("debian12-arm64", "bookworm", "arm64", "aarch64", "debian12-arm64-qcow2"),
    Cell("debian13-arm64", "trixie", "arm64", "aarch64", "debian13-arm64-qcow2"),
    Cell("debian13-riscv64", "trixie", "riscv64", "riscv64", "debian13-riscv64-qcow2"),
)}

# The cell of the golden cases that name none (test/cases/<stage>/ itself).
DEFAULT_CELL = "debian13-amd64"


def selected() -> list[Cell]:
    """The cells MATRIX names (all when it is empty); an unknown name is an error."""
    names = os.environ.get("MATRIX", "").split()
    unknown = [n for n in names if n not in CELLS]
    if unknown:
        raise SystemExit(f"MATRIX: unknown cell {unknown[0]!r} (known: {', '.join(CELLS)})")
    return [CELLS[n] for n in names] if names else list(CELLS.values())


# Each cell's image-info golden: the report of its sample, as stable_report() keeps it.
GOLDENS = ROOT / "test/vm/goldens"

# What the cell's template decides, and what a change of a stage or of image-info
# would move: the layout, boot chain, architecture, identity, users and services.
STABLE_KEYS = ("architecture", "boot-environment", "bootloader", "default-target",
               "discoverable-partitions", "esp", "fstab", "grub-menu", "groups", "hostname",
               "image-format", "locale", "machine-id", "os-release", "packages",
               "partition-table", "partition-table-id", "partitions", "passwd",
               "services-disabled", "services-enabled", "timezone")
OS_RELEASE_KEYS = ("ID", "VERSION_ID", "VERSION_CODENAME")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def stable_report(report: dict) -> dict:
    """image-info's report without what the archive's point releases move.

    The samples are pinned when the test runs, so package versions, the
    kernel's release, Debian's point version and the hashes of GRUB's
    binaries follow the archive; the golden keeps names, arches and shape.
    """
    # (Idempotent: a golden is its own stable report.)
    packages = [p for p in report.get("packages", []) if isinstance(p, dict)]
    kernels = [p["name"].removeprefix("linux-image-") for p in packages
               if re.match(r"linux-image-[0-9]", p["name"])]
    kept = {key: report[key] for key in STABLE_KEYS if key in report}
    if "packages" in kept:
        kept["packages"] = [f"{p['name']}:{p['arch']}" if isinstance(p, dict) else p
                            for p in kept["packages"]]
    if "os-release" in kept:
        kept["os-release"] = {k: v for k, v in kept["os-release"].items()
                              if k in OS_RELEASE_KEYS}
    if "architecture" in kept:
        elf = kept["architecture"].get("elf", {})
        kept["architecture"] = {"dpkg": kept["architecture"].get("dpkg"), "elf": sorted(elf)}
    text = json.dumps(kept, sort_keys=True)
    for kernel in kernels:
        text = text.replace(kernel, "KERNEL")

    def hashes_out(value: object) -> object:
        if isinstance(value, dict):
            return {k: hashes_out(v) for k, v in value.items()}
        if isinstance(value, list):
            return [hashes_out(v) for v in value]
        return "SHA256" if isinstance(value, str) and SHA256.match(value) else value

    return hashes_out(json.loads(text))  # type: ignore[return-value]


def golden_diff(cell: Cell, report: dict) -> list[str]:
    """How stable_report(report) differs from the cell's golden, one line per key."""
    path = GOLDENS / f"{cell.name}.json"
    if not path.exists():
        return [f"{path.relative_to(ROOT)} is missing: write it with "
                f"`make check-matrix MATRIX={cell.name} GOLDEN=1` and review it"]
    golden, got = json.loads(path.read_text()), stable_report(report)
    return [f"{key}: golden {json.dumps(golden.get(key))[:300]}, "
            f"image {json.dumps(got.get(key))[:300]}"
            for key in sorted(set(golden) | set(got)) if golden.get(key) != got.get(key)]


def write_golden(cell: Cell, report: dict) -> Path:
    path = GOLDENS / f"{cell.name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(stable_report(report), indent=2, sort_keys=True) + "\n")
    return path


def table(report_dir: Path) -> str:
    """cell x (build, image-info, boot): seconds where the phase passed, FAIL where it did not."""
    phases = ("build", "image-info", "boot")
    rows = ["| cell | " + " | ".join(phases) + " |", "| --- |" + " --- |" * len(phases)]
    for cell in selected():
        path = report_dir / f"{cell.name}.json"
        times = json.loads(path.read_text()) if path.exists() else {}
        cells = []
        for phase in phases:
            cells.append(f"{times[phase]:.0f} s" if phase in times else
                         ("FAIL" if times or phase == "build" else "-"))
            if phase not in times:
                break
        cells += ["-"] * (len(phases) - len(cells))
        rows.append(f"| {cell.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--golden"]:
        # test/matrix.py --golden CELL REPORT.json: write a cell's golden from a report.
        print(write_golden(CELLS[sys.argv[2]], json.loads(Path(sys.argv[3]).read_text())))
    else:
        print(table(Path(sys.argv[1])))
