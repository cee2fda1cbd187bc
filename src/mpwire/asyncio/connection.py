"""AsyncConnection: whole messages over an asyncio transport.

The bytes go through the same sans-I/O core as the blocking front end: a
``FrameDecoder`` fed by asyncio's ``BufferedProtocol`` contract (the transport
reads straight into the decoder's memory) and, until the peer has proved the
key, a ``FramedHandshake``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

from ..buffers import message_view, target_view
from ..exceptions import BufferTooShort, FrameError, MessageTooLong
from ..protocol.frames import FrameDecoder, encode_header
from ..protocol.handshake import FramedHandshake
from ..serialize import Serializer, get_serializer

__all__ = ["AsyncConnection", "FrameProtocol"]

READ_HIGH_WATER = 1 << 20
"""Received, unread bytes above which the transport stops reading (until recv() catches up)."""

READ_LOW_WATER = READ_HIGH_WATER // 4

_JOIN_LIMIT = 64 * 1024
"""Payloads up to this size are joined to their header; larger ones are written after it,
uncopied (``writelines`` would do it in one call, but before Python 3.13.1 or so it skips
the transport's flow control, so a sender would never wait for its reader)."""


def _bounded(timeout: float | None) -> contextlib.AbstractAsyncContextManager[Any]:
    """asyncio.timeout(timeout), or nothing at all without one (it costs a few µs a call)."""
    return contextlib.nullcontext() if timeout is None else asyncio.timeout(timeout)


class FrameProtocol(asyncio.BufferedProtocol):
    """Turns a transport's bytes into whole frames, with flow control both ways.

    With a handshake, received bytes go to it first; ``authenticated`` is
    resolved when it is done (or failed), and what the peer sent after it is
    decoded as frames.
    """

    def __init__(self, max_message_size: int | None, handshake: FramedHandshake | None) -> None:
        # Any: uvloop's transports are not asyncio.Transport subclasses.
        self.transport: Any = None
        self.authenticated: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handshake = handshake
        self._decoder = FrameDecoder(max_message_size)
        self._frames: collections.deque[bytes] = collections.deque()
        self._unread = 0
        self._reading_paused = False
        self._error: BaseException | None = None
        self.failed = False
        """Whether this side ended the stream for an error (a bad frame, a failed handshake)."""
        self._eof = False
        self._readable: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drained: list[asyncio.Future[None]] = []
        self._closed: asyncio.Future[None] = self.authenticated.get_loop().create_future()

    # -- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self._handshake is None:
            self.authenticated.set_result(None)
        else:
            self._send_handshake(self._handshake)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._handshake is not None:
            return self._handshake.get_buffer(sizehint)
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        handshake = self._handshake
        if handshake is None:
            self._decoder.buffer_updated(nbytes)
            self._take_frames()
            return
        handshake.buffer_updated(nbytes)
        self._send_handshake(handshake)

    def data_received(self, data: bytes) -> None:
        """Pipe transports deliver bytes this way instead of through get_buffer()."""
        handshake = self._handshake
        if handshake is None:
            self._decoder.feed(data)
            self._take_frames()
            return
        handshake.receive_data(data)
        self._send_handshake(handshake)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._error is None:
            self._error = exc
        if not self.authenticated.done():
            self.authenticated.set_exception(
                self._error or EOFError("the peer hung up during the handshake")
            )
        self._wake_reader()
        self._wake_writers()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writers()

    # -- the handshake -------------------------------------------------------

    def _send_handshake(self, handshake: FramedHandshake) -> None:
        transport = self.transport
        assert transport is not None
        data = handshake.data_to_send()
        if data:
            transport.write(data)
        if handshake.error is not None:
            self._fail(handshake.error)
        elif handshake.done:
            self._handshake = None
            self.authenticated.set_result(None)
            self._decoder.feed(handshake.leftover())
            self._take_frames()

    def _fail(self, error: BaseException) -> None:
        """Record why the stream is unusable and close the transport."""
        self.failed = True
        if self._error is None:
            self._error = error
        if not self.authenticated.done():
            self.authenticated.set_exception(error)
        if self.transport is not None:
            self.transport.close()
        self._wake_reader()

    # -- receiving -------------------------------------------------------------

    def _take_frames(self) -> None:
        decoder = self._decoder
        try:
            frame = decoder.next_frame()
            while frame is not None:
                self._frames.append(frame)
                self._unread += len(frame)
                frame = decoder.next_frame()
        except FrameError as exc:
            self._fail(exc)
        if self._unread > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter, self._readable = self._readable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_frame(self) -> bytes:
        """The next whole frame; EOFError or the stream's error when there is none."""
        while not self._frames:
            if self._error is not None:
                raise self._error
            if self._eof:
                raise self._decoder.eof_error()
            self._readable = self.authenticated.get_loop().create_future()
            await self._readable
        frame = self._frames.popleft()
        self._unread -= len(frame)
        if self._reading_paused and self._unread < READ_LOW_WATER:
            self._reading_paused = False
            self.transport.resume_reading()
        return frame

    @property
    def has_frames(self) -> bool:
        return bool(self._frames)

    # -- sending -----------------------------------------------------------------

    def _wake_writers(self) -> None:
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while the transport holds more than its high-water mark."""
        while True:
            if self._error is not None:
                raise self._error
            if self.transport is None or self.transport.is_closing():
                raise BrokenPipeError("the connection is closed")
            if not self._writing_paused:
                return
            waiter = self.authenticated.get_loop().create_future()
            self._drained.append(waiter)
            await waiter

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Drop the connection at once, unsent bytes and all."""
        if self.transport is not None:
            self.transport.abort()


class AsyncConnection:
    """A connection carrying whole messages, for asyncio code.

    The same messages and errors as the blocking Connection: ``send``/``recv``
    pickle, ``send_bytes``/``recv_bytes``/``recv_bytes_into`` move raw bytes.
    ``send*`` wait while the peer is not reading (backpressure). A cancelled
    ``recv*`` loses nothing: the message stays for the next call. Every call
    takes a ``timeout`` (seconds) and raises TimeoutError when it expires.
    """

    def __init__(
        self,
        protocol: FrameProtocol,
        readable: bool = True,
        writable: bool = True,
        *,
        serializer: str | Serializer | None = None,
    ) -> None:
        self._protocol = protocol
        self._serializer = get_serializer(serializer)
        self._readable = readable
        self._writable = writable
        self._receiving = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<mpwire.asyncio.AsyncConnection {'closed' if self.closed else 'open'}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        """Each received object until the peer closes."""
        while True:
            try:
                message = await self.recv()
            except EOFError:
                return
            yield message

    @property
    def closed(self) -> bool:
        """True once closed, by close() or by an error that ended the stream."""
        return self._closed or self._protocol.failed

    @property
    def readable(self) -> bool:
        return self._readable

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def transport(self) -> Any:
        """The asyncio transport underneath."""
        return self._protocol.transport

    def close(self) -> None:
        """Close the connection (what was sent still goes out first)."""
        self._closed = True
        if self._protocol.transport is not None:
            self._protocol.transport.close()

    async def aclose(self) -> None:
        """Close the connection and wait until it is closed."""
        self.close()
        await self._protocol.wait_closed()

    def _check(self, writing: bool) -> None:
        if self.closed:
            raise OSError("handle is closed")
        if writing and not self._writable:
            raise OSError("connection is read-only")
        if not writing and not self._readable:
            raise OSError("connection is write-only")

    # -- sending -----------------------------------------------------------------

    async def send_bytes(
        self,
        buf: Any,
        offset: int = 0,
        size: int | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Send the bytes of a bytes-like object as one message."""
        self._check(writing=True)
        # The transport may keep what it cannot send yet: give it bytes the
        # caller cannot change afterwards.
        self._write(bytes(message_view(buf, offset, size)))
        await self._drain(timeout)

    async def send(self, obj: Any, *, timeout: float | None = None) -> None:
        """Send an object (pickled, or as the connection's ``serializer`` says)."""
        self._check(writing=True)
        # A fresh pickle belongs to nobody else: no copy needed to keep it intact.
        self._write(self._serializer.dumps(obj))
        await self._drain(timeout)

    def _write(self, payload: bytes | bytearray | memoryview) -> None:
        # A frame's writes follow each other with no await between them, so
        # frames from concurrent tasks never interleave.
        header = encode_header(len(payload))
        transport = self._protocol.transport
        if len(payload) <= _JOIN_LIMIT:
            transport.write(header + payload)
        else:
            transport.write(header)
            transport.write(payload)

    async def _drain(self, timeout: float | None) -> None:
        async with _bounded(timeout):
            await self._protocol.drain()

    # -- receiving -----------------------------------------------------------------

    async def recv_bytes(
        self, maxlength: int | None = None, *, timeout: float | None = None
    ) -> bytes:
        """Receive one message as bytes (MessageTooLong, and closed, over ``maxlength``)."""
        self._check(writing=False)
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        frame = await self._next_frame(timeout)
        if maxlength is not None and len(frame) > maxlength:
            self.close()
            raise MessageTooLong(len(frame), maxlength)
        return frame

    async def recv(self, *, timeout: float | None = None) -> Any:
        """Receive an object (unpickled, or as the connection's ``serializer`` says)."""
        self._check(writing=False)
        return self._serializer.loads(await self._next_frame(timeout))

    async def recv_bytes_into(
        self, buf: Any, offset: int = 0, *, timeout: float | None = None
    ) -> int:
        """Receive one message into a writable buffer at byte ``offset``; return its size.

        If it does not fit, raises BufferTooShort with the whole message as ``args[0]``.
        """
        self._check(writing=False)
        with target_view(buf, offset) as target:
            frame = await self._next_frame(timeout)
            if len(frame) > len(target):
                raise BufferTooShort(frame)
            target[: len(frame)] = frame
        return len(frame)

    async def _next_frame(self, timeout: float | None) -> bytes:
        async with _bounded(timeout), self._receiving:
            return await self._protocol.next_frame()

    def poll(self) -> bool:
        """Whether a whole message is waiting (recv() would not wait)."""
        return self._protocol.has_frames
