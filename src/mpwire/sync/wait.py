"""wait(): block until any of several connections, sockets, fds or sentinels is ready."""

from __future__ import annotations

import selectors
import time
from collections.abc import Iterable
from typing import Any

from .connection import Connection

__all__ = ["wait"]


def wait(object_list: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """Wait until an object in ``object_list`` is ready; return the ready ones.

    Objects are mpwire or stdlib Connections, sockets, objects with fileno(),
    raw fds and ``Process.sentinel`` values. ``timeout`` None waits forever; a
    negative one means zero. An mpwire Connection holding read-ahead data is
    ready even when its fd is not, and one this thread batches sends on
    writes them first (see Connection.batch()).
    """
    object_list = list(object_list)
    connections = [obj for obj in object_list if isinstance(obj, Connection)]
    for conn in connections:
        conn._flush_own_batch()
    buffered = [conn for conn in connections if conn._has_buffered()]
    if buffered:
        timeout = 0
    with selectors.PollSelector() as selector:
        for obj in object_list:
            selector.register(obj, selectors.EVENT_READ)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready = [key.fileobj for key, _ in selector.select(timeout)]
            if ready or buffered:
                break
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout < 0:
                    break
    return buffered + [obj for obj in ready if not any(obj is b for b in buffered)]
