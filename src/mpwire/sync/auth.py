"""Runs the sans-I/O authkey handshake over any connection-like object.

Works with mpwire and stdlib Connections alike: all it needs is
``send_bytes(data)`` and ``recv_bytes(maxlength)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..protocol.handshake import MAX_HANDSHAKE_MESSAGE, Handshake, Role

__all__ = ["answer_challenge", "deliver_challenge", "run_handshake"]


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
    while True:
        if deadline is not None:
            limits["timeout"] = max(0.0, deadline - time.monotonic())
        for message in handshake.messages_to_send():
            try:
                connection.send_bytes(message)
            except OSError:
                # The peer may hang up before our #FAILURE# reaches it; the
                # authentication failure is the error worth reporting.
                if handshake.error is None:
                    raise
        handshake.raise_for_failure()
        if handshake.done:
            return handshake.agreed
        handshake.receive(connection.recv_bytes(MAX_HANDSHAKE_MESSAGE, **limits))


def deliver_challenge(connection: Any, authkey: bytes, digest_name: str = "sha256") -> None:
    """Challenge the peer to prove it holds ``authkey`` (the stdlib's function)."""
    run_handshake(connection, authkey, Role.CHALLENGER, digest_name)


def answer_challenge(connection: Any, authkey: bytes) -> None:
    """Prove to the peer that we hold ``authkey`` (the stdlib's function)."""
    run_handshake(connection, authkey, Role.ANSWERER)
