"""A foreign tree's call-outs served: the thread that runs the build root's program for each.

What the call-outs are, when the build root may run them, their stand-ins and
the request format are osbuild/toolkit/foreign.py's; this is the process side:
a thread of the stage reads the FIFO on which each stand-in names itself,
runs the build root's program on the tree, writes into the caller's stdout and
stderr through /proc, and sends back the exit status through the caller's own
FIFO. Whatever goes wrong is answered with a failure where there is someone to
answer, and fails the stage in one line afterwards: nothing waits forever.

Like osbuild.api, only the stdlib: it runs on the build root's Python.
"""

import contextlib
import errno
import glob
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import osbuild.api
from osbuild.toolkit import foreign, stagelib


def _run(tree: str, directory: str, pid: int, request: foreign.Request) -> int:
    name, args = request.name, request.args
    c = foreign.CALLOUTS[name]
    path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":")
    run_env = {**request.env, "PATH": ":".join(p for p in path if p != directory),
               "LC_ALL": "C.UTF-8"}
    if c.dpkg_root:
        run_env["DPKG_ROOT"] = tree
    try:
        with open(f"/proc/{pid}/fd/1", "ab") as out, open(f"/proc/{pid}/fd/2", "ab") as err:
            if not os.path.isfile(tree + c.program):
                err.write(f"{name}: not found\n".encode())
                return 127
            try:
                argv = c.command(tree, c.program, args)
            except StopIteration:
                err.write(f"{name}: an option without its value: {' '.join(args)}\n".encode())
                return 2
            return subprocess.run(argv, env=run_env, cwd=tree, umask=request.umask,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                  check=False).returncode
    except OSError as e:
        print(f"osbuild: {name} {' '.join(args)}: {e}", flush=True)
        return 1


class _Server:
    """Answers the stand-ins' calls, one by one; what went wrong fails the stage at the end."""

    def __init__(self, tree: str, directory: str):
        self.tree, self.directory = tree, directory
        self.errors: list[str] = []

    def serve(self) -> None:
        while True:
            with open(os.path.join(self.directory, foreign.REQUESTS), "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            for line in lines:
                if line == foreign.STOP:
                    return
                if foreign.PID.fullmatch(line):
                    self.answer(int(line))
                else:  # no caller to answer: answer them all, or one would wait forever
                    self.error(f"a garbled call-out notice {line[:80]!r}")
                    for reply in glob.glob(os.path.join(self.directory, "reply.*")):
                        if foreign.PID.fullmatch(waiting := reply.rpartition(".")[2]):
                            self.reply(int(waiting), 1, f"pid {waiting}")

    def answer(self, pid: int) -> None:
        status, what = 1, f"pid {pid}"
        try:
            try:
                with open(os.path.join(self.directory, f"request.{pid}"), "rb") as f:
                    data = f.read()
                request = foreign.parse_request(data, pid)
            except (OSError, ValueError) as e:
                self.error(f"a malformed call-out request from pid {pid}: {e}", pid)
            else:
                what = "".join(c if c.isprintable() else repr(c)[1:-1]  # one line
                               for c in " ".join([request.name, *request.args])[:200])
                status = _run(self.tree, self.directory, pid, request)
        except Exception as e:  # noqa: BLE001 - a caller must be answered, whatever happened
            self.error(f"a call-out ({what}) failed: {e!r}", pid)
        self.reply(pid, status, what)

    def reply(self, pid: int, status: int, what: str) -> None:
        """Hand the caller its status; it holds its FIFO open, so no reader means it is gone."""
        fifo = os.path.join(self.directory, f"reply.{pid}")
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.directory, f"request.{pid}"))
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            self.error(f"the exit status of a call-out ({what}) was lost: "
                       f"its caller, pid {pid}, {'is gone' if e.errno == errno.ENXIO else e}")
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"{status}\n")
        with contextlib.suppress(OSError):
            os.unlink(fifo)

    def error(self, message: str, pid: int | None = None) -> None:
        self.errors.append(message)
        print(f"osbuild: {message}", flush=True)
        if pid is not None:  # where the caller's output goes too: the maintainer script's log
            with contextlib.suppress(OSError), open(f"/proc/{pid}/fd/2", "a") as err:
                err.write(f"osbuild: {message}\n")


def _stop(directory: str, thread: threading.Thread) -> None:
    """Tell the thread to end; it reopens the FIFO between requests, so wait for a reader."""
    while thread.is_alive():
        try:
            fd = os.open(os.path.join(directory, foreign.REQUESTS),
                         os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader at this moment
            thread.join(0.01)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{foreign.STOP}\n")
        thread.join()


@contextmanager
def serving(tree: str, directory: str, names: list[str]) -> Iterator[None]:
    """Write the stand-ins for `names` into `directory` and answer their calls for the body.

    A call that could not be served (a malformed request, a status that could not be
    handed back) fails the stage afterwards, in one line, even if its caller went on.
    """
    if not names:
        yield
        return
    for name in names:
        stagelib.write_file(directory, name, foreign.standin_script(name, directory),
                            mode=0o755)
    os.mkfifo(os.path.join(directory, foreign.REQUESTS))
    server = _Server(tree, directory)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        _stop(directory, thread)
        if server.errors:
            more = f" (and {len(server.errors) - 1} more)" if len(server.errors) > 1 else ""
            osbuild.api.fail(server.errors[0] + more)
