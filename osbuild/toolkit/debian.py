"""Debian facts that stages share: how mmdebstrap is told to make a tree, initrds, dpkg.

org.osbuild.debs (pinned) and org.osbuild.mmdebstrap (live archive) both
bootstrap with mmdebstrap and must leave the same kind of tree: the same docs
left out, the same temporary dpkg settings taken back, the same build-root
files removed. Those rules live here once, as do initramfs-tools' settings
and the tree's package list, so the next Debian stage states its options and
calls these. A foreign tree's stand-ins are osbuild/toolkit/foreign.py's, and
Debian's version order is osbuild/toolkit/debversion.py's.

Stdlib only, like osbuild.api: it runs on the build root's Python.
"""

import os
import shlex
import shutil
from collections.abc import Iterable

import osbuild.api
from osbuild.toolkit import architectures, tool

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
    tool.run(cmd, "mmdebstrap", env=env, stream=True)


def installed_packages(tree: str) -> list[tuple[str, str, str]]:
    """(name, version, architecture) of every package installed in the tree, sorted."""
    result = tool.run(
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
    return tool.run(["dpkg", "--print-architecture"],
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
