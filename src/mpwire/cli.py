"""The ``mpwire`` command line: demo, ping, listen, send, bench and run.

A user's mistake (a bad address, a missing key, a refused connection, a
wrong key) is one line on stderr and a non-zero exit status, never a
traceback: 2 for a bad command line, 1 when the peer could not be reached
or refused us.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator

from . import __version__, demo, netcat, run
from .bench.cli import main as bench_main
from .exceptions import AuthenticationError

PING_TIMEOUT = 5.0


def _demo(args: argparse.Namespace) -> int:
    demo.run()
    return 0


def _authkey(args: argparse.Namespace) -> bytes | None:
    return netcat.load_authkey(args.authkey_env, args.authkey_file)


def _ping(args: argparse.Namespace) -> int:
    report = netcat.ping(netcat.parse_address(args.address), _authkey(args), args.timeout)
    print("\n".join(report.lines()))
    return 0


def _listen(args: argparse.Namespace) -> int:
    address = netcat.parse_address(args.address)
    netcat.listen(address, _authkey(args), unsafe_pickle=args.unsafe_pickle, count=args.count)
    return 0


def _stdin_lines() -> Iterator[str]:
    for line in sys.stdin:
        yield line.removesuffix("\n")


def _send(args: argparse.Namespace) -> int:
    messages = args.messages or _stdin_lines()
    address = netcat.parse_address(args.address)
    sent = netcat.send(address, _authkey(args), messages, raw=args.bytes)
    print(f"sent {sent} message{'s' * (sent != 1)}", file=sys.stderr)
    return 0


def _key_options(command: argparse.ArgumentParser) -> None:
    keys = command.add_mutually_exclusive_group()
    keys.add_argument("--authkey-env", metavar="VAR", help="take the authkey from $VAR")
    keys.add_argument("--authkey-file", metavar="PATH", help="take the authkey from a file")


ADDRESS_HELP = "host:port, [::1]:port, a Unix socket path, or @name (abstract socket)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subcommand per job."""
    parser = argparse.ArgumentParser(
        prog="mpwire",
        description="mpwire: a fast, safe drop-in for multiprocessing.connection.",
    )
    parser.add_argument("--version", action="version", version=f"mpwire {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, description: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    command(
        "demo",
        _demo,
        help="run the Listener/Client and wait() demos with real processes",
        description=demo.__doc__ or "",
    )

    ping = command(
        "ping",
        _ping,
        help="connect to any multiprocessing listener and report what it speaks",
        description="Connect to a listener (stdlib or mpwire), authenticate if given a key, "
        "and report the digest it asked for and how long each step took.",
    )
    ping.add_argument("address", help=ADDRESS_HELP)
    ping.add_argument("--timeout", type=float, default=PING_TIMEOUT, help="seconds (default 5)")
    _key_options(ping)

    listen = command(
        "listen",
        _listen,
        help="print every message that clients send",
        description="Listen at ADDRESS and print each message received, one line each: "
        "bytes as a safe repr, pickles decoded with the restricted serializer only.",
    )
    listen.add_argument("address", help=ADDRESS_HELP)
    listen.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="decode any pickle (runs code of the sender's choosing!)",
    )
    listen.add_argument("--count", type=int, help="stop after this many messages")
    _key_options(listen)

    commands.add_parser(
        "bench",
        help="benchmark mpwire against the stdlib (--quick, --json, --plot; see bench --help)",
        add_help=False,
    )
    commands.add_parser(
        "run",
        help="run a program with all of multiprocessing on mpwire (run SCRIPT | run -m MODULE)",
        add_help=False,
    )
    send = command(
        "send",
        _send,
        help="send messages from the arguments or stdin (one per line)",
        description="Connect to ADDRESS and send each MESSAGE (or each line of stdin) as a "
        "pickled str, which any recv() reads, or as raw bytes with --bytes.",
    )
    send.add_argument("address", help=ADDRESS_HELP)
    send.add_argument("messages", nargs="*", metavar="MESSAGE")
    send.add_argument("--bytes", action="store_true", help="send UTF-8 bytes, not pickles")
    _key_options(send)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and ``python -m mpwire``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser: see mpwire.bench.cli
        return bench_main(argv[1:])
    if argv[:1] == ["run"]:  # the rest is the program's command line
        return run.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.handler(args)
    except netcat.UsageError as exc:
        print(f"mpwire {args.command}: {exc}", file=sys.stderr)
        return 2
    except AuthenticationError as exc:
        print(f"mpwire {args.command}: authentication failed: {exc}", file=sys.stderr)
        return 1
    except (OSError, EOFError) as exc:
        print(f"mpwire {args.command}: {args.address}: {_say(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _say(exc: BaseException) -> str:
    """An error as a user reads it: its message, or its type if it has none."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, EOFError):
        return "the peer hung up"
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
