"""HTTP(S) GET over kept-alive connections, one small pool per thread.

Why not urllib.request: it opens a new TCP connection for every file, and a
Debian image needs a few hundred small .debs. Mirrors and the proxies in front
of them limit how fast a client may open connections (on the machines this is
developed on, connections beyond a small burst wait 5 s each: 170 files took
30 s), while one kept-alive connection per worker fetches the same files in
well under a second. Proxies from the environment, ftp and file URLs still go
through urllib (see `proxied`).
"""

import http.client
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import SplitResult, urljoin, urlsplit

MAX_REDIRECTS = 10
REDIRECTS = {301, 302, 303, 307, 308}

_local = threading.local()  # .pool: {(scheme, host, port, context id): connection}


def proxied(url: str) -> bool:
    """Whether `url` must go through urllib: not http(s), or a proxy applies to it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return True
    return parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(
        parts.hostname or "")


@contextmanager
def get(url: str, timeout: float, context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None) -> Iterator[http.client.HTTPResponse]:
    """GET `url`, following redirects, and yield the response to read.

    Statuses >= 400 raise urllib.error.HTTPError, as urlopen does; network
    trouble raises OSError or http.client.HTTPException. The connection goes back
    to the pool only if the caller read the body to its end.
    """
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname, parts.port, id(context))
        response = _request(key, parts, timeout, context, headers or {})
        location = response.getheader("Location")
        if response.status in REDIRECTS and location:
            _drop(key)  # the body of a redirect is not worth reading
            url = urljoin(url, location)
            continue
        if response.status >= 400:
            _drop(key)
            raise urllib.error.HTTPError(url, response.status, response.reason,
                                         response.headers, None)
        try:
            yield response
        finally:
            if _read_to_the_end(response):
                response.close()  # frees the connection for the next request
            else:
                _drop(key)  # the rest of the body is still on the wire
        return
    raise urllib.error.URLError(f"more than {MAX_REDIRECTS} redirects")


def _read_to_the_end(response: http.client.HTTPResponse) -> bool:
    # read() closes the response at its end; read1() stops at a zero length
    # without closing it, so a fully read body shows as length 0.
    return response.isclosed() or (not response.chunked and response.length == 0)


def _request(key: tuple, parts: SplitResult, timeout: float, context: ssl.SSLContext | None,
             headers: dict[str, str]) -> http.client.HTTPResponse:
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    pool = _pool()
    # A kept-alive connection the server has closed meanwhile fails at once;
    # that is no failure of the download: one more try on a fresh connection.
    for fresh in (key not in pool, True):
        conn = pool.get(key) or _connect(parts, timeout, context)
        pool[key] = conn
        try:
            conn.request("GET", target, headers=headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            _drop(key)
            if fresh:
                raise
        except BaseException:
            _drop(key)
            raise
    raise AssertionError("unreachable")


def _connect(parts: SplitResult, timeout: float,
             context: ssl.SSLContext | None) -> http.client.HTTPConnection:
    host = parts.hostname or ""
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port, timeout=timeout,
                                           context=context or _default_context())
    return http.client.HTTPConnection(host, parts.port, timeout=timeout)


def _default_context() -> ssl.SSLContext:
    context = getattr(_local, "context", None)
    if context is None:
        context = _local.context = ssl.create_default_context()
    return context


def _pool() -> dict[tuple, http.client.HTTPConnection]:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    return pool


def _drop(key: tuple) -> None:
    conn = _pool().pop(key, None)
    if conn is not None:
        conn.close()
