"""Pipe: a pair of connected Connections in this process."""

from __future__ import annotations

import socket

from ..serialize import Serializer, get_serializer
from .connection import Connection

__all__ = ["Pipe"]


def Pipe(
    duplex: bool = True,
    *,
    max_message_size: int | None = None,
    serializer: str | Serializer | None = None,
    shared_memory: bool = True,
) -> tuple[Connection, Connection]:
    """Two connected ends: both ways, or one way (reader, writer).

    Both kinds are a socketpair (a one-way pair shut down in the other
    direction), so either end can be woken by close() from another thread,
    and large pickled buffers travel between the ends as shared memory
    (unless ``shared_memory=False``: for an end to be taken over by
    :func:`mpwire.asyncio.wrap`, which cannot receive it).
    """
    left, right = socket.socketpair()
    left.setblocking(True)
    right.setblocking(True)
    if not duplex:
        left.shutdown(socket.SHUT_WR)
        right.shutdown(socket.SHUT_RD)
    options = get_serializer(serializer)

    def end(sock: socket.socket, readable: bool, writable: bool) -> Connection:
        return Connection(
            sock.detach(),
            readable,
            writable,
            max_message_size=max_message_size,
            serializer=options,
            shared_memory=shared_memory,
        )

    return end(left, True, duplex), end(right, duplex, True)
