"""Connection: messages over a blocking socket or pipe file descriptor.

Same API, errors and wire format as ``multiprocessing.connection.Connection``,
with less work per message: received bytes are read ahead (one ``read`` can
bring many frames), large payloads land directly in the object returned, and
header and payload leave in one system call.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import select
from collections.abc import Callable
from multiprocessing import reduction
from types import TracebackType
from typing import Any, Self, SupportsIndex

from .. import serialize
from ..exceptions import BufferTooShort, FrameError
from ..protocol.frames import (
    FrameDecoder,
    LargeFrame,
    PayloadReader,
    ReadInto,
    encode_header,
    encode_short_header,
)
from ..serialize import loads

__all__ = ["Connection", "rebuild_connection", "reduce_connection"]

_CONCAT_LIMIT = 8192
"""Payloads up to this size are joined to their header; larger ones use writev()."""

_Buffer = Any
"""Any object supporting the buffer protocol (bytes, bytearray, memoryview, array, numpy)."""


class Connection:
    """A connection carrying whole messages over a file descriptor.

    ``handle`` is an open socket or pipe fd, which the Connection owns and
    closes. Objects go with send()/recv() (pickled), raw messages with
    send_bytes()/recv_bytes()/recv_bytes_into().
    """

    _handle: int | None = None

    def __init__(self, handle: SupportsIndex, readable: bool = True, writable: bool = True) -> None:
        fd = handle.__index__()
        if fd < 0:
            raise ValueError("invalid handle")
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        self._handle = fd
        self._readable = readable
        self._writable = writable
        self._decoder = FrameDecoder()
        self._readinto: ReadInto | None = None
        # The fd while open and writable, so one test guards the send path.
        self._write_fd = fd if writable else None
        self._after_first_send: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"fd={self._handle}"
        mode = "".join(("r" if self._readable else "", "w" if self._writable else ""))
        return f"<mpwire.Connection {state} {mode}>"

    def __del__(self) -> None:
        if self._handle is not None:
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True if the connection is closed."""
        return self._handle is None

    @property
    def readable(self) -> bool:
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if the connection is writable."""
        return self._writable

    def fileno(self) -> int:
        """File descriptor or handle of the connection."""
        return self._fd()

    def close(self) -> None:
        """Close the connection."""
        if self._handle is not None:
            self._close()

    def _close(self) -> None:
        handle, self._handle, self._readinto, self._write_fd = self._handle, None, None, None
        if handle is not None:
            os.close(handle)

    def _fd(self) -> int:
        if self._handle is None:
            raise OSError("handle is closed")
        return self._handle

    def _readable_fd(self) -> int:
        fd = self._fd()
        if not self._readable:
            raise OSError("connection is write-only")
        return fd

    def _reader(self) -> ReadInto:
        """The receive path's readinto, made on first use of an open, readable fd."""
        self._readinto = io.FileIO(self._readable_fd(), "rb", closefd=False).readinto
        return self._readinto

    def _writable_fd(self) -> int:
        fd = self._fd()
        if not self._writable:
            raise OSError("connection is read-only")
        return fd

    # -- sending ---------------------------------------------------------

    def send_bytes(self, buf: _Buffer, offset: int = 0, size: int | None = None) -> None:
        """Send the bytes of a bytes-like object as one message."""
        fd = self._write_fd
        if fd is None:
            fd = self._writable_fd()
        if type(buf) is bytes and not offset and size is None:
            self._send_frame(fd, buf)
            return
        m = memoryview(buf)
        if m.itemsize != 1 or m.ndim != 1:
            m = m.cast("B")
        n = m.nbytes
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
        self._send_frame(fd, m[offset : offset + size])

    def send(self, obj: Any) -> None:
        """Send a (picklable) object."""
        fd = self._writable_fd()
        with serialize.dumps(obj) as payload:
            self._send_frame(fd, payload)

    def _send_frame(self, fd: int, payload: bytes | memoryview) -> None:
        if self._after_first_send is not None:
            self._sent_first(fd, payload)
            return
        size = len(payload)
        if size <= _CONCAT_LIMIT:
            data = encode_short_header(size) + payload
            written = os.write(fd, data)
            if written != len(data):
                _write_all(fd, [memoryview(data)[written:]])
        else:
            _write_all(fd, [encode_header(size), payload])

    def _sent_first(self, fd: int, payload: bytes | memoryview) -> None:
        hook, self._after_first_send = self._after_first_send, None
        self._send_frame(fd, payload)
        if hook is not None:
            hook()

    # -- receiving -------------------------------------------------------

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one message as bytes.

        A message longer than ``maxlength`` closes the connection and raises
        OSError (a :class:`~mpwire.exceptions.MessageTooLong`).
        """
        if maxlength is not None and maxlength < 0:
            self._readable_fd()
            raise ValueError("negative maxlength")
        frame = self._receive(maxlength, None, False)
        assert isinstance(frame, bytes)
        return frame

    def recv(self) -> Any:
        """Receive a (pickled) object.

        A large message is unpickled as it arrives, so large buffers inside it
        are received straight into the objects they become.
        """
        frame = self._receive(None, None, True)
        if isinstance(frame, bytes):
            return loads(frame)
        assert isinstance(frame, LargeFrame) and self._readinto is not None
        payload = PayloadReader(frame, self._readinto)
        try:
            obj = pickle.Unpickler(payload).load()
        except BaseException:
            if payload.broken:
                # Reading stopped part way through a message it cannot resume.
                self.close()
            else:
                payload.skip_rest()  # a bad pickle: the next message is intact
            raise
        payload.skip_rest()
        return obj

    def recv_bytes_into(self, buf: _Buffer, offset: int = 0) -> int:
        """Receive one message into a writable buffer at byte ``offset``.

        Returns the message's size. If it does not fit, raises BufferTooShort
        with the whole message as ``args[0]``.
        """
        self._readable_fd()
        with memoryview(buf) as m:
            if offset < 0:
                raise ValueError("negative offset")
            if offset > m.nbytes:
                raise ValueError("offset too large")
            with m.cast("B") as flat, flat[offset:] as target:
                try:
                    result = self._receive(None, target, False)
                finally:
                    self._decoder.release_target()
        if isinstance(result, int):
            return result
        raise BufferTooShort(result)

    def _receive(
        self, maxlength: int | None, into: memoryview | None, stream: bool
    ) -> int | bytes | LargeFrame:
        """Read until the decoder has the next frame (see FrameDecoder.next_frame)."""
        readinto = self._readinto or self._reader()
        decoder = self._decoder
        try:
            frame = decoder.next_frame(maxlength, into, stream)
            while frame is None:
                if not decoder.fill(readinto):
                    raise decoder.eof_error()
                frame = decoder.next_frame(maxlength, into, stream)
        except FrameError:
            self.close()
            raise
        return frame

    # -- readiness -------------------------------------------------------

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is data to read, waiting up to ``timeout`` seconds (None: forever)."""
        fd = self._readable_fd()
        if self._decoder.pending:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))

    def _has_buffered(self) -> bool:
        """Whether a read-ahead holds bytes that the fd no longer shows."""
        return self._handle is not None and self._readable and self._decoder.pending


def _write_all(fd: int, parts: list[Any]) -> None:
    """Write every byte of ``parts``, resuming after partial writes."""
    while parts:
        written = os.writev(fd, parts)
        while parts and written >= len(parts[0]):
            written -= len(parts.pop(0))
        if written:
            parts[0] = memoryview(parts[0])[written:]


def reduce_connection(conn: Connection) -> tuple[Any, tuple[Any, ...]]:
    """Pickle support: the fd travels as multiprocessing sends fds, with any read-ahead."""
    df = reduction.DupFd(conn.fileno())
    return rebuild_connection, (df, conn.readable, conn.writable, conn._decoder.pending_bytes())


def rebuild_connection(df: Any, readable: bool, writable: bool, pending: bytes = b"") -> Connection:
    """Unpickle a Connection made by reduce_connection()."""
    conn = Connection(df.detach(), readable, writable)
    conn._decoder.feed(pending)
    return conn


reduction.register(Connection, reduce_connection)
