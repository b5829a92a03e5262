"""What a stage may do in its sandbox: Linux capabilities, and the network.

Stages run as root without a user namespace, so they could hold every
capability root has. The sandbox grants DEFAULT_CAPABILITIES, what building a
tree needs, plus what the module's .meta.json lists under "capabilities" (an
allow-list, as upstream osbuild's meta.json has it): Linux `CAP_*` names,
NETWORK and EMULATION.
"""

import functools
from collections.abc import Iterable

# Every Linux capability, in the kernel's bit order (capability.h).
LINUX_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

# Not a Linux capability: the host's network namespace (and its resolv.conf)
# instead of a private one with only a loopback device. It is listed with the
# capabilities because it is the same kind of fact: something a stage needs
# beyond the default sandbox, stated in its meta.json and granted to it alone.
NETWORK = "network"

# Not a Linux capability either: the stage runs programs of the tree it builds,
# which may be of another architecture; the engine holds qemu-user's binfmt_misc
# handlers while it runs (osbuild/binfmt.py).
EMULATION = "emulation"

KNOWN_CAPABILITIES = frozenset(LINUX_CAPABILITIES) | {NETWORK, EMULATION}

# What stages need to build a tree as root. The namespaced ones (network,
# IPC, pids) act only inside the sandbox's own namespaces.
DEFAULT_CAPABILITIES = frozenset({
    "CAP_CHOWN",  # give files to any user and group
    "CAP_DAC_OVERRIDE",  # read and write the tree's files whatever their modes
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",  # chmod, utimes and xattrs on files root does not own
    "CAP_FSETID",  # keep set-user-ID bits on copied and chowned files
    "CAP_SETUID",  # maintainer scripts and apt drop to other users
    "CAP_SETGID",
    "CAP_SETPCAP",  # ... and drop capabilities themselves
    "CAP_SETFCAP",  # file capabilities in the tree (dpkg sets them on ping & co.)
    "CAP_LINUX_IMMUTABLE",  # chattr +i / +a on files in the tree
    "CAP_MKNOD",  # device nodes in the tree
    "CAP_SYS_CHROOT",  # chroot into the tree (dpkg --root, maintainer scripts)
    "CAP_SYS_ADMIN",  # mount inside the sandbox, loop devices handed in
    "CAP_SYS_NICE",  # nice and ionice
    "CAP_SYS_RESOURCE",  # raise resource limits (dpkg, apt)
    "CAP_SYS_PTRACE",  # its own processes: the pid namespace is private
    "CAP_SYS_TTY_CONFIG",
    "CAP_KILL",  # its own processes: the pid namespace is private
    "CAP_IPC_LOCK",  # mlock (gpg keeps keys out of swap)
    "CAP_IPC_OWNER",
    "CAP_LEASE",
    "CAP_BLOCK_SUSPEND",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_NET_BIND_SERVICE",  # a private network namespace: loopback only
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_AUDIT_WRITE",  # useradd and passwd log to the audit system
    "CAP_AUDIT_READ",
})

# Never granted unless a stage asks: each acts on the host as a whole
# (kernel modules, reboot, the clock, raw I/O, security policy, the kernel
# log, alarms, BPF, perf, process accounting, audit rules).
WITHHELD_CAPABILITIES = frozenset(LINUX_CAPABILITIES) - DEFAULT_CAPABILITIES


def kernel_order(capabilities: Iterable[str]) -> list[str]:
    """The Linux capabilities among `capabilities`, in bit order (pseudo ones are left out)."""
    wanted = set(capabilities)
    return [cap for cap in LINUX_CAPABILITIES if cap in wanted]


@functools.cache
def held() -> frozenset[str]:
    """The capabilities this process has: all a sandbox it starts can be given."""
    with open("/proc/self/status", encoding="ascii") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return frozenset(cap for bit, cap in enumerate(LINUX_CAPABILITIES) if mask >> bit & 1)


def granted(requested: Iterable[str]) -> list[str]:
    """The Linux capabilities a sandbox gets: the default set and `requested`, if held.

    Never one this process lacks: asked for one it cannot grant, bwrap's capset()
    fails with EPERM, which bwrap ignores when run by root, and the stage would
    then keep every capability root has.
    """
    return kernel_order((DEFAULT_CAPABILITIES | set(requested)) & held())
