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
import sys
from pathlib import Path
from typing import Any

from osbuild import interrupts
from osbuild.errors import OsbuildError
from osbuild.image_info import ImageInfoError, source
from osbuild.image_info import diff as report_diff
from osbuild.image_info import failures as fail
from osbuild.image_info import files as tree_files
from osbuild.image_info import sbom as sboms
from osbuild.image_info.backends import BACKENDS, choose
from osbuild.image_info.report import VIEWS, inspect, open_report, released

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70
EXIT_INCOMPLETE = 1  # the view asked for could not be read in full


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
    report, view = open_report(target, backend, stack)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM unwinds like Ctrl-C, so the ExitStack releases mounts and loop devices;
    # one that comes during a deferred step (report.released) waits for its end.
    interrupts.install()
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
