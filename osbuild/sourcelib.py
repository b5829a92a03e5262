"""What the source executables in `sources/` run: read a request, provide every item.

Stages have no network, so everything they need from outside (packages,
inline data) is fetched first, on the host, by a source executable, a child
of the engine (osbuild/fetching.py) running on the host's Python outside the
engine process. Each item lands in the cache under its checksum, and only
once verified (osbuild/checksums.py); a failure leaves no partial file. Like
stagelib.py for stages, this module is the sources' library: stdlib only.

Protocol: the engine writes {"items": {checksum: item}, "options": {...},
"cache": dir} to the source's stdin; the source writes JSON lines to stdout:
{"type": "progress", "checksum", "url", "done", "total"} and, on failure,
one {"type": "error", "message"} before exiting non-zero.
"""

import base64
import binascii
import hashlib
import http.client
import json
import lzma
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any

from . import keepalive
from .checksums import CHUNK_SIZE, TEMP_PREFIX, InvalidChecksum, parse_checksum
from .sizes import DEFAULT_MAX_SIZE

PROGRESS_INTERVAL = 0.25  # seconds between progress records of one item

DEFAULT_RETRIES = 4  # so five attempts in all
DEFAULT_BACKOFF = 1.0  # seconds before the first retry; doubles each time
DEFAULT_TIMEOUT = 30.0  # seconds without data before a connection counts as dead
DEFAULT_WORKERS = 8  # pool files are many and small: latency, not bandwidth, bounds them
# Items carry no size, so a server streaming without end would fill the disk: no
# single file may be larger than the store's default size limit.
DEFAULT_MAX_FILE_SIZE = DEFAULT_MAX_SIZE
# A server that drips a few bytes at a time never trips the read timeout: a download
# slower than this, averaged over the timeout, counts as dead (curl's speed limit).
DEFAULT_MIN_SPEED = 1000  # bytes per second

# HTTP statuses worth another attempt: server trouble, and 404 because
# mirrors briefly miss files while they sync.
RETRY_STATUSES = {404, 408, 429}
ALLOWED_SCHEMES = ("http", "https", "ftp", "file")


class SourceFailure(Exception):
    """A one-line reason why an item could not be provided (source side)."""


class _Retryable(SourceFailure):
    """A failure that another attempt may cure (network trouble, 5xx)."""


def _parse_checksum(checksum: str) -> tuple[str, str]:
    """parse_checksum, failing as a source fails: with a one-line SourceFailure."""
    try:
        return parse_checksum(checksum)
    except InvalidChecksum as e:
        raise SourceFailure(str(e)) from None


def _env_number(name: str, default: float, cast: Callable[[str], float]) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = cast(value)
    except ValueError:
        raise SourceFailure(f"{name}={value!r} is not a number") from None
    if number < 0:
        raise SourceFailure(f"{name}={value!r} must not be negative")
    return number


class Context:
    """What every worker of one source run shares: settings, output, a stop flag."""

    def __init__(self, cache: Path, options: dict[str, Any], out: IO[str]):
        self.cache = cache
        self.options = options
        self.retries = int(_env_number("OSBUILD_SOURCES_RETRIES", DEFAULT_RETRIES, int))
        self.backoff = _env_number("OSBUILD_SOURCES_BACKOFF", DEFAULT_BACKOFF, float)
        self.timeout = _env_number("OSBUILD_SOURCES_TIMEOUT", DEFAULT_TIMEOUT, float)
        self.workers = max(1, int(_env_number("OSBUILD_SOURCES_WORKERS", DEFAULT_WORKERS, int)))
        self.max_size = int(_env_number("OSBUILD_SOURCES_MAX_SIZE", DEFAULT_MAX_FILE_SIZE, int))
        self.min_speed = _env_number("OSBUILD_SOURCES_MIN_SPEED", DEFAULT_MIN_SPEED, float)
        # Set when one item failed or the engine went away: the others stop early.
        self.stop = threading.Event()
        self._out = out
        self._lock = threading.Lock()

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        with self._lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, ValueError):
                self.stop.set()  # nobody listens any more

    def progress(self, checksum: str, url: str | None, done: int, total: int | None) -> None:
        self.emit({"type": "progress", "checksum": checksum, "url": url,
                   "done": done, "total": total})

    def error(self, message: str) -> None:
        self.emit({"type": "error", "message": " ".join(message.split())})


class AtomicCacheFile:
    """A temporary file in the cache that becomes `<cache>/<checksum>` only on commit."""

    def __init__(self, cache: Path):
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=cache)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def commit(self, target: Path) -> None:
        self.file.flush()
        # The name is a promise that the content is verified: make the
        # content durable before the name appears.
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.path, 0o644)
        os.replace(self.path, target)

    def discard(self) -> None:
        """Remove the temporary file unless it was committed."""
        self.file.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass  # committed (renamed away) or never got that far


ItemHandler = Callable[[str, Any, Context], None]


def source_main(handle_item: ItemHandler, parallel: bool = True) -> int:
    """Run a source: read the request from stdin, provide every item, report on stdout.

    `handle_item(checksum, item, ctx)` must leave `<cache>/<checksum>` or raise
    SourceFailure. Returns the exit status.
    """
    # The engine ends us with SIGKILL if it must; a stray Ctrl-C must not
    # leave half-stopped worker threads.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout
    try:
        request = json.load(sys.stdin)
        cache = Path(request["cache"])
        items = request.get("items") or {}
        options = request.get("options") or {}
        if not isinstance(items, dict) or not isinstance(options, dict):
            raise SourceFailure("malformed request: items and options must be objects")
        ctx = Context(cache, options, out)
    except SourceFailure as e:
        _emit_error(out, str(e))
        return 1
    except (ValueError, KeyError, TypeError) as e:
        _emit_error(out, f"malformed request on stdin: {e}")
        return 1

    try:
        for checksum in items:
            _parse_checksum(checksum)
        cache.mkdir(parents=True, exist_ok=True)
        todo = [(c, item) for c, item in items.items() if not (cache / c).is_file()]
        if parallel and len(todo) > 1:
            _run_parallel(handle_item, todo, ctx)
        else:
            for checksum, item in todo:
                handle_item(checksum, item, ctx)
    except SourceFailure as e:
        ctx.error(str(e))
        return 1
    except OSError as e:
        ctx.error(f"cannot write to the cache {cache}: {e.strerror or e}")
        return 1
    return 0


def _run_parallel(handle_item: ItemHandler, todo: list[tuple[str, Any]], ctx: Context) -> None:
    with ThreadPoolExecutor(max_workers=min(ctx.workers, len(todo))) as pool:
        futures = [pool.submit(handle_item, c, item, ctx) for c, item in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception()), None)
        if failed is not None:
            ctx.stop.set()
            for f in futures:
                f.cancel()
            exc = failed.exception()
            assert exc is not None
            raise exc


def _emit_error(out: IO[str], message: str) -> None:
    try:
        out.write(json.dumps({"type": "error", "message": " ".join(message.split())}) + "\n")
        out.flush()
    except (BrokenPipeError, ValueError):
        pass


# --- the URL download (org.osbuild.curl and org.osbuild.files) ---------------


def _item_url(checksum: str, item: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and isinstance(item.get("url"), str):
        return item["url"], item
    raise SourceFailure(f"item {checksum} has no url")


def _ssl_context(item: dict[str, Any]) -> ssl.SSLContext | None:
    secrets = item.get("secrets") or {}
    name = secrets.get("name")
    insecure = bool(item.get("insecure", False))
    if not insecure and name is None:
        return None
    ctx = ssl.create_default_context()
    if name == "org.osbuild.mtls":
        key = os.environ.get("OSBUILD_SOURCES_CURL_SSL_CLIENT_KEY")
        cert = os.environ.get("OSBUILD_SOURCES_CURL_SSL_CLIENT_CERT")
        if not key or not cert:
            raise SourceFailure(
                "org.osbuild.mtls secrets need OSBUILD_SOURCES_CURL_SSL_CLIENT_KEY and "
                "OSBUILD_SOURCES_CURL_SSL_CLIENT_CERT in the environment"
            )
        ca = os.environ.get("OSBUILD_SOURCES_CURL_SSL_CA_CERT")
        try:
            if ca:
                ctx.load_verify_locations(cafile=ca)
            ctx.load_cert_chain(certfile=cert, keyfile=key)
        except (OSError, ssl.SSLError) as e:
            raise SourceFailure(f"cannot load the org.osbuild.mtls certificates: {e}") from None
    elif name is not None:
        raise SourceFailure(f"secrets provider {name} is not supported here")
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def download_item(checksum: str, item: Any, ctx: Context) -> None:
    """Download one URL item into the cache, verifying it, with retries and backoff."""
    url, spec = _item_url(checksum, item)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ALLOWED_SCHEMES:
        raise SourceFailure(f"cannot download {url}: unsupported URL scheme")
    algorithm, digest = _parse_checksum(checksum)
    context = _ssl_context(spec)
    target = ctx.cache / checksum
    attempts = ctx.retries + 1
    for attempt in range(attempts):
        if ctx.stop.is_set():
            raise SourceFailure(f"download of {url} cancelled")
        if target.is_file():
            return  # a concurrent run provided it meanwhile
        try:
            actual = _download_once(url, checksum, target, context, ctx)
        except _Retryable as e:
            if attempt + 1 >= attempts:
                tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
                raise SourceFailure(f"{e} (gave up after {tries})") from None
            # Exponential backoff; waiting on the stop flag ends it early.
            ctx.stop.wait(ctx.backoff * (2**attempt))
            continue
        if actual != digest:
            raise SourceFailure(
                f"checksum mismatch for {url}: expected {checksum}, got {algorithm}:{actual}"
            )
        return


def _download_once(
    url: str,
    checksum: str,
    target: Path,
    context: ssl.SSLContext | None,
    ctx: Context,
) -> str:
    """One attempt; returns the hex digest. The file is committed only if it matches."""
    algorithm, digest = _parse_checksum(checksum)
    request = urllib.request.Request(url, headers={"User-Agent": "osbuild-deb"})
    tmp = AtomicCacheFile(ctx.cache)
    try:
        h = hashlib.new(algorithm)
        done, total = _stream(request, url, checksum, tmp, h, context, ctx)
        # urllib returns a short body without complaint when the peer closes early.
        if total is not None and done != total:
            raise _Retryable(
                f"cannot download {url}: connection closed after {done} of {total} bytes"
            )
        ctx.progress(checksum, url, done, done)
        actual = h.hexdigest()
        if actual == digest:
            try:
                tmp.commit(target)
            except OSError as e:
                raise SourceFailure(
                    f"cannot write to the cache {ctx.cache}: {e.strerror or e}"
                ) from None
        return actual
    finally:
        # No-op after a commit; otherwise the partial or wrong file goes.
        tmp.discard()


def _stream(
    request: urllib.request.Request,
    url: str,
    checksum: str,
    tmp: "AtomicCacheFile",
    h: Any,
    context: ssl.SSLContext | None,
    ctx: Context,
) -> tuple[int, int | None]:
    """Copy the response body into `tmp` and `h`; map network errors to retryable ones.

    Bodies larger than ctx.max_size and servers slower than ctx.min_speed (over
    ctx.timeout seconds) are cut off, so no server can fill the disk or hold a
    build forever.
    """
    done = 0
    try:
        with _open(request, context, ctx) as resp:
            length = resp.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            if total is not None and total > ctx.max_size:
                raise SourceFailure(f"cannot download {url}: the server announces {total} "
                                    f"bytes, more than the limit of {_too_big(ctx)}")
            # read1 returns what one read brings: read(n) would wait for all n
            # bytes of a dripping server, and the speed check would never run.
            read = getattr(resp, "read1", resp.read)
            last = 0.0
            window_start, window_done = time.monotonic(), 0
            while chunk := read(CHUNK_SIZE):
                if ctx.stop.is_set():
                    raise SourceFailure(f"download of {url} cancelled")
                done += len(chunk)
                if done > ctx.max_size:
                    raise SourceFailure(f"cannot download {url}: the body is larger than the "
                                        f"limit of {_too_big(ctx)}")
                _write(tmp, chunk)
                h.update(chunk)
                now = time.monotonic()
                window_done += len(chunk)
                if now - window_start >= ctx.timeout:
                    if window_done < ctx.min_speed * (now - window_start):
                        raise _Retryable(f"cannot download {url}: slower than "
                                         f"{ctx.min_speed:g} bytes/s for {ctx.timeout:g} s")
                    window_start, window_done = now, 0
                if now - last >= PROGRESS_INTERVAL:
                    ctx.progress(checksum, url, done, total)
                    last = now
    except urllib.error.HTTPError as e:
        message = f"cannot download {url}: HTTP {e.code} {e.reason}"
        if e.code >= 500 or e.code in RETRY_STATUSES:
            raise _Retryable(message) from None
        raise SourceFailure(message) from None
    except urllib.error.URLError as e:
        raise _Retryable(f"cannot download {url}: {_reason(e.reason)}") from None
    except _CacheWriteError as e:
        raise SourceFailure(f"cannot write to the cache {ctx.cache}: {e}") from None
    except (http.client.HTTPException, OSError) as e:
        # Resets, timeouts, truncated chunked bodies: all worth another try.
        raise _Retryable(f"cannot download {url}: {_reason(e)}") from None
    return done, total


def _open(request: urllib.request.Request, context: ssl.SSLContext | None,
          ctx: Context) -> Any:
    """A response for `request`: over a kept-alive connection where possible."""
    if keepalive.proxied(request.full_url):
        return urllib.request.urlopen(request, timeout=ctx.timeout, context=context)
    return keepalive.get(request.full_url, ctx.timeout, context, dict(request.header_items()))


def _too_big(ctx: Context) -> str:
    return f"{ctx.max_size} bytes (OSBUILD_SOURCES_MAX_SIZE)"


class _CacheWriteError(Exception):
    pass


def _write(tmp: AtomicCacheFile, chunk: bytes) -> None:
    try:
        tmp.file.write(chunk)
    except OSError as e:
        raise _CacheWriteError(e.strerror or str(e)) from None


def _reason(reason: Any) -> str:
    if isinstance(reason, BaseException):
        text = str(reason) or type(reason).__name__
    else:
        text = str(reason)
    return " ".join(text.split()) or "unknown error"


# --- inline data (org.osbuild.inline) ----------------------------------------


def inline_item(checksum: str, item: Any, ctx: Context) -> None:
    """Decode one inline item, verify it and store it under its checksum."""
    if not isinstance(item, dict) or not isinstance(item.get("data"), str):
        raise SourceFailure(f"inline item {checksum} has no data")
    encoding = item.get("encoding", "base64")
    try:
        raw = base64.b64decode("".join(item["data"].split()), validate=True)
        if encoding == "lzma+base64":
            raw = lzma.decompress(raw)
        elif encoding != "base64":
            raise SourceFailure(f"inline item {checksum}: unknown encoding {encoding!r}")
    except (binascii.Error, lzma.LZMAError) as e:
        raise SourceFailure(f"inline item {checksum} is not valid {encoding}: {e}") from None
    algorithm, digest = _parse_checksum(checksum)
    actual = hashlib.new(algorithm, raw).hexdigest()
    if actual != digest:
        raise SourceFailure(
            f"checksum mismatch for inline item: expected {checksum}, got {algorithm}:{actual}"
        )
    tmp = AtomicCacheFile(ctx.cache)
    try:
        tmp.file.write(raw)
        tmp.commit(ctx.cache / checksum)
    except BaseException:
        tmp.discard()
        raise
    ctx.progress(checksum, None, len(raw), len(raw))
