"""org.osbuild.remove: explicit paths and last-component globs, nothing outside the tree."""

import os
from pathlib import Path

import jsonschema
from stagetest import load_meta, run_stage


def make_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc/ssh").mkdir(parents=True)
    for name in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key", "sshd_config"):
        (tree / "etc/ssh" / name).write_text(name)
    (tree / "var/cache/x").mkdir(parents=True)
    (tree / "var/cache/x/f").write_text("f")
    os.symlink("/etc", tree / "link")
    return tree


def test_glob_removes_only_matches(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    run = run_stage("org.osbuild.remove", {"paths": ["/etc/ssh/ssh_host_*"]}, tree, tmp_path)
    assert run.returncode == 0, run.tail
    assert sorted(os.listdir(tree / "etc/ssh")) == ["sshd_config"]


def test_directories_need_recursive_and_symlinks_are_not_followed(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    run = run_stage("org.osbuild.remove", {"paths": ["/var/cache/x"]}, tree, tmp_path)
    assert run.returncode == 1 and "recursive" in run.tail[-1]
    run = run_stage("org.osbuild.remove", {"paths": ["/var/cache/x", "/link"],
                                           "recursive": True}, tree, tmp_path)
    assert run.returncode == 0
    assert not (tree / "var/cache/x").exists() and not os.path.lexists(tree / "link")
    assert (tree / "etc/ssh/sshd_config").exists()


def test_nothing_matched_is_an_error_unless_allowed(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    run = run_stage("org.osbuild.remove", {"paths": ["/etc/nope*"]}, tree, tmp_path)
    assert run.returncode == 1 and "nothing to remove" in run.tail[-1]
    run = run_stage("org.osbuild.remove", {"paths": ["/etc/nope*"], "missing_ok": True},
                    tree, tmp_path)
    assert run.returncode == 0


def test_paths_cannot_leave_the_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("keep")
    os.symlink("../../..", tree / "etc/up")
    run = run_stage("org.osbuild.remove", {"paths": ["/etc/up/outside"]}, tree, tmp_path)
    assert run.returncode == 1 and outside.exists()


def test_schema() -> None:
    schema = {"type": "object", **load_meta("org.osbuild.remove")["schema"]}
    jsonschema.validate({"paths": ["/etc/ssh/ssh_host_*"]}, schema)
    for bad in ({"paths": []}, {"paths": ["relative"]}, {"paths": ["/a/../b"]},
                {"paths": ["/etc/"]}, {"paths": ["/x"], "force": True}):
        try:
            jsonschema.validate(bad, schema)
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"accepted {bad}")
