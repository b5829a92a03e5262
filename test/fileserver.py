"""A real HTTP server on 127.0.0.1 for source tests: serves files, drops or stalls on demand."""

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FileServer:
    """State behind the test HTTP server: what it serves and what it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, int] = {}  # path -> responses still to cut off mid-body
        self.delay: dict[str, float] = {}  # path -> seconds before answering
        self.stall: set[str] = set()  # paths that send half the body, then hang
        # Hostile servers (test_downloads.py):
        self.sequences: dict[str, list[bytes]] = {}  # path -> body of each request; last repeats
        self.announce: dict[str, int] = {}  # path -> Content-Length to claim instead of the truth
        self.endless: set[str] = set()  # paths that stream zeros without a length, forever
        self.drip: dict[str, float] = {}  # path -> seconds between single bytes of the body
        self.requests: dict[str, int] = {}
        # HTTP/1.1 keeps connections alive, as mirrors do; `connections` counts them.
        self.connections = 0
        self.redirects: dict[str, str] = {}  # path -> where a 302 sends the client
        self.drop_idle = False  # close every connection after one answer, without saying so
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)

    def count(self, path: str) -> int:
        with self.lock:
            return self.requests.get(path, 0)


def make_handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections += 1

        def do_GET(self) -> None:
            with state.lock:
                state.requests[self.path] = state.requests.get(self.path, 0) + 1
                nth = state.requests[self.path]
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                drop = state.drops.get(self.path, 0) > 0
                if drop:
                    state.drops[self.path] -= 1
            try:
                if not self.answer_hostile(nth):
                    self.answer(drop)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with state.lock:
                    state.in_flight -= 1

        def answer_hostile(self, nth: int) -> bool:
            """Serve the hostile behaviours; False when the path has none."""
            path = self.path
            if path in state.endless:
                self.send_response(200)
                self.end_headers()
                self.close_connection = True
                while not state.closing.is_set():
                    self.wfile.write(b"\0" * 65536)
                return True
            if path in state.sequences:
                bodies = state.sequences[path]
                data = bodies[min(nth, len(bodies)) - 1]
            elif path in state.drip or path in state.announce:
                data = state.files[path]
            else:
                return False
            self.send_response(200)
            self.send_header("Content-Length", str(state.announce.get(path, len(data))))
            self.end_headers()
            if path in state.drip:
                for i in range(len(data)):
                    if state.closing.wait(state.drip[path]):
                        break
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
            else:
                self.wfile.write(data)
            self.close_connection = True
            return True

        def answer(self, drop: bool) -> None:
            time.sleep(state.delay.get(self.path, 0))
            if self.path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if drop or self.path in state.stall:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if self.path in state.stall:
                    state.closing.wait(30)
                self.close_connection = True
                return
            self.wfile.write(data)
            if state.drop_idle:
                # Like a server whose keep-alive timeout expired: the client
                # learns it only when it sends the next request.
                self.close_connection = True

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    with serving(FileServer()) as state:
        yield state


@contextmanager
def serving(state: FileServer) -> Iterator[FileServer]:
    """Serve `state` on a free port of 127.0.0.1 until the block ends."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.closing.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
