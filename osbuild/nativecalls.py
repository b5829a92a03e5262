"""A foreign tree's slowest helper programs, replaced by the build root's while packages install.

Under qemu-user every program the tree runs is emulated, and two of them are
most of a foreign install's time: init-system-helpers' deb-systemd-helper, a
perl script run four times by the postinst of every package with a systemd
unit (seconds each, because perl itself is emulated), and dracut-install,
which initramfs-tools' hooks run to copy a kernel's modules into the initrd
(forking a cp per module). Both do the same work from outside: the perl script
on the tree with DPKG_ROOT, dracut-install (same version, same libkmod) with
--sysrootdir and the tree's paths. So while a foreign tree's packages are
configured, a stand-in of each is in the tree: it writes its call (its pid,
umask, the dpkg variables, the arguments) into a file of NUL-terminated fields,
which no argument can garble, and names itself (its pid) on a FIFO read by a
thread of the stage, which runs the build root's program on the tree, writes
into the caller's stdout and stderr through /proc, and sends back the exit
status through a FIFO the caller opened before it asked. dpkg runs maintainer
scripts one at a time, and mkinitramfs its hooks, so the calls come one by
one. A call that cannot be served (a malformed request, a caller gone before
its status) is answered with a failure where there is someone to answer, and
fails the stage in one line: nothing waits forever.

Like osbuild.api, only the stdlib: it runs on the build root's Python.
"""

import contextlib
import errno
import glob
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import osbuild.api
from osbuild import debian, stagelib


def _perl_script(tree: str, program: str, args: list[str]) -> list[str]:
    """The tree's perl script, run by the build root's perl (with DPKG_ROOT)."""
    return ["perl", tree + program, *args]


def _dracut_install(tree: str, program: str, args: list[str]) -> list[str]:
    """The build root's dracut-install on the tree: the call's paths are the tree's."""
    out = [program, "--sysrootdir", tree]
    rest = iter(args)
    for arg in rest:
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in DRACUT_PATHS:
            out.append(arg)
            continue
        if not eq:
            value = next(rest)  # StopIteration: a path option without its value
        dirs = value.split(":") if DRACUT_PATHS[name] else [value]
        out += [name, ":".join(tree + d for d in dirs if d)]
    return out


@dataclass(frozen=True)
class Callout:
    """A program of the tree that the build root runs its own of, and when it may."""

    program: str  # the program's path in the tree (and in the build root, if it is a binary)
    command: Callable[[str, str, list[str]], list[str]]  # (tree, program, args) -> argv
    needs: tuple[str, ...]  # the build root's programs the command runs
    dpkg_root: bool = False  # run with DPKG_ROOT set to the tree
    # Shell case patterns of " $* ": the calls handed out (all, by default) and,
    # among them, those that run the tree's own program after all.
    handed: str = "*"
    kept: str = ""
    # Packages of the same version, and directories of the same content, in the
    # build root and the tree: the conditions for the same result from outside.
    same_versions: tuple[str, ...] = ()
    same_dirs: tuple[str, ...] = ()
    # Called by name (the stand-in is first on PATH) or by its path (the stand-in
    # is bound over the tree's program while the initrds are made, see bind_hooks).
    on_path: bool = True


# Where kmod reads modprobe configuration (softdeps, blacklists).
MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d",
                 "/usr/lib/modprobe.d", "/lib/modprobe.d")
# Options of a call of dracut-install whose values are paths; True: a ":" list.
DRACUT_PATHS = {"-D": False, "--destrootdir": False, "--kerneldir": False,
                "--firmwaredirs": True}

CALLOUTS = {
    "deb-systemd-helper": Callout("/usr/bin/deb-systemd-helper", _perl_script,
                                  needs=("perl", "systemctl"), dpkg_root=True),
    # initramfs-tools' hook-functions copies modules with: dracut-install -D DESTDIR
    # --kerneldir DIR --firmwaredirs DIRS [-v] -o -m [-P RE] [-s RE] MODULE...; calls
    # that resolve ELF dependencies (ldd), look at the host, or bring their own
    # sysroot stay in the tree.
    "dracut-install": Callout(
        "/usr/lib/dracut/dracut-install", _dracut_install,
        needs=("/usr/lib/dracut/dracut-install", "cp"),
        handed='*" -m "*|*" --module "*',
        kept=('*" -l "*|*" --ldd "*|*" -R "*|*" --resolvelazy "*|*" -r "*|*" --sysrootdir"*|'
              '*" -H "*|*" --hostonly "*|*" -f "*|*" --fips "*'),
        same_versions=("dracut-install", "libkmod2"), same_dirs=MODPROBE_DIRS,
        on_path=False),
}
# What the stand-in passes on of its environment; "=" marks a variable that is set.
PASSED_ENV = ("DPKG_MAINTSCRIPT_PACKAGE", "DPKG_MAINTSCRIPT_NAME", "DPKG_MAINTSCRIPT_ARCH",
              "DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT", "_DEB_SYSTEMD_HELPER_PURGE",
              "_DEB_SYSTEMD_HELPER_DEBUG")
# The FIFO on which a caller names itself (its pid, one line), once its request is written.
REQUESTS = "requests"
STOP = "stop"
PID = re.compile(r"[0-9]+")


class Request(NamedTuple):
    name: str
    umask: int
    env: dict[str, str]
    args: list[str]


def usable(tree_versions: Mapping[str, str]) -> list[str]:
    """The call-outs the build root can serve for a tree of these package versions."""
    return [name for name, c in CALLOUTS.items()
            if all(shutil.which(p) for p in c.needs)
            and debian.same_as_build_root(tree_versions, c.same_versions)]


def trees_own(name: str, directory: str) -> str:
    """Where a stand-in finds the tree's own program for the calls it does not hand out."""
    return CALLOUTS[name].program if CALLOUTS[name].on_path else f"{directory}/{name}.tree"


def standin_script(name: str, directory: str) -> str:
    """The stand-in for `name`, run in the tree; `directory` is the same path here and there.

    Its request is a file of NUL-terminated fields (no argument can hold a NUL), and it
    opens its reply FIFO before it asks (read-write, so the open does not wait): the
    status may come at any time, and a caller that is gone is one the FIFO has no reader of.
    """
    c, d = CALLOUTS[name], shlex.quote(directory)
    own = shlex.quote(trees_own(name, directory))
    env = " ".join(f'"${{{v}+=}}${{{v}-}}"' for v in PASSED_ENV)
    kept = f'case " $* " in\n{c.kept}) exec {own} "$@" ;;\nesac\n' if c.kept else ""
    handed = (f'case " $* " in\n{c.handed}) ;;\n*) exec {own} "$@" ;;\nesac\n'
              if c.handed != "*" else "")
    return f"""#!/bin/sh
# osbuild: the build root runs this tree's {name} (osbuild/nativecalls.py).
{kept}{handed}reply={d}/reply.$$
mkfifo "$reply" && exec 3<>"$reply" || exit 1
printf '%s\\0' "$$" {shlex.quote(name)} "$(umask)" {env} "$#" "$@" > {d}/request.$$ || exit 1
echo "$$" > {d}/{REQUESTS}
read -r status <&3
exit "${{status:-1}}"
"""


def bind_hooks(directory: str, names: list[str]) -> tuple[str, str]:
    """The customize hooks (in the build root, "$1" the tree) that bind the stand-ins of
    programs called by their path over the tree's, where the conditions hold, and unbind."""
    bind, unbind = [], []
    for name in names:
        c = CALLOUTS[name]
        if c.on_path:
            continue
        prog, d = shlex.quote(c.program), shlex.quote(directory)
        own = shlex.quote(trees_own(name, directory))
        same = "".join(f' && {{ {{ [ ! -e "$1"{p} ] && [ ! -e {p} ]; }} || '
                       f'diff -r "$1"{p} {p} >/dev/null 2>&1; }}'
                       for p in map(shlex.quote, c.same_dirs))
        bind.append(f'if [ -x "$1"{prog} ]{same}; then cp -p "$1"{prog} {own} && '
                    f'mount --bind {d}/{shlex.quote(name)} "$1"{prog}; fi')
        unbind.append(f'if [ -e {own} ]; then umount "$1"{prog} && rm {own}; fi')
    return " && ".join(bind) or "true", " && ".join(unbind) or "true"


def parse_request(data: bytes, pid: int) -> Request:
    """A stand-in's request (see standin_script); ValueError says what is wrong with it."""
    if not data.endswith(b"\0"):
        raise ValueError("it does not end with a NUL" if data else "it is empty")
    fields = [os.fsdecode(f) for f in data[:-1].split(b"\0")]
    head = 3 + len(PASSED_ENV) + 1
    if len(fields) < head:
        raise ValueError(f"{len(fields)} fields, not the {head} of a request")
    if fields[0] != str(pid):
        raise ValueError(f"it names pid {fields[0]!r}")
    name, umask, values, count = fields[1], fields[2], fields[3:head - 1], fields[head - 1]
    if name not in CALLOUTS:
        raise ValueError(f"there is no call-out {name!r}")
    if not re.fullmatch("[0-7]{1,4}", umask):
        raise ValueError(f"umask {umask!r}")
    if any(v and not v.startswith("=") for v in values):
        raise ValueError("an environment variable's value does not start with '='")
    if not PID.fullmatch(count) or int(count) != len(fields) - head:
        raise ValueError(f"it counts {count!r} arguments and has {len(fields) - head}")
    env = {k: v[1:] for k, v in zip(PASSED_ENV, values, strict=True) if v}
    return Request(name, int(umask, 8), env, fields[head:])


def _run(tree: str, directory: str, pid: int, request: Request) -> int:
    name, args = request.name, request.args
    c = CALLOUTS[name]
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
            with open(os.path.join(self.directory, REQUESTS), "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            for line in lines:
                if line == STOP:
                    return
                if PID.fullmatch(line):
                    self.answer(int(line))
                else:  # no caller to answer: answer them all, or one would wait forever
                    self.error(f"a garbled call-out notice {line[:80]!r}")
                    for reply in glob.glob(os.path.join(self.directory, "reply.*")):
                        if PID.fullmatch(waiting := reply.rpartition(".")[2]):
                            self.reply(int(waiting), 1, f"pid {waiting}")

    def answer(self, pid: int) -> None:
        status, what = 1, f"pid {pid}"
        try:
            try:
                with open(os.path.join(self.directory, f"request.{pid}"), "rb") as f:
                    data = f.read()
                request = parse_request(data, pid)
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
            fd = os.open(os.path.join(directory, REQUESTS), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader at this moment
            thread.join(0.01)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{STOP}\n")
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
        stagelib.write_file(directory, name, standin_script(name, directory), mode=0o755)
    os.mkfifo(os.path.join(directory, REQUESTS))
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
