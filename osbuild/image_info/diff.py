"""image-info --diff: what differs between two reports, path by path.

What a user runs to see what a change to a manifest did to the image. Lists
are matched by what their items are, not by position: packages by name and
architecture, partitions by number, menu entries by title, strings and fstab
rows by their value. So one package more is one "added" entry, not a shift of
every later index; a list whose items only changed order is one "changed" entry.
"""

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

# Fields that name a report list's dict items, tried in order: the first that
# every item has, and no two items share, is the list's key.
IDENTITIES = (("name", "arch"), ("number",), ("partition",), ("title",), ("path",),
              ("name",), ("id",))

Change = dict[str, Any]  # {"path", "change": added|removed|changed, "old"?, "new"?}


def diff(old: Any, new: Any) -> list[Change]:
    """The changes that turn report `old` into report `new`; [] when they are the same."""
    return list(_diff(old, new, ""))


def _diff(old: Any, new: Any, path: str) -> Iterator[Change]:
    if isinstance(old, dict) and isinstance(new, dict):
        yield from _keyed(old, new, lambda key: f"{path}.{key}" if path else key)
    elif isinstance(old, list) and isinstance(new, list):
        yield from _diff_lists(old, new, path)
    elif old != new or type(old) is not type(new):
        yield {"path": path, "change": "changed", "old": old, "new": new}


def _keyed(old: dict[str, Any], new: dict[str, Any], name: Callable[[str], str]
           ) -> Iterator[Change]:
    """Two mappings compared key by key; `name` makes a key's report path."""
    for key in sorted(old.keys() | new.keys()):
        if key not in new:
            yield {"path": name(key), "change": "removed", "old": old[key]}
        elif key not in old:
            yield {"path": name(key), "change": "added", "new": new[key]}
        else:
            yield from _diff(old[key], new[key], name(key))


def _identity(old: list[Any], new: list[Any]) -> tuple[str, ...] | None:
    """The fields that name the items of both lists (each name once per list), if any."""
    items = old + new
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for fields in IDENTITIES:
        if all(all(f in i for f in fields) for i in items) and all(
                len({_hashable(tuple(i[f] for f in fields)) for i in side}) == len(side)
                for side in (old, new)):
            return fields
    return None


def _hashable(value: Any) -> Any:
    """A value that sets and Counters take: lists become tuples, dicts sorted item tuples."""
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _label(value: Any) -> str:
    """How an item is named in a path: strings as they are, rows joined by spaces."""
    if isinstance(value, list | tuple):
        return " ".join(_label(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def _diff_lists(old: list[Any], new: list[Any], path: str) -> Iterator[Change]:
    fields = _identity(old, new)
    if fields is not None:
        def key(item: dict[str, Any]) -> str:
            return ":".join(_label(item[f]) for f in fields)
        yield from _keyed({key(i): i for i in old}, {key(i): i for i in new},
                          lambda k: f"{path}[{k}]")
        return
    if any(isinstance(i, dict) for i in old + new):
        # Dicts without a name of their own: compared place by place.
        for index in range(max(len(old), len(new))):
            sub = f"{path}[{index}]"
            if index >= len(new):
                yield {"path": sub, "change": "removed", "old": old[index]}
            elif index >= len(old):
                yield {"path": sub, "change": "added", "new": new[index]}
            else:
                yield from _diff(old[index], new[index], sub)
        return
    before, after = Counter(map(_hashable, old)), Counter(map(_hashable, new))
    if before == after:
        if old != new:
            yield {"path": path, "change": "changed", "old": old, "new": new}
        return
    values = {_hashable(v): v for v in old + new}
    for item in sorted(values, key=lambda v: _label(values[v])):
        for _ in range(before[item] - after[item]):
            yield {"path": f"{path}[{_label(values[item])}]", "change": "removed",
                   "old": values[item]}
        for _ in range(after[item] - before[item]):
            yield {"path": f"{path}[{_label(values[item])}]", "change": "added",
                   "new": values[item]}


def render(changes: list[Change]) -> str:
    """The changes as lines a person reads: + added, - removed, ~ changed (old -> new)."""
    if not changes:
        return "no differences\n"

    def show(value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    lines = []
    for c in changes:
        if c["change"] == "added":
            lines.append(f"+ {c['path']}: {show(c['new'])}")
        elif c["change"] == "removed":
            lines.append(f"- {c['path']}: {show(c['old'])}")
        else:
            lines.append(f"~ {c['path']}: {show(c['old'])} -> {show(c['new'])}")
    return "\n".join(lines) + "\n"
