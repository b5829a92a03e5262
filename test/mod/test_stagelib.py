"""osbuild.toolkit.stagelib, called directly: paths inside a tree, files, directories, URLs.

The stage tests cover the helpers through real stages; these pin down the edge
cases every stage relies on without a sandbox: escapes, symlink loops, replacing
rather than writing through, exact modes whatever the umask.
"""

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from osbuild.toolkit import stagelib
from osbuild.toolkit.stagelib import locate, make_dirs, split_url, tree_path, write_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A tree with a sibling directory "outside" that nothing may ever reach."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("host\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    return tree


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that would spoil every mode that is not set explicitly."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def fails(capsys: pytest.CaptureFixture[str], func: Callable[..., Any], *args: Any,
          **kwargs: Any) -> str:
    """Call `func`, expect the one-line osbuild.api.fail() exit, return its message."""
    with pytest.raises(SystemExit) as exit_info:
        func(*args, **kwargs)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def untouched(tmp_path: Path) -> bool:
    return [p.name for p in (tmp_path / "outside").iterdir()] == ["secret"] and \
        (tmp_path / "outside/secret").read_text() == "host\n"


# --- tree_path ---------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("/etc/x", "etc/x"),
    ("etc/x", "etc/x"),
    ("//etc/./x/", "etc/x"),
    ("/a/../etc", "etc"),
    ("/", ""),
    ("", ""),
])
def test_tree_path_plain_paths(root: Path, path: str, expected: str) -> None:
    assert tree_path(str(root), path) == (f"{root}/{expected}" if expected else str(root))


@pytest.mark.parametrize("path", ["..", "../outside/secret", "/a/../../x", "a/b/../../../x"])
def test_tree_path_refuses_dotdot_above_the_root(root: Path, capsys, path: str) -> None:
    err = fails(capsys, tree_path, str(root), path)
    assert f"{path} leads outside of {root}" in err


def test_absolute_symlinks_restart_at_the_tree_root(root: Path, tmp_path: Path) -> None:
    (root / "etc").symlink_to("/usr/etc")
    # A link naming the host path of a file outside still means a path in the tree.
    (root / "host").symlink_to(str(tmp_path / "outside/secret"))
    assert tree_path(str(root), "/etc/x") == f"{root}/usr/etc/x"
    assert tree_path(str(root), "/host") == f"{root}{tmp_path}/outside/secret"


def test_relative_symlinks_and_chains(root: Path) -> None:
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/os-release").write_text("x")
    (root / "usr/lib/current").symlink_to("../lib/./os-release")
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../lib/current")
    assert tree_path(str(root), "/etc/os-release") == f"{root}/usr/lib/os-release"


def test_dangling_symlinks_are_followed_to_what_to_create(root: Path) -> None:
    (root / "x").symlink_to("/a/b")
    assert tree_path(str(root), "/x") == f"{root}/a/b"
    assert tree_path(str(root), "/x/c") == f"{root}/a/b/c"


def test_follow_false_keeps_only_the_last_symlink(root: Path) -> None:
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("/usr/lib")
    (root / "usr/lib/link").symlink_to("/elsewhere")
    assert tree_path(str(root), "/lib/link", follow=False) == f"{root}/usr/lib/link"
    assert tree_path(str(root), "/lib/link") == f"{root}/elsewhere"


@pytest.mark.parametrize("target", ["../../outside/secret", "../" * 20 + "etc", "/../etc"])
def test_symlinks_that_climb_out_are_refused(root: Path, capsys, target: str) -> None:
    (root / "d").mkdir()
    (root / "d/esc").symlink_to(target)
    assert "leads outside of" in fails(capsys, tree_path, str(root), "/d/esc/x")
    # Also as the last component: the stage would read or write what it names.
    assert "leads outside of" in fails(capsys, tree_path, str(root), "/d/esc")


def test_symlink_loops_end_with_an_error(root: Path, capsys) -> None:
    (root / "self").symlink_to("self")
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("/a")
    for path in ("/self", "/a/x", "/b"):
        assert f"{path}: too many levels of symbolic links" in fails(
            capsys, tree_path, str(root), path)


def test_the_symlink_limit_is_the_kernels(root: Path, capsys) -> None:
    (root / "f").write_text("f")
    for n in range(stagelib.MAX_SYMLINKS + 1):
        (root / f"l{n}").symlink_to(f"l{n - 1}" if n else "f")
    last = stagelib.MAX_SYMLINKS - 1
    assert tree_path(str(root), f"/l{last}") == f"{root}/f"  # 40 hops
    assert "too many levels" in fails(capsys, tree_path, str(root), f"/l{last + 1}")


# --- make_dirs ---------------------------------------------------------------


def test_make_dirs_modes_ignore_the_umask(root: Path, strict_umask: None) -> None:
    assert make_dirs(str(root), "/a/b/c") == f"{root}/a/b/c"
    assert mode(root / "a") == mode(root / "a/b") == mode(root / "a/b/c") == 0o755
    make_dirs(str(root), "/p/q", mode=0o1777)
    assert mode(root / "p") == mode(root / "p/q") == 0o1777


def test_make_dirs_keeps_existing_directories(root: Path) -> None:
    (root / "a").mkdir(mode=0o700)
    (root / "a").chmod(0o700)
    make_dirs(str(root), "/a/b")
    assert mode(root / "a") == 0o700
    assert mode(root / "a/b") == 0o755
    assert make_dirs(str(root), "/a/b") == f"{root}/a/b"  # nothing left to do is fine


def test_make_dirs_follows_symlinks_inside_the_tree(root: Path) -> None:
    (root / "var").symlink_to("/srv/var")
    make_dirs(str(root), "/var/lib/app")
    assert (root / "srv/var/lib/app").is_dir()
    assert (root / "var").is_symlink()


def test_make_dirs_refuses_escapes_before_creating_anything(root: Path, tmp_path: Path,
                                                            capsys) -> None:
    (root / "esc").symlink_to("../outside")
    assert "leads outside" in fails(capsys, make_dirs, str(root), "/esc/new/dir")
    assert "leads outside" in fails(capsys, make_dirs, str(root), "/a/../../outside/new")
    assert untouched(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["esc"]


def test_make_dirs_refuses_a_file_in_the_way(root: Path, capsys) -> None:
    (root / "f").write_text("f")
    assert f"{root}/f exists and is not a directory" in fails(capsys, make_dirs, str(root),
                                                              "/f/d")
    assert (root / "f").read_text() == "f"


# --- write_file --------------------------------------------------------------


def test_write_file_content_and_exact_modes(root: Path, strict_umask: None) -> None:
    path = write_file(str(root), "/etc/app/app.conf", "a=1\n")
    assert path == f"{root}/etc/app/app.conf"
    assert (root / "etc/app/app.conf").read_text() == "a=1\n"
    assert mode(root / "etc/app/app.conf") == 0o644
    assert mode(root / "etc") == mode(root / "etc/app") == 0o755
    for file_mode in (0o600, 0o444, 0o4755):
        write_file(str(root), "/usr/bin/tool", "#!/bin/sh\n", mode=file_mode)
        assert mode(root / "usr/bin/tool") == file_mode
    assert (root / "usr/bin/tool").read_text() == "#!/bin/sh\n"


def test_write_file_replaces_a_symlink_instead_of_writing_through(root: Path,
                                                                  tmp_path: Path) -> None:
    (root / "etc").mkdir()
    (root / "usr").mkdir()
    (root / "usr/packaged").write_text("from a package\n")
    (root / "etc/inside").symlink_to("/usr/packaged")
    (root / "etc/relative").symlink_to("../../outside/secret")
    (root / "etc/host").symlink_to(str(tmp_path / "outside/secret"))
    (root / "etc/dangling").symlink_to("/nowhere/file")
    for name in ("inside", "relative", "host", "dangling"):
        write_file(str(root), f"/etc/{name}", f"{name}\n")
        assert not (root / "etc" / name).is_symlink()
        assert (root / "etc" / name).read_text() == f"{name}\n"
    assert (root / "usr/packaged").read_text() == "from a package\n"
    assert untouched(tmp_path)
    assert not (root / "nowhere").exists()


def test_write_file_replaces_a_hard_link_instead_of_writing_through(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/conf").write_text("old\n")
    os.link(root / "etc/conf", root / "etc/other-name")
    write_file(str(root), "/etc/conf", "new\n")
    assert (root / "etc/conf").read_text() == "new\n"
    assert (root / "etc/other-name").read_text() == "old\n"
    assert (root / "etc/other-name").stat().st_nlink == 1


def test_write_file_goes_through_parent_symlinks_inside_the_tree(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/kernel").symlink_to("/usr/lib/kernel")
    write_file(str(root), "/etc/kernel/cmdline", "ro\n")
    assert (root / "usr/lib/kernel/cmdline").read_text() == "ro\n"
    assert (root / "etc/kernel").is_symlink()


def test_write_file_refuses_escaping_parents(root: Path, tmp_path: Path, capsys) -> None:
    (root / "etc").symlink_to("../outside")
    assert "/etc/secret leads outside of" in fails(capsys, write_file, str(root),
                                                   "/etc/secret", "x")
    assert untouched(tmp_path)


def test_write_file_refuses_what_is_not_a_file(root: Path, capsys) -> None:
    (root / "etc/dir").mkdir(parents=True)
    assert "/etc/dir is a directory in the tree" in fails(capsys, write_file, str(root),
                                                          "/etc/dir", "x")
    for path in ("/etc/", "/etc/..", "/etc/.", ""):
        assert "is not a file name" in fails(capsys, write_file, str(root), path, "x")
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["dir"]


def test_write_file_with_a_file_in_the_way(root: Path, capsys) -> None:
    (root / "etc").write_text("not a directory")
    assert "exists and is not a directory" in fails(capsys, write_file, str(root),
                                                    "/etc/hostname", "h\n")


# --- split_url and locate ----------------------------------------------------


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Any]:
    for name in ("tree", "boot", "input"):
        (tmp_path / name).mkdir()
    return {
        "tree": str(tmp_path / "tree"),
        "mounts": {"boot": {"path": str(tmp_path / "boot")}},
        "inputs": {"tree": {"path": str(tmp_path / "input")}},
        # As in real arguments; devices are no place for files, so device:// is no URL.
        "devices": {"boot": {"path": "/dev/null"}},
    }


def test_split_url_forms(places: dict[str, Any]) -> None:
    tree, boot, src = (places["tree"], places["mounts"]["boot"]["path"],
                       places["inputs"]["tree"]["path"])
    assert split_url("/etc/x", places) == (tree, "/etc/x")
    assert split_url("etc/x", places) == (tree, "etc/x")
    assert split_url("tree:///etc/x", places) == (tree, "/etc/x")
    assert split_url("mount://boot/efi/EFI", places) == (boot, "efi/EFI")
    assert split_url("mount://boot/", places) == (boot, "")
    assert split_url("input://tree/", places) == (src, "")


def test_locate_resolves_in_the_right_root(places: dict[str, Any]) -> None:
    boot = places["mounts"]["boot"]["path"]
    os.symlink("/efi", os.path.join(boot, "EFI"))  # absolute: the mount's root, not the tree's
    assert locate("mount://boot/EFI/BOOT", places) == f"{boot}/efi/BOOT"
    assert locate("mount://boot/EFI", places, follow=False) == f"{boot}/EFI"
    assert locate("tree:///a/b", places) == f"{places['tree']}/a/b"
    assert locate("input://tree/", places) == places["inputs"]["tree"]["path"]


@pytest.mark.parametrize(("url", "message"), [
    ("mount://root/x", "mount://root/x: the stage has no mount named 'root'"),
    ("input://nope/", "input://nope/: the stage has no input named 'nope'"),
    ("device://boot/x", "the stage has no device named 'boot'"),
    ("ftp://host/x", "the stage has no ftp named 'host'"),
    ("mount://boot/../x", "leads outside of"),
    ("input://tree/../../x", "leads outside of"),
])
def test_locate_errors(places: dict[str, Any], capsys, url: str, message: str) -> None:
    assert message in fails(capsys, locate, url, places)


def test_a_stage_reaches_only_the_places_it_passes(places: dict[str, Any], capsys) -> None:
    # mkdir and ln pass no inputs: an input:// URL must fail, not resolve.
    mounts_only = {"tree": places["tree"], "mounts": places["mounts"]}
    assert "no input named 'tree'" in fails(capsys, locate, "input://tree/x", mounts_only)
    assert "no mount named 'boot'" in fails(capsys, locate, "mount://boot/x",
                                            {"tree": places["tree"]})


# --- the module itself -------------------------------------------------------


def test_stagelib_needs_nothing_but_the_stdlib() -> None:
    # -S: no site-packages, as on a bare build root; the stage sandbox has only the libdir.
    code = ("import sys, osbuild.toolkit.stagelib; "
            "known = {*sys.stdlib_module_names, '__main__'}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} - known))")
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['osbuild']"
