"""The buffer arguments of send_bytes() and recv_bytes_into(), checked as the stdlib checks them.

Both front ends take any buffer-protocol object and count ``offset`` and
``size`` in bytes, whatever the item size (an ``array('i')``, a numpy array).
"""

from __future__ import annotations

from typing import Any

__all__ = ["message_view", "target_view"]


def message_view(buf: Any, offset: int = 0, size: int | None = None) -> memoryview:
    """The bytes ``buf[offset:offset + size]`` to send, as a flat byte view."""
    view = memoryview(buf)
    if view.itemsize != 1 or view.ndim != 1:
        view = view.cast("B")
    n = view.nbytes
    if offset < 0:
        raise ValueError("offset is negative")
    if n < offset:
        raise ValueError("buffer length < offset")
    if size is None:
        size = n - offset
    elif size < 0:
        raise ValueError("size is negative")
    elif offset + size > n:
        raise ValueError("buffer length < offset + size")
    return view[offset : offset + size]


def target_view(buf: Any, offset: int) -> memoryview:
    """The writable bytes of ``buf`` from ``offset`` on, for a message to land in."""
    view = memoryview(buf).cast("B")
    if offset < 0:
        raise ValueError("negative offset")
    if offset > view.nbytes:
        raise ValueError("offset too large")
    return view[offset:]
