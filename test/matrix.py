"""The distro x architecture matrix: the cells images are built, inspected and booted in.

One table, used by the golden cases (test/cases), the boot tests (test/vm)
and `make check-matrix`. A cell names its sample template (samples/src) and
how qemu boots it. MATRIX (the environment variable, cell names separated by
spaces) picks cells; empty means every cell.
"""

import json
import os
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
    print(table(Path(sys.argv[1])))
