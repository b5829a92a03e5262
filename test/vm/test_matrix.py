"""Every cell of the matrix (test/matrix.py) end to end: its sample built, inspected, booted.

The cell's sample is pinned and built into the boot tests' shared store,
image-info reads it on the host whatever its architecture, and qemu boots it
(TCG for a foreign one) to a login prompt; inside, the hostname, root file
system, enabled services and system state are the manifest's, and the
kernel and dpkg are of the cell's architecture. MATRIX="debian13-arm64 ..."
picks cells; image-info's report is compared with the cell's golden
(test/vm/goldens/<cell>.json, see matrix.stable_report). MATRIX_GOLDEN=1
compares with the golden as it is first: a cell that matches it passes; one
that differs gets the golden rewritten, still boots, and then fails with the
differences to review (the next run compares with the new golden). With
MATRIX_REPORT=DIR each cell leaves its times there for `make check-matrix`'s
table.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matrix import Cell, golden_diff, selected, write_golden

# A foreign cell takes about 15 minutes on 2 cores (build, then a TCG boot): the
# matrix runs when asked for, by `make check-matrix` or MATRIX=cells.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (os.environ.get("MATRIX") or os.environ.get("MATRIX_REPORT")),
    reason="the matrix runs with `make check-matrix` (or MATRIX=cells)")]


@pytest.mark.parametrize("cell", selected(), ids=lambda c: c.name)
def test_cell_builds_inspects_and_boots(cell: Cell, vm_builder, boot_vm) -> None:
    times: dict[str, object] = {}
    report_dir = os.environ.get("MATRIX_REPORT")

    def record(phase: str, start: float) -> None:
        times[phase] = round(time.monotonic() - start, 1)
        if report_dir:
            (Path(report_dir) / f"{cell.name}.json").write_text(json.dumps(times))

    start = time.monotonic()
    image = vm_builder.build(cell.template, uefi=cell.uefi, arch=cell.machine)
    record("build", start)

    start = time.monotonic()
    info = subprocess.run([sys.executable, "-m", "osbuild.image_info", str(image.path)],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr[-2000:]
    arches = {p["name"]: p["arch"] for p in json.loads(info.stdout)["packages"]}
    kernel = f"linux-image-{cell.architecture}"
    assert arches.get(kernel) == cell.architecture, f"image-info: {kernel} {arches.get(kernel)}"
    assert arches["dpkg"] == cell.architecture
    report = json.loads(info.stdout)
    differences = golden_diff(cell, report)  # against the golden as it was
    rewritten = None
    if differences and os.environ.get("MATRIX_GOLDEN"):
        # Writing a golden is no pass: the boot still runs, then the test fails.
        path = write_golden(cell, report)
        rewritten = (f"{cell.name}: golden {path} written, review it (git diff); it "
                     "differed from the previous one in:\n" + "\n".join(differences))
    else:
        assert not differences, f"{cell.name}: image-info differs from its golden:\n" + \
            "\n".join(differences)
    record("image-info", start)

    start = time.monotonic()
    vm, guest = boot_vm(image, forwards=())
    guest.check_manifest()
    facts = guest.output("uname -m; dpkg --print-architecture").split()
    if facts != [cell.machine, cell.architecture]:
        guest.fail([f"expected kernel {cell.machine} and dpkg {cell.architecture}, "
                    f"got {facts}"])
    record("boot", start)
    if rewritten:
        pytest.fail(rewritten, pytrace=False)
