"""Programs made really absent for one command: a mount namespace whose /usr lacks them.

A test of "the build root has no X" must not depend on the host lacking X: lzop,
for one, is installed wherever libguestfs is (libguestfs0 depends on it). The
command runs in a private mount namespace with a read-only overlay on /usr whose
top layer holds overlayfs whiteouts for the programs, so /usr/bin/X is gone for
the command and for every sandbox it starts (bubblewrap binds /usr, and the
build root of a manifest without a build pipeline is the host's). The host's
/usr is untouched, and nothing of it outlives the command.
"""

import os
import stat
from collections.abc import Iterable
from pathlib import Path

# Run by sh in the new namespace: $1 is the whiteout layer, the rest the command.
MOUNT_AND_RUN = 'mount -t overlay overlay -o "lowerdir=$1:/usr" /usr && shift && exec "$@"'


def without(programs: Iterable[str], workdir: Path) -> list[str]:
    """A command prefix: the command after it sees /usr/bin and /usr/sbin without `programs`."""
    layer = workdir / "usr-without"
    assert not set(str(layer)) & {":", ","}, f"{layer}: overlayfs cannot take this path"
    for directory in ("bin", "sbin"):
        (layer / directory).mkdir(parents=True, exist_ok=True)
        for name in programs:
            node = layer / directory / name
            if not os.path.lexists(node):
                # A character device 0:0 is overlayfs's whiteout: the name is deleted.
                os.mknod(node, stat.S_IFCHR, os.makedev(0, 0))
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", MOUNT_AND_RUN, "sh", str(layer)]
