"""Debian's version order, as dpkg --compare-versions has it.

Stages that pick among versions (org.osbuild.grub2: a tree's kernels, newest
first) order them here, as dpkg would.

Like osbuild.api, only the stdlib: it runs on the build root's Python.
"""


def _order(c: str) -> int:
    """Weight of one character of a non-digit run: "~" sorts before everything, even the end."""
    if not c or c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's order of upstream versions or revisions: runs of non-digits, then of digits."""
    i = j = 0

    def at(s: str, k: int) -> str:
        return s[k] if k < len(s) else ""

    while i < len(a) or j < len(b):
        while (at(a, i) and not at(a, i).isdigit()) or (at(b, j) and not at(b, j).isdigit()):
            ac, bc = _order(at(a, i)), _order(at(b, j))
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        while at(a, i) == "0":
            i += 1
        while at(b, j) == "0":
            j += 1
        first_diff = 0
        while at(a, i).isdigit() and at(b, j).isdigit():
            first_diff = first_diff or ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if at(a, i).isdigit():
            return 1
        if at(b, j).isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, sep, rest = version.partition(":")
    if not sep:
        epoch, rest = "0", version
    upstream, sep, revision = rest.rpartition("-")
    if not sep:
        upstream, revision = rest, ""
    return int(epoch) if epoch.isdigit() else 0, upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version `a` is older than, equal to or newer than `b`."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return ea - eb
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def newest_first(versions: list[str]) -> list[str]:
    """Versions sorted newest first (a simple insertion sort: there are only a few kernels)."""
    result: list[str] = []
    for version in versions:
        k = 0
        while k < len(result) and compare_versions(result[k], version) > 0:
            k += 1
        result.insert(k, version)
    return result
