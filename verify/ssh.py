"""Run commands in a booted guest over SSH, with a key the test manifest injected.

The openssh client does the work: batch mode (never a password prompt), the
guest's host key accepted and forgotten (it is made at first boot, so it is new
every time), the private key copied to 0600 because ssh refuses readable ones.
"""

import shutil
import subprocess
import time
from pathlib import Path


class SSHError(Exception):
    """The guest could not be reached or a command failed."""


class SSH:
    """ssh root@127.0.0.1 -p PORT with one key."""

    def __init__(self, port: int, key: Path, user: str = "root", host: str = "127.0.0.1",
                 workdir: Path | None = None, scale: float = 1.0):
        self.port = port
        self.user = user
        self.host = host
        self.scale = scale
        self.key = Path(key)
        if workdir is not None and self.key.stat().st_mode & 0o077:
            copy = workdir / "ssh-key"
            shutil.copyfile(self.key, copy)
            copy.chmod(0o600)
            self.key = copy

    def command(self, remote: str) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.key),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=10",
                "-F", "/dev/null", f"{self.user}@{self.host}", remote]

    def run(self, remote: str, timeout: float | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `remote` in the guest's shell; with `check`, fail on a non-zero exit."""
        timeout = timeout if timeout is not None else 120 * self.scale
        try:
            proc = subprocess.run(self.command(remote), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise SSHError(f"ssh {remote!r}: no answer after {timeout:.0f}s") from e
        if check and proc.returncode != 0:
            raise SSHError(f"ssh {remote!r} exited with {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc

    def output(self, remote: str, timeout: float | None = None) -> str:
        """The stripped stdout of a command that must succeed."""
        return self.run(remote, timeout).stdout.strip()

    def wait(self, timeout: float | None = None) -> None:
        """Until sshd lets us in: it starts late, after generating its host keys."""
        timeout = timeout if timeout is not None else 180 * self.scale
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                proc = self.run("true", timeout=max(min(left, 60), 5), check=False)
                if proc.returncode == 0:
                    return
                why = proc.stderr.strip() or f"exit {proc.returncode}"
            except SSHError as e:
                why = str(e)
            if time.monotonic() > deadline:
                raise SSHError(f"no SSH login as {self.user} after {timeout:.0f}s: {why}")
            time.sleep(2)
