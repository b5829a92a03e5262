"""Stages that create or change single files: real runs in the sandbox, exact results.

Covers error, test, mkdir, chmod, chown, ln, copy, truncate, machine-id,
kernel-cmdline, modprobe, sysctld, tmpfilesd and systemd.unit. Every options
example is checked against the stage's schema before it runs.
"""

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from stagetest import load_meta, run_stage

from osbuild.buildroot import StageRun

UUID = "6e4ff95f-f662-45ee-a82a-bdf44a2d0b75"


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"type": "object", **load_meta(name)["schema"]})


def accepts(name: str, options: dict[str, Any]) -> None:
    validator(name).validate(options)


def rejects(name: str, options: dict[str, Any]) -> None:
    assert not validator(name).is_valid(options), f"{name} accepted {options}"


def run(name: str, options: dict[str, Any], tmp_path: Path, ok: bool = True, **kw) -> StageRun:
    """Run a stage on tmp_path/tree after checking its options against the schema."""
    accepts(name, options)
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    result = run_stage(name, options, tree, work, **kw)
    if ok:
        assert result.returncode == 0, result.tail
    else:
        assert result.returncode != 0, f"{name} should have failed: {result.tail}"
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def escaping_link(tree: Path, name: str) -> Path:
    """Make `name` in the tree a symlink that climbs out of the tree."""
    link = tree / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("../" * (len(Path(name).parts) + 6) + "tmp")
    return link


# --- error ---


def test_error_exits_with_the_code(tmp_path):
    result = run("org.osbuild.error", {"returncode": 3}, tmp_path, ok=False)
    assert result.returncode == 3
    assert any("return code 3" in line for line in result.tail)
    assert run("org.osbuild.error", {}, tmp_path, ok=False).returncode == 255
    assert run("org.osbuild.error", {"returncode": 0}, tmp_path).returncode == 0


def test_error_schema():
    for bad in ({"returncode": "1"}, {"returncode": 256}, {"returncode": -1}, {"code": 1}):
        rejects("org.osbuild.error", bad)


# --- test (boot test service) ---

TEST_UNIT = """\
[Unit]
Description=osbuild boot test
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=exec
ExecStart=/usr/libexec/osbuild-check
StandardOutput=file:/dev/virtio-ports/org.osbuild.test
StandardError=inherit

[Install]
WantedBy=multi-user.target
"""


def test_test_stage_installs_and_enables_the_service(tmp_path):
    script = "#!/bin/sh\nsystemctl is-system-running --wait\n"
    run("org.osbuild.test", {"script": "/usr/libexec/osbuild-check", "content": script}, tmp_path)
    tree = tmp_path / "tree"
    check = tree / "usr/libexec/osbuild-check"
    assert check.read_text() == script
    assert mode(check) == 0o755
    unit = tree / "usr/lib/systemd/system/osbuild-test.service"
    assert unit.read_text() == TEST_UNIT
    assert mode(unit) == 0o644
    assert mode(tree / "usr/lib/systemd/system") == 0o755
    wants = tree / "etc/systemd/system/multi-user.target.wants/osbuild-test.service"
    assert os.readlink(wants) == "/usr/lib/systemd/system/osbuild-test.service"
    # systemctl itself, offline on the tree, must agree that the service is enabled.
    state = subprocess.run(
        ["systemctl", f"--root={tree}", "is-enabled", "osbuild-test.service"],
        capture_output=True, text=True, check=False,
    )
    assert state.stdout.strip() == "enabled", state


def test_test_stage_without_poweroff_and_rerun(tmp_path):
    options = {"script": "/usr/local/bin/check", "poweroff": False}
    run("org.osbuild.test", options, tmp_path)
    run("org.osbuild.test", options, tmp_path)  # the enable link is replaced, not an error
    unit = (tmp_path / "tree/usr/lib/systemd/system/osbuild-test.service").read_text()
    assert "Action=" not in unit
    assert "ExecStart=/usr/local/bin/check\n" in unit
    assert not (tmp_path / "tree/usr/local/bin/check").exists()


def test_test_stage_refuses_escapes(tmp_path):
    escaping_link(tmp_path / "tree", "usr/local")
    result = run("org.osbuild.test", {"script": "/usr/local/check", "content": "x"}, tmp_path,
                 ok=False)
    assert any("outside" in line for line in result.tail)


def test_test_stage_schema():
    for bad in ({}, {"script": "check"}, {"script": "/usr/../etc/x"},
                {"script": "/usr/bin/my check"}, {"script": "/x", "poweroff": "yes"},
                {"script": "/x", "extra": 1}):
        rejects("org.osbuild.test", bad)


# --- mkdir ---


def test_mkdir_creates_with_exact_modes(tmp_path):
    (tmp_path / "tree/etc").mkdir(parents=True)
    (tmp_path / "tree/var").symlink_to("/etc")  # absolute links count from the tree's root
    options = {"paths": [
        {"path": "/a/b/c", "parents": True, "mode": 0o700},
        {"path": "/x"},
        {"path": "rel"},
        {"path": "tree:///x", "exist_ok": True, "mode": 0o700},
        {"path": "/var/spool", "mode": 0o1777},
    ]}
    run("org.osbuild.mkdir", options, tmp_path)
    tree = tmp_path / "tree"
    assert mode(tree / "a") == mode(tree / "a/b") == 0o755
    assert mode(tree / "a/b/c") == 0o700
    assert mode(tree / "x") == 0o755  # exist_ok keeps the existing mode
    assert mode(tree / "rel") == 0o755
    assert mode(tree / "etc/spool") == 0o1777


def test_mkdir_errors(tmp_path):
    (tmp_path / "tree/here").mkdir(parents=True)
    result = run("org.osbuild.mkdir", {"paths": [{"path": "/here"}]}, tmp_path, ok=False)
    assert any("already exists" in line for line in result.tail)
    result = run("org.osbuild.mkdir", {"paths": [{"path": "/no/such"}]}, tmp_path, ok=False)
    assert any("parent directory missing" in line for line in result.tail)
    assert not (tmp_path / "tree/no").exists()


def test_mkdir_in_a_mount(tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    run("org.osbuild.mkdir", {"paths": [{"path": "mount://boot/efi/EFI", "parents": True}]},
        tmp_path, mounts={"boot": boot})
    assert (boot / "efi/EFI").is_dir()
    assert not (tmp_path / "tree/efi").exists()
    result = run("org.osbuild.mkdir", {"paths": [{"path": "mount://root/x"}]}, tmp_path,
                 ok=False, mounts={"boot": boot})
    assert any("no mount named 'root'" in line for line in result.tail)


def test_mkdir_refuses_escapes(tmp_path):
    escaping_link(tmp_path / "tree", "esc")
    result = run("org.osbuild.mkdir", {"paths": [{"path": "/esc/x", "parents": True}]},
                 tmp_path, ok=False)
    assert any("outside" in line for line in result.tail)
    (tmp_path / "tree/loop").symlink_to("loop")
    result = run("org.osbuild.mkdir", {"paths": [{"path": "/loop/x"}]}, tmp_path, ok=False)
    assert any("too many levels of symbolic links" in line for line in result.tail)


def test_mkdir_schema():
    for path in ("../x", "/a/../../x", "..", "tree:///../x", "mount://boot/../x", ""):
        rejects("org.osbuild.mkdir", {"paths": [{"path": path}]})
    rejects("org.osbuild.mkdir", {"paths": [{"path": "/x", "mode": "0755"}]})
    rejects("org.osbuild.mkdir", {"paths": []})
    rejects("org.osbuild.mkdir", {"paths": [{"path": "/x", "owner": "root"}]})


# --- chmod ---


def test_chmod_octal_symbolic_recursive(tmp_path):
    tree = tmp_path / "tree"
    (tree / "d/sub").mkdir(parents=True)
    for path in ("f", "d/g", "d/sub/h", "outside-of-d"):
        (tree / path).write_text(path)
        (tree / path).chmod(0o644)
    (tree / "d/link").symlink_to("/outside-of-d")
    (tree / "abs").symlink_to("/f")
    options = {"items": {
        "/d": {"mode": "go-rwx", "recursive": True},
        "/abs": {"mode": "u+x"},
        "/d/sub/h": {"mode": "0400"},
    }}
    run("org.osbuild.chmod", options, tmp_path)
    assert mode(tree / "d") == mode(tree / "d/sub") == 0o700
    assert mode(tree / "d/g") == 0o600
    assert mode(tree / "d/sub/h") == 0o400  # sorted: applied after the recursive /d
    assert mode(tree / "outside-of-d") == 0o644  # recursion does not follow symlinks
    assert mode(tree / "f") == 0o744  # through the absolute symlink, inside the tree
    assert (tree / "abs").is_symlink()


def test_chmod_errors_and_escapes(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    result = run("org.osbuild.chmod", {"items": {"/missing": {"mode": "0644"}}}, tmp_path,
                 ok=False)
    assert any("does not exist" in line for line in result.tail)
    escaping_link(tree, "esc")
    result = run("org.osbuild.chmod", {"items": {"/esc": {"mode": "0777"}}}, tmp_path, ok=False)
    assert any("outside" in line for line in result.tail)


def test_chmod_schema():
    for item in ({"mode": "999"}, {"mode": "u+q"}, {"mode": "0755 "}, {},
                 {"mode": "0755", "recursive": "yes"}):
        rejects("org.osbuild.chmod", {"items": {"/f": item}})
    for path in ("f", "/../f", "/a/../../f", "/"):
        rejects("org.osbuild.chmod", {"items": {path: {"mode": "0644"}}})
    rejects("org.osbuild.chmod", {"items": {}})
    accepts("org.osbuild.chmod", {"items": {"/f": {"mode": "u=rwx,g=rx,o="}}})


# --- chown ---

PASSWD = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:4321:4321::/:/bin/false\n" \
         "alice:x:1234:1234::/home/alice:/bin/sh\n"
GROUP = "root:x:0:\ndaemon:x:4321:\nalice:x:1234:\nstaff:x:50:\n"


def chown_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text(PASSWD)
    (tree / "etc/group").write_text(GROUP)
    (tree / "home/alice/.config").mkdir(parents=True)
    (tree / "home/alice/.config/x").write_text("x")
    (tree / "home/alice/link").symlink_to("/etc/passwd")
    for name in ("f", "g", "d"):
        (tree / name).write_text(name)
    return tree


def test_chown_names_come_from_the_tree(tmp_path):
    tree = chown_tree(tmp_path)
    options = {"items": {
        "/home/alice": {"user": "alice", "group": "alice", "recursive": True},
        "/f": {"user": 77},
        "/g": {"group": "staff"},
        # daemon is uid 1 on the host; the tree says 4321, and the tree wins.
        "/d": {"user": "daemon", "group": "4321"},
    }}
    run("org.osbuild.chown", options, tmp_path)
    for path in ("home/alice", "home/alice/.config", "home/alice/.config/x", "home/alice/link"):
        st = (tree / path).lstat()
        assert (st.st_uid, st.st_gid) == (1234, 1234), path
    assert (tree / "etc/passwd").stat().st_uid == 0  # the symlink changed, not its target
    assert ((tree / "f").stat().st_uid, (tree / "f").stat().st_gid) == (77, 0)
    assert ((tree / "g").stat().st_uid, (tree / "g").stat().st_gid) == (0, 50)
    assert ((tree / "d").stat().st_uid, (tree / "d").stat().st_gid) == (4321, 4321)


def test_chown_unknown_name_and_escape(tmp_path):
    tree = chown_tree(tmp_path)
    result = run("org.osbuild.chown", {"items": {"/f": {"user": "bob"}}}, tmp_path, ok=False)
    assert any("'bob' is not in the tree's /etc/passwd" in line for line in result.tail)
    result = run("org.osbuild.chown", {"items": {"/f": {"group": "wheel"}}}, tmp_path, ok=False)
    assert any("/etc/group" in line for line in result.tail)
    assert (tree / "f").stat().st_uid == 0
    escaping_link(tree, "esc")
    result = run("org.osbuild.chown", {"items": {"/esc": {"user": 5}}}, tmp_path, ok=False)
    assert any("outside" in line for line in result.tail)


def test_chown_schema():
    for item in ({}, {"recursive": True}, {"user": "bad name"}, {"user": -1},
                 {"group": "a:b"}, {"user": "x", "mode": "0644"}):
        rejects("org.osbuild.chown", {"items": {"/f": item}})
    rejects("org.osbuild.chown", {"items": {"/../f": {"user": 0}}})


# --- ln ---


def test_ln_symbolic_and_hard(tmp_path):
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/a").write_text("a")
    options = {"paths": [
        {"target": "../usr/lib/os-release", "link_name": "/etc/os-release", "symbolic": True},
        {"target": "/nowhere/at/all", "link_name": "tree:///new/dir/l", "symbolic": True},
        {"target": "/usr/bin/a", "link_name": "/usr/bin/b"},
        {"target": "a", "link_name": "tree:///usr/bin/c"},
    ]}
    run("org.osbuild.ln", options, tmp_path)
    assert os.readlink(tree / "etc/os-release") == "../usr/lib/os-release"
    assert os.readlink(tree / "new/dir/l") == "/nowhere/at/all"
    assert mode(tree / "new") == mode(tree / "new/dir") == 0o755
    inode = (tree / "usr/bin/a").stat().st_ino
    assert (tree / "usr/bin/b").stat().st_ino == inode
    assert (tree / "usr/bin/c").stat().st_ino == inode
    assert (tree / "usr/bin/a").stat().st_nlink == 3


def test_ln_in_a_mount_and_errors(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_text("f")
    run("org.osbuild.ln", {"paths": [{"target": "f", "link_name": "mount://root/g"}]},
        tmp_path, mounts={"root": root})
    assert (root / "g").stat().st_ino == (root / "f").stat().st_ino
    result = run("org.osbuild.ln", {"paths": [{"target": "f", "link_name": "mount://root/g",
                                               "symbolic": True}]},
                 tmp_path, ok=False, mounts={"root": root})
    assert any("already exists" in line for line in result.tail)


def test_ln_refuses_escapes(tmp_path):
    tree = tmp_path / "tree"
    escaping_link(tree, "esc")
    result = run("org.osbuild.ln", {"paths": [{"target": "x", "link_name": "/esc/x",
                                               "symbolic": True}]}, tmp_path, ok=False)
    assert any("outside" in line for line in result.tail)
    # A hard link to a file outside the tree would smuggle it in.
    result = run("org.osbuild.ln", {"paths": [{"target": "../../../../../../etc/passwd",
                                               "link_name": "/stolen"}]}, tmp_path, ok=False)
    assert any("outside" in line for line in result.tail)
    assert not (tree / "stolen").exists()


def test_ln_schema():
    for link_name in ("/../../etc/x", "relative", "tree:///a/../../x", "mount://r/../x", "x://y"):
        rejects("org.osbuild.ln", {"paths": [{"target": "t", "link_name": link_name}]})
    rejects("org.osbuild.ln", {"paths": [{"link_name": "/x"}]})
    rejects("org.osbuild.ln", {"paths": [{"target": "", "link_name": "/x"}]})
    rejects("org.osbuild.ln", {"paths": [{"target": "t", "link_name": "/x", "symbolic": 1}]})


# --- copy ---


def make_input_tree(path: Path) -> None:
    """An input tree with everything a copy into a filesystem must keep."""
    (path / "d").mkdir(parents=True)
    (path / "d").chmod(0o700)
    (path / "a").write_text("hard")
    os.link(path / "a", path / "b")
    (path / "s").symlink_to("a")
    (path / "suid").write_text("#!/bin/sh\n")
    (path / "suid").chmod(0o4755)
    (path / "owned").write_text("owned")
    os.chown(path / "owned", 1234, 1234)
    (path / "x").write_text("xattr")
    os.setxattr(path / "x", "user.osbuild", b"hello")
    os.mknod(path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(path, 0o755)


def assert_copied(dest: Path) -> None:
    assert (dest / "d").is_dir() and mode(dest / "d") == 0o700
    assert (dest / "a").read_text() == "hard"
    assert (dest / "a").stat().st_ino == (dest / "b").stat().st_ino
    assert os.readlink(dest / "s") == "a"
    assert mode(dest / "suid") == 0o4755
    st = (dest / "owned").stat()
    assert (st.st_uid, st.st_gid) == (1234, 1234)
    assert os.getxattr(dest / "x", "user.osbuild") == b"hello"
    st = (dest / "null").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_copy_tree_content_keeps_everything(tmp_path):
    src = tmp_path / "input"
    make_input_tree(src)
    run("org.osbuild.copy", {"paths": [{"from": "input://tree/", "to": "tree:///"}]}, tmp_path,
        inputs={"tree": {"path": src}})
    assert_copied(tmp_path / "tree")
    assert not (tmp_path / "tree/tree").exists()  # the content, not the directory


def test_copy_into_a_mount(tmp_path):
    src = tmp_path / "input"
    make_input_tree(src)
    root = tmp_path / "root-fs"
    root.mkdir()
    run("org.osbuild.copy", {"paths": [{"from": "input://tree/", "to": "mount://root/"}]},
        tmp_path, inputs={"tree": {"path": src}}, mounts={"root": root})
    assert_copied(root)
    assert mode(root) == 0o755  # the root directory takes the tree root's attributes
    assert list((tmp_path / "tree").iterdir()) == []


def test_copy_files_and_directories(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "sha256:0123").write_text("from a source")
    src = tmp_path / "input"
    make_input_tree(src)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/real").write_text("old")
    (tree / "etc/via").symlink_to("/etc/real")
    (tree / "etc/replaced").symlink_to("/etc/real")
    options = {"paths": [
        {"from": "input://files/sha256:0123", "to": "tree:///etc/new"},
        {"from": "input://tree/d", "to": "tree:///"},
        {"from": "input://files/sha256:0123", "to": "tree:///etc/replaced",
         "remove_destination": True},
        {"from": "input://tree/a", "to": "tree:///etc/via"},
        {"from": "tree:///etc/new", "to": "tree:///etc/copy"},
    ]}
    run("org.osbuild.copy", options, tmp_path,
        inputs={"files": {"path": files}, "tree": {"path": src}})
    assert (tree / "etc/new").read_text() == "from a source"
    assert (tree / "d").is_dir()  # no trailing slash: the directory itself
    assert not (tree / "etc/replaced").is_symlink()
    assert (tree / "etc/replaced").read_text() == "from a source"
    # Without remove_destination the symlink is written through, inside the tree.
    assert (tree / "etc/via").is_symlink()
    assert (tree / "etc/real").read_text() == "hard"
    assert (tree / "etc/copy").read_text() == "from a source"


def test_copy_refuses_escapes_and_unknown_names(tmp_path):
    src = tmp_path / "input"
    src.mkdir()
    escaping_link(src, "esc")
    escaping_link(tmp_path / "tree", "out")
    cases = [
        ({"from": "input://tree/esc/", "to": "tree:///"}, "outside"),
        ({"from": "input://tree/", "to": "tree:///out/"}, "outside"),
        ({"from": "input://nope/", "to": "tree:///"}, "no input named 'nope'"),
        ({"from": "input://tree/", "to": "mount://root/"}, "no mount named 'root'"),
        ({"from": "input://tree/missing", "to": "tree:///"}, "does not exist"),
    ]
    for item, message in cases:
        result = run("org.osbuild.copy", {"paths": [item]}, tmp_path, ok=False,
                     inputs={"tree": {"path": src}})
        assert any(message in line for line in result.tail), (item, result.tail)


def test_copy_schema():
    for item in ({"from": "input://tree/", "to": "input://tree/"},
                 {"from": "/abs", "to": "tree:///"},
                 {"from": "input://tree/../x", "to": "tree:///"},
                 {"from": "input://tree/", "to": "tree:///a/../../x"},
                 {"from": "input://tree/", "to": "tree:///", "remove_destination": "no"},
                 {"from": "input://tree/"}):
        rejects("org.osbuild.copy", {"paths": [item]})
    rejects("org.osbuild.copy", {"paths": []})
    inputs = load_meta("org.osbuild.copy")["schema_2"]["inputs"]
    jsonschema.validate({"tree": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                                  "references": ["name:os"]}}, inputs)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tree": {"type": "org.osbuild.containers"}}, inputs)


# --- truncate ---


def test_truncate_sizes(tmp_path):
    run("org.osbuild.truncate", {"filename": "disk.img", "size": "10M"}, tmp_path)
    disk = tmp_path / "tree/disk.img"
    assert disk.stat().st_size == 10 * 1024 * 1024
    assert disk.stat().st_blocks == 0  # a hole, not written zeros
    assert mode(disk) == 0o644
    run("org.osbuild.truncate", {"filename": "/disk.img", "size": "1KiB"}, tmp_path)
    assert disk.stat().st_size == 1024
    run("org.osbuild.truncate", {"filename": "disk.img", "size": "+1K"}, tmp_path)
    assert disk.stat().st_size == 2048
    run("org.osbuild.truncate", {"filename": "/out/x.img", "size": 4096}, tmp_path)
    assert (tmp_path / "tree/out/x.img").stat().st_size == 4096
    assert mode(tmp_path / "tree/out") == 0o755
    run("org.osbuild.truncate", {"filename": "y.img", "size": "2MB"}, tmp_path)
    assert (tmp_path / "tree/y.img").stat().st_size == 2_000_000


def test_truncate_escape(tmp_path):
    escaping_link(tmp_path / "tree", "esc")
    result = run("org.osbuild.truncate", {"filename": "esc/x.img", "size": "1M"}, tmp_path,
                 ok=False)
    assert any("outside" in line for line in result.tail)


def test_truncate_schema():
    for size in ("10 M", "abc", -1, "1X", "", 1.5):
        rejects("org.osbuild.truncate", {"filename": "disk.img", "size": size})
    for filename in ("../x", "/a/../../x", ""):
        rejects("org.osbuild.truncate", {"filename": filename, "size": "1M"})
    rejects("org.osbuild.truncate", {"filename": "disk.img"})


# --- machine-id ---


@pytest.mark.parametrize(("first_boot", "content"), [("yes", "uninitialized\n"), ("no", "")])
def test_machine_id(tmp_path, first_boot, content):
    (tmp_path / "tree/etc").mkdir(parents=True)
    (tmp_path / "tree/etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    run("org.osbuild.machine-id", {"first-boot": first_boot}, tmp_path)
    path = tmp_path / "tree/etc/machine-id"
    assert path.read_text() == content
    assert mode(path) == 0o444


def test_machine_id_preserve(tmp_path):
    result = run("org.osbuild.machine-id", {"first-boot": "preserve"}, tmp_path, ok=False)
    assert any("no /etc/machine-id to keep" in line for line in result.tail)
    (tmp_path / "tree/etc").mkdir(parents=True)
    (tmp_path / "tree/etc/machine-id").write_text("abc\n")
    run("org.osbuild.machine-id", {"first-boot": "preserve"}, tmp_path)
    assert (tmp_path / "tree/etc/machine-id").read_text() == "abc\n"


def test_machine_id_schema():
    for bad in ({}, {"first-boot": "maybe"}, {"first-boot": True}, {"first-boot": "no", "x": 1}):
        rejects("org.osbuild.machine-id", bad)


# --- kernel-cmdline ---


def test_kernel_cmdline(tmp_path):
    # Written where an absolute /etc/kernel symlink points, inside the tree.
    (tmp_path / "tree/etc").mkdir(parents=True)
    (tmp_path / "tree/etc/kernel").symlink_to("/usr/lib/kernel")
    run("org.osbuild.kernel-cmdline", {"root_fs_uuid": UUID, "kernel_opts": "ro quiet"},
        tmp_path)
    path = tmp_path / "tree/usr/lib/kernel/cmdline"
    assert path.read_text() == f"root=UUID={UUID} ro quiet\n"
    assert mode(path) == 0o644
    run("org.osbuild.kernel-cmdline", {"kernel_opts": "console=ttyS0"}, tmp_path)
    assert path.read_text() == "console=ttyS0\n"


def test_kernel_cmdline_schema():
    for bad in ({"root_fs_uuid": "nope"}, {"kernel_opts": "a\nb"}, {"root": UUID}):
        rejects("org.osbuild.kernel-cmdline", bad)
    accepts("org.osbuild.kernel-cmdline", {"root_fs_uuid": "6699-AFB5"})


# --- modprobe, sysctld, tmpfilesd ---


def test_modprobe(tmp_path):
    options = {"filename": "disallow.conf", "commands": [
        {"command": "blacklist", "modulename": "nouveau"},
        {"command": "install", "modulename": "floppy", "cmdline": "/bin/false"},
    ]}
    run("org.osbuild.modprobe", options, tmp_path)
    path = tmp_path / "tree/usr/lib/modprobe.d/disallow.conf"
    assert path.read_text() == "blacklist nouveau\ninstall floppy /bin/false\n"
    assert mode(path) == 0o644
    assert mode(path.parent) == mode(path.parent.parent) == 0o755


def test_modprobe_schema():
    good = {"command": "blacklist", "modulename": "nouveau"}
    for filename in ("x", "a/b.conf", "../x.conf", ""):
        rejects("org.osbuild.modprobe", {"filename": filename, "commands": [good]})
    for command in ({"command": "options", "modulename": "x"},
                    {"command": "install", "modulename": "x"},
                    {"command": "blacklist", "modulename": "two words"},
                    {"command": "blacklist", "modulename": "x", "cmdline": "y"}):
        rejects("org.osbuild.modprobe", {"filename": "a.conf", "commands": [command]})
    rejects("org.osbuild.modprobe", {"filename": "a.conf", "commands": []})


def test_sysctld(tmp_path):
    options = {"filename": "50-router.conf", "config": [
        {"key": "net.ipv4.ip_forward", "value": "1"},
        {"key": "-kernel.unknown", "value": "2"},
        {"key": "-net.ipv4.conf.*.rp_filter"},
    ]}
    run("org.osbuild.sysctld", options, tmp_path)
    path = tmp_path / "tree/usr/lib/sysctl.d/50-router.conf"
    assert path.read_text() == (
        "net.ipv4.ip_forward=1\n-kernel.unknown=2\n-net.ipv4.conf.*.rp_filter\n"
    )
    assert mode(path) == 0o644


def test_sysctld_schema():
    for item in ({"key": "a.b"}, {"value": "1"}, {"key": "a.b", "value": 1},
                 {"key": "a b", "value": "1"}, {"key": "a", "value": "1\n2"}):
        rejects("org.osbuild.sysctld", {"filename": "a.conf", "config": [item]})
    rejects("org.osbuild.sysctld", {"filename": "a.txt", "config": [{"key": "a", "value": "1"}]})


def test_tmpfilesd(tmp_path):
    options = {"filename": "app.conf", "config": [
        {"type": "d", "path": "/var/lib/app", "mode": "0750", "user": "root",
         "group": "root", "age": "10d"},
        {"type": "L+", "path": "/etc/app.conf", "argument": "/usr/share/app/default conf"},
    ]}
    run("org.osbuild.tmpfilesd", options, tmp_path)
    tree = tmp_path / "tree"
    path = tree / "usr/lib/tmpfiles.d/app.conf"
    assert path.read_text() == (
        "d /var/lib/app 0750 root root 10d\n"
        "L+ /etc/app.conf - - - - /usr/share/app/default conf\n"
    )
    # systemd-tmpfiles, run offline on the tree, must read the file as meant.
    subprocess.run(["systemd-tmpfiles", f"--root={tree}", "--create"], check=True)
    assert mode(tree / "var/lib/app") == 0o750
    assert os.readlink(tree / "etc/app.conf") == "/usr/share/app/default conf"


def test_tmpfilesd_schema():
    for item in ({"type": "Y", "path": "/x"}, {"type": "d"}, {"type": "d", "path": "x"},
                 {"type": "d", "path": "/a b"}, {"type": "d", "path": "/x", "mode": "755"},
                 {"type": "d", "path": "/x", "user": "a b"}, {"type": "d", "path": "/x", "z": 1}):
        rejects("org.osbuild.tmpfilesd", {"filename": "a.conf", "config": [item]})
    rejects("org.osbuild.tmpfilesd", {"filename": "a.conf", "config": []})


# --- systemd.unit ---

DROPIN_CONFIG = {
    "Service": {
        "Restart": "on-failure",
        "Environment": [{"key": "A", "value": 'x "y" z'}, "B=2"],
        "ExecStart": ["", "/usr/bin/app --flag"],
        "RemainAfterExit": True,
    },
    "Unit": {"After": ["network-online.target", "local-fs.target"],
             "ConditionPathExists": "!/etc/app.disabled", "Description": "App"},
    "Install": {"WantedBy": "multi-user.target"},
}

DROPIN = """\
[Unit]
After=network-online.target
After=local-fs.target
ConditionPathExists=!/etc/app.disabled
Description=App

[Service]
Environment="A=x \\"y\\" z"
Environment="B=2"
ExecStart=
ExecStart=/usr/bin/app --flag
RemainAfterExit=yes
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def test_systemd_unit_dropin(tmp_path):
    options = {"unit": "app.service", "dropin": "10-osbuild.conf", "config": DROPIN_CONFIG}
    run("org.osbuild.systemd.unit", options, tmp_path)
    path = tmp_path / "tree/usr/lib/systemd/system/app.service.d/10-osbuild.conf"
    assert path.read_text() == DROPIN
    assert mode(path) == 0o644 and mode(path.parent) == 0o755
    # Key order in the options does not change the bytes (equal ids, equal trees).
    shuffled = {section: dict(reversed(list(keys.items())))
                for section, keys in reversed(list(DROPIN_CONFIG.items()))}
    run("org.osbuild.systemd.unit", {**options, "config": shuffled}, tmp_path)
    assert path.read_text() == DROPIN


def test_systemd_unit_global_and_string_environment(tmp_path):
    options = {"unit": "app@.timer", "dropin": "env.conf", "unit-type": "global",
               "config": {"Service": {"Environment": "A=1 B=2"}}}
    run("org.osbuild.systemd.unit", options, tmp_path)
    path = tmp_path / "tree/usr/lib/systemd/user/app@.timer.d/env.conf"
    assert path.read_text() == "[Service]\nEnvironment=A=1 B=2\n"


def test_config_stages_refuse_escaping_symlinks(tmp_path):
    escaping_link(tmp_path / "tree", "usr/lib")
    escaping_link(tmp_path / "tree", "etc")
    cases = [
        ("org.osbuild.modprobe", {"filename": "a.conf",
                                  "commands": [{"command": "blacklist", "modulename": "x"}]}),
        ("org.osbuild.sysctld", {"filename": "a.conf", "config": [{"key": "a", "value": "1"}]}),
        ("org.osbuild.tmpfilesd", {"filename": "a.conf", "config": [{"type": "d", "path": "/x"}]}),
        ("org.osbuild.systemd.unit", {"unit": "a.service", "dropin": "a.conf",
                                      "config": {"Unit": {"Description": "a"}}}),
        ("org.osbuild.kernel-cmdline", {"kernel_opts": "ro"}),
        ("org.osbuild.machine-id", {"first-boot": "yes"}),
    ]
    for name, options in cases:
        result = run(name, options, tmp_path, ok=False)
        assert any("outside" in line for line in result.tail), (name, result.tail)


def test_systemd_unit_schema():
    good = {"Unit": {"Description": "x"}}
    for unit in ("app", "app.conf", "a/b.service", ""):
        rejects("org.osbuild.systemd.unit", {"unit": unit, "dropin": "a.conf", "config": good})
    for config in ({}, {"Service": {"Bogus": "1"}}, {"Unit": {"Description": "a\nb"}},
                   {"Service": {"Environment": [{"key": "1A", "value": "x"}]}},
                   {"Service": {"Type": "forever"}}, {"Timer": {"OnBootSec": "1"}},
                   {"Service": {}}):
        rejects("org.osbuild.systemd.unit", {"unit": "a.service", "dropin": "a.conf",
                                             "config": config})
    rejects("org.osbuild.systemd.unit", {"unit": "a.service", "dropin": "a.txt", "config": good})
    rejects("org.osbuild.systemd.unit", {"unit": "a.service", "dropin": "a.conf", "config": good,
                                         "unit-type": "user"})
