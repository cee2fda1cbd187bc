"""The ``mpwire`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__, demo


def _demo(args: argparse.Namespace) -> int:
    demo.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subcommand per job."""
    parser = argparse.ArgumentParser(
        prog="mpwire",
        description="mpwire: a fast, safe drop-in for multiprocessing.connection.",
    )
    parser.add_argument("--version", action="version", version=f"mpwire {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_demo = commands.add_parser(
        "demo",
        help="run the Listener/Client and wait() demos with real processes",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and ``python -m mpwire``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
