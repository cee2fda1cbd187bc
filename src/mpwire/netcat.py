"""What ``mpwire ping``, ``listen`` and ``send`` do: poke at any multiprocessing listener.

Addresses are written ``host:port``, ``[::1]:port``, a path (a Unix socket),
or ``@name`` (a Linux abstract socket). Keys never come from the command line
(``ps`` would show them): from an environment variable or a file.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from .exceptions import AuthenticationError
from .protocol.handshake import CHALLENGE, Role, offered_extensions, split_digest
from .serialize import RestrictedPickle
from .sync.auth import run_handshake
from .sync.connection import Connection
from .sync.listener import Client, Listener

__all__ = ["UsageError", "describe", "listen", "load_authkey", "parse_address", "ping", "send"]


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit status 2."""


def parse_address(text: str) -> Any:
    """``host:port``, ``[v6]:port``, ``@abstract`` or a path, as a Listener/Client address."""
    if text.startswith("@"):
        return "\0" + text[1:]
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise UsageError(f"bad address {text!r}: write an IPv6 address as [::1]:PORT")
        return host, _port(port, text)
    host, colon, port = text.rpartition(":")
    if colon and "/" not in text:
        return host or "127.0.0.1", _port(port, text)
    return text


def _port(text: str, address: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"bad address {address!r}: {text!r} is not a port number")
    return int(text)


def describe(address: Any) -> str:
    """An address the way parse_address() reads it."""
    if isinstance(address, tuple):
        host, port = address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    return "@" + address[1:] if address.startswith("\0") else str(address)


def load_authkey(env: str | None, path: str | None) -> bytes | None:
    """The key named by ``--authkey-env`` or ``--authkey-file`` (None: no key)."""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise UsageError(f"--authkey-env: the environment variable {env} is not set")
        return value.encode()
    if path is not None:
        try:
            with open(path, "rb") as file:
                return file.read().removesuffix(b"\n")
        except OSError as exc:
            raise UsageError(f"--authkey-file: cannot read {path}: {exc.strerror}") from None
    return None


class _Recorder:
    """A connection that keeps the handshake messages it carries."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.received: list[bytes] = []

    def send_bytes(self, data: bytes, **options: Any) -> None:
        self._conn.send_bytes(data, **options)

    def recv_bytes(self, maxlength: int | None = None, **options: Any) -> bytes:
        message = self._conn.recv_bytes(maxlength, **options)
        self.received.append(message)
        return message


@dataclass
class PingReport:
    """What ping() found out about a listener."""

    address: Any
    connect_seconds: float
    handshake_seconds: float | None
    digest: str | None
    """The HMAC the listener's challenge asked for, or None if it sent none."""
    extensions: frozenset[str] = frozenset()
    """What the listener's challenge offered (mpwire's: "early-challenge", and "shm" on Unix)."""

    def lines(self) -> list[str]:
        out = [f"connected to {describe(self.address)} in {self.connect_seconds * 1000:.2f} ms"]
        if self.handshake_seconds is not None:
            out.append(
                f"authenticated in {self.handshake_seconds * 1000:.2f} ms "
                f"(the listener challenged with {self.digest}; both keys match)"
            )
        elif self.digest is not None:
            out.append(f"the listener wants an authkey (it challenged with {self.digest})")
        else:
            out.append("the listener asked for no authkey")
        if self.digest is None:
            out.append("mpwire extensions: unknown (no challenge, which would carry the offer)")
        elif self.extensions:
            offered = ", ".join(_EXTENSION_NAMES.get(e, e) for e in sorted(self.extensions))
            out.append(f"mpwire extensions: offered {offered}")
        else:
            out.append("mpwire extensions: none offered (a stdlib listener)")
        return out


_EXTENSION_NAMES = {
    "early-challenge": "early-challenge (a handshake in two round trips)",
    "shm": "shm (shared memory for large arrays)",
}


def _digest_of(challenge: bytes) -> str:
    name = split_digest(challenge[len(CHALLENGE) :])[0]
    return name or "md5 (the legacy form of Python before 3.12)"


def _offer_of(challenge: bytes | None) -> frozenset[str]:
    if challenge is None or not challenge.startswith(CHALLENGE):
        return frozenset()
    return offered_extensions(challenge[len(CHALLENGE) :])


def ping(address: Any, authkey: bytes | None, timeout: float) -> PingReport:
    """Connect to ``address`` (and authenticate, with a key), and time each step."""
    started = time.monotonic()
    conn = Client(address)
    connected = time.monotonic()
    with conn:
        if authkey is None:
            # A listener with a key challenges at once; one without says nothing.
            try:
                challenge = conn.recv_bytes(256, timeout=timeout)
            except (TimeoutError, EOFError):
                challenge = None
            digest = None if challenge is None else _digest_of(challenge)
            return PingReport(address, connected - started, None, digest, _offer_of(challenge))
        recorder = _Recorder(conn)
        try:
            run_handshake(recorder, authkey, Role.CLIENT, deadline=connected + timeout)
        except TimeoutError:
            raise AuthenticationError(
                f"no challenge from {describe(address)} within {timeout} s: "
                "does the listener use an authkey?"
            ) from None
        handshake = time.monotonic() - connected
        challenge = recorder.received[0]
        offer = _offer_of(challenge)
        return PingReport(address, connected - started, handshake, _digest_of(challenge), offer)


def _show(data: bytes, unsafe_pickle: bool) -> str:
    """A received message as text: a pickle decoded safely (or not, if asked), else bytes."""
    if data[:1] == b"\x80":  # a pickle of protocol 2 or later
        try:
            obj = pickle.loads(data) if unsafe_pickle else RestrictedPickle().loads(data)
        except pickle.UnpicklingError as exc:
            return f"{data!r} (a pickle, not decoded: {exc})"
        except Exception:  # not a pickle after all (truncated, garbage): show the bytes
            return repr(data)
        return repr(obj)
    return repr(data)


def listen(
    address: Any,
    authkey: bytes | None,
    *,
    unsafe_pickle: bool = False,
    count: int | None = None,
    out: TextIO = sys.stdout,
) -> None:
    """Print every message that clients send, one line each; stop after ``count`` messages."""
    with Listener(address, authkey=authkey) as listener:
        print(f"listening on {describe(listener.address)}", file=sys.stderr, flush=True)
        printed = 0
        while count is None or printed < count:
            try:
                conn = listener.accept()
            except AuthenticationError as exc:
                print(f"refused a client: {exc}", file=sys.stderr, flush=True)
                continue
            peer = describe(listener.last_accepted) if listener.last_accepted else "a client"
            with conn:
                while count is None or printed < count:
                    try:
                        data = conn.recv_bytes()
                    except (EOFError, OSError):
                        break
                    print(f"[{peer}] {_show(data, unsafe_pickle)}", file=out, flush=True)
                    printed += 1


def send(address: Any, authkey: bytes | None, messages: Iterable[str], *, raw: bool = False) -> int:
    """Send each message (pickled ``str``, or its UTF-8 bytes if ``raw``); return the count."""
    sent = 0
    with Client(address, authkey=authkey) as conn:
        for message in messages:
            if raw:
                conn.send_bytes(message.encode())
            else:
                conn.send(message)
            sent += 1
    return sent
