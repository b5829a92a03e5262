"""The derived views of the golden cases see what they claim to, and the goldens say it.

Fast (nothing is built): the views (casekit.dpkg_view, debconf_view,
failure_view) read made-up trees and outputs here, and the committed goldens
of the debs, debconf and error cases are checked against casedefs and
against a wrong result, which must fail them.
"""

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import casekit  # noqa: E402
from casedefs import stage_cases  # noqa: E402

STATUS = """\
Package: tool
Status: install ok installed
Priority: required
Essential: yes
Architecture: arm64
Multi-Arch: foreign
Version: 1.0-1
Conffiles:
 /etc/tool.conf 0123456789abcdef0123456789abcdef
 /etc/tool.d/x.conf 0123456789abcdef0123456789abcdef
Description: a tool
 more words

Package: half
Status: install ok half-configured
Architecture: all
Version: 2.0
"""
CONFIG_DAT = """\
Name: golden/answer
Template: golden/answer
Value: forty-two
Owners: golden
Flags: seen

Name: debconf/frontend
Template: debconf/frontend
Value: Dialog
Owners: debconf
Variables:
 x = y
"""


def case(name: str) -> casekit.Case:
    return next(c for c in casekit.discover() if c.name == name)


def run_with(name: str, documents: dict[str, Any]) -> casekit.CaseRun:
    return casekit.CaseRun(case(name), documents, cached=False, seconds=0.0)


def committed(name: str) -> dict[str, Any]:
    """The case's goldens as a run that matches them would produce them."""
    return {golden: json.loads((case(name).path / golden).read_text())
            for golden in casekit.GOLDENS if (case(name).path / golden).exists()}


def test_dpkg_view_keeps_stable_fields_conffiles_and_commands(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg/info").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    (tmp_path / "var/lib/dpkg/info/tool.list").write_text(
        "/.\n/usr\n/usr/bin\n/usr/bin/tool\n/usr/sbin/gone\n/usr/bin/sub/not-a-command\n"
        "/usr/share/doc/tool/copyright\n/bin/legacy\n")
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/tool").write_text("")
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "usr/bin/legacy").symlink_to("tool")
    assert casekit.dpkg_view(tmp_path) == {
        "packages": {
            "half:all": {"Status": "install ok half-configured"},
            "tool:arm64": {"Status": "install ok installed", "Essential": "yes",
                           "Priority": "required", "Multi-Arch": "foreign"}},
        "conffiles": ["/etc/tool.conf", "/etc/tool.d/x.conf"],
        "commands": ["/bin/legacy", "/usr/bin/tool", "/usr/sbin/gone"],
        "missing": ["/usr/sbin/gone"]}
    assert casekit.dpkg_view(tmp_path / "usr") is None


def test_debconf_view_reads_each_questions_answer(tmp_path: Path) -> None:
    (tmp_path / "var/cache/debconf").mkdir(parents=True)
    (tmp_path / "var/cache/debconf/config.dat").write_text(CONFIG_DAT)
    assert casekit.debconf_view(tmp_path) == {"questions": {
        "debconf/frontend": {"Value": "Dialog", "Owners": "debconf"},
        "golden/answer": {"Value": "forty-two", "Owners": "golden", "Flags": "seen"}}}
    assert casekit.debconf_view(tmp_path / "var") is None


def test_failure_view_records_the_error_and_what_was_committed(tmp_path: Path) -> None:
    result = {"success": False, "pipelines": {"tree": {"stages": [
        {"id": "a" * 64, "type": "org.osbuild.mkdir", "success": True},
        {"id": "b" * 64, "type": "org.osbuild.error", "success": False}]}}}
    proc = subprocess.CompletedProcess(
        [], 1, json.dumps(result),
        "osbuild: error: stage org.osbuild.error (bbbbbbbbbbbb) in pipeline 'tree' failed\n"
        "noise\n    org.osbuild.error: exiting\n")
    view = casekit.failure_view(proc, tmp_path / "store", tmp_path / "out/tree")
    assert view == {"exit": 1, "errors": [
        "osbuild: error: stage org.osbuild.error in pipeline 'tree' failed",
        "    org.osbuild.error: exiting"],
        "stages": [["org.osbuild.mkdir", True], ["org.osbuild.error", False]],
        "committed": False, "exported": False}
    (tmp_path / "store/objects" / ("b" * 64)).mkdir(parents=True)
    (tmp_path / "out/tree").mkdir(parents=True)
    view = casekit.failure_view(proc, tmp_path / "store", tmp_path / "out/tree")
    assert view["committed"] is True and view["exported"] is True


def test_debconf_golden_holds_every_preseeded_answer() -> None:
    """The golden says what casedefs asked for: each question's value, marked seen."""
    selections = stage_cases()["org.osbuild.debconf"]["stages"][0]["options"]["selections"]
    questions = committed("org.osbuild.debconf")["debconf.json"]["questions"]
    for item in selections:
        assert questions[item["question"]]["Value"] == item["value"], item
        assert questions[item["question"]]["Flags"] == "seen", item
        assert questions[item["question"]]["Owners"] == item["package"], item


def test_a_wrong_debconf_answer_fails_the_case() -> None:
    documents = committed("org.osbuild.debconf")
    assert casekit.problems(run_with("org.osbuild.debconf", documents)) == []
    wrong = copy.deepcopy(documents)
    wrong["debconf.json"]["questions"]["tzdata/Areas"]["Value"] = "America"
    assert casekit.problems(run_with("org.osbuild.debconf", wrong)) == [
        'debconf.json: questions.tzdata/Areas.Value: expected "Europe" but got "America"']


def test_debs_golden_installs_the_pinned_set_whole() -> None:
    documents = committed("org.osbuild.debs")
    names = set(documents["packages.json"]["packages"])
    view = documents["dpkg.json"]
    assert {key.split(":")[0] for key in view["packages"]} == names
    assert {p["Status"] for p in view["packages"].values()} == {"install ok installed"}
    assert view["missing"] == [] and "/usr/bin/dpkg" in view["commands"]


def test_a_package_missing_from_the_debs_tree_fails_the_case() -> None:
    documents = committed("org.osbuild.debs")
    assert casekit.problems(run_with("org.osbuild.debs", documents)) == []
    gone = copy.deepcopy(documents)
    del gone["packages.json"]["packages"]["debconf"]
    del gone["dpkg.json"]["packages"]["debconf:all"]
    found = casekit.problems(run_with("org.osbuild.debs", gone))
    assert "packages.json: packages.debconf: missing (expected any value)" in found
    assert any(line.startswith("dpkg.json: packages.debconf:all: missing") for line in found)
    unconfigured = copy.deepcopy(documents)
    unconfigured["dpkg.json"]["packages"]["dpkg:amd64"]["Status"] = "install ok unpacked"
    assert casekit.problems(run_with("org.osbuild.debs", unconfigured)) != []


def test_error_golden_records_the_failure_and_that_nothing_was_kept() -> None:
    returncode = stage_cases()["org.osbuild.error"]["stages"][0]["options"]["returncode"]
    assert returncode != 0
    failure = committed("org.osbuild.error")["failure.json"]
    assert failure["exit"] != 0
    assert failure["errors"][0].endswith(f"failed with exit status {returncode}")
    assert failure["stages"][-1] == ["org.osbuild.error", False]
    assert failure["committed"] is False and failure["exported"] is False
    documents = committed("org.osbuild.error")
    assert casekit.problems(run_with("org.osbuild.error", documents)) == []
    kept = copy.deepcopy(documents)
    kept["failure.json"]["committed"] = True
    assert casekit.problems(run_with("org.osbuild.error", kept)) == [
        "failure.json: committed: expected false but got true"]
    del documents["failure.json"]  # b built after all
    assert casekit.problems(run_with("org.osbuild.error", documents)) == [
        "failure.json: the golden exists but the case produced none"]
