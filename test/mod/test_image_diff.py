"""image-info --diff: two reports compared path by path, lists matched by their items."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from imagemaker import mk

from osbuild.image_info.diff import diff, render

ROOT = Path(__file__).resolve().parent.parent.parent

REPORT = {
    "hostname": "one",
    "packages": [{"name": "bash", "version": "5.2-1", "arch": "amd64"},
                 {"name": "libc6", "version": "2.41-12", "arch": "amd64"},
                 {"name": "libc6", "version": "2.41-12", "arch": "i386"}],
    "partitions": [{"number": 1, "size": 1048576, "fstype": "vfat"},
                   {"number": 2, "size": 2097152, "fstype": "ext4"}],
    "services-enabled": ["cron.service", "ssh.service"],
    "fstab": [["UUID=1", "/", "ext4", "defaults", "0", "1"]],
    "esp": [{"files": ["a", "b"]}],
    "architecture": {"elf": ["x86_64"]},
}


def changed(**kw: object) -> dict:
    return json.loads(json.dumps({**REPORT, **kw}))


def test_the_same_report_has_no_differences() -> None:
    assert diff(REPORT, json.loads(json.dumps(REPORT))) == []
    assert render([]) == "no differences\n"


def test_packages_are_matched_by_name_and_architecture_not_by_place() -> None:
    new = changed(packages=[{"name": "apt", "version": "3.0", "arch": "amd64"},
                            {"name": "bash", "version": "5.2-1", "arch": "amd64"},
                            {"name": "libc6", "version": "2.41-13", "arch": "amd64"}])
    assert diff(REPORT, new) == [
        {"path": "packages[apt:amd64]", "change": "added",
         "new": {"name": "apt", "version": "3.0", "arch": "amd64"}},
        {"path": "packages[libc6:amd64].version", "change": "changed",
         "old": "2.41-12", "new": "2.41-13"},
        {"path": "packages[libc6:i386]", "change": "removed",
         "old": {"name": "libc6", "version": "2.41-12", "arch": "i386"}}]


def test_strings_and_rows_are_items_and_order_alone_is_one_change() -> None:
    new = changed(**{"services-enabled": ["ssh.service", "systemd-networkd.service"],
                     "fstab": [["UUID=1", "/", "ext4", "noatime", "0", "1"]],
                     "architecture": {"elf": ["x86_64"]}})
    assert render(diff(REPORT, new)).splitlines() == [
        '- fstab[UUID=1 / ext4 defaults 0 1]: ["UUID=1", "/", "ext4", "defaults", "0", "1"]',
        '+ fstab[UUID=1 / ext4 noatime 0 1]: ["UUID=1", "/", "ext4", "noatime", "0", "1"]',
        '- services-enabled[cron.service]: "cron.service"',
        '+ services-enabled[systemd-networkd.service]: "systemd-networkd.service"']
    reordered = changed(**{"services-enabled": ["ssh.service", "cron.service"]})
    assert diff(REPORT, reordered) == [
        {"path": "services-enabled", "change": "changed",
         "old": ["cron.service", "ssh.service"], "new": ["ssh.service", "cron.service"]}]


def test_partitions_by_number_keys_and_types() -> None:
    new = changed(partitions=[{"number": 2, "size": 4194304, "fstype": "ext4"}], hostname=None)
    del new["esp"]
    new["image-format"] = {"type": "raw"}
    assert render(diff(REPORT, new)).splitlines() == [
        '- esp: [{"files": ["a", "b"]}]',
        '~ hostname: "one" -> null',
        '+ image-format: {"type": "raw"}',
        '- partitions[1]: {"fstype": "vfat", "number": 1, "size": 1048576}',
        "~ partitions[2].size: 2097152 -> 4194304"]
    # Items without a name of their own are compared place by place.
    files = changed(esp=[{"files": ["a", "c"]}, {"files": []}])
    assert diff(REPORT, files) == [
        {"path": "esp[0].files[b]", "change": "removed", "old": "b"},
        {"path": "esp[0].files[c]", "change": "added", "new": "c"},
        {"path": "esp[1]", "change": "added", "new": {"files": []}}]


def image_info(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "osbuild.image_info", *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_diff_of_two_trees_shows_the_hostname_change_alone(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    mk.populate_tree(one)
    mk.populate_tree(two)
    (two / "etc/hostname").write_text("other\n")
    proc = image_info("--diff", str(one), str(two))
    assert proc.returncode == 0, proc.stderr
    old = json.loads(image_info(str(one)).stdout)["hostname"]
    assert proc.stdout == f'~ hostname: "{old}" -> "other"\n'
    # A report written before is as good as the tree it came from, and --json says the same.
    report = tmp_path / "one.json"
    report.write_text(image_info(str(one)).stdout)
    as_json = image_info("--diff", str(report), str(two), "--json")
    assert json.loads(as_json.stdout) == {"changes": [
        {"path": "hostname", "change": "changed", "old": old, "new": "other"}]}
    assert image_info("--diff", str(report), str(one)).stdout == "no differences\n"


def test_diff_refuses_a_json_file_that_is_no_report_and_bad_usage(tmp_path: Path) -> None:
    mk.populate_tree(tmp_path / "tree")
    (tmp_path / "bad.json").write_text("[1, 2]\n")
    (tmp_path / "garbled.json").write_text("{")
    for name, reason in (("bad.json", "not a JSON object"), ("garbled.json", "Expecting")):
        proc = image_info("--diff", str(tmp_path / name), str(tmp_path / "tree"))
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"image-info: error: {tmp_path / name}: not a report "
                                      f"of image-info: {reason}"), proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
    for args in ((), ("--json", str(tmp_path / "tree")),
                 (str(tmp_path / "tree"), "--diff", str(tmp_path), str(tmp_path))):
        proc = image_info(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, args


# --- --files: the trees' files ---------------------------------------------------------


def two_trees(tmp_path: Path) -> tuple[Path, Path]:
    """A tree and its change: hostname rewritten, a file made executable, one added, one
    removed, a link given another target."""
    one, two = tmp_path / "one", tmp_path / "two"
    for tree in (one, two):
        mk.populate_tree(tree)
        mk.write(tree, "usr/bin/tool", "#!/bin/sh\n")
        mk.write(tree, "etc/gone", "x\n")
        mk.link(tree, "usr/bin/runner", "tool")
    (two / "etc/hostname").write_text("other\n")
    (two / "usr/bin/tool").chmod(0o755)
    mk.write(two, "etc/motd", "hello\n", mode=0o600)
    (two / "etc/gone").unlink()
    (two / "usr/bin/runner").unlink()
    mk.link(two, "usr/bin/runner", "/usr/bin/tool")
    return one, two


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_files(one: Path, two: Path, uid: int = 0) -> dict:
    return {"added_files": ["/etc/motd"], "deleted_files": ["/etc/gone"], "differences": {
        "/etc/hostname": {"content": [sha(one / "etc/hostname"), sha(two / "etc/hostname")]},
        "/etc/motd": {"mode": [None, 0o100600], "uid": [None, uid], "gid": [None, uid],
                      "content": [None, sha(two / "etc/motd")]},
        "/usr/bin/runner": {"symlink": ["tool", "/usr/bin/tool"]},
        "/usr/bin/tool": {"mode": [0o100644, 0o100755]}}}


def test_files_of_two_trees_added_removed_and_changed(tmp_path: Path) -> None:
    one, two = two_trees(tmp_path)
    proc = image_info("--diff", str(one), str(two), "--files", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [c["path"] for c in doc["changes"]] == ["hostname"]
    assert doc["files"] == expected_files(one, two, os.getuid())
    text = image_info("--diff", str(one), str(two), "--files").stdout.splitlines()
    assert text[1:] == [
        "files:",
        "- /etc/gone",
        f"~ /etc/hostname: content {sha(one / 'etc/hostname')[:12]} -> "
        f"{sha(two / 'etc/hostname')[:12]}",
        f"+ /etc/motd: mode 100600, uid {os.getuid()}, gid {os.getuid()}, "
        f"content {sha(two / 'etc/motd')[:12]}",
        "~ /usr/bin/runner: symlink tool -> /usr/bin/tool",
        "~ /usr/bin/tool: mode 100644 -> 100755"]
    same = image_info("--diff", str(one), str(one), "--files")
    assert same.stdout == "no differences\nfiles:\nno differences\n"


def test_files_of_tarballs_come_from_their_headers(tmp_path: Path) -> None:
    """Owners and modes as the archive holds them, which an extraction without root loses."""
    one, two = two_trees(tmp_path)
    tar = ["tar", "--numeric-owner", "--owner=0", "--group=0", "--xattrs", "--xattrs-include=*"]
    tars = [tmp_path / "one.tar.gz", tmp_path / "two.tar"]
    subprocess.run([*tar, "-czf", str(tars[0]), "-C", str(one), "."], check=True)
    # The second tree, its /etc/hostname given to another owner.
    subprocess.run([*tar, "-cf", str(tars[1]), "-C", str(two), "--exclude=./etc/hostname", "."],
                   check=True)
    subprocess.run([*tar, "--owner=1000", "-rf", str(tars[1]), "-C", str(two),
                    "./etc/hostname"], check=True)
    proc = image_info("--diff", *map(str, tars), "--files", "--json")
    assert proc.returncode == 0, proc.stderr
    want = expected_files(one, two)
    want["differences"]["/etc/hostname"]["uid"] = [0, 1000]
    assert json.loads(proc.stdout)["files"] == want
    # A tarball against the tree it was made of: only what tar changed (owners).
    mixed = json.loads(image_info("--diff", str(tars[0]), str(one), "--files", "--json").stdout)
    assert mixed["files"]["added_files"] == mixed["files"]["deleted_files"] == []
    assert all(set(d) <= {"uid", "gid"} for d in mixed["files"]["differences"].values())


@pytest.mark.skipif(os.geteuid() != 0, reason="image files are read through loop devices")
def test_files_of_two_images_through_loop_devices(tmp_path: Path) -> None:
    one, two = two_trees(tmp_path)
    images = []
    for tree in (one, two):
        image = tmp_path / f"{tree.name}.ext4"
        subprocess.run(["mkfs.ext4", "-q", "-E", "root_owner=0:0", "-d", str(tree), str(image),
                        "8M"], check=True)
        images.append(image)
    proc = image_info("--diff", *map(str, images), "--files", "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["files"]
    assert "/lost+found" not in found["added_files"] + found["deleted_files"]
    assert found == expected_files(one, two)
    assert str(tmp_path) not in subprocess.run(["losetup", "-a"], capture_output=True,
                                               text=True).stdout


def test_files_refuses_reports_and_the_guestfs_backend(tmp_path: Path) -> None:
    one, two = two_trees(tmp_path)
    report = tmp_path / "one.json"
    report.write_text(image_info(str(one)).stdout)
    image = tmp_path / "one.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(one), str(image), "8M"], check=True)
    for args, reason in (
            ((str(report), str(two)), f"{report}: a report has no files to compare"),
            ((str(image), str(two), "--backend", "guestfs"),
             f"{image}: --files reads an image's tree through loop devices")):
        proc = image_info("--diff", *args, "--files")
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.startswith(f"image-info: error: {reason}"), proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    assert image_info(str(one), "--files").returncode == 2
