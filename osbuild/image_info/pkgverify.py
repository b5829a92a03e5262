"""image-info --packages-verify: installed files checked against what dpkg recorded.

What debsums and `dpkg --verify` do, for a tree that is not the running
system: every file of an installed package whose content differs from its
md5sums entry (or that is missing, unless the tree's dpkg configuration
filters it out: path-exclude, as for an image without docs), every conffile changed from the md5 in
dpkg's status or missing (dpkg --verify's "missing c"), and every file under /usr
that no package, diversion or alternative accounts for (what someone put there by
hand, or a maintainer script made). Files are named as dpkg names them; ownership
goes through a merged /usr (a package's /bin/x is /usr/bin/x). An rpmdb in the tree
is checked by the host's `rpm -Va` with --root (files changed, with rpm's attribute
letters, and missing). Opt-in: it reads every installed file.

What it could not check is never reported as fine: a file it cannot read, an rpmdb
without rpm on this host, rpm failing or printing a line this does not know are
CouldNotLook problems, the report's "errors" (and the command's exit status).
"""

import fnmatch
import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from typing import Any

from osbuild.image_info.failures import CouldNotLook, last_line
from osbuild.image_info.tree import DPKG_STATUS, RPMDB_DIRS, dpkg_installed
from osbuild.image_info.treeview import NOT_THERE, Tree

INFO = "var/lib/dpkg/info"
ALTERNATIVES = "var/lib/dpkg/alternatives"
DIVERSIONS = "var/lib/dpkg/diversions"
# Top-level directories that a merged /usr makes links into /usr.
MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def _filters(view: Tree) -> list[tuple[bool, str]]:
    """dpkg's path-include/path-exclude options (included?, pattern), in dpkg's order."""
    files = ["etc/dpkg/dpkg.cfg"]
    files += [f"etc/dpkg/dpkg.cfg.d/{n}" for n in sorted(view.listdir("etc/dpkg/dpkg.cfg.d"))]
    rules = []
    for path in files:
        for line in (view.read_text(path) or "").splitlines():
            key, _, value = line.strip().partition("=")
            if key in ("path-include", "path-exclude") and value:
                rules.append((key == "path-include", value.strip()))
    return rules


def _filtered_out(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether dpkg leaves `path` out: the last rule that matches it decides."""
    excluded = False
    for included, pattern in rules:
        if fnmatch.fnmatchcase(path, pattern):
            excluded = not included
    return excluded


UNREADABLE = ""  # _md5 of a file that is there but could not be read (noted in the view)


def _md5(view: Tree, path: str) -> str | None:
    """The md5 of a regular file in the tree (not followed if a symlink), None if absent,
    UNREADABLE if there but not readable (neither missing nor changed: a failure)."""
    host = view.lresolve(path)
    if host is None:
        return None
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        view.note_failure(path, exc)
        return None if exc.errno in NOT_THERE else UNREADABLE
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        try:
            return hashlib.file_digest(f, "md5").hexdigest()
        except OSError as exc:
            view.note_failure(path, exc)
            return UNREADABLE


def _installed(status: str) -> Iterator[tuple[str, str, list[tuple[str, str]]]]:
    """(name, architecture, [(conffile, md5)]) of each installed package."""
    for fields in dpkg_installed(status):
        conffiles = []
        for line in fields.get("Conffiles", "").splitlines():
            words = line.split()
            if len(words) >= 2 and "obsolete" not in words[2:]:
                conffiles.append((words[0], words[1]))
        yield fields["Package"], fields.get("Architecture", ""), conffiles


def _info(view: Tree, name: str, arch: str, kind: str) -> str:
    """A package's info file (`name:arch.kind` for Multi-Arch: same ones)."""
    text = view.read_text(f"{INFO}/{name}:{arch}.{kind}")
    return text if text is not None else view.read_text(f"{INFO}/{name}.{kind}") or ""


def _canonical(view: Tree, path: str) -> str:
    """`path` as the tree's system names it: through a merged /usr's top-level links."""
    top, _, rest = path.lstrip("/").partition("/")
    if top in MERGED and view.readlink(top) in (f"usr/{top}", f"/usr/{top}"):
        return f"/usr/{top}/{rest}".rstrip("/")
    return "/" + path.lstrip("/")


def _diversions(view: Tree) -> dict[str, tuple[str, str]]:
    """diverted path -> (where it went, the diverting package)."""
    lines = (view.read_text(DIVERSIONS) or "").splitlines()
    return {lines[i]: (lines[i + 1], lines[i + 2]) for i in range(0, len(lines) - 2, 3)}


def _alternative_links(view: Tree) -> set[str]:
    links = set()
    for name in view.listdir(ALTERNATIVES):
        lines = (view.read_text(f"{ALTERNATIVES}/{name}") or "").splitlines()
        if len(lines) > 1:
            links.add(lines[1])  # the master link, then (name, link) of each slave
        for i in range(3, len(lines), 2):
            if not lines[i] or not lines[i - 1]:
                break
            links.add(lines[i])
    return links


def report(view: Tree) -> dict[str, Any]:
    """The "packages-verify" key: dpkg's packages checked, and an rpmdb's under "rpm";
    {} for a tree without either. CouldNotLook (with the rest) where rpm could not check."""
    found: dict[str, Any] = {}
    status = view.read_text(DPKG_STATUS)
    if status is not None:
        found.update(_dpkg(view, status))
    try:
        rpm = _rpm(view)
    except CouldNotLook as exc:
        if exc.found:
            found["rpm"] = exc.found
        raise CouldNotLook(exc.problems, {"packages-verify": found} if found else {}) from None
    if rpm is not None:
        found["rpm"] = rpm
    return {"packages-verify": found} if found else {}


# `rpm -V` lines: nine attribute letters (or "missing"), the file's kind, the path.
RPM_LINE = re.compile(r"^(?P<attrs>missing|[.SM5DLUGTP?]{9})\s+(?:(?P<kind>[cdglr])\s+)?"
                      r"(?P<path>/.*)$")
RPM_KINDS = {"c": "config", "d": "doc", "g": "ghost", "l": "license", "r": "readme"}


def _rpm(view: Tree) -> dict[str, Any] | None:
    """`rpm -Va` of the tree's rpmdb with the host's rpm (None: no rpmdb); CouldNotLook if
    rpm is not here or fails (nothing found), or prints lines this cannot read (the rest)."""
    dbdir = next((d for d in RPMDB_DIRS if view.listdir(d)), None)
    if dbdir is None:
        return None
    what = f"rpm -Va of the rpmdb in /{dbdir}"
    try:
        # rpm -V exits 1 whenever a file differs: its "error:" lines tell a failure.
        proc = subprocess.run(["rpm", "--root", str(view.root), "--dbpath", f"/{dbdir}", "-Va",
                               "--nodeps", "--noscripts"], capture_output=True, text=True)
    except FileNotFoundError:
        raise CouldNotLook([f"rpm is not installed on this host ({what})"]) from None
    errors = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    if errors or proc.returncode < 0:
        why = last_line(errors or proc.stderr, f"rpm was killed by signal {-proc.returncode}")
        raise CouldNotLook([f"{why} ({what})"])
    found, unread = parse_rpm_verify(proc.stdout)
    if unread:
        raise CouldNotLook([f"{what}: a line image-info cannot read: {line!r}"
                            for line in unread], found)
    return found


def parse_rpm_verify(output: str) -> tuple[dict[str, list[dict[str, str]]], list[str]]:
    """`rpm -V` output as {"changed": [...], "missing": [...]}, and the lines it is not."""
    changed, missing, unread = [], [], []
    for line in output.splitlines():
        m = RPM_LINE.match(line)
        if m is None:
            if line.strip():
                unread.append(line)
            continue
        entry = {"path": m["path"], **({"kind": RPM_KINDS[m["kind"]]} if m["kind"] else {})}
        if m["attrs"] == "missing":
            missing.append(entry)
        else:
            changed.append({**entry, "attributes": m["attrs"]})
    return {"changed": changed, "missing": missing}, unread


def _dpkg(view: Tree, status: str) -> dict[str, Any]:
    """What debsums and `dpkg --verify` would say, and the files under /usr no one owns."""
    diversions = _diversions(view)
    owned = {_canonical(view, to) for to, _ in diversions.values()}
    owned |= {_canonical(view, link) for link in _alternative_links(view)}
    rules = _filters(view)
    changed, missing, checked, filtered = [], [], 0, 0
    conffiles, conffiles_missing = [], []
    for name, arch, confs in _installed(status):
        package = f"{name}:{arch}"
        for line in _info(view, name, arch, "list").splitlines():
            owned.add(_canonical(view, line))
        for line in _info(view, name, arch, "md5sums").splitlines():
            md5, _, path = line.partition("  ")
            path = "/" + path.strip()
            to, diverter = diversions.get(path, (path, name))
            actual = _md5(view, to if diverter != name else path)
            checked += 1
            if actual is None and _filtered_out(path, rules):
                filtered += 1
            elif actual is None:
                missing.append({"package": package, "path": path})
            elif actual not in (md5, UNREADABLE):
                changed.append({"package": package, "path": path})
        for path, md5 in confs:
            if md5 == "newconffile":  # unpacked, never configured: nothing to compare
                continue
            actual = _md5(view, path)
            if actual is None and not _filtered_out(path, rules):
                conffiles_missing.append({"package": package, "path": path})
            elif actual not in (None, md5, UNREADABLE):
                conffiles.append({"package": package, "path": path})
    return {"files-checked": checked, "files-filtered-out": filtered,
            "changed": changed, "missing": missing, "conffiles-changed": conffiles,
            "conffiles-missing": conffiles_missing, "unowned-in-usr": _unowned(view, owned)}


def _unowned(view: Tree, owned: set[str]) -> list[str]:
    """Files and links under /usr that no package's list names (directories are not counted)."""
    usr = view.resolve("usr")
    if usr is None:
        return []
    found = []

    def unreadable(exc: OSError) -> None:
        view.note_failure(os.path.relpath(exc.filename, view.root), exc)

    # Never follows links (stays in the tree); a directory it cannot list is a failure.
    for top, dirs, files in os.walk(usr, onerror=unreadable):
        rel = "/usr" + top[len(str(usr)):]
        for entry in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            path = f"{rel}/{entry}"
            if path not in owned:
                found.append(path)
    return sorted(found)
