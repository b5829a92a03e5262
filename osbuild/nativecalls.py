"""A foreign tree's slowest helper programs, replaced by the build root's while packages install.

Under qemu-user every program the tree runs is emulated, and two of them are
most of a foreign install's time: init-system-helpers' deb-systemd-helper, a
perl script run four times by the postinst of every package with a systemd
unit (seconds each, because perl itself is emulated), and dracut-install,
which initramfs-tools' hooks run to copy a kernel's modules into the initrd
(forking a cp per module). Both do the same work from outside: the perl script
on the tree with DPKG_ROOT, dracut-install (same version, same libkmod) with
--sysrootdir and the tree's paths. So while a foreign tree's packages are
configured, a stand-in of each is in the tree: it hands its call (its pid,
umask, the dpkg variables, the arguments) through a FIFO to a thread of the
stage, which runs the build root's program on the tree, writes into the
caller's stdout and stderr through /proc, and sends back the exit status
through a FIFO of the caller. dpkg runs maintainer scripts one at a time, and
mkinitramfs its hooks, so the calls come one by one.

Like osbuild.api, only the stdlib: it runs on the build root's Python.
"""

import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from osbuild import stagelib


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
REQUESTS = "requests"
# How long a finished call waits for its caller to read the status.
REPLY_SECONDS = 10
STOP = "stop"


def _installed_version(package: str) -> str | None:
    proc = subprocess.run(["dpkg-query", "-W", "--showformat=${Version}", package],
                          capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def usable(tree_versions: Mapping[str, str]) -> list[str]:
    """The call-outs the build root can serve for a tree of these package versions."""
    return [name for name, c in CALLOUTS.items()
            if all(shutil.which(p) for p in c.needs)
            and all(tree_versions.get(p) is not None and tree_versions[p] == _installed_version(p)
                    for p in c.same_versions)]


def trees_own(name: str, directory: str) -> str:
    """Where a stand-in finds the tree's own program for the calls it does not hand out."""
    return CALLOUTS[name].program if CALLOUTS[name].on_path else f"{directory}/{name}.tree"


def standin_script(name: str, directory: str) -> str:
    """The stand-in for `name`, run in the tree; `directory` is the same path here and there."""
    c, d = CALLOUTS[name], shlex.quote(directory)
    own = shlex.quote(trees_own(name, directory))
    env = " ".join(f'"${{{v}+=}}${{{v}-}}"' for v in PASSED_ENV)
    kept = f'case " $* " in\n{c.kept}) exec {own} "$@" ;;\nesac\n' if c.kept else ""
    handed = (f'case " $* " in\n{c.handed}) ;;\n*) exec {own} "$@" ;;\nesac\n'
              if c.handed != "*" else "")
    return f"""#!/bin/sh
# osbuild: the build root runs this tree's {name} (osbuild/nativecalls.py).
{kept}{handed}reply={d}/reply.$$
mkfifo "$reply" || exit 1
printf '%s\\n' "$$" {shlex.quote(name)} "$(umask)" {env} "$#" "$@" > {d}/{REQUESTS}
read -r status < "$reply"
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


def _requests(text: str) -> Iterator[tuple[int, str, int, dict[str, str], list[str]]]:
    """(pid, name, umask, environment, arguments) of each request the FIFO carried."""
    lines = text.split("\n")
    at = 0
    while at < len(lines) and lines[at] not in ("", STOP):
        pid, name, umask = int(lines[at]), lines[at + 1], int(lines[at + 2], 8)
        values = lines[at + 3:at + 3 + len(PASSED_ENV)]
        env = {k: v[1:] for k, v in zip(PASSED_ENV, values, strict=True) if v.startswith("=")}
        at += 3 + len(PASSED_ENV)
        count = int(lines[at])
        yield pid, name, umask, env, lines[at + 1:at + 1 + count]
        at += 1 + count


def _run(tree: str, directory: str, pid: int, name: str, umask: int, env: dict[str, str],
         args: list[str]) -> int:
    c = CALLOUTS[name]
    path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":")
    run_env = {**env, "PATH": ":".join(p for p in path if p != directory), "LC_ALL": "C.UTF-8"}
    if c.dpkg_root:
        run_env["DPKG_ROOT"] = tree
    try:
        with open(f"/proc/{pid}/fd/1", "wb") as out, open(f"/proc/{pid}/fd/2", "wb") as err:
            if not os.path.isfile(tree + c.program):
                err.write(f"{name}: not found\n".encode())
                return 127
            try:
                argv = c.command(tree, c.program, args)
            except StopIteration:
                err.write(f"{name}: an option without its value: {' '.join(args)}\n".encode())
                return 2
            return subprocess.run(argv, env=run_env, cwd=tree, umask=umask,
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
        for pid, name, umask, env, args in requests:
            status = (_run(tree, directory, pid, name, umask, env, args)
                      if name in CALLOUTS else 127)
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
        stagelib.write_file(directory, name, standin_script(name, directory), mode=0o755)
    os.mkfifo(os.path.join(directory, REQUESTS))
    thread = threading.Thread(target=_serve, args=(tree, directory), daemon=True)
    thread.start()
    try:
        yield
    finally:
        _stop(directory, thread)
