"""``mpwire bench [--quick] [--rounds N] [--only S] [--json FILE] [--plot FILE.png]``."""

from __future__ import annotations

import argparse
import json
import re
import sys

from . import plot
from .report import format_table
from .runner import LOOPS, run
from .scenarios import SCENARIOS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpwire bench",
        description=(
            "Compare mpwire.connection with multiprocessing.connection, "
            "and mpwire.asyncio with both."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds and smaller counts (under a minute)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per scenario (default 5, quick 2)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="SUBSTRING",
        help="run only scenarios whose name contains SUBSTRING (repeatable)",
    )
    parser.add_argument("--json", metavar="FILE", help="write raw samples, medians and ratios")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="chart throughput against message size (needs matplotlib: mpwire[plot])",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds allowed per measurement"
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop of asyncio processes (default auto: uvloop when installed)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser


_COUNT = re.compile(r"\[\s*(\d+)/(\d+)\]\s*(.*)")
_BAR = 30


def _progress(line: str) -> None:
    """A progress bar on a terminal (redrawn in place), else one line per measurement."""
    found = _COUNT.match(line)
    if found is None or not sys.stderr.isatty():
        print(line, file=sys.stderr, flush=True)
        return
    done, total, what = int(found[1]), int(found[2]), found[3]
    filled = _BAR * done // total
    bar = "#" * filled + "." * (_BAR - filled)
    end = "\n" if done == total else ""
    print(f"\r\033[K[{bar}] {done}/{total} {what[:60]}", end=end, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the table; 1 if any measurement failed."""
    args = _parser().parse_args(argv)
    if args.list:
        width = max(len(scenario.name) for scenario in SCENARIOS)
        for scenario in SCENARIOS:
            print(f"{scenario.name:{width}}  {scenario.description}")
        return 0
    if args.rounds is not None and args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    if args.plot:
        try:
            plot.check_available()
        except ImportError as exc:
            print(exc, file=sys.stderr)
            return 2
    try:
        results = run(
            scenarios=args.only,
            rounds=args.rounds,
            quick=args.quick,
            progress=None if args.quiet else _progress,
            timeout=args.timeout,
            loop=args.loop,
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    if args.plot:
        plot.plot(results, args.plot)
    print(format_table(results))
    return 1 if any(entry["errors"] for entry in results["scenarios"]) else 0
