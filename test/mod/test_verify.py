"""The verify library (tree diffs, golden comparison) and the golden-case harness around it.

The last tests prove the harness's promise: a one-line change to a stage's
behaviour makes its golden case fail, naming the changed file.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "test/cases"))

import casekit  # noqa: E402

from verify.compare import compare  # noqa: E402
from verify.treediff import diff_trees  # noqa: E402

LIBDIR_PARTS = ("osbuild", "stages", "assemblers", "sources", "runners")
EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# -- treediff ------------------------------------------------------------------


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    for tree in (a, b):
        write(tree / "same", "same\n")
        write(tree / "etc/hostname", "old\n" if tree is a else "new\n")
        write(tree / "mode", "x\n", 0o644 if tree is a else 0o600)
        write(tree / "owner", "x\n")
        (tree / "link").symlink_to("same" if tree is a else "etc/hostname")
        label = b"system_u:object_r:etc_t:s0\0" if tree is a else b"system_u:object_r:bin_t:s0\0"
        os.setxattr(write(tree / "labelled", "x\n"), "security.selinux", label)
        os.setxattr(write(tree / "xattr", "x\n"), "user.colour", b"red" if tree is a else b"blue")
    os.chown(b / "owner", 1000, 100)
    write(a / "gone/file", "bye\n")
    write(a / "turns-into-link", "file\n")
    (b / "turns-into-link").symlink_to("same")
    write(b / "new/dir/file", "", 0o600)
    (b / "new/link").symlink_to("/nowhere")
    (b / "new").chmod(0o700)
    return a, b


def test_treediff_reports_every_kind_of_change(trees: tuple[Path, Path]) -> None:
    a, b = trees
    diff = diff_trees(a, b)
    assert diff["added_files"] == ["/new", "/new/dir", "/new/dir/file", "/new/link"]
    assert diff["deleted_files"] == ["/gone", "/gone/file"]
    d = diff["differences"]
    assert list(d) == sorted(d)
    assert d["/etc/hostname"] == {"content": [sha("old\n"), sha("new\n")]}
    assert d["/mode"] == {"mode": [0o100644, 0o100600]}
    assert d["/owner"] == {"uid": [0, 1000], "gid": [0, 100]}
    assert d["/link"] == {"symlink": ["same", "etc/hostname"]}
    assert d["/labelled"] == {"selinux": ["system_u:object_r:etc_t:s0",
                                          "system_u:object_r:bin_t:s0"]}
    assert d["/xattr"] == {"xattrs": [{"user.colour": "red"}, {"user.colour": "blue"}]}
    assert d["/turns-into-link"] == {"mode": [0o100644, 0o120777],
                                     "content": [sha("file\n"), None],
                                     "symlink": [None, "same"]}
    # Added paths are described too (before = null), so new content is compared.
    assert d["/new/dir/file"] == {"mode": [None, 0o100600], "uid": [None, 0], "gid": [None, 0],
                                  "content": [None, EMPTY_SHA]}
    assert d["/new/link"]["symlink"] == [None, "/nowhere"]
    assert d["/new"]["mode"] == [None, 0o40700]
    assert "/same" not in d and "/gone" not in d and "/" not in d


def test_treediff_upstream_shape_and_cli(trees: tuple[Path, Path]) -> None:
    a, b = trees
    upstream = diff_trees(a, b, upstream=True)
    assert not any(p.startswith("/new") for p in upstream["differences"])
    proc = subprocess.run([sys.executable, "-m", "verify.treediff", str(a), str(b)],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(proc.stdout) == diff_trees(a, b)
    proc = subprocess.run([sys.executable, "-m", "verify.treediff", "--upstream", str(a), str(b)],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(proc.stdout) == upstream
    proc = subprocess.run([sys.executable, "-m", "verify.treediff", str(a), str(b / "nope")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_treediff_of_equal_trees_is_empty(tmp_path: Path) -> None:
    write(tmp_path / "a/x", "1\n")
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    os.chmod(tmp_path / "b", os.stat(tmp_path / "a").st_mode)
    assert diff_trees(tmp_path / "a", tmp_path / "b") == {
        "added_files": [], "deleted_files": [], "differences": {}}


# -- compare ---------------------------------------------------------------------


def test_compare_example_line() -> None:
    golden = {"differences": {"/etc/hostname": {"content": [None, "ab12"]}}}
    actual = {"differences": {"/etc/hostname": {"content": ["00", "cd34"]}}}
    assert compare(golden, actual) == [
        'differences./etc/hostname.content: expected [null, "ab12"] but got ["00", "cd34"]']


@pytest.mark.parametrize("golden, actual", [
    (None, {"anything": 1}),
    ({"a": None}, {"a": [1, 2, {"b": 3}]}),
    ({"a": None}, {"a": None}),
    ({"a": [None, 2]}, {"a": [1, 2]}),
    ({"a": [{"x": None, "y": 1}]}, {"a": [{"x": "whatever", "y": 1}]}),
    ({"added_files": None, "deleted_files": []}, {"added_files": ["/x"], "deleted_files": []}),
])
def test_compare_null_means_dont_care(golden: object, actual: object) -> None:
    assert compare(golden, actual) == []


def test_compare_null_key_must_still_be_there() -> None:
    """null is "any value", not "maybe absent": a package that was not installed fails."""
    golden = {"packages": {"bash": None, "dash": None}, "differences": {"/x": {"content": None}}}
    actual = {"packages": {"bash": "5.2.15-2+b7"}, "differences": {"/x": {"mode": [1, 2]}}}
    assert compare(golden, actual) == [
        "differences./x.content: missing (expected any value)",
        "differences./x.mode: not expected (got [1, 2])",
        "packages.dash: missing (expected any value)",
    ]
    assert compare({"a": None}, {}) == ["a: missing (expected any value)"]


def test_compare_reports_paths_missing_and_unexpected() -> None:
    golden = {"added_files": ["/a", "/b", "/c", "/d", "/e"], "n": 1, "gone": 2,
              "nested": {"list": [{"k": "v"}]}}
    actual = {"added_files": ["/a", "/b", "/c", "/d", "/f"], "n": True, "extra": 3,
              "nested": {"list": [{"k": "w"}]}}
    assert compare(golden, actual) == [
        'added_files: missing "/e"',
        'added_files: not expected "/f"',
        "extra: not expected (got 3)",
        "gone: missing (expected 2)",
        'n: expected 1 but got true',
        'nested.list[0].k: expected "v" but got "w"',
    ]
    assert compare([1, 2], {"a": 1}) == ['(document): expected a list but got {"a": 1}']
    assert compare({"a": [{}, {}]}, {"a": [{}]}) == ["a: expected 2 items but got 1: [{}]"]


def test_compare_shows_modes_in_octal() -> None:
    lines = compare({"x": {"mode": [None, 0o100644]}}, {"x": {"mode": [None, 0o100600]}})
    assert lines == ["x.mode: expected [null, 33188] but got [null, 33152] "
                     "(octal: [null, 0o100644] vs [null, 0o100600])"]


def test_compare_cli(tmp_path: Path) -> None:
    write(tmp_path / "g.json", json.dumps({"a": [None, 1]}))
    write(tmp_path / "x.json", json.dumps({"a": [5, 2]}))
    proc = subprocess.run([sys.executable, "-m", "verify.compare", str(tmp_path / "g.json"),
                           str(tmp_path / "x.json")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and proc.stdout == "a: expected [null, 1] but got [5, 2]\n"


# -- golden writing ----------------------------------------------------------------


def test_keep_nulls_and_volatile() -> None:
    old = {"added_files": None, "differences": {"/x": {"content": [None, "a"]}, "/y": None}}
    new = {"added_files": ["/n"], "differences": {"/x": {"content": ["b", "c"]},
                                                   "/y": {"mode": [1, 2]}, "/z": {"uid": [0, 1]}}}
    assert casekit.keep_nulls(old, new) == {
        "added_files": None,
        "differences": {"/x": {"content": [None, "c"]}, "/y": None, "/z": {"uid": [0, 1]}}}
    doc = {"differences": {"/a": {"content": [1, 2], "mode": [3, 4]}, "/b": {"mode": [5, 6]}},
           "packages": {"bash": "5.2", "dash": "0.5"}}
    doc = casekit.apply_volatile(doc, ["differences", "*", "content"])
    doc = casekit.apply_volatile(doc, ["packages", "*"])
    assert doc == {"differences": {"/a": {"content": None, "mode": [3, 4]}, "/b": {"mode": [5, 6]}},
                   "packages": {"bash": None, "dash": None}}


# -- the harness catches a changed stage -------------------------------------------


def libdir_copy(tmp_path: Path) -> Path:
    lib = tmp_path / "libdir"
    for part in LIBDIR_PARTS:
        shutil.copytree(ROOT / part, lib / part, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return lib


def mutate(lib: Path, stage: str, old: str, new: str) -> None:
    path = lib / "stages" / stage
    text = path.read_text()
    assert text.count(old) == 1, f"{stage}: the line to change is not there any more"
    path.write_text(text.replace(old, new))


def run_case(name: str, lib: Path, tmp_path: Path, case_path: Path | None = None):
    case = casekit.Case(name, case_path or casekit.case_dir(name))
    return casekit.run_case(case, lib, tmp_path / "store", tmp_path / "work")


@pytest.mark.parametrize("stage, old, new, changed", [
    # a file the base has: its content changes
    ("org.osbuild.hostname", 'hostname + "\\n"', 'hostname + "\\n\\n"', "/etc/hostname"),
    # a file the stage creates: only its content tells
    ("org.osbuild.modprobe", 'f"blacklist {item', 'f"blacklist  {item',
     "/usr/lib/modprobe.d/golden.conf"),
    # a stage arm64 images use: its case in the debian13-arm64 cell fails
    ("org.osbuild.grub2[debian13-arm64]", 'f"menuentry {quote(title)}',
     'f"menuentry  {quote(title)}', "/boot/grub/grub.cfg"),
])
def test_changed_stage_fails_its_case_naming_the_file(tmp_path: Path, stage: str, old: str,
                                                      new: str, changed: str) -> None:
    lib = libdir_copy(tmp_path)
    assert casekit.problems(run_case(stage, lib, tmp_path)) == []  # the copy itself passes
    mutate(lib, stage.split("[")[0], old, new)
    shutil.rmtree(tmp_path / "store")  # ids hash options, not code: start afresh
    found = casekit.problems(run_case(stage, lib, tmp_path))
    assert found, "the changed stage passed its golden case"
    assert all(changed in line for line in found), found
    assert found[0].startswith(f"diff.json: differences.{changed}.content: expected [")


def test_persistent_store_is_keyed_by_the_code(tmp_path: Path) -> None:
    """A store kept across runs must not answer a changed stage from its cache."""
    lib = libdir_copy(tmp_path)
    before = casekit.libdir_fingerprint(lib)
    mutate(lib, "org.osbuild.hostname", 'hostname + "\\n"', 'hostname + "\\n\\n"')
    assert casekit.libdir_fingerprint(lib) != before


def test_gen_golden_keeps_nulls_and_updates_the_rest(tmp_path: Path) -> None:
    """write_goldens (what tools/gen-golden does), on a copy of a case."""
    case_dir = tmp_path / "case"
    shutil.copytree(ROOT / "test/cases/org.osbuild.users", case_dir)
    golden = json.loads((case_dir / "diff.json").read_text())
    golden["differences"]["/etc/shadow"]["content"] = None
    golden["differences"]["/etc/passwd"]["content"] = [None, "0" * 64]
    (case_dir / "diff.json").write_text(json.dumps(golden))
    lib = libdir_copy(tmp_path)
    run = run_case("org.osbuild.users", lib, tmp_path, case_dir)
    before, after = run.documents["diff.json"]["differences"]["/etc/passwd"]["content"]
    assert before == sha((ROOT / "test/cases/base/etc/passwd").read_text())
    assert casekit.problems(run) == [
        f'diff.json: differences./etc/passwd.content: expected [null, "{"0" * 64}"] '
        f'but got ["{before}", "{after}"]']
    assert [p.name for p in casekit.write_goldens(run)] == ["diff.json"]
    written = json.loads((case_dir / "diff.json").read_text())
    assert written["differences"]["/etc/shadow"]["content"] is None
    assert written["differences"]["/etc/passwd"]["content"] == [None, after]
    assert casekit.problems(run) == []
    assert casekit.write_goldens(run) == []  # nothing left to change
