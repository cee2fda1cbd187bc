"""Batch: a block of sends on a Connection that leave together, in few system calls.

``send_bytes()`` returns once its message is in the kernel, one system call
per message; ``with conn.batch():`` trades that for vectored writes of many
frames (see :meth:`Connection.batch`).
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ..protocol.frames import JOIN_LIMIT, encode_frame, encode_short_header

if TYPE_CHECKING:
    from .connection import Connection, _Payload, _Shared

__all__ = ["Batch"]

_BATCH_BYTES = 256 * 1024
"""A batch writes the frames it holds once they add up to this many bytes."""


class Batch:
    """Frames held back to leave together: what :meth:`Connection.batch` returns.

    A context manager; entering makes this thread the connection's only
    sender until the block ends, and nested blocks on the same connection
    join the outer one.
    """

    __slots__ = ("_borrowed", "_conn", "_parts", "_queued", "_small", "_timeout", "owner")

    def __init__(self, conn: Connection, timeout: float | None, *, borrowed: bool = False) -> None:
        self._conn = conn
        self._timeout = timeout
        # The caller keeps every buffer it sends unchanged until the block
        # ends (a Queue's feeder thread): large ones are queued without a copy.
        self._borrowed = borrowed
        # The frames queued: buffers too large to copy, and the small frames
        # between them, copied whole into one bytearray per run.
        self._parts: list[Any] = []
        self._queued = 0  # bytes in _parts
        self._small = bytearray()  # the last run of small frames, not in _parts yet
        self.owner: int | None = None
        """The thread holding the connection's sends (None: not entered, or nested)."""

    def __enter__(self) -> Self:
        conn = self._conn
        owner = threading.get_ident()
        outer = conn._batch
        if outer is not None and outer.owner == owner:
            return self
        gate = conn._send_gate
        if not gate.acquire(self._timeout):
            raise TimeoutError("send timed out waiting for another sender")
        if conn._write_fd is None:
            gate.token.append(True)
            if gate.waiting:
                gate.wake()
            conn._finish_close()
            conn._writable_fd()  # raises: closed, or read-only
        self.owner = owner
        conn._batch = self
        conn._plain_sock = conn._ready = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.owner is None:
            return
        conn = self._conn
        try:
            if conn._write_fd is not None:
                self.flush()
            elif (self._parts or self._small) and exc_type is None:
                raise OSError("handle is closed: the batch's last frames did not leave")
        finally:
            self.owner = conn._batch = None
            gate = conn._send_gate
            try:
                conn._reopen_shortcuts()  # (before other senders may look at them)
            finally:
                gate.token.append(True)
                if gate.waiting:
                    gate.wake()
                if conn._closing is not None:
                    conn._finish_close()

    def add(self, payload: _Payload, shared: _Shared | None) -> None:
        """Queue a frame (a shared-memory one goes at once, after what is queued)."""
        conn = self._conn
        if conn._write_fd is None:
            conn._writable_fd()  # raises: closed
        if shared is not None:
            self.flush()
            conn._write_frame(payload, self._timeout, shared)
            return
        if type(payload) is bytes and len(payload) <= JOIN_LIMIT:
            small = self._small
            small += encode_short_header(len(payload))
            small += payload
        else:
            for part in encode_frame(payload):
                if len(part) <= JOIN_LIMIT:
                    self._small += part
                    continue
                self._end_small_run()
                # A bytes object cannot change before the frame leaves; anything else may.
                borrow = self._borrowed or type(part) is bytes
                self._parts.append(part if borrow else bytes(part))
                self._queued += len(part)
        if self._queued + len(self._small) >= _BATCH_BYTES:
            self.flush()

    def forget(self) -> None:
        """End the block with nothing sent (in a child forked in it: the parent sends them)."""
        self._parts, self._queued, self._small = [], 0, bytearray()
        self.owner = None

    def _end_small_run(self) -> None:
        """Queue the run of small frames as one part; later ones start another."""
        if self._small:
            self._parts.append(self._small)
            self._queued += len(self._small)
            self._small = bytearray()

    def flush(self) -> None:
        """Write the frames queued so far."""
        self._end_small_run()
        parts, self._parts, self._queued = self._parts, [], 0
        if parts:
            conn = self._conn
            deadline = None if self._timeout is None else time.monotonic() + self._timeout
            conn._transmit(conn._writable_fd(), parts, deadline, False)
