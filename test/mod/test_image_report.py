"""image-info's report tables (osbuild/image_info/report.py): a key is a reader and a row.

The readers themselves are tested on real images in test_image_info.py; here, what
the tables promise: each row is named once, opt-in rows run only when asked for,
and a new row's keys and errors reach the report in the table's order.
"""

import errno
import subprocess
from pathlib import Path
from typing import Any

import pytest
from imagemaker import mk

from osbuild.image_info import report
from osbuild.image_info.failures import CouldNotLook
from osbuild.image_info.treeview import Tree

STATUS = "Package: hello\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n"


def test_every_reader_has_one_name() -> None:
    names = [row.reader for row in report.TREE_READERS]
    names += [row.reader for row in (*report.DISK_READERS, *report.IMAGE_READERS)]
    assert len(names) == len(set(names))


def test_each_view_is_one_opt_in_row() -> None:
    # What --packages-verify and --sbom ask for, and the reader whose errors fail them.
    assert report.VIEWS == {"packages-verify": "packages-verify", "sbom": "sbom-packages"}


def test_opt_in_rows_run_only_when_asked_for(tmp_path: Path) -> None:
    mk.write(tmp_path, "var/lib/dpkg/status", STATUS)
    plain = report.tree_report(Tree(tmp_path))
    assert [p["name"] for p in plain["packages"]] == ["hello"]
    assert "packages-verify" not in plain and "sbom-packages" not in plain
    both = report.tree_report(Tree(tmp_path), frozenset({"packages-verify", "sbom"}))
    assert {k: v for k, v in both.items() if k not in ("packages-verify", "sbom-packages")} \
        == plain
    assert [p["name"] for p in both["sbom-packages"]] == ["hello"]
    assert "packages-verify" in both


def _motd(view: Tree) -> dict[str, Any]:
    """A new tree key: the message of the day, and a failure of each kind to report."""
    view.note_failure("etc/motd.d", PermissionError(errno.EACCES, "Permission denied"))
    text = view.read_text("etc/motd")
    raise CouldNotLook(["motd-tool is not installed"], {"motd": text})


def test_a_tree_key_is_a_reader_and_a_row(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "TREE_READERS", (*report.TREE_READERS, report.Row("motd", _motd)))
    mk.write(tmp_path, "etc/motd", "hello\n")
    mk.write(tmp_path, "etc/firewalld/firewalld.conf", "DefaultZone=public\n")
    mk.write(tmp_path, "etc/firewalld/zones/public.xml", "<zone>\n")
    found = report.tree_report(Tree(tmp_path))
    assert found["motd"] == "hello\n"
    # The table's order: the firewall row comes before the new one.
    assert [e["reader"] for e in found["errors"]] == ["firewall-enabled", "motd", "motd"]
    assert found["errors"][1:] == [
        {"reader": "motd", "error": "motd-tool is not installed"},
        {"reader": "motd", "error": "/etc/motd.d: Permission denied"}]


def test_a_disk_key_is_a_reader_and_a_row(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare FAT file system: nothing to mount, so no backend and no root needed."""
    image = tmp_path / "fat.img"
    subprocess.run(["mkfs.fat", "-C", str(image), "1024"], check=True, capture_output=True)

    def sectors(disk: report.Image) -> dict[str, Any]:
        return {"sectors": disk.raw.stat().st_size // 512}

    def broken(disk: report.Image) -> dict[str, Any]:
        raise CouldNotLook([f"cannot judge {disk.found['filesystem']['fstype']}"])

    monkeypatch.setattr(report, "DISK_READERS", (*report.DISK_READERS,
                                                 report.Row("sectors", sectors)))
    monkeypatch.setattr(report, "IMAGE_READERS", (report.Row("judge", broken),
                                                  *report.IMAGE_READERS))
    with report.released() as stack:
        found, view = report.image_report(image, None, "auto", stack)
    assert view is None
    assert found["filesystem"]["fstype"] == "vfat" and found["bootloader"] == "unknown"
    assert found["sectors"] == 2048
    assert found["errors"] == [{"reader": "judge", "error": "cannot judge vfat"}]
