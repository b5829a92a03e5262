"""Which modules a Python file imports, read with ast (nothing is executed).

One reader for two users: test/mod/test_layers.py checks the house's import
rules with it, and ci/stage-gate runs the golden cases of every stage and
assembler that reaches a changed module of osbuild/, so the stage toolkit is
never listed by hand.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path, root: Path = ROOT) -> str:
    """osbuild/toolkit/disk/fat.py -> osbuild.toolkit.disk.fat;
    osbuild/toolkit/disk/__init__.py -> osbuild.toolkit.disk."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, name: str) -> set[str]:
    """Every module `path` (the module `name`) imports, at any depth of the file.

    Relative imports are resolved from the module's package; `from pkg import x`
    counts pkg and pkg.x, since x may be a module.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of module `name` under `root` (a package is its __init__.py), if any."""
    if not name:
        return None
    base = root / name.replace(".", "/")
    for file in (base.parent / f"{base.name}.py", base / "__init__.py"):
        if file.is_file():
            return file
    return None


def project_files(path: Path, root: Path = ROOT) -> set[Path]:
    """The files under `root` that `path` imports, with the packages around them.

    `from osbuild.toolkit.disk import fat` runs osbuild/__init__.py,
    osbuild/toolkit/disk/__init__.py and osbuild/toolkit/disk/fat.py. A file that does not
    parse imports nothing here: its own tests and lint say what is wrong.
    """
    inside = path.is_relative_to(root) and path.suffix == ".py"
    try:
        names = imports(path, module_name(path, root) if inside else "__main__")
    except (SyntaxError, ValueError):  # ValueError: not UTF-8, or a NUL byte
        return set()
    found = set()
    for imported in names:
        parts = imported.split(".")
        for n in range(1, len(parts) + 1):
            file = module_file(".".join(parts[:n]), root)
            if file and file != path:
                found.add(file)
    return found


def reached(path: Path, root: Path = ROOT,
            cache: dict[Path, set[Path]] | None = None) -> set[Path]:
    """The files under `root` that importing `path` runs, directly or through others."""
    cache = {} if cache is None else cache
    seen: set[Path] = set()
    todo = list(project_files(path, root))
    while todo:
        file = todo.pop()
        if file not in seen:
            seen.add(file)
            if file not in cache:
                cache[file] = project_files(file, root)
            todo.extend(cache[file])
    return seen
