"""Compare a JSON document with a golden one in which null means "don't care".

A null anywhere in the golden (a value, a list item, a whole subtree) accepts
whatever value the actual document has there, but something must be there: a
key whose golden value is null is still a key the document must have (a
package that was not installed is missing, not "don't care"). Everything else
must match exactly: objects key by key (missing and unexpected keys are both
differences), lists item by item. The result is one readable line per
difference, naming its JSON path:

    differences./etc/hostname.content: expected [null, "ab12..."] but got [null, "cd34..."]

Short lists of scalars, like the [before, after] pairs of a tree diff, are
shown whole; long ones, like added_files, as the items missing and the items
not expected, so a one-file change reads as one file name.

    python3 -m verify.compare GOLDEN ACTUAL
"""

import json
import sys
from typing import Any

SHOWN_WHOLE = 4  # scalar lists up to this long are printed whole
MAX_TEXT = 300


def render(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def is_scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def mode_hint(path: str, expected: Any, actual: Any) -> str:
    """st_mode numbers mean little to a reader: add their octal form."""
    if not path.endswith(".mode"):
        return ""

    def octal(value: Any) -> Any:
        if isinstance(value, list):
            return [octal(v) for v in value]
        return oct(value) if isinstance(value, int) and not isinstance(value, bool) else value

    return f" (octal: {render(octal(expected))} vs {render(octal(actual))})".replace('"', "")


def matches(expected: Any, actual: Any) -> bool:
    return not compare(expected, actual)


def compare(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Every way `actual` differs from `expected`, one line each; [] when it matches."""
    if expected is None:
        return []
    where = path or "(document)"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object but got {render(actual)}"]
        lines = []
        for key, value in expected.items():
            if key not in actual:
                expectation = "any value" if value is None else render(value)
                lines.append(f"{join(path, key)}: missing (expected {expectation})")
                continue
            lines += compare(value, actual[key], join(path, key))
        for key in actual.keys() - expected.keys():
            lines.append(f"{join(path, key)}: not expected (got {render(actual[key])})")
        return sorted(lines)
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list but got {render(actual)}"]
        return compare_lists(expected, actual, path)
    if type(expected) is not type(actual) or expected != actual:  # 1 != True, 1 != 1.0 here
        return [f"{where}: expected {render(expected)} but got {render(actual)}"
                + mode_hint(path, expected, actual)]
    return []


def compare_lists(expected: list[Any], actual: list[Any], path: str) -> list[str]:
    where = path or "(document)"
    scalars = all(is_scalar(v) for v in expected + actual)
    if scalars and len(expected) == len(actual) and all(
            e is None or (type(e) is type(a) and e == a)
            for e, a in zip(expected, actual, strict=True)):
        return []
    if scalars and max(len(expected), len(actual)) <= SHOWN_WHOLE:
        return [f"{where}: expected {render(expected)} but got {render(actual)}"
                + mode_hint(path, expected, actual)]
    if scalars and None not in expected:
        missing = [v for v in expected if v not in actual]
        unexpected = [v for v in actual if v not in expected]
        lines = [f"{where}: missing {render(v)}" for v in missing]
        lines += [f"{where}: not expected {render(v)}" for v in unexpected]
        return lines or [f"{where}: same items in another order: {render(actual)}"]
    if len(expected) != len(actual):
        return [f"{where}: expected {len(expected)} items but got {len(actual)}: "
                f"{render(actual)}"]
    lines = []
    for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
        lines += compare(e, a, join(path, index))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python3 -m verify.compare GOLDEN ACTUAL", file=sys.stderr)
        return 2
    docs = []
    for name in args:
        try:
            with open(name, encoding="utf-8") as f:
                docs.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"compare: {name}: {e}", file=sys.stderr)
            return 2
    lines = compare(docs[0], docs[1])
    for line in lines:
        print(line)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
