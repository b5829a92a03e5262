"""image-info --diff: two reports compared path by path, lists matched by their items."""

import json
import subprocess
import sys
from pathlib import Path

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
