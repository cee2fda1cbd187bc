"""Runs the sans-I/O authkey handshake: over any connection-like object, or a socket.

:func:`run_handshake` works with mpwire and stdlib Connections alike: all it
needs is ``send_bytes(data)`` and ``recv_bytes(maxlength)``.
:func:`authenticate_socket` runs a Client's side on its socket, before the
Connection exists.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..protocol.handshake import MAX_HANDSHAKE_MESSAGE, FramedHandshake, Handshake, Role
from .tls import TLSSocket

__all__ = [
    "TIMEOUT_SLACK",
    "answer_challenge",
    "authenticate_socket",
    "deliver_challenge",
    "run_handshake",
]

TIMEOUT_SLACK = 0.01
"""Seconds a Client's handshake read may overrun its deadline, to save setting its timeout."""

_TIMEVAL = struct.Struct("@ll")
"""SO_RCVTIMEO's value: a struct timeval."""


def run_handshake(
    connection: Any,
    authkey: bytes,
    role: Role,
    digest: str = "sha256",
    *,
    deadline: float | None = None,
    allow_legacy: bool = True,
    extensions: Iterable[str] = (),
) -> frozenset[str]:
    """Authenticate ``connection`` in ``role``; raise AuthenticationError on failure.

    With a ``deadline`` (a ``time.monotonic()`` value; mpwire Connections
    only), a peer that is too slow to answer makes it raise TimeoutError.
    Sends take no timeout: a handshake's messages are a few hundred bytes in
    all, which a connection's socket buffer takes at once unless the peer
    left it full, and a connection is authenticated before anything else is
    sent on it. Returns the ``extensions`` the peer offered too (see
    :class:`Handshake`).
    """
    handshake = Handshake(
        authkey, role, digest=digest, allow_legacy=allow_legacy, extensions=extensions
    )
    limits: dict[str, float] = {}

    def send() -> None:
        for message in handshake.messages_to_send():
            connection.send_bytes(message)

    while True:
        if deadline is not None:
            limits["timeout"] = max(0.0, deadline - time.monotonic())
        if _sent_and_done(handshake, send):
            return handshake.agreed
        handshake.receive(connection.recv_bytes(MAX_HANDSHAKE_MESSAGE, **limits))


def deliver_challenge(connection: Any, authkey: bytes, digest_name: str = "sha256") -> None:
    """Challenge the peer to prove it holds ``authkey`` (the stdlib's function)."""
    run_handshake(connection, authkey, Role.CHALLENGER, digest_name)


def answer_challenge(connection: Any, authkey: bytes) -> None:
    """Prove to the peer that we hold ``authkey`` (the stdlib's function)."""
    run_handshake(connection, authkey, Role.ANSWERER)


def _sent_and_done(handshake: Handshake, send: Callable[[], object]) -> bool:
    """Send what ``handshake`` queued; raise its failure, if it failed; whether it is done.

    The peer may hang up before our #FAILURE# reaches it: the authentication
    failure is the error worth reporting.
    """
    try:
        send()
    except OSError:
        if handshake.error is None:
            raise
    handshake.raise_for_failure()
    return handshake.done


def authenticate_socket(
    sock: socket.socket,
    channel: socket.socket | TLSSocket,
    handshake: FramedHandshake,
    deadline: float | None,
) -> None:
    """Run a client's handshake on its socket, before it becomes a Connection.

    Sends take no timeout (see :func:`run_handshake`).
    Reads are bounded by ``deadline`` with the socket's receive timeout
    (``SO_RCVTIMEO``), so the socket stays blocking and no call polls first;
    the timeout is set again only once it would let a read overrun the
    deadline by more than :data:`TIMEOUT_SLACK`, so a listener that answers
    at once costs a system call before the handshake and one after, not one
    per read.
    """
    readinto = channel.recv_into

    def send() -> None:
        data = handshake.data_to_send()
        while data:
            data = data[channel.send(data, socket.MSG_NOSIGNAL) :]

    armed = math.inf
    while True:
        if _sent_and_done(handshake, send):
            if armed != math.inf:
                _set_receive_timeout(sock, 0.0)
            return
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the listener's side of the handshake timed out")
            if armed - left > TIMEOUT_SLACK:
                _set_receive_timeout(sock, left)
                armed = left
        try:
            received = handshake.fill(readinto)
        except BlockingIOError:  # the receive timeout ran out
            raise TimeoutError("the listener's side of the handshake timed out") from None
        if not received:
            raise EOFError("the listener hung up during the handshake")


def _set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound each read of a blocking socket to ``seconds`` (0: no bound)."""
    # A zero timeval means no bound: a bound rounds up to a microsecond.
    micros = max(math.ceil(seconds * 1e6), 1) if seconds else 0
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(*divmod(micros, 10**6)))
