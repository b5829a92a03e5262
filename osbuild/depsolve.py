"""Resolve a Debian package set to pinned .debs, with apt itself.

A pinned manifest names every .deb by the sha256 from the archive's signed
Packages index. Writing those by hand is hopeless, so this module asks apt:
it builds a throwaway apt root (own sources, lists, cache, an empty dpkg
status; never the host's apt state or /etc), runs `apt-get update` there so
apt verifies InRelease with exactly the given keyrings, and resolves an
install into an empty system. The package set follows mmdebstrap's variants;
the essential closure (what mmdebstrap unpacks before dpkg can run) is
resolved on its own first, so the install stage can put it down first.

osbuild-depsolve-deb [REQUEST]   REQUEST is JSON or YAML (a file, or stdin):
  {suite, architecture, foreign-architectures?, mirror?, keyrings?, components?,
   packages?, exclude?, variant?, extra-repos?}
A package of a foreign architecture is named name:arch (a build root that holds
another architecture's GRUB EFI image, for instance).
prints {"sources": {"org.osbuild.curl": {"items": ...}}, "packages": [...]}.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import cli
from .errors import OsbuildError

PROG = "osbuild-depsolve-deb"
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
HOST_APT = Path("/etc/apt")
# The default of --cache (osbuild-depsolve-deb, osbuild-mpp): where apt's lists are kept.
CACHE_ENV = "OSBUILD_DEPSOLVE_CACHE"

# Suite names that mark a host apt entry as "the Debian archive" when picking a
# default mirror (skips -security, -updates and third-party repositories).
DEBIAN_SUITES = {
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
    "oldoldstable", "oldstable", "stable", "testing", "unstable",
}

# mmdebstrap's variants beyond the essential set: (priorities, extra packages).
# None means the variant has no essential set at all ("custom").
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]] | None] = {
    "custom": None,
    "essential": ((), ()),
    "apt": ((), ("apt",)),
    "required": (("required",), ("apt",)),
    "minbase": (("required",), ("apt",)),
    "buildd": (("required",), ("apt", "build-essential")),
    "important": (("required", "important"), ("apt",)),
    "debootstrap": (("required", "important"), ("apt",)),
    "-": (("required", "important"), ("apt",)),
    "standard": (("required", "important", "standard"), ("apt",)),
}

_PACKAGE = r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+|/[A-Za-z0-9.-]+)?$"
_WORD = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
_REPO = {
    "mirror": {"type": "string", "pattern": r"^(https?|file)://\S+$"},
    "keyrings": {"type": "array", "items": {"type": "string", "pattern": r"^\S+$"}},
    "suite": {"type": "string", "pattern": _WORD},
    "components": {"type": "array", "minItems": 1,
                   "items": {"type": "string", "pattern": _WORD}},
}
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["suite", "architecture"],
    "properties": {
        **_REPO,
        "architecture": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9-]*$"},
        "foreign-architectures": {"type": "array", "uniqueItems": True,
                                  "items": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9-]*$"}},
        "packages": {"type": "array", "items": {"type": "string", "pattern": _PACKAGE}},
        "exclude": {"type": "array", "items": {"type": "string", "pattern": _PACKAGE}},
        "variant": {"enum": list(VARIANTS)},
        "extra-repos": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": False,
                      "required": ["suite"], "properties": _REPO},
        },
    },
}


class DepsolveError(OsbuildError):
    """apt could not resolve the request, or the archive is not trustworthy."""


class RequestError(DepsolveError):
    """The request itself is malformed."""

    exit_code = 2


@dataclass(frozen=True)
class Repo:
    """One `deb` line of the throwaway apt root."""

    mirror: str
    suite: str
    components: tuple[str, ...] = ("main",)
    keyrings: tuple[Path, ...] = (DEFAULT_KEYRING,)

    def line(self) -> str:
        signed_by = ",".join(str(k) for k in self.keyrings)
        return f"deb [signed-by={signed_by}] {self.mirror} {self.suite} {' '.join(self.components)}"


@dataclass
class Solution:
    """The resolved closure, in install order: essential closure first, then by name."""

    suite: str
    architecture: str
    packages: list[dict[str, Any]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [p["name"] for p in self.packages]

    def essential(self) -> list[str]:
        return [p["name"] for p in self.packages if p["essential"]]

    def sources(self) -> dict[str, dict[str, str]]:
        """org.osbuild.curl items: checksum -> {"url": pool URL}."""
        return {f"sha256:{p['sha256']}": {"url": p["url"]} for p in self.packages}

    def references(self) -> dict[str, dict[str, Any]]:
        """org.osbuild.files input references, in install order."""
        return {
            f"sha256:{p['sha256']}": {
                "metadata": {"name": p["name"], "version": p["version"],
                             "essential": p["essential"]}
            }
            for p in self.packages
        }

    def to_json(self) -> dict[str, Any]:
        return {"sources": {"org.osbuild.curl": {"items": self.sources()}},
                "packages": self.packages}


def parse_deb822(text: str, keys: Iterable[str]) -> Iterator[dict[str, str]]:
    """Yield each paragraph's wanted fields, keys lowercased (first line only)."""
    pattern = re.compile(rf"^({'|'.join(map(re.escape, keys))}):(.*)$", re.M | re.I)
    for paragraph in text.split("\n\n"):
        if fields := {k.lower(): v.strip() for k, v in pattern.findall(paragraph)}:
            yield fields


def _package_name(spec: str) -> str:
    return re.split(r"[:=/]", spec, maxsplit=1)[0]


class AptRoot:
    """A private apt configuration and state under a temp dir (a context manager).

    `Dir` points every apt path (etc, lists, cache, dpkg status) into the temp
    dir and APT_CONFIG is read before anything else, so no file of the host's
    apt configuration is read and nothing of its state is touched.

    With a `cache` directory, `apt-get update` runs against lists kept there (one
    directory per repository set, architectures and keyrings, under its own lock),
    so an unchanged archive costs one InRelease check instead of every Packages
    index; the root gets links to those lists (apt replaces a list by renaming,
    so a later update elsewhere never changes what this root reads).
    """

    def __init__(self, repos: Sequence[Repo], architecture: str, foreign: Sequence[str] = (),
                 cache: Path | None = None):
        if not repos:
            raise RequestError("no repository given")
        self.repos = list(repos)
        self.architecture = architecture
        self.foreign = [a for a in foreign if a != architecture]
        self.cache = cache
        self.update_output = ""  # what apt-get update said
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._index: dict[tuple[str, str, str], tuple[dict[str, str], str]] | None = None
        self._essential_closure: list[tuple[str, str, str]] | None = None
        self.config = Path()  # the apt.conf that APT_CONFIG names, once entered

    def __enter__(self) -> "AptRoot":
        for repo in self.repos:
            for keyring in repo.keyrings:
                if not keyring.is_file():
                    raise DepsolveError(f"keyring {keyring} does not exist")
        self._tmp = tempfile.TemporaryDirectory(prefix="osbuild-depsolve-")
        try:
            self._setup(Path(self._tmp.name))
            self._update()
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp:
            self._tmp.cleanup()

    def _setup(self, root: Path) -> None:
        for d in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/trusted.gpg.d",
                  "etc/apt/sources.list.d", "var/lib/apt/lists/partial",
                  "var/cache/apt/archives/partial", "var/lib/dpkg", "var/log/apt"):
            (root / d).mkdir(parents=True)
        (root / "var/lib/dpkg/status").touch()
        (root / "etc/apt/sources.list").write_text("".join(r.line() + "\n" for r in self.repos))
        self.config = root / "apt.conf"
        self.config.write_text(
            f'Dir "{root}/";\n'
            f'APT::Architecture "{self.architecture}";\n'
            f'APT::Architectures "{",".join([self.architecture, *self.foreign])}";\n'
            # apt counts itself as essential unless told not to; the variants decide.
            'pkgCacheGen::ForceEssential ",";\n'
            'APT::Install-Recommends "false";\n'
            'APT::Get::AllowUnauthenticated "false";\n'
            'Acquire::AllowInsecureRepositories "false";\n'
            'Acquire::Languages "none";\n'
            'Acquire::GzipIndexes "false";\n'
            # keyrings and the temp dir need not be readable by the _apt user
            'APT::Sandbox::User "root";\n'
        )

    def apt(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "LC_ALL": "C.UTF-8", "APT_CONFIG": str(self.config)}
        return subprocess.run(["apt-get", "-q", *args], env=env, capture_output=True,
                              text=True, check=False)

    def _cached_lists(self) -> Path:
        """This root's directory in the cache: named by everything apt's lists depend on."""
        assert self.cache is not None
        keyrings = sorted({k for r in self.repos for k in r.keyrings})
        identity = json.dumps({
            "sources": [r.line() for r in self.repos],
            "architectures": [self.architecture, *self.foreign],
            "keyrings": {str(k): hashlib.sha256(k.read_bytes()).hexdigest() for k in keyrings},
        }, sort_keys=True)
        return self.cache / "apt-lists" / hashlib.sha256(identity.encode()).hexdigest()[:32]

    def _update(self) -> None:
        if self.cache is None:
            proc = self.apt("update")
        else:
            shared = self._cached_lists()
            (shared / "partial").mkdir(parents=True, exist_ok=True)
            with open(shared.parent / f"{shared.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                proc = self.apt("update", "-o", f"Dir::State::lists={shared}/")
                if proc.returncode == 0:
                    _link_files(shared, self.config.parent / "var/lib/apt/lists")
        output = self.update_output = proc.stdout + proc.stderr
        # a missing component is only a warning to apt, but would pin a smaller world
        if proc.returncode != 0 or re.search(r"^(E: |W: Skipping acquire)", output, re.M):
            raise DepsolveError(self._update_error(output))
        listed = self.apt("indextargets", "--format", "$(FILENAME)\t$(ARCHITECTURE)",
                          "Identifier: Packages").stdout.splitlines()
        fetched = {arch for filename, _, arch in (line.partition("\t") for line in listed)
                   if Path(filename).is_file()}
        for arch in [self.architecture, *self.foreign]:
            if arch not in fetched:
                main = self.repos[0]
                raise DepsolveError(f"architecture '{arch}' is not in {main.suite} at "
                                    f"{main.mirror}")
        if not self._targets():
            raise DepsolveError("apt-get update fetched no Packages index "
                                f"(components {', '.join(self.repos[0].components)})")

    def _update_error(self, output: str) -> str:
        lines = output.splitlines()
        for repo in self.repos:
            release = re.compile(rf" {re.escape(repo.suite)} (In)?Release\b")
            mine = [line for line in lines if release.search(line)]
            if any("NO_PUBKEY" in line or "is not signed" in line for line in mine):
                keyrings = ", ".join(str(k) for k in repo.keyrings)
                return (f"InRelease of {repo.suite} is not signed by the given keyring(s) "
                        f"{keyrings} (at {repo.mirror})")
            if any("does not have a Release file" in line for line in mine):
                return f"suite {repo.suite!r} not found at {repo.mirror}"
            for line in mine:
                if m := re.search(r"doesn't have the component '([^']+)'", line):
                    return f"suite {repo.suite!r} at {repo.mirror} has no component {m[1]!r}"
        errors = [line[3:] for line in lines if line.startswith(("E: ", "W: "))]
        return "apt-get update failed: " + (errors[0] if errors else "no output")

    def _targets(self) -> list[tuple[Path, str, bool]]:
        """(Packages file, repository URI, trusted) of every fetched index, in source order."""
        proc = self.apt("indextargets", "--format", "$(FILENAME)\t$(REPO_URI)\t$(TRUSTED)",
                        "Identifier: Packages")
        targets = []
        for line in proc.stdout.splitlines():
            filename, uri, trusted = line.split("\t")
            if Path(filename).is_file():
                targets.append((Path(filename), uri, trusted == "yes"))
        return targets

    def index(self) -> dict[tuple[str, str, str], tuple[dict[str, str], str]]:
        """(name, version, arch) -> (Packages fields, repository URI); first repository wins."""
        if self._index is None:
            keys = ("Package", "Version", "Architecture", "Filename", "SHA256", "Size",
                    "Essential", "Priority", "Depends", "Pre-Depends")
            index: dict[tuple[str, str, str], tuple[dict[str, str], str]] = {}
            for path, uri, trusted in self._targets():
                if not trusted:
                    raise DepsolveError(f"the index {path.name} is not trusted")
                for f in parse_deb822(path.read_text(), keys):
                    index.setdefault((f["package"], f["version"], f["architecture"]), (f, uri))
            self._index = index
        return self._index

    def names_where(self, key: str, values: Iterable[str]) -> set[str]:
        """Names of packages with a field among values (Essential: yes, a Priority)."""
        wanted = set(values)
        return {f["package"] for f, _ in self.index().values() if f.get(key) in wanted}

    def essential_closure(self) -> list[tuple[str, str, str]]:
        """The Essential: yes packages and what they need: what goes down before dpkg runs."""
        if self._essential_closure is None:
            self._essential_closure = self.simulate(sorted(self.names_where("essential",
                                                                            ["yes"])))
        return self._essential_closure

    def simulate(self, packages: Sequence[str]) -> list[tuple[str, str, str]]:
        """(name, version, arch) of everything apt would install into an empty system."""
        # --print-uris resolves like an install but skips the costly ordering of -s
        proc = self.apt("install", "--print-uris", "--no-install-recommends", "--", *packages)
        if proc.returncode != 0:
            raise DepsolveError(self._install_error(proc.stdout + proc.stderr))
        chosen = []
        for line in proc.stdout.splitlines():
            if line.startswith("'"):
                # 'URL' name_version_arch.deb size hash, the version's ':' as %3a
                stem = urllib.parse.unquote(line.split()[1]).removesuffix(".deb")
                name, version, arch = stem.split("_")
                chosen.append((name, version, arch))
        return chosen

    def _install_error(self, output: str) -> str:
        where = f"{self.repos[0].suite}/{self.architecture}"
        if m := re.search(r"^E: Unable to locate package (\S+)", output, re.M):
            return f"unknown package '{m.group(1)}' in {where}"
        if m := re.search(r"^E: Package '(\S+)' has no installation candidate", output, re.M):
            return f"package '{m.group(1)}' has no installation candidate in {where}"
        unmet = re.findall(r"^ (\S+ : \S*Depends: .*)$", output, re.M)
        if unmet:
            return f"unresolvable in {where}: " + "; ".join(" ".join(u.split()) for u in unmet)
        errors = [line[3:] for line in output.splitlines() if line.startswith("E: ")]
        return f"apt cannot resolve the request in {where}: " + (errors[0] if errors else "?")

    def solve(self, packages: Sequence[str] = (), exclude: Sequence[str] = (),
              variant: str = "minbase") -> Solution:
        if variant not in VARIANTS:
            raise RequestError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
        excluded = set(exclude)
        if clash := sorted(excluded & {_package_name(p) for p in packages}):
            raise RequestError(f"package '{clash[0]}' is both requested and excluded")
        index = self.index()
        spec = VARIANTS[variant]
        essential: list[str] = []
        seeds: list[str] = []
        if spec is not None:
            priorities, extra = spec
            if clash := sorted(excluded & self.names_where("essential", ["yes"])):
                raise DepsolveError(f"cannot exclude '{clash[0]}': it is Essential: yes in "
                                    f"{self.repos[0].suite}")
            essential = [name for name, _, _ in self.essential_closure()]
            seeds = sorted((self.names_where("priority", priorities) | set(extra)) - excluded)
        chosen = []
        for key in self.simulate(essential + seeds + list(packages)):
            if key not in index or not index[key][0].get("sha256"):
                raise DepsolveError(f"apt chose {key[0]} {key[1]} ({key[2]}), which no "
                                    "Packages index lists with a SHA256")
            chosen.append(index[key])
        if clash := sorted(excluded & {f["package"] for f, _ in chosen}):
            raise DepsolveError(f"excluded package '{clash[0]}' is required anyway"
                                + _needed_by(clash[0], [f for f, _ in chosen]))
        in_essential = set(essential)
        chosen.sort(key=lambda item: (item[0]["package"] not in in_essential, item[0]["package"]))
        return Solution(self.repos[0].suite, self.architecture, [
            {
                "name": f["package"],
                "version": f["version"],
                "architecture": f["architecture"],
                "url": uri.rstrip("/") + "/" + urllib.parse.quote(f["filename"], safe="/~"),
                "sha256": f["sha256"],
                "size": int(f["size"]),
                "essential": f["package"] in in_essential,
            }
            for f, uri in chosen
        ])


def _link_files(source: Path, target: Path) -> None:
    """Every regular file directly in `source` linked (else copied) into `target`."""
    for path in source.iterdir():
        if path.is_file() and path.name != "lock":
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)


def _needed_by(name: str, closure: list[dict[str, str]]) -> str:
    """' (by a, b)': the packages in the closure that name `name` in their dependencies."""
    mention = re.compile(rf"(^|[\s,|]){re.escape(name)}([\s,:(|]|$)")
    users = sorted(f["package"] for f in closure
                   if any(mention.search(f.get(k, "")) for k in ("depends", "pre-depends")))
    if not users:
        return ""
    more = f" and {len(users) - 5} more" if len(users) > 5 else ""
    return f" (by {', '.join(users[:5])}{more})"


def repos_for(suite: str, mirror: str, keyrings: Sequence[Path], components: Sequence[str],
              extra_repos: Iterable[dict[str, Any]] = ()) -> list[Repo]:
    """The main repository plus extras, which default to its mirror, components, keyrings."""
    main = Repo(mirror, suite, tuple(components), tuple(Path(k).absolute() for k in keyrings))
    repos = [main]
    for extra in extra_repos:
        repos.append(Repo(
            extra.get("mirror", main.mirror), extra["suite"],
            tuple(extra.get("components", main.components)),
            tuple(Path(k).absolute() for k in extra.get("keyrings", main.keyrings)),
        ))
    return repos


def depsolve(suite: str, architecture: str, mirror: str, keyrings: Sequence[Path],
             packages: Sequence[str], components: Sequence[str] = ("main",),
             exclude: Sequence[str] = (), variant: str = "minbase",
             extra_repos: Iterable[dict[str, Any]] = (),
             foreign: Sequence[str] = (), cache: Path | None = None) -> Solution:
    """Resolve `variant` plus `packages` for one suite in a fresh apt root."""
    repos = repos_for(suite, mirror, keyrings, components, extra_repos)
    with AptRoot(repos, architecture, foreign, cache) as root:
        return root.solve(packages, exclude, variant)


def host_mirror(apt_dir: Path = HOST_APT) -> str:
    """The first `deb` URI of a Debian suite in the host's apt sources."""
    entries: list[tuple[list[str], list[str], list[str]]] = []  # (types, uris, suites)
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3:
                    entries.append(([words[0]], [words[1]], [words[2]]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for f in parse_deb822(path.read_text(), ("Types", "URIs", "Suites", "Enabled")):
            if f.get("enabled", "yes") != "no" and "uris" in f:
                entries.append((f.get("types", "").split(), f["uris"].split(),
                                f.get("suites", "").split()))
    for types, uris, suites in entries:
        if "deb" in types and DEBIAN_SUITES & set(suites):
            return uris[0]
    raise DepsolveError(f"no Debian mirror in {apt_dir}/sources.list(.d); give one as 'mirror'")


def validate_request(request: Any) -> dict[str, Any]:
    """Check a request against REQUEST_SCHEMA; the first problem as a RequestError."""
    validator = jsonschema.Draft202012Validator(REQUEST_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(request))
    if error:
        where = "/".join(str(p) for p in error.absolute_path) or "request"
        message = f"invalid value {error.instance!r}" if error.validator == "pattern" else \
            error.message
        raise RequestError(f"{where}: {message}")
    return request


def solve_request(request: dict[str, Any], cache: Path | None = None) -> Solution:
    """Run a validated request, filling in the host's mirror and the archive keyring."""
    validate_request(request)
    return depsolve(
        suite=request["suite"],
        architecture=request["architecture"],
        mirror=request.get("mirror") or host_mirror(),
        keyrings=[Path(k) for k in request.get("keyrings", [DEFAULT_KEYRING])],
        packages=request.get("packages", []),
        components=request.get("components", ["main"]),
        exclude=request.get("exclude", []),
        variant=request.get("variant", "minbase"),
        extra_repos=request.get("extra-repos", []),
        foreign=request.get("foreign-architectures", []),
        cache=cache,
    )


def load_document(text: str, name: str) -> Any:
    """JSON or YAML (JSON is YAML, but JSON errors read better from the JSON parser)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith(("{", "[")):
            raise RequestError(f"{name}: invalid JSON: {e}") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RequestError(f"{name}: invalid YAML: {' '.join(str(e).split())}") from e


def add_cache_argument(parser: cli.Parser) -> None:
    """--cache DIR: where apt's lists are kept between runs (default: none kept)."""
    parser.add_argument("--cache", metavar="DIR", type=Path,
                        default=os.environ.get(CACHE_ENV) or None,
                        help="keep the archives' package lists in DIR between runs, so that "
                             f"an unchanged archive is not downloaded again (default: "
                             f"${CACHE_ENV}, else nothing is kept)")


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(prog=PROG, description="Resolve Debian packages to pinned .debs.")
    parser.add_argument("request", nargs="?", default="-",
                        help="JSON or YAML request file (default: stdin)")
    add_cache_argument(parser)

    def body() -> None:
        args = parser.parse_args(argv)
        name, text = cli.read_input(args.request)
        solution = solve_request(load_document(text, name), args.cache)
        print(json.dumps(solution.to_json(), indent=2))

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
