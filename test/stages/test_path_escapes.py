"""Stages refuse, at run time, paths that lead out of the tree through symlinks in it.

The schemas reject `..` in options, but a tree can still hold a symlink that
climbs out of it (a crafted package, an earlier stage). In the sandbox the tree
is /run/osbuild/tree, so a relative link `../mounts/nb` reaches whatever is
bound at /run/osbuild/mounts/nb. Here that is a writable canary directory of
the host: a stage that followed such a link would visibly change it, so these
tests can fail, unlike escapes into the sandbox's throwaway /tmp.
"""

import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from stagetest import load_meta, run_stage

# Top-level names in the tree that are made links out of it: each case's paths
# go through one of them.
LINKS = ("esc", "etc", "usr", "boot", "home", "var")
UUID = "6e4ff95f-f662-45ee-a82a-bdf44a2d0b75"
CORE = {"type": "mkimage", "partlabel": "dos", "filesystem": "ext4"}
PREFIX = {"type": "partition", "partlabel": "dos", "number": 0, "path": "/boot/grub"}

# (stage, options, inputs it needs: name -> kind of host directory made for it)
CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("org.osbuild.truncate", {"filename": "esc/disk.img", "size": 1024}, {}),
    ("org.osbuild.mkdir", {"paths": [{"path": "/esc/made"}]}, {}),
    ("org.osbuild.mkdir", {"paths": [{"path": "tree:///esc/made", "parents": True}]}, {}),
    ("org.osbuild.ln", {"paths": [{"target": "x", "link_name": "/esc/link"}]}, {}),
    ("org.osbuild.chmod", {"items": {"/esc/victim": {"mode": "0777"}}}, {}),
    ("org.osbuild.chown", {"items": {"/esc/victim": {"user": 4242, "group": 4242}}}, {}),
    ("org.osbuild.remove", {"paths": ["/esc/victim"]}, {}),
    ("org.osbuild.copy", {"paths": [{"from": "input://src/file", "to": "tree:///esc/copied"}]},
     {"src": "files"}),
    ("org.osbuild.tar", {"filename": "esc/out.tar"}, {"tree": "tree"}),
    ("org.osbuild.qemu", {"filename": "esc/out.qcow2", "format": {"type": "qcow2"}},
     {"image": "image"}),
    ("org.osbuild.grub2.inst", {"filename": "esc/victim", "platform": "i386-pc",
                                "core": CORE, "prefix": PREFIX}, {}),
    ("org.osbuild.mtools.copy", {"filename": "esc/victim",
                                 "paths": [{"from": "tree:///x", "to": "/x"}]}, {}),
    ("org.osbuild.hostname", {"hostname": "escaped"}, {}),
    ("org.osbuild.timezone", {"zone": "UTC"}, {}),
    ("org.osbuild.locale", {"language": "C.UTF-8"}, {}),
    ("org.osbuild.keymap", {"keymap": "us"}, {}),
    ("org.osbuild.fstab", {"filesystems": [{"uuid": UUID, "vfs_type": "ext4", "path": "/"}]},
     {}),
    ("org.osbuild.systemd", {"masked_generators": ["systemd-gpt-auto-generator"]}, {}),
    ("org.osbuild.systemd.unit", {"unit": "a.service", "dropin": "a.conf",
                                  "config": {"Unit": {"Description": "a"}}}, {}),
    ("org.osbuild.apt.config", {"filename": "escape", "config": {"APT": {"Get": {"x": "1"}}}},
     {}),
    ("org.osbuild.apt.sources", {"filename": "escape.sources", "sources": [
        {"types": ["deb"], "uris": ["http://mirror.example/debian"], "suites": ["trixie"],
         "components": ["main"]}]}, {}),
    ("org.osbuild.modprobe", {"filename": "a.conf",
                              "commands": [{"command": "blacklist", "modulename": "x"}]}, {}),
    ("org.osbuild.sysctld", {"filename": "a.conf", "config": [{"key": "a", "value": "1"}]}, {}),
    ("org.osbuild.tmpfilesd", {"filename": "a.conf", "config": [{"type": "d", "path": "/x"}]},
     {}),
    ("org.osbuild.kernel-cmdline", {"kernel_opts": "ro"}, {}),
    ("org.osbuild.machine-id", {"first-boot": "yes"}, {}),
    ("org.osbuild.grub2", {"root_fs_uuid": UUID}, {}),
    ("org.osbuild.test", {"script": "/esc/script"}, {}),
]


def options_schema(name: str) -> dict[str, Any]:
    meta = load_meta(name)
    fragment = meta.get("schema_2", {}).get("options", meta.get("schema"))
    return {"type": "object", **fragment}


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Everything about a directory a stage could change: names, modes, owners, contents."""
    found = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        content = os.readlink(path) if path.is_symlink() else \
            path.read_text() if path.is_file() else ""
        found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, content)
    return found


def make_input(kind: str, where: Path) -> dict[str, Any]:
    where.mkdir()
    if kind == "files":
        (where / "file").write_text("from the input\n")
        return {"path": str(where), "data": {"files": {"file": {}}}}
    if kind == "image":
        subprocess.run(["truncate", "--size=1M", str(where / "disk.img")], check=True)
        return {"path": str(where), "data": {"files": {"disk.img": {}}}}
    (where / "etc").mkdir()
    (where / "etc/os-release").write_text("ID=debian\n")
    return {"path": str(where), "data": {}}


@pytest.fixture
def escape(tmp_path: Path) -> dict[str, Path]:
    """A tree whose top-level LINKS climb out of it to a canary directory bound beside it."""
    tree, canary = tmp_path / "tree", tmp_path / "canary"
    tree.mkdir()
    canary.mkdir()
    (canary / "victim").write_text("canary\n")
    os.chmod(canary / "victim", 0o644)
    for name in LINKS:
        (tree / name).symlink_to("../mounts/nb")
    return {"tree": tree, "canary": canary, "work": tmp_path / "work"}


@pytest.mark.parametrize("name, options, inputs", CASES,
                         ids=[f"{c[0].removeprefix('org.osbuild.')}-{i}"
                              for i, c in enumerate(CASES)])
def test_stage_refuses_a_symlink_out_of_the_tree(escape: dict[str, Path], name: str,
                                                 options: dict[str, Any],
                                                 inputs: dict[str, str]) -> None:
    jsonschema.validate(options, options_schema(name), cls=jsonschema.Draft202012Validator)
    escape["work"].mkdir()
    before = snapshot(escape["canary"])
    made = {n: make_input(kind, escape["work"].parent / f"input-{n}")
            for n, kind in inputs.items()}
    result = run_stage(name, options, escape["tree"], escape["work"], inputs=made,
                       mounts={"nb": escape["canary"]})
    assert result.returncode != 0, f"{name} followed a link out of the tree: {result.tail}"
    assert any("outside" in line for line in result.tail), (name, result.tail)
    assert snapshot(escape["canary"]) == before
    assert sorted(p.name for p in escape["tree"].iterdir()) == sorted(LINKS)


@pytest.mark.parametrize("name, options", [
    ("org.osbuild.systemd", {"masked_services": ["escaped.service"]}),
    ("org.osbuild.systemd", {"default_target": "multi-user.target"}),
])
def test_tools_run_with_the_tree_as_root_stay_in_it(escape: dict[str, Path], name: str,
                                                    options: dict[str, Any]) -> None:
    """systemctl --root resolves the tree's links as in a chroot: `..` stops at the tree's root."""
    jsonschema.validate(options, options_schema(name), cls=jsonschema.Draft202012Validator)
    escape["work"].mkdir()
    before = snapshot(escape["canary"])
    run_stage(name, options, escape["tree"], escape["work"], mounts={"nb": escape["canary"]})
    assert snapshot(escape["canary"]) == before


@pytest.mark.parametrize("name, options", [
    ("org.osbuild.truncate", {"filename": "abs/disk.img", "size": 1024}),
    ("org.osbuild.mkdir", {"paths": [{"path": "/abs/made"}]}),
    ("org.osbuild.chmod", {"items": {"/abs/victim": {"mode": "0777"}}}),
    ("org.osbuild.remove", {"paths": ["/abs/victim"]}),
])
def test_absolute_symlinks_count_from_the_tree_root(escape: dict[str, Path], name: str,
                                                    options: dict[str, Any]) -> None:
    """An absolute link means the same path in the booted image: inside the tree, never the host."""
    tree = escape["tree"]
    (tree / "abs").symlink_to("/run/osbuild/mounts/nb")
    inside = tree / "run/osbuild/mounts/nb"
    inside.mkdir(parents=True)
    (inside / "victim").write_text("inside\n")
    escape["work"].mkdir()
    before = snapshot(escape["canary"])
    result = run_stage(name, options, tree, escape["work"], mounts={"nb": escape["canary"]})
    assert result.returncode == 0, result.tail
    assert snapshot(escape["canary"]) == before
    victim = inside / "victim"
    done_inside = {
        "org.osbuild.truncate": lambda: (inside / "disk.img").stat().st_size == 1024,
        "org.osbuild.mkdir": lambda: (inside / "made").is_dir(),
        "org.osbuild.chmod": lambda: victim.stat().st_mode & 0o777 == 0o777,
        "org.osbuild.remove": lambda: not victim.exists(),
    }[name]
    assert done_inside(), f"{name} did not act on the path inside the tree"


def test_copy_does_not_write_through_a_deep_link_out_of_the_tree(escape: dict[str, Path]) -> None:
    """cp -a writes a file through a link at its place; a link deep in a merged directory
    that climbs out must stop the copy, one that stays inside is written through as before."""
    tree, work = escape["tree"], escape["work"]
    work.mkdir()
    (tree / "deep").mkdir()
    (tree / "deep/inside").symlink_to("../real")
    (tree / "real").write_text("old\n")
    source = make_input("files", work.parent / "input-src")
    (Path(source["path"]) / "deep").mkdir()
    (Path(source["path"]) / "deep/inside").write_text("new\n")
    options = {"paths": [{"from": "input://src/", "to": "tree:///"}]}
    jsonschema.validate(options, options_schema("org.osbuild.copy"))
    result = run_stage("org.osbuild.copy", options, tree, work, inputs={"src": source},
                       mounts={"nb": escape["canary"]})
    assert result.returncode == 0, result.tail
    assert (tree / "real").read_text() == "new\n" and (tree / "deep/inside").is_symlink()

    (tree / "deep/victim").symlink_to("../../mounts/nb/victim")
    (Path(source["path"]) / "deep/victim").write_text("escaped\n")
    before = snapshot(escape["canary"])
    result = run_stage("org.osbuild.copy", options, tree, work, inputs={"src": source},
                       mounts={"nb": escape["canary"]})
    assert result.returncode != 0
    assert result.tail[-1] == ("error: copying input://src/ to tree:///: /deep/victim is a "
                               "symlink that leads outside of tree:/// (use remove_destination)")
    assert snapshot(escape["canary"]) == before

    # Replacing the link instead of writing through it is safe, and allowed.
    options["paths"][0]["remove_destination"] = True
    result = run_stage("org.osbuild.copy", options, tree, work, inputs={"src": source},
                       mounts={"nb": escape["canary"]})
    assert result.returncode == 0, result.tail
    assert (tree / "deep/victim").read_text() == "escaped\n"
    assert not (tree / "deep/victim").is_symlink()
    assert snapshot(escape["canary"]) == before


def test_systemctl_is_not_run_through_a_wants_link_out_of_the_tree(
        escape: dict[str, Path]) -> None:
    tree, work = escape["tree"], escape["work"]
    work.mkdir()
    for name in ("etc", "usr"):
        (tree / name).unlink()
    units = tree / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "escaped.service").write_text("[Service]\nExecStart=/bin/true\n\n"
                                           "[Install]\nWantedBy=multi-user.target\n")
    config = tree / "etc/systemd/system"
    config.mkdir(parents=True)
    (config / "multi-user.target.wants").symlink_to("../../../../mounts/nb")
    before = snapshot(escape["canary"])
    options = {"enabled_services": ["escaped.service"]}
    jsonschema.validate(options, options_schema("org.osbuild.systemd"))
    result = run_stage("org.osbuild.systemd", options, tree, work,
                       mounts={"nb": escape["canary"]})
    assert result.returncode != 0
    assert "/etc/systemd/system/multi-user.target.wants leads outside" in result.tail[-1]
    assert snapshot(escape["canary"]) == before

    # The same tree without the link: the unit is enabled in the tree.
    (config / "multi-user.target.wants").unlink()
    result = run_stage("org.osbuild.systemd", options, tree, work,
                       mounts={"nb": escape["canary"]})
    assert result.returncode == 0, result.tail
    assert (config / "multi-user.target.wants/escaped.service").is_symlink()
