"""The guest's serial console, driven like a terminal: log in, run commands.

For images without an injected SSH key (the default sample's root logs in with
a password, and Debian's sshd refuses root passwords). A reader thread drains
the socket all the time, so the guest never blocks on a full console.
"""

import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path


class ConsoleError(Exception):
    """The console did not answer as expected."""


@dataclass
class ConsoleResult:
    returncode: int
    output: str


class SerialConsole:
    """A connection to qemu's serial chardev socket."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buffer = ""
        self.pos = 0  # what expect() has consumed
        self.lock = threading.Condition()
        self.closed = False
        self.count = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                data = b""
            with self.lock:
                if not data:
                    self.closed = True
                    self.lock.notify_all()
                    return
                self.buffer += data.decode(errors="replace").replace("\r", "")
                self.lock.notify_all()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.reader.join(timeout=5)

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait for `pattern` in the output after what was consumed; consume up to its end."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                match = regex.search(self.buffer, self.pos)
                if match:
                    self.pos = match.end()
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    tail = self.buffer[-300:]
                    raise ConsoleError(f"no {regex.pattern!r} on the console after "
                                       f"{timeout:.0f}s; last output: {tail!r}")
                self.lock.wait(min(left, 1))

    def login(self, user: str, password: str, timeout: float = 120) -> None:
        """Log in at the getty prompt and quiet kernel messages for clean command output."""
        deadline = time.monotonic() + timeout
        while True:
            self.send("\n")
            try:
                self.expect(r"login: $|login: ", 5)
                break
            except ConsoleError:
                if time.monotonic() > deadline:
                    raise
        self.send(f"{user}\n")
        self.expect(r"Password: ", 30)
        self.send(f"{password}\n")
        match = self.expect(r"Login incorrect|[#$] $|[#$] ", max(deadline - time.monotonic(), 30))
        if match.group(0).startswith("Login incorrect"):
            raise ConsoleError(f"console login as {user} refused")
        self.run("dmesg -n 1 2>/dev/null; stty -echo 2>/dev/null; true", timeout=60)

    def run(self, command: str, timeout: float = 60) -> ConsoleResult:
        """Run a shell command on the logged-in console: its exit status and output.

        The markers are split by quotes in the command as typed, so the echo of
        the typed line never matches them; only the shell's output does.
        """
        self.count += 1
        n = self.count
        self.send(f"echo '@@BEG''IN{n}@@'; {command}; echo \"@@E\"\"ND{n}@@$?@@\"\n")
        match = self.expect(re.compile(rf"@@BEGIN{n}@@\n(.*?)@@END{n}@@(\d+)@@", re.DOTALL),
                            timeout)
        return ConsoleResult(int(match.group(2)), match.group(1))
