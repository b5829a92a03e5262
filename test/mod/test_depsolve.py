"""The Debian depsolver against the real archive (the mirror of the host's apt sources)."""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from osbuild import depsolve
from osbuild.depsolve import DEFAULT_KEYRING, AptRoot, DepsolveError, RequestError

REMOVED_KEYS = Path("/usr/share/keyrings/debian-archive-removed-keys.gpg")


@pytest.fixture(scope="module")
def mirror() -> str:
    return depsolve.host_mirror()


@pytest.fixture(scope="module")
def trixie(mirror):
    """One updated trixie/amd64 apt root shared by the tests that only resolve."""
    with AptRoot(depsolve.repos_for("trixie", mirror, [DEFAULT_KEYRING], ["main"]),
                 "amd64") as root:
        yield root


@pytest.fixture(scope="module")
def solution(trixie):
    return trixie.solve(["hostname", "less"])


def apt_show(root: AptRoot, packages: list[dict]) -> dict[tuple[str, str], dict[str, str]]:
    """apt's own view of the chosen versions (an independent reading of the index)."""
    specs = [f"{p['name']}:{p['architecture']}={p['version']}" for p in packages]
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *specs],
                          env={"APT_CONFIG": str(root.config), "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, check=True)
    shown = {}
    for stanza in proc.stdout.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        shown[(fields["Package"], fields["Version"])] = fields
    return shown


def test_minbase_closure_order(solution):
    packages = solution.packages
    flags = [p["essential"] for p in packages]
    count = flags.count(True)
    assert 0 < count < len(flags) and flags == [True] * count + [False] * (len(flags) - count)
    essential, rest = solution.names()[:count], solution.names()[count:]
    assert essential == sorted(essential) and rest == sorted(rest)
    # Essential: yes packages and what they need (libc6) form the first phase
    assert {"dpkg", "base-files", "libc6", "hostname"} <= set(essential)
    # minbase adds apt and the Priority: required packages on top
    assert {"apt", "less"} <= set(rest)
    assert len(set(solution.names())) == len(packages)
    assert all(p["architecture"] in ("amd64", "all") for p in packages)


def test_hashes_match_the_index_and_the_pool(trixie, solution, mirror):
    shown = apt_show(trixie, solution.packages)
    assert len(shown) == len(solution.packages)
    for p in solution.packages:
        fields = shown[(p["name"], p["version"])]
        assert p["sha256"] == fields["SHA256"]
        assert p["size"] == int(fields["Size"])
        assert p["url"] == mirror.rstrip("/") + "/" + fields["Filename"].replace("+", "%2B")
    sources = solution.sources()
    assert list(sources) == [f"sha256:{p['sha256']}" for p in solution.packages]

    smallest = min(solution.packages, key=lambda p: p["size"])
    with urllib.request.urlopen(smallest["url"], timeout=60) as response:
        data = response.read()
    assert len(data) == smallest["size"]
    assert hashlib.sha256(data).hexdigest() == smallest["sha256"]
    assert data.startswith(b"!<arch>\ndebian-binary")


@pytest.mark.slow
def test_deterministic_across_fresh_roots(mirror):
    def run() -> str:
        result = depsolve.depsolve("trixie", "amd64", mirror, [DEFAULT_KEYRING], ["hostname"])
        return json.dumps(result.to_json(), indent=2)
    assert run() == run()


@pytest.mark.slow
def test_a_cache_keeps_the_lists_and_changes_nothing(mirror, tmp_path):
    """The second root with the same cache downloads no index, and resolves the same."""
    repos = depsolve.repos_for("trixie", mirror, [DEFAULT_KEYRING], ["main"])
    solved = []
    for _ in range(2):
        with AptRoot(repos, "amd64", cache=tmp_path) as root:
            solved.append(root.solve(["hostname"]).to_json())
            fetched = [line for line in root.update_output.splitlines()
                       if line.startswith("Get:") and "Packages" in line]
            own = root.config.parent / "var/lib/apt/lists"
            linked = [p for p in own.iterdir() if p.is_file() and p.stat().st_nlink == 2]
    [shared] = [p for p in (tmp_path / "apt-lists").iterdir() if p.is_dir()]
    assert any(p.name.endswith("_Packages") for p in shared.iterdir())
    assert fetched == [], f"the second update downloaded {fetched}"
    assert linked, "the root's lists are not the cache's"
    assert solved[0] == solved[1] == depsolve.depsolve(
        "trixie", "amd64", mirror, [DEFAULT_KEYRING], ["hostname"]).to_json()


def test_unknown_package(trixie):
    with pytest.raises(DepsolveError, match=r"^unknown package 'no-such-pkg' in trixie/amd64$"):
        trixie.solve(["hostname", "no-such-pkg"])


def test_exclude(trixie):
    with pytest.raises(DepsolveError, match=r"^cannot exclude 'dpkg': it is Essential: yes"):
        trixie.solve([], exclude=["dpkg"])
    with pytest.raises(DepsolveError,
                       match=r"^excluded package 'login.defs' is required anyway \(by .*login"):
        trixie.solve([], exclude=["login.defs"])
    with pytest.raises(RequestError, match="both requested and excluded"):
        trixie.solve(["less"], exclude=["less"])
    # a Priority: required package nothing depends on can go
    names = trixie.solve([], exclude=["tzdata"]).names()
    assert "tzdata" not in names and "apt" in names


def test_variants(trixie, solution):
    essential = trixie.solve([], variant="essential")
    assert all(p["essential"] for p in essential.packages)
    assert essential.names() == solution.essential()
    custom = trixie.solve(["less"], variant="custom")
    assert not any(p["essential"] for p in custom.packages)
    assert "less" in custom.names() and "dpkg" not in custom.names()
    with pytest.raises(RequestError, match="unknown variant"):
        trixie.solve([], variant="tiny")


def test_archive_errors(mirror, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(DepsolveError) as error:
        depsolve.depsolve("trixie", "amd64", mirror, [REMOVED_KEYS], ["hostname"])
    assert str(error.value).startswith(
        f"InRelease of trixie is not signed by the given keyring(s) {REMOVED_KEYS}")
    with pytest.raises(DepsolveError, match="keyring /nonexistent.gpg does not exist"):
        depsolve.depsolve("trixie", "amd64", mirror, [Path("/nonexistent.gpg")], [])
    with pytest.raises(DepsolveError, match="suite 'no-such-suite' not found"):
        depsolve.depsolve("no-such-suite", "amd64", mirror, [DEFAULT_KEYRING], [])
    with pytest.raises(DepsolveError, match="suite 'trixie' at .* has no component 'mian'"):
        depsolve.depsolve("trixie", "amd64", mirror, [DEFAULT_KEYRING], [], ["main", "mian"])
    assert list(tmp_path.iterdir()) == []  # the apt roots are gone, also after errors


def test_an_architecture_the_archive_lacks(mirror):
    for arch, foreign in (("s390", ()), ("amd64", ("no-such-arch",))):
        with pytest.raises(DepsolveError) as error:
            depsolve.depsolve("trixie", arch, mirror, [DEFAULT_KEYRING], [], foreign=foreign)
        wrong = foreign[0] if foreign else arch
        assert str(error.value) == f"architecture '{wrong}' is not in trixie at {mirror}"


def test_a_foreign_package_in_a_native_root(mirror):
    """A build root of the host's architecture that holds another one's GRUB EFI image."""
    result = depsolve.depsolve("trixie", "amd64", mirror, [DEFAULT_KEYRING],
                               ["grub-efi-arm64-bin:arm64"], variant="custom",
                               foreign=["arm64"])
    arches = {p["name"]: p["architecture"] for p in result.packages}
    assert arches["grub-efi-arm64-bin"] == "arm64"
    assert arches["grub-common"] == "amd64"  # Multi-Arch: foreign, so the native one serves


def test_bookworm(mirror):
    result = depsolve.depsolve("bookworm", "amd64", mirror, [DEFAULT_KEYRING],
                               ["systemd", "openssh-server"])
    by_name = {p["name"]: p for p in result.packages}
    assert by_name["libc6"]["version"].startswith("2.36-") and by_name["libc6"]["essential"]
    assert not by_name["systemd"]["essential"] and "openssh-server" in by_name
    assert all(p["url"].startswith(mirror.rstrip("/") + "/pool/main/") for p in result.packages)


def test_host_mirror(tmp_path):
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("# nothing here\n")
    (apt / "sources.list.d/a.list").write_text(
        "deb [signed-by=/k.gpg] http://third.example/repo nodistro main\n")
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: trixie-security\n"
        "Components: main\n\n"
        "Types: deb-src deb\nURIs: http://archive.example/debian\nSuites: trixie trixie-updates\n"
        "Components: main\n")
    assert depsolve.host_mirror(apt) == "http://archive.example/debian"
    (apt / "sources.list").write_text("deb http://old.example/debian bookworm main\n")
    assert depsolve.host_mirror(apt) == "http://old.example/debian"
    with pytest.raises(DepsolveError, match="no Debian mirror"):
        depsolve.host_mirror(tmp_path / "empty")


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "osbuild.depsolve", *args], input=stdin,
                          capture_output=True, text=True)


def test_cli_yaml_request(tmp_path):
    request = tmp_path / "request.yaml"
    request.write_text("suite: trixie\narchitecture: amd64\npackages: [less]\nvariant: apt\n")
    proc = cli(str(request))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    packages = out["packages"]
    assert "less" in [p["name"] for p in packages] and "apt" in [p["name"] for p in packages]
    assert out["sources"]["org.osbuild.curl"]["items"] == {
        f"sha256:{p['sha256']}": {"url": p["url"]} for p in packages}


@pytest.mark.parametrize("stdin,code,message", [
    ('{"suite": "trixie"}', 2, "request: 'architecture' is a required property"),
    ('{"suite": "trixie", "architecture": "amd64", "packages": ["-o"]}', 2,
     "packages/0: invalid value '-o'"),
    ('{"suite": "trixie", "architecture": "amd64", "colour": 1}', 2, "Additional properties"),
    ('{"suite": ', 2, "<stdin>: invalid JSON"),
    ('{"suite": "trixie", "architecture": "amd64", "packages": ["no-such-pkg"]}', 1,
     "unknown package 'no-such-pkg' in trixie/amd64"),
])
def test_cli_errors(stdin, code, message):
    proc = cli(stdin=stdin)
    assert proc.returncode == code and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("osbuild-depsolve-deb: error: ")
    assert message in lines[0]


def test_cli_cache_from_the_option_or_the_environment(tmp_path):
    request = tmp_path / "request.yaml"
    request.write_text("suite: trixie\narchitecture: amd64\npackages: [less]\n")
    proc = cli("--cache", str(tmp_path / "given"), str(request))
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "given/apt-lists").glob("*/*_Packages"))
    proc = subprocess.run([sys.executable, "-m", "osbuild.depsolve", str(request)],
                          capture_output=True, text=True,
                          env={**os.environ, depsolve.CACHE_ENV: str(tmp_path / "env")})
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "env/apt-lists").glob("*/*_Packages"))


def test_cli_usage_error():
    proc = cli("a.json", "b.json")
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr
