"""Frames: a length header, then the payload, exactly as multiprocessing writes them.

The header is a signed 32-bit big-endian length. A payload longer than
2**31-1 bytes is announced by the length -1 followed by an unsigned 64-bit
length (CPython 3.8 and later read and write this form).
"""

from __future__ import annotations

import io
import struct

from ..exceptions import FrameError, MessageTooLong

__all__ = ["LARGEST_SHORT", "FrameDecoder", "encode_header"]

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_LONG_MARK = _SHORT.pack(-1)

LARGEST_SHORT = 0x7FFFFFFF
"""The largest payload announced by a plain 4-byte header."""

READ_AHEAD = 64 * 1024
"""Capacity of the read-ahead buffer: frames that fit are read many per call."""

GROWTH_STEP = 1 << 20
"""A large payload's buffer is grown at most max(received, GROWTH_STEP) ahead."""


def encode_header(size: int) -> bytes:
    """Return the header announcing a payload of ``size`` bytes."""
    if size <= LARGEST_SHORT:
        return _SHORT.pack(size)
    return _LONG_MARK + _LONG.pack(size)


class FrameDecoder:
    """Incremental frame decoder: bytes in, whole payloads out, limits enforced.

    The I/O layer asks :meth:`get_buffer` where the next bytes should land,
    reads into it and reports the count with :meth:`buffer_updated` (the
    contract of asyncio's ``BufferedProtocol``); :meth:`feed` does the same for
    bytes it already holds. Frames that fit the read-ahead buffer arrive many
    per read and are sliced out of it. A larger payload is received straight
    into the ``bytes`` object that :meth:`next_frame` returns (or the caller's
    buffer, for :meth:`next_frame_into`), grown as bytes actually arrive, so a
    forged length reserves at most ``GROWTH_STEP`` bytes.
    """

    def __init__(
        self, max_size: int | None = None, *, read_ahead: int = READ_AHEAD, initial: bytes = b""
    ) -> None:
        self.max_size = max_size
        self._buf = bytearray(read_ahead)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        # A large frame in progress: its size, bytes received so far, and where
        # they go (a growing BytesIO, or the caller's buffer).
        self._size = 0
        self._got = 0
        self._sink: io.BytesIO | None = None
        self._into: memoryview | None = None
        self._lease: memoryview | None = None
        self.feed(initial)

    @property
    def pending(self) -> bool:
        """Whether any received byte has not been returned yet."""
        return self._end > self._start or self._size > 0

    def pending_bytes(self) -> bytes:
        """The received bytes not returned yet, to hand this stream to another decoder."""
        if self._size:
            raise ValueError("cannot hand over a stream in the middle of a large message")
        return bytes(self._view[self._start : self._end])

    def eof_error(self) -> Exception:
        """The exception for an end of stream now: clean between frames, or not."""
        if self.pending:
            return OSError("got end of file during message")
        return EOFError()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received by other means."""
        data = memoryview(data).cast("B")
        while data:
            buf = self.get_buffer()
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            self.buffer_updated(n)
            data = data[n:]

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable memory for the next received bytes; valid until buffer_updated()."""
        self._release_lease()
        if self._size:
            lease = self._large_buffer()
        else:
            if self._start:
                pending = self._end - self._start
                self._buf[:pending] = self._view[self._start : self._end]
                self._start, self._end = 0, pending
            lease = self._view[self._end :]
        self._lease = lease
        return lease

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` bytes were written at the start of the last buffer."""
        lease = self._lease
        if lease is None or not 0 <= nbytes <= len(lease):
            raise ValueError("buffer_updated() without a matching get_buffer()")
        self._release_lease()
        if self._size:
            self._got += nbytes
        else:
            self._end += nbytes

    def next_frame(self, maxlength: int | None = None) -> bytes | None:
        """The next whole payload, or None until more bytes arrive.

        A frame longer than ``maxlength`` or ``max_size`` raises
        :class:`MessageTooLong`; a malformed header raises :class:`FrameError`.
        The stream cannot be used after either.
        """
        result = self._next(maxlength, None)
        assert not isinstance(result, int)
        return result

    def next_frame_into(self, target: memoryview) -> int | bytes | None:
        """Like next_frame(), but the payload lands in ``target`` (a byte view).

        Returns the payload's size once written to ``target``; if it does not
        fit, the payload itself, so the caller can report it.
        """
        return self._next(None, target)

    def _next(self, maxlength: int | None, target: memoryview | None) -> int | bytes | None:
        if self._size:
            return self._finish_large() if self._got == self._size else None
        avail = self._end - self._start
        if avail < 4:
            return None
        size: int = _SHORT.unpack_from(self._buf, self._start)[0]
        header = 4
        if size < 0:
            if size != -1:
                raise FrameError(f"corrupt frame header: negative length {size}")
            if avail < 12:
                return None
            size = _LONG.unpack_from(self._buf, self._start + 4)[0]
            header = 12
        self._check_size(size, maxlength)
        begin = self._start + header
        end = begin + size
        if end <= self._end:
            self._start = end
            if end == self._end:
                self._start = self._end = 0
            if target is not None and size <= len(target):
                target[:size] = self._view[begin:end]
                return size
            return bytes(self._view[begin:end])
        if header + size > len(self._buf):
            fits = target is not None and size <= len(target)
            self._begin_large(begin, size, target if fits else None)
        return None

    def _check_size(self, size: int, maxlength: int | None) -> None:
        if maxlength is not None and size > maxlength:
            raise MessageTooLong(size, maxlength)
        if self.max_size is not None and size > self.max_size:
            raise MessageTooLong(size, self.max_size)

    def _begin_large(self, begin: int, size: int, target: memoryview | None) -> None:
        body = self._view[begin : self._end]
        got = len(body)
        if target is None:
            self._sink = io.BytesIO()
            self._sink.write(body)
        else:
            self._into = target
            target[:got] = body
        self._start = self._end = 0
        self._size, self._got = size, got

    def _large_buffer(self) -> memoryview:
        if self._into is not None:
            return self._into[self._got : self._size]
        sink = self._sink
        assert sink is not None
        want = min(self._size, self._got + max(self._got, GROWTH_STEP))
        if sink.seek(0, io.SEEK_END) < want:
            sink.seek(want - 1)
            sink.write(b"\0")
        whole = sink.getbuffer()
        lease = whole[self._got : want]
        whole.release()
        return lease

    def _finish_large(self) -> int | bytes:
        size, sink = self._size, self._sink
        self._size = self._got = 0
        self._sink = self._into = None
        if sink is None:
            return size
        return sink.getvalue()

    def _release_lease(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
