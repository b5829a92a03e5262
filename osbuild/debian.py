"""Debian facts that stages share: how mmdebstrap is told to make a tree, initrds, dpkg.

org.osbuild.debs (pinned) and org.osbuild.mmdebstrap (live archive) both
bootstrap with mmdebstrap and must leave the same kind of tree: the same docs
left out, the same temporary dpkg settings taken back, the same build-root
files removed. Those rules live here once, as do initramfs-tools' settings,
the tree's package list, and Debian's version order, so the next Debian stage
states its options and calls these.

Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import os
import shlex
import shutil
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import osbuild.api
import osbuild.tool
from osbuild import architectures, stagelib

# Docs, manual pages and translations: what minimal images usually leave out.
# The copyright files stay, as Debian's licences ask.
DPKG_DOC_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)

UNSAFE_IO_CFG = "/etc/dpkg/dpkg.cfg.d/osbuild-unsafe-io"

# Temporary, unlike --dpkgopt: the tree is committed as a whole afterwards,
# so dpkg's fsync per file buys nothing while installing.
UNSAFE_IO_HOOK = f'echo force-unsafe-io > "$1"{shlex.quote(UNSAFE_IO_CFG)}'

# The last customize hooks of every bootstrap, in this order.
CLEANUP_HOOKS = (
    f'rm "$1"{shlex.quote(UNSAFE_IO_CFG)}',
    # The image's sources come from org.osbuild.apt.sources: the mirror the
    # build used may be a proxy the image never sees.
    'echo -n > "$1/etc/apt/sources.list"',
    # mmdebstrap copies the build root's; they say nothing true about the image.
    'rm -f "$1/etc/hostname" "$1/etc/resolv.conf"',
)

# initramfs-tools' COMPRESS values and the package that has each program.
INITRAMFS_COMPRESSORS = {"gzip": "gzip", "bzip2": "bzip2", "lz4": "lz4", "lzma": "xz-utils",
                         "lzop": "lzop", "xz": "xz-utils", "zstd": "zstd"}
INITRAMFS_CONF = "/etc/initramfs-tools/conf.d/osbuild-compress"

# Read by initramfs-tools' kernel hook: skip the initrd, INITRAMFS_ONCE makes it.
DEFER_INITRAMFS_ENV = {"INITRD": "No"}

# Run in the tree after all packages are configured: what each kernel's
# postinst would have done with INITRD unset, once: the initrd, then the
# /initrd.img links that linux-update-symlinks makes only for an existing initrd.
INITRAMFS_ONCE = """set -e
unset INITRD
command -v linux-version >/dev/null || exit 0
for v in $(linux-version list); do
    update-initramfs -c -k "$v"
    for image in "/boot/vmlinuz-$v" "/boot/vmlinux-$v"; do
        if [ -e "$image" ]; then linux-update-symlinks install "$v" "$image"; break; fi
    done
done
"""


# --- bootstrapping with mmdebstrap ------------------------------------------------------


def check_can_bootstrap(tree: str, stage: str) -> None:
    """End `stage` unless the tree is empty and the build root has mmdebstrap."""
    if os.listdir(tree):
        osbuild.api.fail(f"{stage} installs into an empty tree, but the tree has "
                         + ", ".join(sorted(os.listdir(tree))[:5]))
    if not shutil.which("mmdebstrap"):
        osbuild.api.fail("the build root has no mmdebstrap; install it there")


def dpkgopt_args(options: Iterable[str]) -> list[str]:
    """mmdebstrap's --dpkgopt for each dpkg option: kept in the image's dpkg.cfg.d,
    so later installs in the booted system follow them too."""
    return [f"--dpkgopt={opt}" for opt in options]


def mmdebstrap(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Run mmdebstrap; it takes minutes, so its output goes to the log as it comes."""
    osbuild.tool.run(cmd, "mmdebstrap", env=env, stream=True)


def installed_packages(tree: str) -> list[tuple[str, str, str]]:
    """(name, version, architecture) of every package installed in the tree, sorted."""
    result = osbuild.tool.run(
        ["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "--show",
         "--showformat=${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n"],
        "listing the tree's packages")
    rows = []
    for line in result.stdout.splitlines():
        status, name, version, arch = line.split("\t")
        if status == "installed":
            rows.append((name, version, arch))
    return sorted(rows)


def native_architecture() -> str:
    """The build root's dpkg architecture: a tree's, unless its options say otherwise."""
    return osbuild.tool.run(["dpkg", "--print-architecture"],
                            "asking dpkg for its architecture").stdout.strip()


def tree_architecture(tree: str) -> str | None:
    """The architecture of the tree's dpkg (its native one), or None for a tree without dpkg."""
    status = os.path.join(tree, "var/lib/dpkg/status")
    if not os.path.isfile(status):
        return None
    with open(status, encoding="utf-8", errors="replace") as f:
        for stanza in f.read().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                          if ": " in line and not line.startswith(" "))
            if fields.get("Package") == "dpkg":
                return fields.get("Architecture")
    return None


def check_can_run(architecture: str, mmdebstrap: bool = False) -> None:
    """Fail clearly when programs of `architecture` cannot run in this sandbox, and
    have qemu-user emulate the CPU it emulates fastest for them.

    A foreign tree's programs run through the host's qemu-user, which the engine
    registers with binfmt_misc for stages that ask for it (see osbuild/binfmt.py).
    """
    native = native_architecture()
    if architectures.runs_natively(native, architecture):
        return
    handler = architectures.binfmt_name(architecture)
    if not os.path.exists(f"/proc/sys/fs/binfmt_misc/{handler}"):
        osbuild.api.fail(f"an {architecture} tree needs qemu-user on this {native} host, and "
                         f"binfmt_misc has no {handler} handler: install qemu-user-static "
                         "on the host")
    if mmdebstrap and not shutil.which("arch-test"):
        osbuild.api.fail(f"an {architecture} tree needs arch-test in the build root "
                         "(mmdebstrap checks emulation with it)")
    # Every program of the tree started from here on inherits it (qemu-user reads it).
    known = architectures.ARCHITECTURES.get(architecture)
    if known and known.qemu_cpu:
        os.environ["QEMU_CPU"] = known.qemu_cpu


# --- initrds ------------------------------------------------------------------------------


def defers_initramfs(package_names: Iterable[str]) -> bool:
    """Whether to make the initrds once at the end instead of at every trigger.

    With initramfs-tools, a kernel's postinst makes its initrd at once, and
    every later package that ships an initramfs hook makes it again through the
    trigger: two or more runs of several seconds each, of which only the last
    counts. Only initramfs-tools honours INITRD=No this way, so only then.
    """
    return "initramfs-tools" in set(package_names)


def initramfs_compress_hook(compress: str) -> str:
    """A setup hook (before any package, so every initrd uses it) setting COMPRESS."""
    return (f'mkdir -p "$1"{os.path.dirname(INITRAMFS_CONF)} && '
            f'echo COMPRESS={compress} > "$1"{INITRAMFS_CONF}')


def initramfs_once_hook() -> str:
    """The customize hook that makes each deferred initrd, once every package is configured."""
    return f'chroot "$1" sh -c {shlex.quote(INITRAMFS_ONCE)}'


# --- native stand-ins for a foreign tree --------------------------------------------------

# Programs that maintainer scripts run by name, whose result does not depend on
# the machine that runs them, and which are the slowest part of a foreign
# install through qemu-user (a kernel's depmod, udev's hwdb: about a minute
# each here, a few seconds natively). While packages are configured, a stand-in
# of each is first on PATH: for the call the scripts make, it notes the request
# and exits; any other call goes to the tree's own program. The build root's
# program then does the noted work on the tree from outside (depmod -b,
# systemd-hwdb --root), before the initrds are made: the same files, made
# natively, as long as it is the same program: the build root must have the
# tree's version of the package that ships it, or the tree's own runs, emulated.


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


def build_root_version(package: str) -> str | None:
    """The version of `package` in the build root (stages see its dpkg database, read-only)."""
    proc = osbuild.tool.run(["dpkg-query", "-W", "--showformat=${Version}", package],
                            f"asking dpkg-query for {package}", check=False, quiet=True)
    return proc.stdout if proc.returncode == 0 and proc.stdout else None


def same_as_build_root(tree_versions: Mapping[str, str], packages: Iterable[str]) -> bool:
    """Whether the tree installs each of `packages` at the very version the build root has."""
    return all(tree_versions.get(p) is not None and tree_versions[p] == build_root_version(p)
               for p in packages)


def standin_script(name: str, directory: str) -> str:
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
        stagelib.write_file(directory, name, standin_script(name, directory), mode=0o755)
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


# --- Debian's version order (dpkg --compare-versions) -------------------------------------


def _order(c: str) -> int:
    """Weight of one character of a non-digit run: "~" sorts before everything, even the end."""
    if not c or c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's order of upstream versions or revisions: runs of non-digits, then of digits."""
    i = j = 0

    def at(s: str, k: int) -> str:
        return s[k] if k < len(s) else ""

    while i < len(a) or j < len(b):
        while (at(a, i) and not at(a, i).isdigit()) or (at(b, j) and not at(b, j).isdigit()):
            ac, bc = _order(at(a, i)), _order(at(b, j))
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        while at(a, i) == "0":
            i += 1
        while at(b, j) == "0":
            j += 1
        first_diff = 0
        while at(a, i).isdigit() and at(b, j).isdigit():
            first_diff = first_diff or ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if at(a, i).isdigit():
            return 1
        if at(b, j).isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, sep, rest = version.partition(":")
    if not sep:
        epoch, rest = "0", version
    upstream, sep, revision = rest.rpartition("-")
    if not sep:
        upstream, revision = rest, ""
    return int(epoch) if epoch.isdigit() else 0, upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version `a` is older than, equal to or newer than `b`."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return ea - eb
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def newest_first(versions: list[str]) -> list[str]:
    """Versions sorted newest first (a simple insertion sort: there are only a few kernels)."""
    result: list[str] = []
    for version in versions:
        k = 0
        while k < len(result) and compare_versions(result[k], version) > 0:
            k += 1
        result.insert(k, version)
    return result
