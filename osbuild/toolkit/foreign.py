"""A foreign tree's slowest programs, done by the build root's own while packages install.

Under qemu-user every program a foreign tree runs is emulated. A few are most
of the install's time and do the same work from outside, as long as the build
root has the tree's version of them. While packages are configured, a
stand-in of each is in the tree, in one of two ways:

- noted (STANDINS): a kernel's depmod and udev's hwdb (about a minute each
  emulated, seconds natively), run by name. The stand-in, first on PATH, notes
  the call the scripts make and exits; any other call goes to the tree's own.
  Once packages are configured, and before the initrds are made, the build
  root's program does the noted work on the tree (depmod -b, systemd-hwdb
  --root): the same files, made natively.
- served (CALLOUTS): init-system-helpers' deb-systemd-helper, a perl script run
  four times by the postinst of every package with a systemd unit, and
  dracut-install, which initramfs-tools' hooks run to copy a kernel's modules
  (forking a cp per module). The stand-in writes its call (pid, umask, dpkg
  variables, arguments) into a file of NUL-terminated fields, which no
  argument can garble, names itself on a FIFO and waits for its exit status on
  a FIFO of its own, opened before it asked. A thread of the stage
  (osbuild/toolkit/callserver.py) runs the build root's program on the tree: the
  perl script with DPKG_ROOT, dracut-install with --sysrootdir and the tree's
  paths. dpkg runs maintainer scripts one at a time, and mkinitramfs its
  hooks, so the calls come one by one.

Which programs, when the build root may run them, their stand-ins and hooks
are here, as data and functions without a process of their own; callserver.py
is the process side.

Like osbuild.api, only the stdlib: it runs on the build root's Python.
"""

import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from osbuild.toolkit import stagelib, tool

# --- the build root's versions ------------------------------------------------------------


def build_root_version(package: str) -> str | None:
    """The version of `package` in the build root (stages see its dpkg database, read-only)."""
    proc = tool.run(["dpkg-query", "-W", "--showformat=${Version}", package],
                     f"asking dpkg-query for {package}", check=False, quiet=True)
    return proc.stdout if proc.returncode == 0 and proc.stdout else None


def same_as_build_root(tree_versions: Mapping[str, str], packages: Iterable[str]) -> bool:
    """Whether the tree installs each of `packages` at the very version the build root has."""
    return all(tree_versions.get(p) is not None and tree_versions[p] == build_root_version(p)
               for p in packages)


# --- noted: done from outside once packages are configured ---------------------------


class Standin(NamedTuple):
    call: str  # the call it stands in for: a shell case pattern of "$#:$*"
    command: str  # run from the build root on the tree "$1", with $arg the call's "$*"
    package: str  # ships the program, in the tree and in the build root


HWDB_UPDATE = ('systemd-hwdb --root "$1" --usr update && { ! grep -qsF -- "$1/" '
               '"$1"/usr/lib/udev/hwdb.bin "$1"/lib/udev/hwdb.bin || { echo "systemd-hwdb: '
               'hwdb.bin names the tree\'s path: the tree\'s own runs, emulated"; '
               'chroot "$1" env PATH=/usr/sbin:/usr/bin:/sbin:/bin systemd-hwdb --usr update; }; }')
STANDINS = {
    # linux-image-*'s postinst: depmod VERSION
    "depmod": Standin('"1:"[0-9]*', 'depmod -b "$1" "$arg"', "kmod"),
    # udev's postinst and trigger. systemd 252 (bookworm) records each source file's path
    # with the --root prefix in hwdb.bin: where it did, the tree's own makes it again (by
    # its path: the stand-in is still first on PATH).
    "systemd-hwdb": Standin('"2:--usr update"', HWDB_UPDATE, "udev"),
}


def noting_script(name: str, directory: str) -> str:
    """The stand-in for `name`, run in the tree; `directory` is on PATH there and outside."""
    note = shlex.quote(f"{directory}/{name}.todo")
    return f"""#!/bin/sh
# osbuild: {name} is run from the build root once packages are configured.
case "$#:$*" in
{STANDINS[name].call}) echo "$*" >> {note}; exit 0 ;;
esac
PATH=${{PATH#{directory}:}}
exec {name} "$@"
"""


def native_standins(directory: str, tree_versions: Mapping[str, str]) -> list[str]:
    """Write a stand-in into `directory` for each program the build root has in the tree's
    version (`tree_versions`: package -> version of the tree's packages); their names."""
    names = []
    for name, standin in STANDINS.items():
        if not shutil.which(name) or standin.package not in tree_versions:
            continue
        if not same_as_build_root(tree_versions, [standin.package]):
            print(f"{name}: the build root's {standin.package} "
                  f"{build_root_version(standin.package) or '(none)'} is not the tree's "
                  f"{tree_versions[standin.package]}: the tree's own runs, emulated", flush=True)
            continue
        stagelib.write_file(directory, name, noting_script(name, directory), mode=0o755)
        names.append(name)
    return names


# apt runs dpkg with PATH set to its DPkg::Path, not its own PATH: while a foreign
# tree's packages are configured, apt in the tree is told to put the stand-ins first.
NATIVE_PATH_CFG = "/etc/apt/apt.conf.d/00osbuild-native-path"


def native_path_hooks(directory: str) -> tuple[str, str]:
    """The setup hook that puts `directory` first on dpkg's PATH, and the customize hook
    that takes it back."""
    setting = shlex.quote(f'DPkg::Path "{directory}:/usr/sbin:/usr/bin:/sbin:/bin";')
    cfg = shlex.quote(NATIVE_PATH_CFG)
    return (f'mkdir -p "$1"{shlex.quote(os.path.dirname(NATIVE_PATH_CFG))} && '
            f'echo {setting} > "$1"{cfg}', f'rm "$1"{cfg}')


def native_standins_hook(directory: str, names: Iterable[str]) -> str:
    """The customize hook (in the build root, before the initrds) that does the noted work."""
    steps = []
    for name in names:
        note = shlex.quote(f"{directory}/{name}.todo")
        steps.append(f'if [ -e {note} ]; then sort -u {note} | while read -r arg; do '
                     f'{STANDINS[name].command} || exit 1; done; fi')
    return " && ".join(steps) or "true"


# --- served: the build root's program runs while the caller waits -----------------------


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
            and same_as_build_root(tree_versions, c.same_versions)]


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
# osbuild: the build root runs this tree's {name} (osbuild/toolkit/foreign.py).
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
