"""Every stage and assembler is documented, has a schema and a golden case; every case is sound.

Fast (nothing is built): part of every `make test`, and of ci/stage-gate.
"""

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import casekit  # noqa: E402
from casedefs import all_cases  # noqa: E402
from matrix import CELLS, GOLDENS, Cell, golden_diff, stable_report  # noqa: E402

from osbuild import formats  # noqa: E402
from osbuild.errors import ModuleMetaError  # noqa: E402
from osbuild.meta import module_info  # noqa: E402
from osbuild.validate import validate  # noqa: E402

ROOT = casekit.ROOT
KINDS = ("stages", "assemblers")


def modules(kind: str) -> list[str]:
    return sorted(p.name for p in (ROOT / kind).iterdir()
                  if p.is_file() and not p.name.endswith(".json") and p.name.startswith("org."))


def case_dir(kind: str, name: str) -> Path:
    return HERE / name if kind == "stages" else HERE / "assemblers" / name


ALL = [(kind, name) for kind in KINDS for name in modules(kind)]


def meta_problems(kind: str, name: str) -> list[str]:
    path = ROOT / kind / f"{name}.meta.json"
    if not path.exists():
        return [f"{kind}/{name}: no {path.name}"]
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        return [f"{kind}/{name}: {path.name} is not JSON: {e}"]
    found = []
    summary = meta.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        found.append(f"{kind}/{name}: no summary")
    description = meta.get("description")
    if isinstance(description, list):
        description = "\n".join(line for line in description if isinstance(line, str))
    if not isinstance(description, str) or not description.strip():
        found.append(f"{kind}/{name}: no description")
    schema = meta.get("schema")
    schema_2 = meta.get("schema_2")
    if not isinstance(schema, dict) and not isinstance(schema_2, dict):
        found.append(f"{kind}/{name}: no schema (schema or schema_2)")
    try:
        module_info(ROOT, kind, name)
    except ModuleMetaError as e:
        found.append(str(e))
    return found


def case_problems(kind: str, name: str) -> list[str]:
    directory = case_dir(kind, name)
    label = f"{kind}/{name}"
    if not directory.is_dir():
        return [f"{label}: no golden case {directory.relative_to(ROOT)}/ "
                "(add it to test/cases/casedefs.py, then tools/gen-golden --manifests "
                f"{name})"]
    found = []
    for which in ("a", "b"):
        if not any((directory / f"{which}{ext}").exists()
                   for ext in (".json", ".mpp.json", ".mpp.yaml")):
            found.append(f"{label}: the case has no {which}.json")
    if not (directory / "diff.json").exists():
        found.append(f"{label}: the case has no diff.json (tools/gen-golden {name})")
    return found


@pytest.mark.parametrize("kind, name", ALL, ids=[f"{k}/{n}" for k, n in ALL])
def test_module_has_meta_schema_and_case(kind: str, name: str) -> None:
    assert meta_problems(kind, name) + case_problems(kind, name) == []


# Every module with a meta.json, the test-only ones included: (libdir, kind, name).
META_MODULES = [(libdir, kind, path.name.removesuffix(".meta.json"))
                for libdir in (ROOT, ROOT / "test/data")
                for kind in ("stages", "assemblers", "sources")
                if (libdir / kind).is_dir()
                for path in sorted((libdir / kind).glob("*.meta.json"))]


@pytest.mark.parametrize("libdir, kind, name", META_MODULES,
                         ids=[f"{d.relative_to(ROOT)}/{k}/{n}" for d, k, n in META_MODULES])
def test_module_meta_loads_with_known_capabilities(libdir: Path, kind: str, name: str) -> None:
    info = module_info(libdir, kind, name)
    assert info is not None and info.name == name and info.summary
    assert "network" not in json.loads((libdir / kind / f"{name}.meta.json").read_text())


def test_only_the_unpinned_installer_asks_for_the_network() -> None:
    infos = [module_info(libdir, kind, name) for libdir, kind, name in META_MODULES]
    asking = {info.name for info in infos if info is not None and "network" in info.capabilities}
    assert asking == {"org.osbuild.mmdebstrap", "org.osbuild.test.netscript"}


@pytest.mark.parametrize("meta, expected", [
    ({"capabilities": ["CAP_SYS_TIME", "CAP_NOPE"]},
     "stages/org.osbuild.x.meta.json: unknown capability 'CAP_NOPE' "
     '(known: "network" and the Linux CAP_* names)'),
    ({"capabilities": "network"}, "stages/org.osbuild.x.meta.json: capabilities must be a list"),
    ({"network": True}, 'stages/org.osbuild.x.meta.json: "network" is not a key any more; '
                        'list "network" under "capabilities"'),
])
def test_meta_capabilities_are_checked_naming_the_module(tmp_path: Path, meta: dict,
                                                         expected: str) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/org.osbuild.x").write_text("")
    (tmp_path / "stages/org.osbuild.x.meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModuleMetaError) as info:
        module_info(tmp_path, "stages", "org.osbuild.x")
    assert str(info.value).startswith(expected)


def test_every_case_belongs_to_a_module() -> None:
    known = {name if kind == "stages" else f"assemblers/{name}" for kind, name in ALL}
    orphans = [c.name for c in casekit.discover() if c.name.split("[")[0] not in known]
    assert orphans == [], "golden cases of stages or assemblers that do not exist"


def test_every_cell_case_names_a_cell_of_the_matrix() -> None:
    strays = [c.name for c in casekit.discover()
              if c.cell is not None and (c.cell not in CELLS or c.config.get("cell") != c.cell)]
    assert strays == [], "cell cases whose directory is no cell of test/matrix.py"


def manifest_stage_names(manifest: dict[str, Any]) -> list[str]:
    if "pipelines" in manifest:
        return [s["type"] for p in manifest["pipelines"] for s in p.get("stages", [])]
    pipeline = manifest.get("pipeline", {})
    names = [s["name"] for s in pipeline.get("stages", [])]
    if "assembler" in pipeline:
        names.append(pipeline["assembler"]["name"])
    return names


@pytest.mark.parametrize("case", casekit.discover(), ids=lambda c: c.name)
def test_case_manifests_are_valid_and_use_the_module(case: casekit.Case) -> None:
    b = json.loads(case.manifest("b").read_text())
    assert case.module in manifest_stage_names(b), f"{case.name}: b does not use {case.module}"
    for which in ("a", "b"):
        path = case.manifest(which)
        if ".mpp." in path.name:
            continue  # a template: pinned (and then validated by the engine) when it runs
        manifest = formats.load(json.loads(path.read_text()), "org.osbuild.linux", ROOT)
        validate(manifest, ROOT)
    config = case.config
    assert set(config) <= {"export", "network", "image", "volatile", "cell"}, config
    assert isinstance(config["volatile"], dict)


def test_case_files_match_casedefs() -> None:
    """The committed manifests are what casedefs.py makes: edit it, then gen-golden --manifests."""
    stale = []
    for name, files in all_cases().items():
        for filename, document in files.items():
            path = casekit.case_dir(name) / filename
            if not path.exists() or json.loads(path.read_text()) != document:
                stale.append(str(path.relative_to(ROOT)))
    assert stale == [], "run tools/gen-golden --manifests-only and review the diff"


def test_goldens_are_json_of_the_right_shape() -> None:
    for case in casekit.discover():
        diff = case.golden("diff.json")
        if diff is None:
            continue
        assert set(diff) == {"added_files", "deleted_files", "differences"}, case.name
        for key in ("added_files", "deleted_files"):
            assert diff[key] is None or diff[key] == sorted(diff[key]), f"{case.name}: {key}"


def test_matrix_goldens_keep_what_the_template_decides() -> None:
    """A point release (versions, kernel, GRUB's hashes) leaves the golden; a layout change not."""
    def report(version: str, kernel: str, size: int) -> dict[str, Any]:
        return {"packages": [{"name": "dpkg", "arch": "arm64", "version": version},
                             {"name": f"linux-image-{kernel}", "arch": "arm64",
                              "version": version}],
                "grub-menu": [{"linux": f"/boot/vmlinuz-{kernel}"}],
                "esp": [{"files": {"/EFI/BOOT/BOOTAA64.EFI": version[0] * 64}}],
                "os-release": {"ID": "debian", "DEBIAN_VERSION_FULL": version},
                "partitions": [{"number": 1, "size": size}], "modprobe": {"x": [version]}}
    old = stable_report(report("1.0", "6.12.1+deb13-arm64", 64))
    assert old == stable_report(report("2.0", "6.12.9+deb13-arm64", 64))
    assert old["packages"] == ["dpkg:arm64", "linux-image-KERNEL:arm64"]
    assert old != stable_report(report("1.0", "6.12.1+deb13-arm64", 128))


def test_matrix_goldens_are_stable_reports() -> None:
    for path in sorted(GOLDENS.glob("*.json")):
        assert path.stem in CELLS, f"{path.name}: no such cell"
        golden = json.loads(path.read_text())
        assert stable_report(golden) == golden, path.name


def template_stages(cell: Cell) -> dict[str, dict[str, Any]]:
    """The stages of the cell's sample template's `os` pipeline, by type."""
    template = yaml.safe_load(cell.template.read_text())
    os_tree = next(p for p in template["pipelines"] if p["name"] == "os")
    return {stage["type"]: stage for stage in os_tree["stages"]}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_matrix_golden_agrees_with_its_cell_and_template(name: str) -> None:
    """Each golden against facts it was not made from: the cell's table row and its template."""
    cell = CELLS[name]
    path = GOLDENS / f"{name}.json"
    if not path.exists() or not cell.sample:
        pytest.skip(f"{name}: no golden or no sample yet")
    golden = json.loads(path.read_text())
    stages = template_stages(cell)
    assert golden["architecture"] == {"dpkg": cell.architecture, "elf": [cell.machine]}
    assert golden["os-release"]["VERSION_CODENAME"] == cell.suite
    arches = {p.rpartition(":")[2] for p in golden["packages"]}
    assert arches <= {cell.architecture, "all"}, arches
    assert (golden["partition-table"] == "gpt") == cell.uefi
    assert ("esp" in golden) == cell.uefi
    assert golden["hostname"] == stages["org.osbuild.hostname"]["options"]["hostname"]
    grub = stages["org.osbuild.grub2"]["options"]
    assert golden["boot-environment"]["kernelopts"] == \
        f"root=UUID={grub['root_fs_uuid']} ro {grub['kernel_opts']}"
    systemd = stages["org.osbuild.systemd"]["options"]
    assert golden["default-target"] == systemd["default_target"]
    assert set(systemd["enabled_services"]) <= set(golden["services-enabled"])
    wanted = stages["org.osbuild.debs"]["inputs"]["packages"]["mpp-depsolve"]["packages"]
    installed = {p.rpartition(":")[0] for p in golden["packages"]}
    assert set(wanted) <= installed, sorted(set(wanted) - installed)


def test_golden_diff_names_each_changed_key() -> None:
    """golden_diff of a cell's golden and a report that moved in one place says that place."""
    cell = next(c for c in CELLS.values() if (GOLDENS / f"{c.name}.json").exists())
    golden = json.loads((GOLDENS / f"{cell.name}.json").read_text())
    assert golden_diff(cell, golden) == []
    moved = dict(golden, hostname="elsewhere")
    del moved["timezone"]
    lines = golden_diff(cell, moved)
    assert [line.split(":", 1)[0] for line in lines] == ["hostname", "timezone"], lines
    assert 'image "elsewhere"' in lines[0] and lines[1].endswith("image null")
