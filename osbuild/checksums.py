"""The source cache's naming rules, shared by the engine and the source executables.

A source file lives in the cache as `<cache>/<checksum>`, where a checksum is
`<algorithm>:<hex digest>` of its content; a file gets that name only after
its content was verified. Files still being written are `.tmp-<pid>-<random>`,
after the source executable writing them. The engine (osbuild/fetching.py)
and the source executables (osbuild/sourcelib.py) both follow these rules,
and validate.py checks a manifest's checksums by them. Stdlib only.
"""

import hashlib
import re
from pathlib import Path

from .errors import SourceError

CHECKSUM_PATTERN = r"^(md5|sha1|sha256|sha384|sha512):[0-9a-f]{32,128}$"
_CHECKSUM_RE = re.compile(CHECKSUM_PATTERN)

# Temporary files in the cache are named `.tmp-<pid of the source>-<random>`
# so the engine can remove exactly those of a child it had to kill.
TEMP_PREFIX = ".tmp-"

CHUNK_SIZE = 1 << 20  # bytes read at a time, from a file or a connection


class InvalidChecksum(ValueError):
    """A checksum that is not `<algorithm>:<hex digest>` with that algorithm's length."""


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split `algo:hex` and check that the hex has that algorithm's length."""
    if not isinstance(checksum, str) or not _CHECKSUM_RE.match(checksum):
        raise InvalidChecksum(
            f"invalid checksum {checksum!r}: expected <algorithm>:<hex digest>")
    algorithm, digest = checksum.split(":", 1)
    expected = hashlib.new(algorithm).digest_size * 2
    if len(digest) != expected:
        raise InvalidChecksum(
            f"invalid checksum {checksum}: a {algorithm} digest has {expected} hex digits"
        )
    return algorithm, digest


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path | str, checksum: str) -> bool:
    """Return whether the file at `path` exists and has `checksum`.

    A malformed checksum is a manifest bug, not a cache miss: SourceError.
    """
    try:
        algorithm, digest = parse_checksum(checksum)
    except InvalidChecksum as e:
        raise SourceError(str(e)) from None
    try:
        return file_digest(Path(path), algorithm) == digest
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
