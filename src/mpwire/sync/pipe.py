"""Pipe: a pair of connected Connections in this process."""

from __future__ import annotations

import os
import socket

from .connection import Connection

__all__ = ["Pipe"]


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """Two connected ends: both ways (a socketpair), or one way (reader, writer)."""
    if duplex:
        left, right = socket.socketpair()
        left.setblocking(True)
        right.setblocking(True)
        return Connection(left.detach()), Connection(right.detach())
    reader, writer = os.pipe()
    return Connection(reader, writable=False), Connection(writer, readable=False)
