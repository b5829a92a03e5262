"""A foreign tree's perl helper scripts, run by the build root's perl while packages install.

Under qemu-user every perl program pays seconds to start, because perl itself
is emulated. init-system-helpers' deb-systemd-helper is run four times by the
postinst of every package with a systemd unit; it is a text file that any perl
runs the same, and it works on a tree from outside (DPKG_ROOT). So while a
foreign tree's packages are configured, a stand-in of it is first on PATH
there: it hands its call (its pid, the dpkg variables, the arguments) through
a FIFO to a thread of the stage, which runs the tree's own script with the
build root's perl and DPKG_ROOT, writes into the caller's stdout and stderr
through /proc, and sends back the exit status through a FIFO of the caller.
dpkg runs maintainer scripts one at a time, so the calls come one by one.

Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# name -> the tree's script the stand-in hands on.
SCRIPTS = {"deb-systemd-helper": "/usr/bin/deb-systemd-helper"}
# What the stand-in passes on of its environment; "=" marks a variable that is set.
PASSED_ENV = ("DPKG_MAINTSCRIPT_PACKAGE", "DPKG_MAINTSCRIPT_NAME", "DPKG_MAINTSCRIPT_ARCH",
              "DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT", "_DEB_SYSTEMD_HELPER_PURGE",
              "_DEB_SYSTEMD_HELPER_DEBUG")
REQUESTS = "requests"
# How long a finished call waits for its caller to read the status.
REPLY_SECONDS = 10
STOP = "stop"


def usable() -> list[str]:
    """The scripts whose call-out the build root can serve: it needs perl and systemctl."""
    return list(SCRIPTS) if shutil.which("perl") and shutil.which("systemctl") else []


def standin_script(name: str, directory: str) -> str:
    """The stand-in for `name`, run in the tree; `directory` is the same path here and there."""
    d = shlex.quote(directory)
    env = " ".join(f'"${{{v}+=}}${{{v}-}}"' for v in PASSED_ENV)
    return f"""#!/bin/sh
# osbuild: the build root's perl runs this tree's {name} (osbuild/nativecalls.py).
reply={d}/reply.$$
mkfifo "$reply" || exit 1
printf '%s\\n' "$$" {shlex.quote(name)} {env} "$#" "$@" > {d}/{REQUESTS}
read -r status < "$reply"
exit "${{status:-1}}"
"""


def _requests(text: str) -> Iterator[tuple[int, str, dict[str, str], list[str]]]:
    """(pid, name, environment, arguments) of each request in what the FIFO carried."""
    lines = text.split("\n")
    at = 0
    while at < len(lines) and lines[at] not in ("", STOP):
        pid, name = int(lines[at]), lines[at + 1]
        values = lines[at + 2:at + 2 + len(PASSED_ENV)]
        env = {k: v[1:] for k, v in zip(PASSED_ENV, values, strict=True) if v.startswith("=")}
        at += 2 + len(PASSED_ENV)
        count = int(lines[at])
        yield pid, name, env, lines[at + 1:at + 1 + count]
        at += 1 + count


def _run(tree: str, directory: str, pid: int, name: str, env: dict[str, str],
         args: list[str]) -> int:
    script = tree + SCRIPTS[name]
    path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":")
    run_env = {**env, "PATH": ":".join(p for p in path if p != directory),
               "LC_ALL": "C.UTF-8", "DPKG_ROOT": tree}
    try:
        with open(f"/proc/{pid}/fd/1", "wb") as out, open(f"/proc/{pid}/fd/2", "wb") as err:
            if not os.path.isfile(script):
                err.write(f"{name}: not found\n".encode())
                return 127
            return subprocess.run(["perl", script, *args], env=run_env, cwd=tree,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                  check=False).returncode
    except OSError as e:
        print(f"osbuild: {name} {' '.join(args)}: {e}", flush=True)
        return 1


def _serve(tree: str, directory: str) -> None:
    fifo = os.path.join(directory, REQUESTS)
    while True:
        with open(fifo, encoding="utf-8") as f:
            text = f.read()
        try:
            requests = list(_requests(text))
        except (ValueError, IndexError):
            print(f"osbuild: a garbled call-out request: {text[:200]!r}", flush=True)
            requests = []
        for pid, name, env, args in requests:
            status = _run(tree, directory, pid, name, env, args) if name in SCRIPTS else 127
            _reply(os.path.join(directory, f"reply.{pid}"), status)
        if text.rstrip("\n").endswith(STOP):
            return


def _reply(fifo: str, status: int) -> None:
    """Send the caller its exit status; a caller that is gone (killed) gets none."""
    deadline = time.monotonic() + REPLY_SECONDS
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: the caller is not reading (yet), ENOENT: it is gone
            if time.monotonic() > deadline or not os.path.exists(fifo):
                print(f"osbuild: the caller of {fifo} is gone", flush=True)
                return
            time.sleep(0.01)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"{status}\n")
    os.unlink(fifo)


def _stop(directory: str, thread: threading.Thread) -> None:
    """Tell the thread to end; it reopens the FIFO between requests, so wait for a reader."""
    while thread.is_alive():
        try:
            fd = os.open(os.path.join(directory, REQUESTS), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader at this moment
            thread.join(0.01)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{STOP}\n")
        thread.join()


@contextmanager
def serving(tree: str, directory: str, names: list[str]) -> Iterator[None]:
    """Write the stand-ins for `names` into `directory` and answer their calls for the body."""
    if not names:
        yield
        return
    for name in names:
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(standin_script(name, directory))
        os.chmod(path, 0o755)
    os.mkfifo(os.path.join(directory, REQUESTS))
    thread = threading.Thread(target=_serve, args=(tree, directory), daemon=True)
    thread.start()
    try:
        yield
    finally:
        _stop(directory, thread)
