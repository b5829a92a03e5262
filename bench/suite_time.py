#!/usr/bin/env python3
"""Where a test run's time went, per test file: the sum of its tests' times.

pytest's --durations names the slowest phases; a file of many middling tests
(the golden cases, a dozen boots) hides between them. `make test` writes a JUnit
report and prints this table after it, in every CI log, so that suite-time work
starts from the files that cost the most. Times are what the tests took on their
worker (setup, call and teardown); with two workers the run's wall time is about
half their sum.
"""

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def per_file(report: Path) -> tuple[dict[str, float], dict[str, int]]:
    """{test file: seconds}, {test file: tests} from a JUnit report of pytest."""
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for case in ET.parse(report).getroot().iter("testcase"):
        # pytest's classname is the module's dotted path (plus a class, if any).
        parts = case.get("classname", "").split(".")
        module = next((i for i in range(len(parts), 0, -1)
                       if Path(*parts[:i]).with_suffix(".py").exists()), len(parts))
        name = "/".join(parts[:module]) + ".py"
        seconds[name] += float(case.get("time") or 0)
        counts[name] += 1
    return seconds, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="pytest's --junitxml file")
    parser.add_argument("--top", type=int, default=25, help="files to show (default 25)")
    args = parser.parse_args(argv)
    try:
        seconds, counts = per_file(args.report)
    except (OSError, ET.ParseError) as e:
        print(f"suite_time: cannot read {args.report}: {e}", file=sys.stderr)
        return 1
    total = sum(seconds.values())
    print(f"test time per file (sum over its tests: {total:.0f} s in all, "
          f"{sum(counts.values())} tests)")
    for name, spent in sorted(seconds.items(), key=lambda item: -item[1])[:args.top]:
        print(f"{spent:8.1f} s {100 * spent / total if total else 0:5.1f}% "
              f"{counts[name]:5d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
