"""The golden-case machinery shared by test_cases.py, tools/gen-golden and ci/stage-gate.

A case is a directory test/cases/<stage>/ (assemblers: test/cases/assemblers/<name>/),
and the same stage's case in another cell of the matrix (test/matrix.py) is
its subdirectory test/cases/<stage>/<cell>/, named "<stage>[<cell>]":

    a.json | a.mpp.json   the manifest without the stage (a template is pinned
    b.json | b.mpp.json   with osbuild-mpp when the case runs), and with it
    case.json             {"export": pipeline, "network": bool, "image": file in
                          the export or null, "volatile": {golden: [[key, ...]]}}:
                          what gen-golden nulls ("don't care") when it writes
    diff.json             the expected tree diff a -> b (verify.treediff)
    packages.json         network cases: the expected dpkg package names
    dpkg.json             trees with dpkg: what does not move between point releases:
                          each package's stable status fields (by name:architecture),
                          its conffiles and the commands it installs (dpkg_view)
    debconf.json          trees with a debconf database: every question's Value,
                          Owners and Flags in config.dat (debconf_view)
    failure.json          a case whose b must fail: how it failed (failure_view);
                          its presence is what makes the failure expected (a new
                          failing case starts with {}, which gen-golden fills)
    image-info.json       image cases, once image-info exists: its expected report

Running a case builds a and b with the real engine (any store, shared or
not), exports `export` of each, diffs the trees and compares every golden
that exists with verify.compare, where null means "don't care". Goldens are
only ever written by write_goldens(), which tools/gen-golden calls on request.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from verify.compare import compare  # noqa: E402
from verify.treediff import diff_trees  # noqa: E402

GOLDENS = ("diff.json", "packages.json", "dpkg.json", "debconf.json", "failure.json",
           "image-info.json")
DPKG_STATUS = "var/lib/dpkg/status"
DPKG_INFO = "var/lib/dpkg/info"
DEBCONF_CONFIG = "var/cache/debconf/config.dat"
# dpkg status fields that a point release does not move (versions, sizes,
# maintainers and dependency versions do).
STABLE_FIELDS = ("Status", "Essential", "Priority", "Multi-Arch")
# Where dpkg_view collects the commands a package installs (merged /usr or not).
COMMAND_DIRS = ("bin/", "sbin/", "usr/bin/", "usr/sbin/")
DEBCONF_FIELDS = ("Value", "Owners", "Flags")


class CaseError(Exception):
    """A case could not be built or inspected (as opposed to: it built and differs)."""


@dataclass
class Case:
    # "org.osbuild.hostname", "assemblers/org.osbuild.qemu", "org.osbuild.debs[debian13-arm64]"
    name: str
    path: Path

    @property
    def module(self) -> str:
        return self.name.split("[", 1)[0].rsplit("/", 1)[-1]

    @property
    def cell(self) -> str | None:
        """The matrix cell of a case in a cell's subdirectory; None: the default cell."""
        return self.name[:-1].split("[", 1)[1] if self.name.endswith("]") else None

    @property
    def kind(self) -> str:
        return "assemblers" if self.name.startswith("assemblers/") else "stages"

    @property
    def config(self) -> dict[str, Any]:
        path = self.path / "case.json"
        config = {"export": "tree", "network": False, "image": None, "volatile": {}}
        if path.exists():
            config.update(json.loads(path.read_text()))
        return config

    @property
    def network(self) -> bool:
        return bool(self.config["network"])

    def manifest(self, which: str) -> Path:
        for name in (f"{which}.json", f"{which}.mpp.json", f"{which}.mpp.yaml"):
            if (self.path / name).exists():
                return self.path / name
        raise CaseError(f"{self.name}: no {which}.json or {which}.mpp.json")

    def golden(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text()) if path.exists() else None


@dataclass
class Build:
    tree: Path
    cached: bool
    seconds: float
    # A build that was expected to fail and did: its failure_view().
    failure: dict[str, Any] | None = None


@dataclass
class CaseRun:
    case: Case
    documents: dict[str, Any]
    cached: bool
    seconds: float


def discover(cases_dir: Path = HERE) -> list[Case]:
    """Every case directory: stage cases first, then assembler cases, each sorted by name."""
    found = []
    for parent, prefix in ((cases_dir, ""), (cases_dir / "assemblers", "assemblers/")):
        if not parent.is_dir():
            continue
        for path in sorted(parent.iterdir()):
            if path.is_dir() and path.name.startswith("org.osbuild."):
                found.append(Case(prefix + path.name, path))
                found += [Case(f"{prefix}{path.name}[{cell.name}]", cell)
                          for cell in sorted(path.iterdir())
                          if cell.is_dir() and (cell / "case.json").exists()]
    return found


def case_dir(name: str, cases_dir: Path = HERE) -> Path:
    """Where case `name` lives: "<stage>[<cell>]" in its stage's directory."""
    if name.endswith("]"):
        stage, cell = name[:-1].split("[", 1)
        return cases_dir / stage / cell
    return cases_dir / name


def select(cases: list[Case], names: list[str]) -> list[Case]:
    """Cases named exactly, by module name (both the stage and the assembler) or kind/name."""
    wanted = set(names)
    chosen = [c for c in cases
              if c.name in wanted or c.module in wanted or f"{c.kind}/{c.module}" in wanted]
    known = {c.name for c in cases} | {c.module for c in cases} | \
        {f"{c.kind}/{c.module}" for c in cases}
    unknown = sorted(wanted - known)
    if unknown:
        raise CaseError(f"no golden case for {', '.join(unknown)}")
    return chosen


# -- building -------------------------------------------------------------------


def osbuild_command() -> list[str]:
    return [sys.executable, "-m", "osbuild"]


# Network cases name the archive by this placeholder: the real mirror, the
# host's, is filled in when they run (no mirror host is written in the repository).
MIRROR_PLACEHOLDER = "http://mirror.example/debian"


def materialize(case: Case, which: str, workdir: Path) -> Path:
    """The manifest to build: the file itself, or a template pinned now (it needs the
    archive); in network cases the mirror placeholder becomes the host's mirror."""
    source = case.manifest(which)
    target = workdir / f"{which}.json"
    if ".mpp." in source.name:
        proc = subprocess.run([sys.executable, "-m", "osbuild.mpp", str(source), str(target)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise CaseError(f"{case.name}: pinning {source.name} failed: "
                            f"{tail(proc.stderr or proc.stdout)}")
        source = target
    text = source.read_text()
    if not (case.network and MIRROR_PLACEHOLDER in text):
        return source
    from osbuild.depsolve import host_mirror

    target.write_text(text.replace(MIRROR_PLACEHOLDER, host_mirror().rstrip("/")))
    return target


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def all_cached(result: dict[str, Any]) -> bool:
    """Whether the build ran no stage at all (v1 and v2 --json results)."""
    stages: list[dict[str, Any]] = []
    if "pipelines" in result:
        for pipeline in result["pipelines"].values():
            stages += pipeline.get("stages", [])
    else:
        node: dict[str, Any] | None = result
        while node:
            stages += node.get("stages", [])
            if isinstance(node.get("assembler"), dict):
                stages.append(node["assembler"])
            node = node.get("build")
    return all(s.get("cached", False) for s in stages)


def build(manifest: Path, export: str, libdir: Path, store: Path, output: Path,
          label: str, expect_failure: bool = False) -> Build:
    start = time.monotonic()
    cmd = [*osbuild_command(), "--libdir", str(libdir), "--store", str(store),
           "--output-directory", str(output), "--export", export, "--json", str(manifest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if expect_failure:
        if proc.returncode == 0:
            raise CaseError(f"{label}: osbuild succeeded, but the case's failure.json says "
                            "it must fail")
        return Build(output / export, False, time.monotonic() - start,
                     failure_view(proc, store, output / export))
    if proc.returncode != 0:
        raise CaseError(f"{label}: osbuild failed (exit {proc.returncode}):\n"
                        f"{tail(proc.stderr)}")
    try:
        cached = all_cached(json.loads(proc.stdout))
    except ValueError:
        cached = False
    return Build(output / export, cached, time.monotonic() - start)


def dpkg_packages(tree: Path) -> dict[str, Any] | None:
    """{"packages": {name: version}} of the installed packages, or None without dpkg."""
    status = tree / DPKG_STATUS
    if not status.exists():
        return None
    packages = {}
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages[fields["Package"]] = fields.get("Version")
    return {"packages": dict(sorted(packages.items()))}


def control_stanzas(text: str) -> list[dict[str, str]]:
    """The paragraphs of a dpkg or debconf database; continuation lines are joined."""
    stanzas = []
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def dpkg_view(tree: Path) -> dict[str, Any] | None:
    """What an archive tree's dpkg database says that a point release does not move.

    `packages`: "name:architecture" -> the STABLE_FIELDS it has (so an amd64
    package in an arm64 tree, or a half-configured one, differs); `conffiles`:
    every package's conffile paths; `commands`: the paths in /bin, /sbin,
    /usr/bin and /usr/sbin the packages' file lists name, and `missing`: those
    of them that are not in the tree. None without dpkg.
    """
    status = tree / DPKG_STATUS
    if not status.exists():
        return None
    packages: dict[str, dict[str, str]] = {}
    conffiles: set[str] = set()
    for fields in control_stanzas(status.read_text(encoding="utf-8", errors="replace")):
        if "Package" not in fields:
            continue
        key = f"{fields['Package']}:{fields.get('Architecture', '')}"
        packages[key] = {f: fields[f] for f in STABLE_FIELDS if f in fields}
        for line in fields.get("Conffiles", "").splitlines():
            if line.strip():
                conffiles.add(line.split()[0])
    commands: set[str] = set()
    info = tree / DPKG_INFO
    for listing in sorted(info.glob("*.list")) if info.is_dir() else []:
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            path = line.strip().lstrip("/")
            if path.startswith(COMMAND_DIRS) and path.count("/") == path.startswith("usr/") + 1:
                commands.add("/" + path)
    missing = sorted(p for p in commands if not os.path.lexists(tree / p.lstrip("/")))
    return {"packages": dict(sorted(packages.items())), "conffiles": sorted(conffiles),
            "commands": sorted(commands), "missing": missing}


def debconf_view(tree: Path) -> dict[str, Any] | None:
    """Every question in the tree's debconf database: its Value, Owners and Flags.

    What debconf selected, read back from config.dat (the bytes of which follow
    the archive's versions): a preseed answer that was lost or changed differs
    here. None without a database.
    """
    config = tree / DEBCONF_CONFIG
    if not config.exists():
        return None
    questions = {}
    for fields in control_stanzas(config.read_text(encoding="utf-8", errors="replace")):
        if "Name" in fields:
            questions[fields["Name"]] = {f: fields[f] for f in DEBCONF_FIELDS if f in fields}
    return {"questions": dict(sorted(questions.items()))}


# The stage's id in osbuild's error line: it hashes the whole pipeline so far.
STAGE_ID = re.compile(r" \([0-9a-f]{12}\)")


def failure_view(proc: subprocess.CompletedProcess[str], store: Path,
                 export: Path) -> dict[str, Any]:
    """How a build failed: osbuild's exit status and error lines (ids left out), the
    failing pipeline's stages and whether each succeeded, whether the failing stage's
    object was committed to the store, and whether anything was exported."""
    errors = [STAGE_ID.sub("", line) for line in proc.stderr.splitlines()
              if line.startswith("osbuild: ") or line.startswith("    ")]
    stages: list[list[Any]] = []
    committed = False
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = {}
    for pipeline in result.get("pipelines", {}).values():
        ran = pipeline.get("stages", [])
        if any(not s.get("success", True) for s in ran):
            stages = [[s.get("type"), bool(s.get("success"))] for s in ran]
            failed = [s["id"] for s in ran if not s.get("success") and "id" in s]
            committed = any((store / "objects" / i).exists() for i in failed)
    return {"exit": proc.returncode, "errors": errors, "stages": stages,
            "committed": committed, "exported": export.exists()}


def image_info_command() -> list[str] | None:
    """image-info, once it exists (osbuild/image_info or the console script)."""
    if (ROOT / "osbuild/image_info").is_dir():
        return [sys.executable, "-m", "osbuild.image_info"]
    found = shutil.which("image-info")
    return [found] if found else None


def image_info(case: Case, image: Path) -> dict[str, Any]:
    cmd = image_info_command()
    if cmd is None:
        raise CaseError(f"{case.name}: image-info is not available")
    proc = subprocess.run([*cmd, str(image)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise CaseError(f"{case.name}: image-info {image.name} failed: {tail(proc.stderr)}")
    try:
        return dict(json.loads(proc.stdout))
    except ValueError as e:
        raise CaseError(f"{case.name}: image-info {image.name} printed no JSON: {e}") from None


def run_case(case: Case, libdir: Path, store: Path, workdir: Path,
             with_image_info: bool | None = None) -> CaseRun:
    """Build a and b, diff their exports; the exports are removed again afterwards.

    image-info runs when the case names an image and either with_image_info is
    true or the case already has an image-info.json golden. A case with a
    failure.json golden expects b to fail: the run records how (failure.json),
    and its diff.json is a's tree against whatever b exported (a's own tree
    when it exported nothing, as it must: failure.json says "exported": false).
    """
    start = time.monotonic()
    config = case.config
    export = config["export"]
    expect_failure = (case.path / "failure.json").exists()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        a = build(materialize(case, "a", workdir), export, libdir, store, workdir / "out-a",
                  f"{case.name} a")
        b = build(materialize(case, "b", workdir), export, libdir, store, workdir / "out-b",
                  f"{case.name} b", expect_failure=expect_failure)
        documents: dict[str, Any] = {}
        if b.failure is not None:
            documents["failure.json"] = b.failure
            if not b.tree.exists():
                b = Build(a.tree, False, b.seconds, b.failure)
        documents["diff.json"] = diff_trees(a.tree, b.tree)
        packages = dpkg_packages(b.tree)
        if packages is not None:
            documents["packages.json"] = packages
        for name, view in (("dpkg.json", dpkg_view), ("debconf.json", debconf_view)):
            found = view(b.tree)
            if found is not None:
                documents[name] = found
        wants_info = with_image_info if with_image_info is not None else \
            (case.path / "image-info.json").exists()
        if config.get("image") and wants_info:
            documents["image-info.json"] = image_info(case, b.tree / config["image"])
    finally:
        for out in ("out-a", "out-b"):
            shutil.rmtree(workdir / out, ignore_errors=True)
    return CaseRun(case, documents, b.cached, time.monotonic() - start)


# -- comparing and writing goldens ------------------------------------------------


def problems(run: CaseRun) -> list[str]:
    """Every difference from the case's goldens; a case without diff.json is a problem."""
    case = run.case
    found = []
    if not (case.path / "diff.json").exists():
        found.append(f"{case.name}: no golden diff.json (write it with tools/gen-golden "
                     f"{case.name})")
    for name in GOLDENS:
        golden = case.golden(name)
        if golden is None:
            continue
        if name not in run.documents:
            found.append(f"{name}: the golden exists but the case produced none")
            continue
        found += [f"{name}: {line}" for line in compare(golden, run.documents[name])]
    return found


def apply_volatile(document: Any, path: list[str]) -> Any:
    """Null the value at `path` ("*" = every key or item there): a "don't care"."""
    if not path:
        return None
    key, rest = path[0], path[1:]
    if isinstance(document, dict):
        keys = list(document) if key == "*" else [key] if key in document else []
        return {k: (apply_volatile(v, rest) if k in keys else v) for k, v in document.items()}
    if isinstance(document, list) and key == "*":
        return [apply_volatile(v, rest) for v in document]
    return document


def keep_nulls(old: Any, new: Any) -> Any:
    """`new`, except where the current golden says "don't care" (null) at the same place."""
    if old is None:
        return None
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: keep_nulls(old[k], v) if k in old else v for k, v in new.items()}
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [keep_nulls(o, n) for o, n in zip(old, new, strict=True)]
    return new


def golden_documents(run: CaseRun) -> dict[str, Any]:
    """What gen-golden writes: the run's documents, volatile parts nulled, old nulls kept."""
    volatile = run.case.config.get("volatile", {})
    written = {}
    for name, document in run.documents.items():
        for path in volatile.get(name, []):
            document = apply_volatile(document, path)
        old = run.case.golden(name)
        written[name] = document if old is None else keep_nulls(old, document)
    return written


def dump(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_goldens(run: CaseRun) -> list[Path]:
    """Write the goldens of a run (only gen-golden calls this); returns the changed files."""
    changed = []
    for name, document in golden_documents(run).items():
        path = run.case.path / name
        text = dump(document)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def write_manifests(cases_dir: Path = HERE) -> list[Path]:
    """Write every case directory's manifests and case.json from casedefs."""
    from casedefs import all_cases

    changed = []
    for name, files in all_cases().items():
        directory = case_dir(name, cases_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for filename, document in files.items():
            path = directory / filename
            text = dump(document)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                changed.append(path)
        # A case that moved from a template to a plain manifest (or back) keeps one of each.
        for which in ("a", "b"):
            for stale in (f"{which}.json", f"{which}.mpp.json"):
                if stale not in files and (directory / stale).exists():
                    (directory / stale).unlink()
                    changed.append(directory / stale)
    return changed


def libdir_fingerprint(libdir: Path) -> str:
    """A hash of everything a build's behaviour depends on in the libdir.

    Stage ids hash options, not code: a persistent store would hand back trees
    an older stage made. Keying the store by this fingerprint keeps that from
    hiding a change.
    """
    import hashlib

    digest = hashlib.sha256()
    for part in ("osbuild", "stages", "assemblers", "sources", "runners"):
        base = libdir / part
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                path = Path(dirpath) / name
                digest.update(str(path.relative_to(libdir)).encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
