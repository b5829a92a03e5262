"""The house rules of HACKING.md that a machine can check: who imports whom.

The engine reads top-down with no import cycle; osbuild never imports verify;
the stage toolkit runs on a build root's bare Python, so it and the stages
import only the standard library and the toolkit; stages run tools through
osbuild.toolkit.tool.run, never subprocess themselves. In verify, what a boot looks
like (verify.bootlog) is kept apart from driving qemu: it imports the standard
library only, and nothing that starts or talks to a process.
"""

import sys
from pathlib import Path

import pytest
from importgraph import imports, module_name, reached

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "osbuild"
# The stage toolkit is a folder, not a list: osbuild/toolkit/ and the stage contract
# osbuild/api.py. test_the_toolkit_is_what_the_stages_import holds it to the stages'
# imports, which ci/stage-gate follows.
TOOLKIT = "osbuild.toolkit"
CONTRACT = "osbuild.api"
TOOLKIT_MAX_LINES = 375  # "about 350": one concern per module
# Modules that were split by concern (the engine's fetching, the sources' side, the qemu
# driver and its QMP client) stay near 450 lines: past it, a second concern has moved in.
SPLIT_MODULES = ("osbuild/fetching.py", "osbuild/sourcelib.py", "osbuild/checksums.py",
                 "verify/qemu.py", "verify/qmp.py", "verify/bootlog.py")
SPLIT_MAX_LINES = 475  # "about 450"
# Boot knowledge: pure functions over console text and times, tested on recorded consoles.
BOOT_KNOWLEDGE = ROOT / "verify" / "bootlog.py"
# What drives a machine: qemu's harness, and the standard library's processes and sockets.
DRIVING = ("verify.qemu", "verify.qmp", "verify.console", "verify.ssh", "subprocess", "socket",
           "asyncio", "signal", "ctypes", "qemu")


def engine_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_toolkit(name: str) -> bool:
    return name in (CONTRACT, TOOLKIT) or name.startswith(TOOLKIT + ".")


def project_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules of osbuild/ that `path` imports (a package counts as its __init__)."""
    return {m for m in imports(path, name) if m in known and m != name}


def test_the_engine_has_no_import_cycle() -> None:
    modules = engine_modules()
    known = set(modules)
    graph = {name: project_imports(path, name, known) for name, path in modules.items()}
    # A package's __init__ is imported by each of its modules; that is no cycle of ours
    # unless the __init__ itself imports one of them back, which the graph shows.
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles in osbuild/: " + "; ".join(
        " -> ".join(sorted(c)) for c in cycles)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_osbuild_never_imports_verify() -> None:
    offenders = sorted(name for name, path in engine_modules().items()
                       if any(m == "verify" or m.startswith("verify.")
                              for m in imports(path, name)))
    assert not offenders, f"osbuild modules importing verify: {offenders}"


def allowed_in_sandbox(module: str) -> bool:
    """Whether a build root's Python has `module` (or `module` names a thing in one)."""
    parts = module.split(".")
    if parts[0] in sys.stdlib_module_names or module in ("osbuild", ""):
        return True
    return any(is_toolkit(".".join(parts[:n])) for n in range(2, len(parts) + 1))


def executables() -> list[Path]:
    return sorted(p for kind in ("stages", "assemblers") for p in (ROOT / kind).glob("org.*")
                  if p.is_file() and not p.name.endswith(".json"))


def test_the_toolkit_imports_only_the_stdlib_and_itself() -> None:
    bad = {}
    for name, path in engine_modules().items():
        if not is_toolkit(name):
            continue
        outside = sorted(m for m in imports(path, name) if not allowed_in_sandbox(m))
        if outside:
            bad[name] = outside
    assert not bad, f"toolkit modules importing what a build root lacks: {bad}"


@pytest.mark.parametrize("path", executables(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stages_use_the_toolkit(path: Path) -> None:
    found = imports(path, "__main__")
    assert "subprocess" not in found, (f"{path.name} calls subprocess itself: "
                                       "use osbuild.toolkit.tool.run")
    outside = sorted(m for m in found if not allowed_in_sandbox(m))
    assert not outside, f"{path.name} imports {outside}: stages may import the toolkit only"


def test_the_toolkit_is_what_the_stages_import() -> None:
    """Every toolkit module is run by some stage or assembler, and nothing else is."""
    cache: dict[Path, set[Path]] = {}
    used = {module_name(f) for path in executables() for f in reached(path, ROOT, cache)}
    declared = {name for name in engine_modules() if is_toolkit(name)} | {"osbuild"}
    assert used == declared, (f"in osbuild/toolkit/, imported by no stage: "
                              f"{sorted(declared - used)}; imported by a stage, outside "
                              f"osbuild/toolkit/: {sorted(used - declared)}")


def test_toolkit_modules_are_small() -> None:
    big = {name: n for name, path in engine_modules().items() if is_toolkit(name)
           and (n := len(path.read_text(encoding="utf-8").splitlines())) > TOOLKIT_MAX_LINES}
    assert not big, f"toolkit modules over {TOOLKIT_MAX_LINES} lines (one concern each): {big}"


def test_split_modules_stay_near_450_lines() -> None:
    big = {name: n for name in SPLIT_MODULES
           if (n := len((ROOT / name).read_text(encoding="utf-8").splitlines())) > SPLIT_MAX_LINES}
    assert not big, f"over {SPLIT_MAX_LINES} lines (one concern each: split it): {big}"


def test_boot_knowledge_drives_no_qemu() -> None:
    found = imports(BOOT_KNOWLEDGE, module_name(BOOT_KNOWLEDGE))
    driving = sorted(m for m in found
                     if any(m == d or m.startswith(d + ".") for d in DRIVING))
    assert not driving, f"verify/bootlog.py imports {driving}: it reads text, qemu.py drives"
    outside = sorted(m for m in found if m.split(".")[0] not in sys.stdlib_module_names)
    assert not outside, f"verify/bootlog.py imports {outside}: the standard library only"


def test_the_engine_starts_without_rfc3987_syntaxs_grammar() -> None:
    """`osbuild` imports jsonschema, which imports every format library installed; the
    command keeps rfc3987-syntax (a grammar compiled at import, most of a cached
    rebuild) out of its process. The library is installed here (cyclonedx's extra)."""
    import subprocess

    pytest.importorskip("rfc3987_syntax")
    code = ("import sys, osbuild.main_cli, jsonschema; "
            "print(sorted(m for m, v in sys.modules.items() "
            "if v is not None and m.split('.')[0] in ('rfc3987_syntax', 'lark')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
