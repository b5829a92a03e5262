"""Sizes as people write them (20G, 512M) and read them (1.5 GiB), for every command."""

import argparse
import re

# The store's size limit unless a build says otherwise; also what no single download
# may exceed, since items carry no size (osbuild/sourcelib.py).
DEFAULT_MAX_SIZE = 20 * 1024**3

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int | None:
    """'20G', '512M', '1.5GiB', '1024' -> bytes (binary units); 'unlimited' -> None."""
    if text.strip().lower() == "unlimited":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(
            f"invalid size {text!r}: expected a number of bytes with an optional "
            "K, M, G or T suffix (e.g. 512M, 20G) or 'unlimited'"
        )
    return int(float(match[1]) * UNITS[match[2].upper()])


def size_option(text: str) -> int | None:
    """`parse_size` as an argparse `type=`: every size option is parsed by the parser."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def format_size(size: int | None) -> str:
    if size is None:
        return "unlimited"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
