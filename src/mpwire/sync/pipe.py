"""Pipe: a pair of connected Connections in this process."""

from __future__ import annotations

import socket

from .connection import Connection

__all__ = ["Pipe"]


def Pipe(
    duplex: bool = True, *, max_message_size: int | None = None
) -> tuple[Connection, Connection]:
    """Two connected ends: both ways, or one way (reader, writer).

    Both kinds are a socketpair (a one-way pair shut down in the other
    direction), so either end can be woken by close() from another thread.
    """
    left, right = socket.socketpair()
    left.setblocking(True)
    right.setblocking(True)
    if not duplex:
        left.shutdown(socket.SHUT_WR)
        right.shutdown(socket.SHUT_RD)
    return (
        Connection(left.detach(), True, duplex, max_message_size=max_message_size),
        Connection(right.detach(), duplex, True, max_message_size=max_message_size),
    )
