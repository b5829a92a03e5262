"""The `image-info` command: a JSON report of an image, a tree or a tarball on stdout.

    image-info IMAGE|DIR|TARBALL [--packages-verify] [--backend auto|loop|guestfs] [--debug]
    image-info --diff A B [--files] [--json] [--backend ...]   (A, B: as above, or a report
                                                               *.json unless --files)
    image-info --sbom spdx|cyclonedx IMAGE|DIR|TARBALL [--build-metadata OSBUILD_JSON]

Errors are one line on stderr and exit status 1; a traceback only for an
internal bug and only with --debug. Where a reader could not look (a tool
failed, a file was unreadable) the report lists it under "errors" and says so
on stderr as a warning; when that reader is the view asked for
(--packages-verify, --sbom), the exit status is 1 as well. Every scratch
file, loop device and mount lives in one ExitStack, so nothing is left
behind, also on Ctrl-C.
"""

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from osbuild.errors import OsbuildError
from osbuild.image_info import ImageInfoError, bootloader, discoverable, pkgverify, source, tree
from osbuild.image_info import diff as report_diff
from osbuild.image_info import failures as fail
from osbuild.image_info import files as tree_files
from osbuild.image_info import sbom as sboms
from osbuild.image_info.backends import BACKENDS, choose, has_mountable, mount_os, open_backend
from osbuild.image_info.disk import layout as read_layout
from osbuild.image_info.treeview import Tree

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70
EXIT_INCOMPLETE = 1  # the view asked for could not be read in full
# The reader (report key) behind each view a flag asks for.
VIEWS = {"packages-verify": "packages-verify", "sbom": "sbom-packages"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="image-info",
        description="Print a JSON report of a disk image (raw, qcow2, vmdk, vpc, vdi, vhdx), "
        "a file system image, a directory tree or a tarball.")
    parser.add_argument("target", metavar="IMAGE|DIR|TARBALL", type=Path, nargs="?")
    parser.add_argument("--diff", nargs=2, metavar=("A", "B"), type=Path,
                        help="print what differs between the reports of A and B (images, "
                        "trees, tarballs, or reports image-info wrote: *.json)")
    parser.add_argument("--json", action="store_true", help="with --diff: the changes as JSON")
    parser.add_argument("--files", action="store_true",
                        help="with --diff: also the files of the two trees (added, removed, "
                        "and changed in mode, owner, sha256, link target or labels); images "
                        "are read through loop devices (root)")
    parser.add_argument("--packages-verify", action="store_true",
                        help="also check every installed file against dpkg's md5sums, "
                        "conffiles against dpkg's status, and list files under /usr no "
                        "package owns (reads every file: slower)")
    parser.add_argument("--sbom", choices=["spdx", "cyclonedx"],
                        help="print an SBOM of the installed packages instead (SPDX 2.3 or "
                        "CycloneDX 1.6 JSON)")
    parser.add_argument("--build-metadata", metavar="OSBUILD_JSON", type=Path,
                        help="with --sbom: what `osbuild --json` printed for the build; "
                        "packages get the sha256 of their .deb")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="how file systems in an image are read: loop devices (root) or "
                        "libguestfs (no root, slow); auto: loop as root, else guestfs")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    args = parser.parse_args(argv)
    if (args.target is None) == (args.diff is None):
        parser.error("give one IMAGE|DIR|TARBALL, or --diff A B")
    if (args.json or args.files) and args.diff is None:
        parser.error("--json and --files go with --diff")
    if args.sbom and args.diff is not None:
        parser.error("--sbom takes one IMAGE|DIR|TARBALL, not --diff")
    if args.packages_verify and (args.sbom or args.diff is not None):
        parser.error("--packages-verify goes with one IMAGE|DIR|TARBALL's report")
    if args.build_metadata and not args.sbom:
        parser.error("--build-metadata goes with --sbom")
    return args


def tree_report(view: Tree, wants: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The keys read from an OS tree, boot configuration included; what `wants` asks
    for besides: "packages-verify", "sbom" (what an SBOM says of each package)."""
    report = tree.report(view)
    if "packages-verify" in wants:
        fail.gather(report, "packages-verify", partial(pkgverify.report, view), view)
    if "sbom" in wants:
        fail.gather(report, "sbom-packages", partial(_sbom_packages, view), view)
    fail.gather(report, "grub-menu", partial(bootloader.grub_menu, view), view)
    fail.gather(report, "bootmenu", partial(bootloader.bootmenu, view), view)
    fail.gather(report, "boot-environment", partial(bootloader.boot_environment, view), view)
    return report


def _sbom_packages(view: Tree) -> dict[str, Any]:
    found = sboms.packages(view)
    return {} if found is None else {"sbom-packages": found}


def image_report(path: Path, compression: list[str] | None, backend: str,
                 stack: contextlib.ExitStack, wants: frozenset[str] = frozenset()
                 ) -> tuple[dict[str, Any], Tree | None]:
    backend = choose(backend)  # before any work: a refusal comes first
    if compression is not None:
        raw = source.decompress_image(path, compression, source.scratch_dir(stack))
        fmt = {**source.image_format(raw), "compression": compression[0]}
    else:
        raw, fmt = source.raw_image(path, stack)
    report: dict[str, Any] = {"image-format": fmt}
    disk = read_layout(raw, name=path)
    report.update(disk.report())
    boot = bootloader.bios(raw, disk)
    fail.gather(boot, "esp", partial(bootloader.esp, raw, disk))
    report["bootloader"] = bootloader.bootloader_name(disk, boot)
    fail.merge(report, boot)
    view, unmounted = mount_os(open_backend(backend, raw, stack), disk,
                               "packages-verify" in wants) if has_mountable(disk) else (None, [])
    for problem in disk.problems + unmounted:
        fail.record(report, "partitions", problem)
    if view is not None:
        fail.merge(report, tree_report(view, wants))
    fail.gather(report, "discoverable-partitions",
                partial(discoverable.report, disk, report, view), view)
    return report, view


@contextlib.contextmanager
def released() -> Iterator[contextlib.ExitStack]:
    """Where scratch space, loop devices and mounts are kept: all gone on exit."""
    stack = contextlib.ExitStack()
    try:
        yield stack
    finally:
        # An interrupt in the middle of an unmount or of removing the scratch
        # directory would leave half of it behind: it waits until cleanup is done.
        with source.signals_deferred():
            stack.close()


def inspect(target: Path, backend: str, wants: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The report of `target`, whatever it is; all scratch space is gone on return."""
    with released() as stack:
        return _inspect(target, backend, stack, wants)[0]


def _inspect(target: Path, backend: str, stack: contextlib.ExitStack,
             wants: frozenset[str]) -> tuple[dict[str, Any], Tree | None]:
    """The report of `target` and its tree (None if it has none), open until `stack` closes."""
    kind, command = source.classify(target)
    if kind == "directory":
        view = Tree(target)
        return tree_report(view, wants), view
    if kind == "tarball":
        dest = source.scratch_dir(stack)
        # Only the parts the report reads; --packages-verify reads every installed file.
        paths = None if "packages-verify" in wants else (
            *tree.PATHS, *bootloader.PATHS, *(sboms.PATHS if "sbom" in wants else ()))
        labels = source.extract_tarball(target, command, dest, paths)
        view = Tree(dest, labels=labels.get if labels else None)
        return tree_report(view, wants), view
    return image_report(target, command if kind == "compressed-image" else None, backend, stack,
                        wants)


def load_report(path: Path, backend: str) -> dict[str, Any]:
    """A report: read from a *.json file image-info wrote, or made by inspecting `path`."""
    if path.suffix != ".json" or not path.is_file():
        return inspect(path, backend)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageInfoError(f"{path}: not a report of image-info: {exc}") from None
    if not isinstance(report, dict):
        raise ImageInfoError(f"{path}: not a report of image-info: not a JSON object")
    return report


def with_files(target: Path, backend: str, stack: contextlib.ExitStack
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report of `target` and the listing of its files, for --diff --files."""
    if target.suffix == ".json" and target.is_file():
        raise ImageInfoError(f"{target}: a report has no files to compare: --files takes "
                             "images, trees and tarballs")
    kind, command = source.classify(target)
    if kind == "tarball":  # its members' owners and modes are in its headers
        return inspect(target, backend), tree_files.tar_listing(target, command)
    if kind != "directory" and choose(backend) != "loop":
        raise ImageInfoError(f"{target}: --files reads an image's tree through loop devices, "
                             "as root (libguestfs's copy keeps no owners or modes)")
    report, view = _inspect(target, backend, stack, frozenset())
    if view is None:
        raise ImageInfoError(f"{target}: no OS tree to compare the files of")
    return report, tree_files.live_listing(view.root)


def diff_document(args: argparse.Namespace) -> str:
    """--diff: the two reports' differences (and with --files, their files')."""
    with released() as stack:  # both trees stay mounted until their files are compared
        if args.files:
            (old, old_files), (new, new_files) = (with_files(path, args.backend, stack)
                                                  for path in args.diff)
            file_changes = tree_files.diff(old_files, new_files)
        else:
            old, new = (load_report(path, args.backend) for path in args.diff)
    for path, report in zip(args.diff, (old, new), strict=True):
        incomplete(path, report)  # its errors are in the diff too, if only one has them
    changes = report_diff.diff(old, new)
    if args.json:
        doc: dict[str, Any] = {"changes": changes}
        if args.files:
            doc["files"] = file_changes
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    text = report_diff.render(changes)
    return text + "files:\n" + tree_files.render(file_changes) if args.files else text


def sbom_document(args: argparse.Namespace) -> str:
    """The SBOM of the target's installed packages; the build's checksums if given."""
    sums = None
    if args.build_metadata:
        try:
            sums = sboms.checksums(json.loads(args.build_metadata.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ImageInfoError(f"{args.build_metadata}: not what osbuild --json printed: "
                                 f"{exc}") from None
    report = inspect(args.target, args.backend, frozenset({"sbom"}))
    incomplete(args.target, report, "sbom")
    if "sbom-packages" not in report:
        raise ImageInfoError(f"{args.target}: no OS tree with a dpkg database to list")
    make = sboms.spdx if args.sbom == "spdx" else sboms.cyclonedx
    return make(report, report.pop("sbom-packages"), args.target.name, sums)


def incomplete(target: Path, report: dict[str, Any], view: str | None = None) -> str | None:
    """Warn of each error in `report` but those of `view` (the one asked for); the one line
    that says that view is incomplete, or None. (--sbom has nothing to print then: raised.)"""
    reader = VIEWS.get(view or "")
    for error in report.get(fail.ERRORS, []):
        if error["reader"] != reader:
            print(f"image-info: warning: {target}: {error['reader']}: could not look: "
                  f"{error['error']}", file=sys.stderr)
    problems = fail.of_view(report, reader) if reader else []
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more: the report's \"errors\")" \
        if len(problems) > 1 else ""
    line = f"{target}: --{view} could not read everything: {problems[0]}{more}"
    if view == "sbom":
        raise ImageInfoError(line)
    return line


def output(args: argparse.Namespace) -> tuple[str, str | None]:
    """What image-info prints for these arguments, and the error line that goes with it
    (the report is printed, but the view asked for is incomplete)."""
    if args.sbom:
        return sbom_document(args), None
    if args.diff is None:
        wants = frozenset({"packages-verify"} if args.packages_verify else ())
        report = inspect(args.target, args.backend, wants)
        failed = incomplete(args.target, report,
                            "packages-verify" if args.packages_verify else None)
        return json.dumps(report, indent=2, sort_keys=True) + "\n", failed
    return diff_document(args), None


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so the ExitStack releases mounts and loop devices.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        text, failed = output(args)
    except OsbuildError as exc:
        print(f"image-info: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("image-info: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # an internal bug: one line unless --debug
        if args.debug:
            raise
        print(f"image-info: internal error: {type(exc).__name__}: {exc} "
              "(run with --debug for a traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader is gone (`| head`): not worth a traceback at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if failed is not None:
        print(f"image-info: error: {failed}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0
