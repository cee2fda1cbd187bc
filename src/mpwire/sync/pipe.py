"""Pipe: a pair of connected Connections in this process."""

from __future__ import annotations

import os
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

    Both ways, a Unix socket pair: large pickled buffers travel between the
    ends as shared memory (unless ``shared_memory=False``: for an end to be
    taken over by :func:`mpwire.asyncio.wrap`, which cannot receive it), and
    close() from another thread wakes a call blocked on either end. One way,
    an ``os.pipe()``, as the stdlib's: it holds as many messages before a
    writer blocks (64 KiB, about 3,500 small pickles, where a socket pair
    holds under 300), which programs that queue work before starting their
    workers rely on; large buffers travel in band.
    """
    options = get_serializer(serializer)

    def end(fd: int, readable: bool = True, writable: bool = True) -> Connection:
        return Connection(
            fd,
            readable,
            writable,
            max_message_size=max_message_size,
            serializer=options,
            shared_memory=shared_memory and duplex,
        )

    if not duplex:
        read_end, write_end = os.pipe()
        return end(read_end, writable=False), end(write_end, readable=False)
    left, right = socket.socketpair()
    left.setblocking(True)
    right.setblocking(True)
    return end(left.detach()), end(right.detach())
