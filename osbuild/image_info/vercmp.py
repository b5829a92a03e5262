"""rpm's version comparison (rpmvercmp), which grub2 and zipl use to order BLS entries.

Implemented from the documented algorithm: both strings are split into runs of
ASCII digits or ASCII letters, everything else separates runs; `~` sorts before
anything (even the end of the string), `^` sorts after the end but before any
further run. Numeric runs compare as numbers and beat alphabetic runs; when
one string runs out first, the other (with a run left) is newer.
"""


def _isdigit(c: str) -> bool:
    return "0" <= c <= "9"


def _isalpha(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z"


def _isalnum(c: str) -> bool:
    return _isdigit(c) or _isalpha(c)


def rpmvercmp(a: str, b: str) -> int:
    """-1, 0 or 1 as version `a` is older than, equal to or newer than `b`."""
    if a == b:
        return 0
    i = j = 0
    la, lb = len(a), len(b)
    while i < la or j < lb:
        while i < la and not _isalnum(a[i]) and a[i] not in "~^":
            i += 1
        while j < lb and not _isalnum(b[j]) and b[j] not in "~^":
            j += 1
        # A tilde sorts before everything, the end of the string included.
        if (i < la and a[i] == "~") or (j < lb and b[j] == "~"):
            if not (i < la and a[i] == "~"):
                return 1
            if not (j < lb and b[j] == "~"):
                return -1
            i, j = i + 1, j + 1
            continue
        # A caret sorts after the end of the string but before any other run.
        if (i < la and a[i] == "^") or (j < lb and b[j] == "^"):
            if i >= la:
                return -1
            if j >= lb:
                return 1
            if a[i] != "^":
                return 1
            if b[j] != "^":
                return -1
            i, j = i + 1, j + 1
            continue
        if not (i < la and j < lb):
            break
        kind = _isdigit if _isdigit(a[i]) else _isalpha
        si, sj = i, j
        while i < la and kind(a[i]):
            i += 1
        while j < lb and kind(b[j]):
            j += 1
        run_a, run_b = a[si:i], b[sj:j]
        if not run_b:
            # Different kinds of run: a number is newer than letters.
            return 1 if kind is _isdigit else -1
        if kind is _isdigit:
            run_a, run_b = run_a.lstrip("0"), run_b.lstrip("0")
            if len(run_a) != len(run_b):
                return 1 if len(run_a) > len(run_b) else -1
        if run_a != run_b:
            return 1 if run_a > run_b else -1
    if i >= la and j >= lb:
        return 0
    return -1 if i >= la else 1


def evrcmp(a: str, b: str) -> int:
    """Compare `[epoch:]version[-release]` strings: epoch numerically first, then the rest."""

    def split(evr: str) -> tuple[int, str]:
        epoch, sep, rest = evr.partition(":")
        if sep and epoch.isdigit():
            return int(epoch), rest
        return 0, evr

    (ea, ra), (eb, rb) = split(a), split(b)
    if ea != eb:
        return 1 if ea > eb else -1
    return rpmvercmp(ra, rb)
