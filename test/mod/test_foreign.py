"""A foreign tree's call-outs and stand-ins (osbuild/toolkit/foreign.py, callserver.py): no
call can hang the stage, and only the tree's own versions of the programs run natively.

Real stand-ins (foreign.standin_script, run by /bin/sh) talk to a real serving
thread through real FIFOs. The thread runs in a child Python, bounded by a timeout, so
that a regression that hangs fails the test instead of holding the suite; test_debian.py
in test/stages/ has the call-outs' normal work.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from osbuild.toolkit import foreign

ROOT = Path(__file__).resolve().parents[2]
BOUND = 60  # seconds: a hang guard, never a speed assertion
# The tree's deb-systemd-helper: its arguments, one per line between brackets, and the
# exit status its first argument asks for.
TREE_SCRIPT = ('#!/usr/bin/perl\nprint map { "[$_]\\n" } @ARGV;\n'
               'exit($ARGV[0] =~ /^exit(\\d+)$/ ? $1 : 0);\n')
PRELUDE = """
import json, os, signal, subprocess, sys, time
from osbuild.toolkit import callserver
tree, native, results = sys.argv[1], sys.argv[2], open(sys.argv[3], "a")

def result(*values):
    results.write(json.dumps(values) + "\\n")
    results.flush()

def call(*argv):
    r = subprocess.run(argv, capture_output=True, text=True, errors="surrogateescape",
                       timeout=30)
    result(r.returncode, r.stdout, r.stderr)

with callserver.serving(tree, native, ["deb-systemd-helper"]):
"""


def serve(tmp_path: Path, body: str, variants: dict[str, str] | None = None
          ) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    """Run `body` (Python, with call(*argv), tree and native) while a child process serves
    deb-systemd-helper; `variants` are stand-ins edited from the real one (old -> new text),
    written beside it. The child's result and each call's [status, stdout, stderr]."""
    tree, native = tmp_path / "tree", tmp_path / "native"
    (tree / "usr/bin").mkdir(parents=True)
    native.mkdir()
    (tree / "usr/bin/deb-systemd-helper").write_text(TREE_SCRIPT)
    standin = foreign.standin_script("deb-systemd-helper", str(native))
    for name, edit in (variants or {}).items():
        old, new = edit.split(" -> ")
        assert standin.count(old) == 1, (old, standin)
        (native / name).write_text(standin.replace(old, new))
        (native / name).chmod(0o755)
    code = PRELUDE + textwrap.indent(textwrap.dedent(body), "    ")
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-c", code, str(tree), str(native), str(results)],
                          cwd=ROOT, capture_output=True, text=True, timeout=BOUND)
    assert results.exists(), proc.stderr
    return proc, [json.loads(line) for line in results.read_text().splitlines()]


def failed_in_one_line(proc: subprocess.CompletedProcess[str], start: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {start}"), proc.stderr
    return proc.stderr


def test_any_argument_reaches_the_program_and_each_call_its_own_status(tmp_path: Path) -> None:
    """Newlines, empty arguments, spaces and non-UTF-8 bytes: nothing garbles a request."""
    proc, results = serve(tmp_path, """
        standin = native + "/deb-systemd-helper"
        call(standin, "exit3", "a\\nb", "", "c d")
        call(standin, "exit0", os.fsdecode(b"\\xff\\n"), "\\n")
        call(standin)
        call(standin, "exit5")
    """)
    assert proc.returncode == 0, proc.stderr
    assert results == [[3, "[exit3]\n[a\nb]\n[]\n[c d]\n", ""],
                       [0, "[exit0]\n[\udcff\n]\n[\n]\n", ""],
                       [0, "", ""],
                       [5, "[exit5]\n", ""]]
    assert sorted(p.name for p in (tmp_path / "native").iterdir()) == [
        "deb-systemd-helper", "requests"]


def test_a_malformed_request_fails_its_caller_and_the_stage(tmp_path: Path) -> None:
    """A request that does not add up is answered with a failure (the call after it is
    served), and the stage ends with one line saying what was wrong."""
    proc, results = serve(tmp_path, """
        call(native + "/miscounted", "enable", "x")
        call(native + "/deb-systemd-helper", "exit4")
    """, {"miscounted": '"$#" "$@" -> "$(($# + 1))" "$@"'})
    assert [r[0] for r in results] == [1, 4]
    assert "osbuild: a malformed call-out request from pid" in results[0][2]
    line = failed_in_one_line(proc, "a malformed call-out request from pid ")
    assert line.endswith(": it counts '3' arguments and has 2\n"), line


def test_a_garbled_notice_answers_every_waiting_caller(tmp_path: Path) -> None:
    """A notice that names no caller: every caller waiting for a status gets a failure."""
    proc, results = serve(tmp_path, """
        call(native + "/garbled", "enable", "x")
    """, {"garbled": 'echo "$$" > -> echo "pid $$" >'})
    assert [r[0] for r in results] == [1]
    failed_in_one_line(proc, "a garbled call-out notice 'pid ")


def test_a_caller_gone_before_its_status_fails_the_stage(tmp_path: Path) -> None:
    """The caller holds its reply FIFO open from before it asks: without a reader, it is
    gone, and its status (which dpkg would have acted on) is lost: the stage fails."""
    proc, results = serve(tmp_path, """
        call(native + "/gone", "exit0", "x\\ny")
    """, {"gone": 'echo "$$" > -> exec 3<&-; echo "$$" >'})
    assert results[0][0] != 0  # it waits for nothing: read on a closed descriptor fails
    failed_in_one_line(proc, "the exit status of a call-out (deb-systemd-helper exit0 x\\ny) "
                             "was lost: its caller, pid ")
    assert "is gone" in proc.stderr


def test_a_caller_that_reads_its_status_late_still_gets_it(tmp_path: Path) -> None:
    """The status waits in the caller's FIFO for as long as the caller takes to read it
    (it stops itself after asking, until the stage has answered)."""
    proc, results = serve(tmp_path, """
        p = subprocess.Popen([native + "/paused", "exit6"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        reply, deadline = f"{native}/reply.{p.pid}", time.monotonic() + 30
        def state():
            with open(f"/proc/{p.pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0]
        while (state() != "T" or os.path.exists(reply)) and time.monotonic() < deadline:
            time.sleep(0.05)
        answered = not os.path.exists(reply)
        os.kill(p.pid, signal.SIGCONT)
        try:
            out, err = p.communicate(timeout=30)
        finally:
            p.kill()  # a caller left waiting: not past the test
        result(p.returncode, out, err, answered)
    """, {"paused": 'read -r status -> kill -STOP $$; read -r status'})
    assert proc.returncode == 0, proc.stderr
    assert results == [[6, "[exit6]\n", "", True]]


def test_request_parsing_names_what_is_wrong() -> None:
    env = [""] * len(foreign.PASSED_ENV)
    good = ["7", "deb-systemd-helper", "0027", "=pkg", *env[1:], "2", "a\nb", ""]
    data = "".join(f"{f}\0" for f in good).encode()
    assert foreign.parse_request(data, 7) == foreign.Request(
        "deb-systemd-helper", 0o027, {"DPKG_MAINTSCRIPT_PACKAGE": "pkg"}, ["a\nb", ""])
    for bad, reason in ((data + b"x", "does not end with a NUL"), (b"", "it is empty"),
                        (data.replace(b"7\0", b"8\0", 1), "it names pid '8'"),
                        (data.replace(b"deb-systemd-helper", b"rm"), "no call-out 'rm'"),
                        (data.replace(b"0027", b"9"), "umask '9'"),
                        (data.replace(b"=pkg", b"pkg"), "does not start with '='"),
                        (b"7\0deb-systemd-helper\0", "2 fields")):
        with pytest.raises(ValueError, match=reason):
            foreign.parse_request(bad, 7)


# -- the stand-ins of depmod and systemd-hwdb: only with the tree's versions ---------------


def host_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "--showformat=${Version}", package],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """depmod and systemd-hwdb on PATH (the build root's programs, as far as which() goes),
    each shipped by a package installed here (their real packages may not be)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in foreign.STANDINS:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(foreign, "STANDINS", {
        "depmod": foreign.STANDINS["depmod"]._replace(package="dpkg"),
        "systemd-hwdb": foreign.STANDINS["systemd-hwdb"]._replace(package="coreutils")})
    native = tmp_path / "native"
    native.mkdir()
    return native


def test_standins_only_where_the_build_root_has_the_trees_version(
        programs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dpkg, coreutils = host_version("dpkg"), host_version("coreutils")
    assert foreign.native_standins(str(programs), {"dpkg": dpkg, "coreutils": coreutils}) == [
        "depmod", "systemd-hwdb"]
    for name in ("depmod", "systemd-hwdb"):
        (programs / name).unlink()
    # A newer udev in the tree than in the build root: its own systemd-hwdb runs, emulated.
    assert foreign.native_standins(str(programs), {"dpkg": dpkg,
                                                  "coreutils": coreutils + "+b1"}) == ["depmod"]
    assert sorted(p.name for p in programs.iterdir()) == ["depmod"]
    assert capsys.readouterr().out == (
        f"systemd-hwdb: the build root's coreutils {coreutils} is not the tree's "
        f"{coreutils}+b1: the tree's own runs, emulated\n")
    # A tree without the package has no script that calls it.
    assert foreign.native_standins(str(programs), {"coreutils": coreutils}) == ["systemd-hwdb"]


def test_standins_need_the_package_in_the_build_root(programs: Path) -> None:
    assert not foreign.same_as_build_root({"no-such-package": "1.0"}, ["no-such-package"])
    assert foreign.same_as_build_root({}, [])


@pytest.mark.parametrize("name", list(foreign.STANDINS))
def test_standins_name_the_package_that_ships_the_program(name: str) -> None:
    if shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        pytest.skip(f"{name} is not installed here to ask dpkg about")
    found = subprocess.run(["dpkg", "-S", f"bin/{name}"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    owners = {line.partition(": ")[0] for line in found if line.endswith(f"bin/{name}")}
    assert foreign.STANDINS[name].package in owners


# -- the switch: org.osbuild.debs' native_helpers ------------------------------------------


def test_the_debs_stage_has_a_switch_for_the_native_helpers() -> None:
    meta = json.loads((ROOT / "stages/org.osbuild.debs.meta.json").read_text())
    validator = jsonschema.Draft202012Validator({"type": "object", **meta["schema"]})
    for options in ({}, {"native_helpers": False}, {"native_helpers": True}):
        validator.validate(options)
    assert not validator.is_valid({"native_helpers": "no"})
    assert "native_helpers" in " ".join(meta["description"])
