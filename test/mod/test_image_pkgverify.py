"""image-info --packages-verify: a tree's installed files against dpkg's records,
cross-checked with the host's `dpkg --root --verify` on the same tree."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from osbuild.image_info.pkgverify import parse_rpm_verify

ROOT = Path(__file__).resolve().parent.parent.parent
needs_rpm = pytest.mark.skipif(shutil.which("rpm") is None, reason="ci/setup installs rpm")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def write(root: Path, path: str, text: str) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


STANZA = """Package: {name}
Status: install ok installed
Priority: optional
Maintainer: Tester <t@example.org>
Architecture: {arch}
Version: 1.0-1
Description: a package for the test
"""


def make_tree(root: Path) -> None:
    """A merged-/usr tree with two packages, then changed the way images get changed."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    setting, readme = md5("setting=1\n"), md5("read me\n")
    status = STANZA.format(name="tool", arch="amd64") + (
        f"Conffiles:\n /etc/tool.conf {setting}\n /etc/old.conf 0123 obsolete\n\n")
    status += STANZA.format(name="docs", arch="all") + "\n"
    write(root, "var/lib/dpkg/status", status)
    files = {"bin/tool": "#!/bin/sh\n", "usr/share/tool/data": "data\n",
             "usr/bin/tool-helper": "helper\n"}
    write(root, "var/lib/dpkg/info/tool.md5sums",
          "".join(f"{md5(t)}  {p}\n" for p, t in files.items()))
    # An old package lists its files under /bin, which a merged /usr puts in /usr/bin.
    write(root, "var/lib/dpkg/info/tool.list",
          "/.\n/bin\n/bin/tool\n/usr/bin/tool-helper\n/usr/share/tool\n/usr/share/tool/data\n"
          "/etc/tool.conf\n")
    write(root, "var/lib/dpkg/info/docs.md5sums", f"{readme}  usr/share/doc/docs/README\n")
    write(root, "var/lib/dpkg/info/docs.list", "/.\n/usr/share/doc/docs/README\n")
    for path, text in files.items():
        write(root, path, text)
    write(root, "etc/tool.conf", "setting=1\n")
    # docs diverts tool-helper away; an alternative links /usr/bin/editor.
    write(root, "var/lib/dpkg/diversions", "/usr/bin/tool-helper\n"
          "/usr/bin/tool-helper.distrib\ndocs\n")
    os.rename(root / "usr/bin/tool-helper", root / "usr/bin/tool-helper.distrib")
    write(root, "usr/bin/tool-helper", "docs' helper\n")
    write(root, "var/lib/dpkg/alternatives/editor",
          "auto\n/usr/bin/editor\neditor.1.gz\n/usr/share/man/man1/editor.1.gz\n\n"
          "/usr/bin/tool\n50\n/usr/share/man/man1/tool.1.gz\n\n")
    (root / "usr/bin/editor").symlink_to("/etc/alternatives/editor")
    write(root, "etc/dpkg/dpkg.cfg.d/excludes", "path-exclude=/usr/share/doc/*\n")
    # What happened to the image since: one file edited, one removed, a conffile
    # changed, a stray file and link under /usr.
    write(root, "usr/bin/tool", "#!/bin/sh\necho changed\n")
    (root / "usr/share/tool/data").unlink()
    write(root, "etc/tool.conf", "setting=2\n")
    write(root, "usr/local/bin/stray", "by hand\n")
    (root / "usr/bin/stray-link").symlink_to("tool")


def test_packages_verify_agrees_with_dpkg_verify(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--packages-verify",
                           str(tree)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["packages-verify"]
    assert found == {
        "files-checked": 4, "files-filtered-out": 1,
        "changed": [{"package": "tool:amd64", "path": "/bin/tool"}],
        "missing": [{"package": "tool:amd64", "path": "/usr/share/tool/data"}],
        "conffiles-changed": [{"package": "tool:amd64", "path": "/etc/tool.conf"}],
        "conffiles-missing": [],
        "unowned-in-usr": ["/usr/bin/stray-link", "/usr/local/bin/stray"]}
    # dpkg's own verdict on the same tree (it does not apply the tree's path filters).
    dpkg = subprocess.run(["dpkg", f"--root={tree}", "--verify"], capture_output=True,
                          text=True)
    verdicts = {line.split()[-1]: line.split()[0] for line in dpkg.stdout.splitlines()}
    assert verdicts == {"/bin/tool": "??5??????", "/etc/tool.conf": "??5??????",
                        "/usr/share/tool/data": "missing",
                        "/usr/share/doc/docs/README": "missing"}, dpkg.stdout


def test_packages_verify_is_opt_in_and_needs_a_report(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    plain = subprocess.run([sys.executable, "-m", "osbuild.image_info", str(tree)],
                           capture_output=True, text=True, cwd=ROOT)
    assert "packages-verify" not in json.loads(plain.stdout)
    both = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--packages-verify",
                           "--sbom", "spdx", str(tree)], capture_output=True, text=True,
                          cwd=ROOT)
    assert both.returncode == 2 and "--packages-verify goes with" in both.stderr


@pytest.mark.slow
def test_packages_verify_through_libguestfs_reads_every_file(tmp_path: Path) -> None:
    """libguestfs copies out only what a report reads; --packages-verify needs all of it
    (else every installed file would look missing)."""
    tree = tmp_path / "tree"
    make_tree(tree)
    image = tmp_path / "tree.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image), "16M"], check=True)
    reports = []
    for target, backend in ((tree, "auto"), (image, "guestfs")):
        proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--packages-verify",
                               "--backend", backend, str(target)], capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        reports.append(json.loads(proc.stdout)["packages-verify"])
    assert reports[1] == reports[0]


SPEC = """\
Name: demo
Version: 1.0
Release: 1
Summary: a package for image-info's rpm -Va
License: MIT
BuildArch: noarch
%description
Three files, one of them a config file.
%install
mkdir -p %{buildroot}/usr/share/demo %{buildroot}/etc
echo hello > %{buildroot}/usr/share/demo/hello
echo data > %{buildroot}/usr/share/demo/data
echo setting=1 > %{buildroot}/etc/demo.conf
%files
/usr/share/demo/hello
/usr/share/demo/data
%config /etc/demo.conf
"""


@pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="ci/setup installs rpm")
def test_rpm_tree_is_verified_with_rpm_va(tmp_path: Path) -> None:
    """An rpm tree (no dpkg): its packages listed, and rpm -Va's verdict on its files."""
    top, tree = tmp_path / "rpmbuild", tmp_path / "tree"
    (top / "SPECS").mkdir(parents=True)
    (top / "SPECS/demo.spec").write_text(SPEC)
    subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(top / "SPECS/demo.spec")],
                   check=True, capture_output=True)
    [package] = (top / "RPMS/noarch").glob("demo-1.0-1*.rpm")
    rpm = ["rpm", "--root", str(tree), "--dbpath", "/var/lib/rpm"]
    tree.mkdir()
    subprocess.run([*rpm, "--initdb"], check=True)
    subprocess.run([*rpm, "-i", "--nodeps", "--noscripts", str(package)], check=True)
    write(tree, "usr/share/demo/hello", "changed\n")
    (tree / "usr/share/demo/data").unlink()
    write(tree, "etc/demo.conf", "setting=2\n")
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info", "--packages-verify",
                           str(tree)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["packages"] == [{"name": "demo", "version": "1.0-1", "arch": "noarch"}]
    found = report["packages-verify"]
    assert list(found) == ["rpm"]  # no dpkg database, no dpkg checks
    changed = {c["path"]: c for c in found["rpm"]["changed"]}
    assert sorted(changed) == ["/etc/demo.conf", "/usr/share/demo/hello"]
    assert changed["/etc/demo.conf"]["kind"] == "config"
    assert all("5" in c["attributes"] for c in changed.values())  # the digest differs
    assert found["rpm"]["missing"] == [{"path": "/usr/share/demo/data"}]


def image_info(*args: str | Path, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "osbuild.image_info", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env)


def test_deleted_conffile_is_reported_as_dpkg_does(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    (tree / "etc/tool.conf").unlink()
    proc = image_info("--packages-verify", tree)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["packages-verify"]
    assert found["conffiles-missing"] == [{"package": "tool:amd64", "path": "/etc/tool.conf"}]
    assert found["conffiles-changed"] == []
    dpkg = subprocess.run(["dpkg", f"--root={tree}", "--verify"], capture_output=True,
                          text=True)
    assert "missing   c /etc/tool.conf" in dpkg.stdout.splitlines()


def rpmdb(tree: Path) -> Path:
    """An empty rpmdb in the tree, made by the host's rpm."""
    subprocess.run(["rpm", "--root", str(tree), "--dbpath", "/var/lib/rpm", "--initdb"],
                   check=True)
    return tree / "var/lib/rpm"


@needs_rpm
def test_no_host_rpm_is_an_error_not_an_empty_answer(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    rpmdb(tree)
    empty = tmp_path / "bin"  # a PATH without rpm (image-info needs no tool for a tree)
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    proc = image_info("--packages-verify", tree, env=env)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["errors"] == [
        {"reader": "packages-rpm",
         "error": "rpm is not installed on this host (rpm -qa of the rpmdb in /var/lib/rpm)"},
        {"reader": "packages-verify",
         "error": "rpm is not installed on this host (rpm -Va of the rpmdb in /var/lib/rpm)"}]
    assert "rpm" not in report["packages-verify"]  # never an empty "nothing changed"
    assert report["packages-verify"]["changed"]  # what dpkg's records say is still there
    assert proc.stderr.splitlines()[-1] == (
        f"image-info: error: {tree}: --packages-verify could not read everything: "
        "rpm is not installed on this host (rpm -Va of the rpmdb in /var/lib/rpm)")
    # Not asked for: the report says so, a warning too, and the exit status stays 0.
    plain = image_info(tree, env=env)
    assert plain.returncode == 0, plain.stderr
    assert [e["reader"] for e in json.loads(plain.stdout)["errors"]] == ["packages-rpm"]
    assert "warning" in plain.stderr and "packages-rpm" in plain.stderr


@needs_rpm
def test_corrupt_rpmdb_is_an_error(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (rpmdb(tree) / "rpmdb.sqlite").write_bytes(b"not a database\n" * 512)
    plain = image_info(tree)
    assert plain.returncode == 0, plain.stderr
    report = json.loads(plain.stdout)
    assert "packages" not in report
    [error] = report["errors"]
    assert error["reader"] == "packages"
    assert error["error"].startswith("error: cannot open Packages database")
    assert error["error"].endswith("(rpm -qa of the rpmdb in /var/lib/rpm)")
    proc = image_info("--packages-verify", tree)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert "packages-verify" not in report
    assert [e["reader"] for e in report["errors"]] == ["packages", "packages-verify"]
    assert len(proc.stderr.splitlines()) == 2  # the warning for packages, the error line
    assert "--packages-verify could not read everything: error: cannot open" in proc.stderr


def test_rpm_verify_lines_it_cannot_read_are_kept() -> None:
    output = ("S.5....T.  c /etc/demo.conf\n"
              "missing     /usr/share/demo/data\n"
              "prelink: /usr/bin/demo: at least one of file's dependencies has changed\n"
              "\n"
              "..?......    /usr/share/demo/secret\n")
    found, unread = parse_rpm_verify(output)
    assert found == {
        "changed": [{"path": "/etc/demo.conf", "kind": "config", "attributes": "S.5....T."},
                    {"path": "/usr/share/demo/secret", "attributes": "..?......"}],
        "missing": [{"path": "/usr/share/demo/data"}]}
    assert unread == ["prelink: /usr/bin/demo: at least one of file's dependencies has changed"]


def test_unreadable_file_is_neither_missing_nor_changed(tmp_path: Path) -> None:
    """As a user who cannot read a file: a failure in the report, not "missing"."""
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))  # where another user may look
    try:
        base.chmod(0o755)
        tree = base / "tree"
        make_tree(tree)
        (tree / "bin/tool").chmod(0o600)
        (tree / "usr/local/bin").chmod(0o700)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "osbuild.image_info", "--packages-verify", str(tree)],
            capture_output=True, text=True, cwd=ROOT)
    finally:
        shutil.rmtree(base)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    found = report["packages-verify"]
    assert found["changed"] == [] and "/bin/tool" not in str(found["missing"])
    # Named as dpkg names it; the architecture reader could not read its ELF header either.
    assert {"reader": "packages-verify", "error": "/bin/tool: Permission denied"} \
        in report["errors"]
    assert {"reader": "architecture", "error": "/usr/bin/tool: Permission denied"} \
        in report["errors"]
    assert {"reader": "packages-verify", "error": "/usr/local/bin: Permission denied"} \
        in report["errors"]
