"""The stdlib end of mpwire's interop tests, run as a script under any CPython >= 3.8.

It imports nothing but the standard library (and never mpwire): whatever it
receives was framed, pickled and authenticated by mpwire, and whatever it sends
comes from ``multiprocessing.connection`` of the Python running it.

Usage::

    peer.py listen --family unix --path PATH [--authkey HEX]
    peer.py listen --family tcp [--authkey HEX]
    peer.py connect --address JSON [--authkey HEX]

As a listener it prints ``{"event": "listening", "address": ...}`` once it is
bound. Once connected, it sends ``("hello", version)`` and then obeys the
commands the mpwire side sends with ``send()`` (see ``serve``) until ``bye``.
Last it prints ``{"event": "result", "outcome": ..., ...}`` and exits with
``EXIT_CODES[outcome]``; ``transcript`` in that line is every handshake
message it sent or received, as ``[direction, hex]`` pairs.

The test module imports this file too, for ``pattern``, ``sample_objects`` and
``burst_item``, so both ends build the same data.

Keep it valid Python 3.8: no ``list[int]`` annotations, no 3.9+ APIs.
"""

import argparse
import collections
import datetime
import decimal
import fractions
import hashlib
import json
import platform
import signal
import sys
import traceback
from multiprocessing import AuthenticationError
from multiprocessing import connection as mpc

EXIT_CODES = {"ok": 0, "error": 1, "AuthenticationError": 2, "mismatch": 3}


def pattern(size, tag):
    """``size`` deterministic, aperiodic bytes named by ``tag`` (the same on every Python)."""
    if size == 0:
        return b""
    return hashlib.shake_256(tag.encode("utf-8")).digest(size)


def sample_objects():
    """Objects sent with ``send()`` both ways; both ends build and compare them."""
    return [
        None,
        ("tuple", 1, -2, 3.5, True, None),
        {
            "int": 7,
            "big": 2**100 + 1,
            "negative": -(2**70),
            "float": 1.25,
            "complex": 1 - 2j,
            "str": "h\xe9llo \u2713 \U0001f40d",
            "bytes": b"\x00\x01\xfe\xff",
            "bytearray": bytearray(b"mutable"),
            "list": [1, [2, [3, [4]]]],
            "set": {1, 2, 3},
            "frozenset": frozenset({"x", "y"}),
            "decimal": decimal.Decimal("3.14159"),
            "fraction": fractions.Fraction(22, 7),
            "datetime": datetime.datetime(2024, 2, 29, 12, 30, 45, 123456),
            "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        },
        list(range(20000)),
        # A pickle larger than 64 KiB, with one large bytes object in it.
        {"blob": pattern(200000, "object-blob"), "text": "x" * 70000},
    ]


def burst_item(index, tag):
    """Message ``index`` of a burst: ``("object", obj)`` or ``("bytes", payload)``."""
    if index % 4 == 0:
        return "object", ("item", index, tag)
    return "bytes", pattern(index * 97 % 1500, f"{tag}-{index}")


class Mismatch(Exception):
    """What the mpwire side sent is not what it announced."""


def check_bytes(got, expected, what):
    if got != expected:
        if len(got) != len(expected):
            raise Mismatch(f"{what}: {len(got)} bytes instead of {len(expected)}")
        first = next(i for i in range(len(got)) if got[i] != expected[i])
        raise Mismatch(f"{what}: {len(got)} bytes, first difference at offset {first}")


def check_object(got, expected, what):
    if got != expected:
        raise Mismatch(f"{what}: got {got!r:.300}")


def serve(conn):
    """Answer the mpwire side's commands until ``bye``; return how many were run."""
    conn.send(("hello", list(sys.version_info[:3]), platform.python_implementation()))
    commands = 0
    while True:
        command = conn.recv()
        commands += 1
        kind = command[0]
        if kind == "bytes":
            # The mpwire side sends pattern(size, "to-peer-TAG"); we answer with
            # pattern(size, "from-peer-TAG").
            _, size, tag = command
            check_bytes(conn.recv_bytes(), pattern(size, "to-peer-" + tag), "bytes " + tag)
            conn.send_bytes(pattern(size, "from-peer-" + tag))
        elif kind == "object":
            _, index = command
            check_object(conn.recv(), sample_objects()[index], f"object {index}")
            conn.send(sample_objects()[index])
        elif kind == "burst_to_peer":
            # ``count`` messages back to back, then one acknowledgement.
            _, count, tag = command
            for index in range(count):
                how, expected = burst_item(index, tag)
                what = f"burst {tag} item {index}"
                if how == "object":
                    check_object(conn.recv(), expected, what)
                else:
                    check_bytes(conn.recv_bytes(), expected, what)
            conn.send(("received", count))
        elif kind == "burst_from_peer":
            _, count, tag = command
            for index in range(count):
                how, item = burst_item(index, tag)
                if how == "object":
                    conn.send(item)
                else:
                    conn.send_bytes(item)
        elif kind == "bye":
            conn.send(("bye", commands))
            conn.close()
            return commands
        else:
            raise Mismatch(f"unknown command {command!r}")


class Recorder:
    """Records the handshake: every message sent or received while active."""

    def __init__(self):
        self.messages = []
        self.active = False
        cls = mpc.Connection
        original_send, original_recv = cls.send_bytes, cls.recv_bytes
        recorder = self

        def send_bytes(self, buf, offset=0, size=None):
            if recorder.active:
                data = bytes(memoryview(buf).cast("B"))
                end = len(data) if size is None else offset + size
                recorder.messages.append(["sent", data[offset:end].hex()])
            return original_send(self, buf, offset, size)

        def recv_bytes(self, maxlength=None):
            data = original_recv(self, maxlength)
            if recorder.active:
                recorder.messages.append(["received", data.hex()])
            return data

        cls.send_bytes = send_bytes
        cls.recv_bytes = recv_bytes


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def connect(args, authkey, recorder):
    """The connection to the mpwire side, authenticated if ``authkey`` is set."""
    if args.role == "connect":
        address = json.loads(args.address)
        if isinstance(address, list):
            address = tuple(address)
        recorder.active = True
        try:
            return mpc.Client(address, authkey=authkey)
        finally:
            recorder.active = False
    if args.family == "unix":
        listener = mpc.Listener(args.path, family="AF_UNIX", authkey=authkey)
    else:
        listener = mpc.Listener(("127.0.0.1", 0), family="AF_INET", authkey=authkey)
    try:
        address = listener.address
        emit(event="listening", address=list(address) if isinstance(address, tuple) else address)
        recorder.active = True
        try:
            return listener.accept()
        finally:
            recorder.active = False
    finally:
        listener.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("role", choices=["listen", "connect"])
    parser.add_argument("--family", choices=["unix", "tcp"], default="unix")
    parser.add_argument("--path", help="Unix socket path to listen on")
    parser.add_argument("--address", help="JSON address to connect to")
    parser.add_argument("--authkey", help="authkey in hex; none means no authentication")
    parser.add_argument("--timeout", type=int, default=60, help="die after this many seconds")
    args = parser.parse_args(argv)
    # However the other end misbehaves, this process does not outlive the test.
    signal.alarm(args.timeout)
    authkey = None if args.authkey is None else bytes.fromhex(args.authkey)
    recorder = Recorder()
    result = {"python": platform.python_version()}
    try:
        conn = connect(args, authkey, recorder)
        result["commands"] = serve(conn)
        outcome = "ok"
    except AuthenticationError as exc:
        outcome, result["message"] = "AuthenticationError", str(exc)
    except Mismatch as exc:
        outcome, result["message"] = "mismatch", str(exc)
    except Exception as exc:
        traceback.print_exc()
        outcome, result["message"] = "error", f"{type(exc).__name__}: {exc}"
    emit(event="result", outcome=outcome, transcript=recorder.messages, **result)
    return EXIT_CODES[outcome]


if __name__ == "__main__":
    sys.exit(main())
