"""The `osbuild` command: load, validate, build, export, report.

User errors become one line on stderr and a non-zero exit status; a
traceback appears only for internal bugs and only with --debug.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# jsonschema, when first imported, imports every format-checking library it finds, and
# rfc3987-syntax (installed with cyclonedx's json-validation extra, for image-info's SBOM
# check) compiles its grammar then: about a second of every build's start, most of a
# fully cached rebuild. The engine checks no formats, so its process goes without it
# (jsonschema treats the failed import as not installed). Before the imports below.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

from . import formats, interrupts, store_cli  # noqa: E402
from .errors import ManifestError, OsbuildError, StageFailed, StageTimeout  # noqa: E402
from .meta import default_libdir  # noqa: E402
from .monitor import MONITORS, LogMonitor, Monitor  # noqa: E402
from .objectstore import ObjectStore, default_store_path  # noqa: E402
from .pipeline import Builder, after_interrupt  # noqa: E402
from .sizes import DEFAULT_MAX_SIZE, size_option  # noqa: E402
from .validate import validate  # noqa: E402

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70
TAIL_SHOWN = 10

# The engine says which place filled up; the option that moves it is ours to name.
SPACE_OPTIONS = {"store": "--store", "output directory": "--output-directory"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="osbuild", description="Build OS images from an osbuild manifest (v1 or v2).",
        epilog="Also: 'osbuild store ls|du|prune' to look at and clean the store.",
        exit_on_error=False)
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest file (JSON, or YAML by "
                        "extension), or - for standard input")
    parser.add_argument("--store", type=Path, help="object store directory "
                        f"(default: {default_store_path()})")
    parser.add_argument("--output-directory", type=Path, help="where exports are written")
    parser.add_argument("--export", action="append", default=[], metavar="NAME",
                        help="pipeline to export (v1: 'tree' or 'assembler'); repeatable")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PATTERN",
                        help="keep matching pipelines/stages (glob on name or id) in the store")
    parser.add_argument("--json", action="store_true", help="print a JSON result on stdout")
    parser.add_argument("--monitor", choices=sorted(MONITORS), help="progress format")
    parser.add_argument("--monitor-fd", type=int, default=1, help="fd the monitor writes to")
    parser.add_argument("--inspect", action="store_true",
                        help="print the manifest with pipeline and stage ids; build nothing")
    parser.add_argument("--libdir", type=Path, help="where stages/, runners/, ... live")
    parser.add_argument("--cache-max-size", type=size_option, default=DEFAULT_MAX_SIZE,
                        metavar="SIZE",
                        help="store size limit, like 20G or 'unlimited' (default: 20G)")
    parser.add_argument("--stage-timeout", type=positive_seconds, metavar="SECONDS",
                        help="kill a stage (or assembler) that runs longer, with everything it "
                        "started, and fail the build (default: no limit)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as error:
        if error.argument_name == "--cache-max-size":
            # A size the store cannot take fails the build (exit 1), as it always has.
            raise OsbuildError(f"--cache-max-size: {error.message}") from None
        parser.error(str(error))  # a usage error (exit 2), what exit_on_error would do


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def read_manifest(path: str) -> Any:
    """Parse the manifest text; every way it can be malformed is a ManifestError."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read manifest: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: manifest is not UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise ManifestError(f"{path}: manifest is empty")
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            return yaml.safe_load(text)
        # The hooks mark duplicate keys, NaN and out-of-range numbers for
        # formats.check_values, which names where they are.
        return json.loads(text, object_pairs_hook=formats.json_object,
                          parse_constant=formats.json_constant,
                          parse_int=formats.json_int, parse_float=formats.json_float)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: line {e.lineno} column {e.colno}: "
                            f"{e.msg}") from None
    except RecursionError:
        raise ManifestError(f"{path}: manifest nests too deeply") from None
    except Exception as e:  # yaml's errors share no useful base we can import lazily
        # ValueError: an integer too long for int() (YAML has no parse_int hook).
        if type(e).__module__.startswith("yaml") or isinstance(e, ValueError):
            raise ManifestError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        raise


def host_runner(libdir: Path) -> str:
    """The runner for stages that use the host as build root, from os-release."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            fields[key] = value.strip().strip('"')
    except OSError:
        pass
    name = f"org.osbuild.{fields.get('ID', '')}{fields.get('VERSION_ID', '').split('.')[0]}"
    return name if (libdir / "runners" / name).is_file() else "org.osbuild.linux"


def make_monitor(args: argparse.Namespace) -> Monitor:
    if args.monitor:
        cls = MONITORS[args.monitor]
        return cls(args.monitor_fd) if args.monitor == "JSONSeqMonitor" else cls()
    return Monitor() if args.json else LogMonitor()


def error_json(error: OsbuildError) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, StageFailed):
        doc.update(pipeline=error.pipeline, stage=error.stage, id=error.stage_id,
                   returncode=error.returncode, output=error.tail)
    if isinstance(error, StageTimeout):
        doc["timeout"] = error.timeout
    return doc


def build(args: argparse.Namespace) -> int:
    libdir = (args.libdir or default_libdir()).resolve()
    manifest = formats.load(read_manifest(args.manifest), host_runner(libdir), libdir)
    validate(manifest, libdir)
    if args.inspect:
        print(json.dumps(formats.describe(manifest), indent=2))
        return 0
    unknown = [n for n in args.export if n not in manifest.pipelines]
    if unknown:
        raise ManifestError(f"--export: no pipeline named '{unknown[0]}' "
                            f"(pipelines: {', '.join(manifest.pipelines)})")
    if args.export and not args.output_directory:
        raise OsbuildError("--export needs --output-directory")
    monitor = make_monitor(args)
    with ObjectStore(args.store or default_store_path(), args.cache_max_size) as store:
        builder = Builder(manifest, store, libdir, monitor, args.checkpoint, args.stage_timeout)
        result = builder.build(args.export, args.output_directory)
    error = in_cli_terms(result.error) if result.error else None
    monitor.finish(result.success, [r for rs in result.results.values() for r in rs],
                   str(error) if error else None)
    if args.json:
        doc = formats.output(manifest, result.results, result.success,
                             error_json(error) if error else None)
        print(json.dumps(doc, indent=2))
    if error:
        report(error)
        return error.exit_code
    return 0


def in_cli_terms(error: OsbuildError) -> OsbuildError:
    """The engine's error, naming the option that changes the outcome: only we know it."""
    if isinstance(error, StageTimeout) and error.option is None:
        return StageTimeout(error.pipeline, error.stage, error.stage_id, error.returncode,
                            error.tail, error.timeout, option="--stage-timeout")
    if error.out_of_space is not None and error.hint is None:
        option = SPACE_OPTIONS[error.out_of_space]
        freeing = ("'osbuild store prune', a smaller --cache-max-size"
                   if error.out_of_space == "store" else "")
        error.hint = (f"free some space there{f' ({freeing})' if freeing else ''}, "
                      f"or point {option} at a larger file system")
    return error


def report(error: OsbuildError) -> None:
    error = in_cli_terms(error)
    for line in getattr(error, "problems", [str(error)]):
        print(f"osbuild: error: {line}", file=sys.stderr)
    if error.hint:
        print(f"osbuild: hint: {error.hint}", file=sys.stderr)
    if isinstance(error, StageFailed) and error.tail:
        print(f"osbuild: last lines of {error.stage}'s output:", file=sys.stderr)
        for line in error.tail[-TAIL_SHOWN:]:
            print(f"    {line}", file=sys.stderr)


def interrupted(error: BaseException | None = None) -> int:
    if error is not None:  # something leaked: say what, but it still was an interrupt
        print(f"osbuild: warning: cleaning up after the interrupt failed: {error}",
              file=sys.stderr)
    print("osbuild: interrupted; cleaned up" if error is None else "osbuild: interrupted",
          file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["store"]:
        return store_cli.main(argv[1:])
    interrupts.install()  # SIGINT and SIGTERM unwind the build: see osbuild/interrupts.py
    try:
        args = parse_args(argv)
    except OsbuildError as error:
        report(error)
        return error.exit_code
    try:
        return build(args)
    except KeyboardInterrupt:
        return interrupted()
    except OsbuildError as error:
        if after_interrupt(error):
            return interrupted(error)
        report(error)
        return error.exit_code
    except Exception as e:
        if after_interrupt(e):
            return interrupted(e)
        if args.debug:
            raise
        print(f"osbuild: internal error: {type(e).__name__}: {e} (--debug shows a traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        sys.stdout.flush()
        # The build is over, its cleanup included: a signal now must not turn the exit
        # status into a kill or a traceback on the way out of the process.
        interrupts.ignore()


if __name__ == "__main__":
    sys.exit(main())
