"""The report: which reader fills which keys, in what order, and from what input.

Every key comes from a reader, a function in the module of its concern (tree,
bootloader, disk, discoverable, pkgverify, sbom) that returns the keys it found
({} when there is nothing), and every reader is one row of a table here; a new
key is a reader and a row. A row names the reader as the report's "errors" call
it (its key, or its function's name where it fills several), and each row runs
through failures.gather, so a reader that could not look is named there and
never reads as "nothing there". The rows run in table order, which is the order
of the errors:

- TREE_READERS read an OS tree (a directory, an unpacked tarball, the tree
  mounted from an image). A row `opt_in` runs only when its view is asked for
  (--packages-verify, --sbom): it reads much more than the rest.
- DISK_READERS read the image as a raw file before anything is mounted: the
  partition table, GRUB's boot code, the ESP (with mtools); the bootloader row
  judges from what the rows before it found.
- IMAGE_READERS run last, when the tree's keys are in: the Discoverable
  Partitions verdicts need the disk, the tree and what was read from both.

Every scratch file, loop device and mount of a report lives in one ExitStack
(`released`), so nothing is left behind, also on Ctrl-C.
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from osbuild import interrupts
from osbuild.image_info import bootloader, discoverable, pkgverify, sbom, source, tree
from osbuild.image_info import failures as fail
from osbuild.image_info.backends import choose, has_mountable, mount_os, open_backend
from osbuild.image_info.disk import Layout
from osbuild.image_info.disk import layout as read_layout
from osbuild.image_info.treeview import Tree

Input = TypeVar("Input")


@dataclass(frozen=True)
class Row(Generic[Input]):
    """One reader: the name the report's "errors" give it, the function, and the view
    that asks for it (None: every report has it)."""

    reader: str
    read: Callable[[Input], dict[str, Any]]
    opt_in: str | None = None


@dataclass
class Image:
    """What an image's readers read: its content as a raw file, its partitions, the
    report so far, and its OS tree once mounted (None before, or when it has none)."""

    raw: Path
    layout: Layout
    found: dict[str, Any]
    tree: Tree | None = None


TREE_READERS: tuple[Row[Tree], ...] = (
    Row("os-release", tree.os_release),
    Row("packages", tree.packages),
    Row("architecture", tree.architecture),
    Row("identity", tree.identity),
    Row("accounts", tree.accounts),
    Row("services", tree.services),
    Row("ssh", tree.ssh),
    Row("sudoers", tree.sudoers),
    Row("dropins", tree.dropins),
    Row("cloud-init", tree.cloud_init),
    Row("chrony", tree.chrony),
    Row("apt-sources", tree.apt_sources),
    Row("selinux", tree.selinux),
    Row("firewall-enabled", tree.firewall),
    Row("kernel-cmdline", tree.kernel_cmdline),
    Row("packages-verify", pkgverify.report, opt_in="packages-verify"),
    Row("sbom-packages", sbom.packages_report, opt_in="sbom"),
    Row("grub-menu", bootloader.grub_menu),
    Row("bootmenu", bootloader.bootmenu),
    Row("boot-environment", bootloader.boot_environment),
)

DISK_READERS: tuple[Row[Image], ...] = (
    Row("partitions", lambda image: image.layout.report()),
    Row("grub2-bios", lambda image: bootloader.bios(image.raw, image.layout)),
    Row("esp", lambda image: bootloader.esp(image.raw, image.layout)),
    Row("bootloader", lambda image: {
        "bootloader": bootloader.bootloader_name(image.layout, image.found)}),
)

IMAGE_READERS: tuple[Row[Image], ...] = (
    Row("discoverable-partitions",
        lambda image: discoverable.report(image.layout, image.found, image.tree)),
)

# The reader behind each view a flag asks for: its errors make that view incomplete.
VIEWS = {row.opt_in: row.reader for row in TREE_READERS if row.opt_in is not None}


def _read(found: dict[str, Any], rows: tuple[Row[Input], ...], what: Input,
          view: Tree | None, wants: frozenset[str] = frozenset()) -> None:
    """Run `rows` on `what` into `found`; the files of `view` they could not read are
    their errors too."""
    for row in rows:
        if row.opt_in is None or row.opt_in in wants:
            fail.gather(found, row.reader, partial(row.read, what), view)


def tree_report(view: Tree, wants: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The keys read from an OS tree, boot configuration included, and those of the
    views in `wants` ("packages-verify", "sbom")."""
    found: dict[str, Any] = {}
    _read(found, TREE_READERS, view, view, wants)
    return found


def image_report(path: Path, compression: list[str] | None, backend: str,
                 stack: contextlib.ExitStack, wants: frozenset[str] = frozenset()
                 ) -> tuple[dict[str, Any], Tree | None]:
    """The report of a disk or file system image and its OS tree (None if it has none),
    open until `stack` closes."""
    backend = choose(backend)  # before any work: a refusal comes first
    if compression is not None:
        raw = source.decompress_image(path, compression, source.scratch_dir(stack))
        fmt = {**source.image_format(raw), "compression": compression[0]}
    else:
        raw, fmt = source.raw_image(path, stack)
    image = Image(raw, read_layout(raw, name=path), {"image-format": fmt})
    _read(image.found, DISK_READERS, image, None)
    if has_mountable(image.layout):
        image.tree, unmounted = mount_os(open_backend(backend, raw, stack), image.layout,
                                         wanted_paths(wants))
    else:
        unmounted = []
    for problem in image.layout.problems + unmounted:
        fail.record(image.found, "partitions", problem)
    if image.tree is not None:
        fail.merge(image.found, tree_report(image.tree, wants))
    _read(image.found, IMAGE_READERS, image, image.tree)
    return image.found, image.tree


@contextlib.contextmanager
def released() -> Iterator[contextlib.ExitStack]:
    """Where scratch space, loop devices and mounts are kept: all gone on exit."""
    stack = contextlib.ExitStack()
    try:
        yield stack
    finally:
        # An interrupt in the middle of an unmount or of removing the scratch
        # directory would leave half of it behind: it waits until cleanup is done.
        with interrupts.deferred():
            stack.close()


def inspect(target: Path, backend: str, wants: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The report of `target`, whatever it is; all scratch space is gone on return."""
    with released() as stack:
        return open_report(target, backend, stack, wants)[0]


def wanted_paths(wants: frozenset[str]) -> tuple[str, ...] | None:
    """The parts of a tree the report reads, for a backend or tarball that copies only
    those; None: every file (--packages-verify reads every installed one)."""
    if "packages-verify" in wants:
        return None
    return (*tree.PATHS, *bootloader.PATHS, *(sbom.PATHS if "sbom" in wants else ()))


def open_report(target: Path, backend: str, stack: contextlib.ExitStack,
                wants: frozenset[str] = frozenset()) -> tuple[dict[str, Any], Tree | None]:
    """The report of `target` and its tree (None if it has none), open until `stack` closes."""
    kind, command = source.classify(target)
    if kind == "directory":
        view = Tree(target)
        return tree_report(view, wants), view
    if kind == "tarball":
        dest = source.scratch_dir(stack)
        labels = source.extract_tarball(target, command, dest, wanted_paths(wants))
        view = Tree(dest, labels=labels.get if labels else None)
        return tree_report(view, wants), view
    return image_report(target, command if kind == "compressed-image" else None, backend, stack,
                        wants)
