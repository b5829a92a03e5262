"""osbuild-store: look into the store and shrink it.

osbuild-store [--store DIR] ls [--json]      every entry, least recently used first
osbuild-store [--store DIR] du [--json]      totals against the size limit
osbuild-store [--store DIR] prune [--max-size SIZE | --all]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from . import cli
from .cli import Parser
from .errors import OsbuildError
from .objectstore import Entry, ObjectStore, default_store_path
from .sizes import DEFAULT_MAX_SIZE, format_size, size_option

PROG = "osbuild-store"


def build_parser() -> Parser:
    # --store is accepted before or after the subcommand; SUPPRESS keeps the
    # subcommand's absent option from overwriting the one given before it.
    common = Parser(add_help=False)
    common.add_argument("--store", type=Path, default=argparse.SUPPRESS, help="store directory")
    parser = Parser(prog=PROG, parents=[common], description="Inspect and prune the store.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    ls = commands.add_parser("ls", parents=[common], help="list entries, least recently used first")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    du = commands.add_parser("du", parents=[common], help="show disk usage against the limit")
    du.add_argument("--json", action="store_true", help="machine-readable output")
    # The limit is not stored: each build passes its own; this says which to compare with.
    du.add_argument(
        "--max-size",
        type=size_option,
        default=DEFAULT_MAX_SIZE,
        help="the limit to report (default: 20G)",
    )
    prune = commands.add_parser("prune", parents=[common], help="remove least recently used")
    group = prune.add_mutually_exclusive_group()
    group.add_argument(
        "--max-size",
        type=size_option,
        default=DEFAULT_MAX_SIZE,
        help="shrink to SIZE, e.g. 5G (default: 20G)",
    )
    group.add_argument("--all", action="store_true", help="remove everything not in use")
    return parser


def describe(entry: Entry) -> str:
    used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.last_used))
    return f"{entry.kind:<6}  {format_size(entry.size):>10}  {used}  {entry.id}"


def run(args: argparse.Namespace) -> None:
    path = getattr(args, "store", None) or default_store_path()
    if not path.exists():
        raise OsbuildError(f"{path} does not exist: no store there")
    with ObjectStore(path, max_size=getattr(args, "max_size", DEFAULT_MAX_SIZE)) as store:
        if args.command == "ls":
            entries = store.entries()
            if args.json:
                print(json.dumps([vars(entry) for entry in entries], indent=2))
            else:
                for entry in entries:
                    print(describe(entry))
        elif args.command == "du":
            entries = store.entries()
            objects = sum(e.size for e in entries if e.kind == "object")
            sources = sum(e.size for e in entries if e.kind == "source")
            report = {
                "objects": objects,
                "sources": sources,
                "total": objects + sources,
                "limit": store.max_size,
            }
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                for key, value in report.items():
                    print(f"{key + ':':<9}{format_size(value)}")
        else:
            removed = store.prune(everything=args.all)
            for entry in removed:
                print(f"removed {entry.kind} {entry.id} ({format_size(entry.size)})")
            freed = sum(entry.size for entry in removed)
            print(f"freed {format_size(freed)}, {len(removed)} removed")


def main(argv: list[str] | None = None) -> int:
    return cli.run(PROG, lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
