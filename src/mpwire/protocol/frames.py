"""Frames: a length header, then the payload, exactly as multiprocessing writes them.

The header is a signed 32-bit big-endian length. A payload longer than
2**31-1 bytes is announced by the length -1 followed by an unsigned 64-bit
length (CPython 3.8 and later read and write this form).

Between mpwire peers that agreed on shared memory (and only then), a
shared-memory header may precede a frame: the length -2, the count of
buffers as an unsigned 32-bit number, and for each buffer a flags byte
(:data:`SHARED_KEEP`: the memory is shared on purpose, and stays shared),
then its offset and length in its file as unsigned 64-bit numbers. The frame
that follows is a pickle that takes those buffers out of band, in order;
they travel as file descriptors beside the bytes (see :mod:`mpwire.sync.shm`).
Before its first such message, a sender puts the mark
:data:`DESCRIPTORS_FOLLOW` (the length -3) in the stream, so that the
receiver reads with ``recvmsg`` (which keeps descriptors) only from there on.
"""

from __future__ import annotations

import contextlib
import errno
import io
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, overload

from ..exceptions import FrameError, MessageTooLong

__all__ = [
    "DESCRIPTORS_FOLLOW",
    "JOIN_LIMIT",
    "LARGEST_SHORT",
    "SHARED_KEEP",
    "FrameDecoder",
    "LargeFrame",
    "PayloadReader",
    "SharedEntry",
    "encode_frame",
    "encode_header",
    "encode_shared_header",
    "encode_short_header",
]

_SHORT = struct.Struct("!i")
_unpack_short = _SHORT.unpack_from
_LONG = struct.Struct("!Q")
_LONG_MARK = _SHORT.pack(-1)
_SHARED = -2
_DESCRIPTORS = -3
_COUNT = struct.Struct("!I")
_ENTRY = "BQQ"
_ENTRY_SIZE = struct.calcsize("!" + _ENTRY)

DESCRIPTORS_FOLLOW = _SHORT.pack(_DESCRIPTORS)
"""The mark after which file descriptors may come with the bytes (agreed peers only)."""

SHARED_KEEP = 1
"""A shared buffer's flag: the receiver keeps the file, shared with the sender."""

MAX_SHARED_BUFFERS = 64
"""The most shared-memory buffers one message may carry (a file descriptor each)."""

LARGEST_SHORT = 0x7FFFFFFF
"""The largest payload announced by a plain 4-byte header."""

READ_AHEAD = 256 * 1024
"""Frames up to this size (header included) are read ahead, many per read."""

INITIAL_READ_AHEAD = 4096
"""The read-ahead buffer starts this small and doubles while reads fill it."""

SPLIT_LIMIT = 16384
"""Whole payloads up to this size are split off a read at once, onto the ready queue."""

SPLIT_COUNT = 256
"""The most payloads split off at a time (each is an object: this bounds their overhead)."""

GROWTH_STEP = 1 << 20
"""A large payload's buffer is grown at most max(received, GROWTH_STEP) ahead."""

ReadInto = Callable[[memoryview], int | None]
"""A blocking ``readinto``: the count read, 0 at end of stream (None: would block)."""


def _drain(ready: deque[bytes]) -> list[bytes]:
    """Pop every payload off ``ready``: each goes to this caller or to a concurrent popper, once."""
    taken = []
    with contextlib.suppress(IndexError):
        while True:
            taken.append(ready.popleft())
    return taken


def _counted(received: int | None) -> int:
    if received is None:
        raise BlockingIOError(errno.EAGAIN, "the connection's file descriptor is non-blocking")
    return received


encode_short_header = _SHORT.pack
"""The header of a payload of at most LARGEST_SHORT bytes (encode_header's fast path)."""


def encode_header(size: int) -> bytes:
    """Return the header announcing a payload of ``size`` bytes."""
    if size <= LARGEST_SHORT:
        return encode_short_header(size)
    return _LONG_MARK + _LONG.pack(size)


JOIN_LIMIT = 16384
"""Payloads up to this size are joined to their header (as the stdlib does); larger follow it."""


def encode_frame(payload: bytes | bytearray | memoryview | list[Any]) -> list[Any]:
    """A frame's buffers, to write in order: the header, then the payload (a list: its parts).

    A payload of up to JOIN_LIMIT bytes is joined to its header; a larger one
    (or a pickle's parts) is not copied.
    """
    if isinstance(payload, list):
        return [encode_header(sum(map(len, payload))), *payload]
    size = len(payload)
    if size <= JOIN_LIMIT:
        return [encode_short_header(size) + payload]
    return [encode_header(size), payload]


class SharedEntry(NamedTuple):
    """A shared buffer as the header describes it: where it lies in its file."""

    flags: int
    offset: int
    length: int


def encode_shared_header(entries: list[SharedEntry]) -> bytes:
    """The header announcing that the next frame takes these shared buffers."""
    if not 1 <= len(entries) <= MAX_SHARED_BUFFERS:
        raise ValueError(f"a message carries 1 to {MAX_SHARED_BUFFERS} shared buffers")
    fields = [field for entry in entries for field in entry]
    return struct.pack(f"!iI{_ENTRY * len(entries)}", _SHARED, len(entries), *fields)


_SPLITS = range(SPLIT_COUNT)


class LargeFrame(NamedTuple):
    """A frame whose payload the caller reads itself: the bytes already received, the size."""

    prefix: bytes
    size: int


class FrameDecoder:
    """Incremental frame decoder: bytes in, whole payloads out, limits enforced.

    Bytes come in three ways: :meth:`fill` calls a blocking ``readinto`` once
    with the memory the bytes should land in (the sync front end);
    :meth:`get_buffer` and :meth:`buffer_updated` are the same contract split
    in two, as asyncio's ``BufferedProtocol`` uses it; :meth:`feed` copies
    bytes received elsewhere. Frames that fit the read-ahead buffer arrive
    many per read and are sliced out of it. A larger payload is received
    straight into the ``bytes`` object that :meth:`next_frame` returns (or the
    caller's buffer, with ``into``), grown as bytes actually
    arrive, so a forged length reserves at most ``GROWTH_STEP`` bytes.

    With ``exact`` set, reads stop at the end of the message being decoded:
    nothing is read ahead, so the bytes of later messages stay where other
    readers of the same stream can take them (an end shared between
    processes, see :mod:`mpwire.sync.sharing`). :attr:`read_payload`, if
    set, then reads a small message's payload, its header read: a cheaper
    way in where descriptors come only with headers (a ``read`` where the
    headers need a ``recvmsg``).

    With ``accept_shared`` set, a shared-memory header is taken too: the
    next frame then comes with :attr:`shared`, its buffers' entries, which
    the caller takes (and resets to None) with the frame. So is the mark
    :data:`DESCRIPTORS_FOLLOW`, which calls :attr:`on_descriptors` as it is
    decoded (before any later byte is read).
    """

    __slots__ = (
        "_buf",
        "_end",
        "_got",
        "_grow",
        "_into",
        "_lease",
        "_read_ahead",
        "_sink",
        "_size",
        "_start",
        "_view",
        "accept_shared",
        "exact",
        "max_size",
        "on_descriptors",
        "read_payload",
        "ready",
        "received",
        "shared",
    )

    def __init__(
        self, max_size: int | None = None, *, read_ahead: int = READ_AHEAD, initial: bytes = b""
    ) -> None:
        if read_ahead < 1:
            raise ValueError("read_ahead must be at least 1 byte")
        self.max_size = max_size
        self._read_ahead = read_ahead
        self._buf = bytearray(min(INITIAL_READ_AHEAD, read_ahead))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._grow = False
        # A large frame in progress: its size, bytes received so far, and where
        # they go (a growing BytesIO, or the caller's buffer).
        self._size = 0
        self._got = 0
        self._sink: io.BytesIO | None = None
        self._into: memoryview | None = None
        self._lease: memoryview | None = None
        self.exact = False
        self.read_payload: ReadInto | None = None
        self.accept_shared = False
        self.shared: list[SharedEntry] | None = None
        self.on_descriptors: Callable[[], None] | None = None
        self.received = 0  # bytes taken in, in all
        self.ready: deque[bytes] = deque()
        """Small payloads split off a read, first in line (see next_payload())."""
        if initial:
            self.feed(initial)

    @property
    def pending(self) -> bool:
        """Whether any received byte has not been returned yet."""
        return bool(self.ready) or self._mid_frame()

    def _mid_frame(self) -> bool:
        return self._end > self._start or self._size > 0 or self.shared is not None

    def take_pending(self) -> bytes:
        """The received bytes not returned yet, as they came, leaving the decoder empty.

        For handing the stream over to another reader, which must read these
        bytes before anything still in the stream. A large payload in
        progress goes too: its header and the part received. Not in the
        middle of a shared-memory message (its descriptors cannot go along).
        """
        if self.shared is not None:
            raise ValueError("cannot hand over a stream in the middle of a message")
        parts = [encode_header(len(payload)) + payload for payload in _drain(self.ready)]
        parts.append(self._view[self._start : self._end].tobytes())
        if self._size:
            self.release_target()
            assert self._sink is not None
            parts.append(encode_header(self._size))
            parts.append(self._sink.getbuffer()[: self._got].tobytes())
        self.clear()
        return b"".join(parts)

    def clear(self) -> None:
        """Drop every received byte not returned yet (another reader has them)."""
        self.ready.clear()
        self._start = self._end = self._size = self._got = 0
        self._sink = self._into = None
        self.shared = None

    def eof_error(self) -> Exception:
        """The exception for an end of stream now: clean between frames, or not."""
        if self._mid_frame():
            return OSError("got end of file during message")
        return EOFError()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received by other means."""
        data = memoryview(data).cast("B")
        while data:
            buf = self._lease = self._space(False)
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            self.buffer_updated(n)
            data = data[n:]

    def fill(self, readinto: ReadInto) -> int:
        """Call ``readinto(buffer)`` once to receive bytes; return its count (0 at EOF)."""
        if self._got < self._size:
            lease = self._large_buffer()
            try:
                received = _counted(readinto(lease))
            finally:
                lease.release()
            self._got += received
            self.received += received
            return received
        end = self._end
        if end or self._grow or self.exact:
            read = readinto(self._space(self.exact))
            end = self._end
        else:
            read = readinto(self._view)
        received = _counted(read) if read is None else read
        end += received
        self._end = end
        self.received += received
        if end == len(self._buf) and end < self._read_ahead:
            self._grow = True  # reads fill the buffer: the next one grows it
        return received

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable memory for the next received bytes; valid until buffer_updated()."""
        self._lease = self._space(self.exact)
        return self._lease

    def _space(self, exact: bool) -> memoryview:
        """The memory the next bytes go to (only up to the message's end if ``exact``)."""
        self._release_lease()
        if self._got < self._size:
            return self._large_buffer()
        self._make_room()
        end = self._end
        return self._view[end : end + self._wanted()] if exact else self._view[end:]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` bytes were written at the start of the last buffer."""
        lease = self._lease
        if lease is None or not 0 <= nbytes <= len(lease):
            raise ValueError("buffer_updated() without a matching get_buffer()")
        self._release_lease()
        self.received += nbytes
        if self._got < self._size:
            self._got += nbytes
        else:
            self._end += nbytes

    def _wanted(self) -> int:
        """How many bytes the stream holds before the end of the message being decoded.

        What an exact read may take (the read-ahead buffer may hold fewer):
        the rest of the frame's header, or of its payload once the header is
        whole; a shared-memory header counts as part of its frame's header.
        Only asked while no whole message waits (next_frame() returned None).
        """
        buf, at, end = self._buf, self._start, self._end
        if end - at >= 4 and self.accept_shared and _unpack_short(buf, at)[0] == _SHARED:
            if end - at < 8:
                return at + 8 - end
            at += 8 + _ENTRY_SIZE * _COUNT.unpack_from(buf, at + 4)[0]
        if end - at < 4:
            return at + 4 - end
        size: int = _unpack_short(buf, at)[0]
        if size != -1:
            return at + 4 + size - end
        if end - at < 12:
            return at + 12 - end
        long_size: int = _LONG.unpack_from(buf, at + 4)[0]
        return at + 12 + long_size - end

    def _make_room(self) -> None:
        """Free the read-ahead buffer's tail: compact it, and grow it as needed."""
        if self._start:
            pending = self._end - self._start
            self._buf[:pending] = self._view[self._start : self._end]
            self._start, self._end = 0, pending
        if self._grow or self._end == len(self._buf):
            # Reads fill the buffer, or a frame needs more room (feed() may
            # also overfill it, as it adds bytes without taking frames out).
            self._grow = False
            self._view.release()
            self._buf.extend(bytes(len(self._buf)))
            self._view = memoryview(self._buf)

    def next_payload(self, readinto: ReadInto | None = None) -> bytes | None:
        """The next payload if it is ready or in the read-ahead whole, in a plain frame.

        The common case of :meth:`next_frame`, kept short because every small
        message takes it; None only means that next_frame() must decide. With
        ``readinto``, an empty read-ahead is first filled (one call; for an
        exact decoder two, the header and then the payload). The
        whole small payloads behind the one returned go to :attr:`ready`,
        which a caller may pop from without a lock: each is a ``bytes`` made
        once, and a ``deque`` pops atomically.
        """
        if self.ready:
            try:
                return self.ready.popleft()
            except IndexError:  # another thread took the last
                pass
        if self._size or self.shared is not None:
            return None
        start = self._start
        end = self._end
        if not end:  # empty (then start is 0 too)
            if readinto is None:
                return None
            if self.exact:
                return self._next_exact(readinto)
            if self._grow:
                end = self.fill(readinto)
            else:  # fill() inline, one call less: every message read alone comes here
                read = readinto(self._view)
                end = _counted(read) if read is None else read
                self._end = end
                self.received += end
                if end == len(self._buf) and end < self._read_ahead:
                    self._grow = True
        if end - start < 4:
            return None
        size: int = _unpack_short(self._buf, start)[0]
        stop = start + 4 + size
        if size < 0 or stop > end or (self.max_size is not None and size > self.max_size):
            return None
        payload = self._view[start + 4 : stop].tobytes()
        if stop == end:
            self._start = self._end = 0
        else:
            self._split(stop, end)
        return payload

    def _next_exact(self, readinto: ReadInto) -> bytes | None:
        """next_payload() for an exact decoder: read the header, then the payload."""
        view = self._view
        read = readinto(view[:4])
        end = _counted(read) if read is None else read
        self._end = end
        self.received += end
        if end < 4:
            return None
        size: int = _unpack_short(self._buf, 0)[0]
        if size < 0 or size > len(view) - 4 or (self.max_size is not None and size > self.max_size):
            return None
        if size:
            read = (self.read_payload or readinto)(view[4 : 4 + size])
            received = _counted(read) if read is None else read
            self._end = end = 4 + received
            self.received += received
            if received < size:
                return None
        self._end = 0
        return view[4:end].tobytes()

    def _split(self, start: int, end: int) -> None:
        """Move the whole small plain frames from ``start`` on (SPLIT_COUNT at most) to ready."""
        buf, view, append = self._buf, self._view, self.ready.append
        limit = SPLIT_LIMIT if self.max_size is None else min(SPLIT_LIMIT, self.max_size)
        for _ in _SPLITS:
            if end - start < 4:
                break
            size: int = _unpack_short(buf, start)[0]
            stop = start + 4 + size
            if size < 0 or size > limit or stop > end:
                break
            append(view[start + 4 : stop].tobytes())
            start = stop
        if start == end:
            self._start = self._end = 0
        else:
            self._start = start

    @overload
    def next_frame(self, maxlength: int | None = None) -> bytes | None: ...
    @overload
    def next_frame(self, maxlength: int | None, into: memoryview) -> int | bytes | None: ...
    @overload
    def next_frame(
        self, maxlength: int | None, into: None, stream: Literal[True]
    ) -> bytes | LargeFrame | None: ...
    @overload
    def next_frame(
        self, maxlength: int | None, into: memoryview | None, stream: bool
    ) -> int | bytes | LargeFrame | None: ...

    def next_frame(
        self, maxlength: int | None = None, into: memoryview | None = None, stream: bool = False
    ) -> int | bytes | LargeFrame | None:
        """The next whole payload, or None until more bytes arrive.

        With ``into`` (a writable byte view) the payload lands there and its
        size is returned; if it does not fit, the payload itself is returned,
        so the caller can report it. With ``stream``, a payload too large to
        read ahead is not received here: its header is taken and a
        :class:`LargeFrame` returned, for the caller to read with a
        :class:`PayloadReader`. A frame longer than ``maxlength`` or
        ``max_size`` raises :class:`MessageTooLong`; a malformed header raises
        :class:`FrameError`. The stream cannot be used after either.
        """
        if self.ready:
            try:
                payload = self.ready.popleft()
            except IndexError:  # another thread took the last
                pass
            else:
                if maxlength is not None and len(payload) > maxlength:
                    raise MessageTooLong(len(payload), maxlength)
                return _deliver(payload, into)
        if self._size:
            if maxlength is not None and self._size > maxlength:
                raise MessageTooLong(self._size, maxlength)
            if self._got < self._size:
                return None
            finished = self._finish_large()
            if isinstance(finished, int):  # it landed in the caller's buffer
                return finished
            # Begun by a call without this buffer (then interrupted), maybe.
            return _deliver(finished, into)
        start = self._start
        avail = self._end - start
        if avail < 4:
            return None
        size: int = _SHORT.unpack_from(self._buf, start)[0]
        begin = start + 4
        if size < 0:
            if self.accept_shared and self.shared is None:
                if size == _SHARED:
                    return self._take_shared_header(maxlength, into, stream)
                if size == _DESCRIPTORS:
                    return self._take_descriptors_mark(maxlength, into, stream)
            if size != -1:
                raise FrameError(f"corrupt frame header: negative length {size}")
            if avail < 12:
                return None
            size = _LONG.unpack_from(self._buf, begin)[0]
            begin += 8
        whole = size if self.shared is None else size + sum(e.length for e in self.shared)
        if maxlength is not None and whole > maxlength:
            raise MessageTooLong(whole, maxlength)
        if self.max_size is not None and whole > self.max_size:
            raise MessageTooLong(whole, self.max_size)
        end = begin + size
        if end <= self._end:
            if end == self._end:
                self._start = self._end = 0
            else:
                self._start = end
            return _deliver(self._view[begin:end], into)
        if end - start > self._read_ahead:
            if stream:
                prefix = bytes(self._view[begin : self._end])
                self._start = self._end = 0
                return LargeFrame(prefix, size)
            self._begin_large(begin, size, into if into is not None and size <= len(into) else None)
        return None

    def _take_shared_header(
        self, maxlength: int | None, into: memoryview | None, stream: bool
    ) -> int | bytes | LargeFrame | None:
        """Take a shared-memory header (the read-ahead starts with one), then its frame."""
        start = self._start
        avail = self._end - start
        if avail < 8:
            return None
        count: int = _COUNT.unpack_from(self._buf, start + 4)[0]
        if not 1 <= count <= MAX_SHARED_BUFFERS:
            raise FrameError(f"corrupt shared-memory header: {count} buffers")
        entries = struct.Struct(f"!{_ENTRY * count}")
        end = start + 8 + entries.size
        if self._end < end:
            return None
        fields = entries.unpack_from(self._buf, start + 8)
        self.shared = [SharedEntry(*fields[i : i + 3]) for i in range(0, len(fields), 3)]
        self._start = end
        return self.next_frame(maxlength, into, stream)

    def _take_descriptors_mark(
        self, maxlength: int | None, into: memoryview | None, stream: bool
    ) -> int | bytes | LargeFrame | None:
        """Take the mark DESCRIPTORS_FOLLOW, tell on_descriptors, then decode on."""
        self._start += 4
        if self._start == self._end:
            self._start = self._end = 0
        if self.on_descriptors is not None:
            self.on_descriptors()
        return self.next_frame(maxlength, into, stream)

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

    def release_target(self) -> None:
        """Stop writing into the caller's buffer (before it goes away mid-message).

        What has landed there moves to a buffer of the decoder's own, so a
        later call resumes the message.
        """
        if self._into is not None:
            self._sink = io.BytesIO()
            self._sink.write(self._into[: self._got])
            self._into = None

    def _finish_large(self) -> int | bytes:
        size, sink = self._size, self._sink
        self._size = self._got = 0
        self._sink = self._into = None
        if sink is None:
            return size
        return sink.getvalue()

    def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            # uvloop still holds the buffer during buffer_updated(); then the
            # lease is released when it lets go.
            with contextlib.suppress(BufferError):
                lease.release()


def _deliver(payload: bytes | memoryview, into: memoryview | None) -> int | bytes:
    """A whole payload for next_frame(): into ``into`` if it fits (its size), else as bytes."""
    size = len(payload)
    if into is not None and size <= len(into):
        into[:size] = payload
        return size
    return bytes(payload)


class PayloadReader:
    """A large frame's payload as a binary file, read as it arrives.

    ``pickle.Unpickler`` reads large buffers (bytes, bytearrays, arrays) with
    ``readinto()`` straight into the object it builds, so unpickling from
    this reader copies each byte once instead of receiving the whole pickle
    first. Reads never allocate more than ``GROWTH_STEP`` ahead of the bytes
    received, whatever sizes the pickle asks for.
    """

    def __init__(self, frame: LargeFrame, readinto: ReadInto, decoder: FrameDecoder) -> None:
        self._prefix = memoryview(frame.prefix)
        self._left = frame.size
        self._readinto = readinto
        self._decoder = decoder  # the frame's, which counts the bytes read here too
        self.broken = False
        """Whether reading failed, leaving the stream short of the payload's end."""

    def readinto(self, buf: memoryview | bytearray) -> int:
        """Fill ``buf`` from the payload; fewer bytes only at the payload's end."""
        with memoryview(buf) as view, view.cast("B") as out:
            want = min(len(out), self._left)
            done = 0
            while done < want:
                if self._prefix:
                    n = min(want - done, len(self._prefix))
                    out[done : done + n] = self._prefix[:n]
                    self._prefix = self._prefix[n:]
                else:
                    try:
                        n = _counted(self._readinto(out[done:want]))
                    except BaseException:
                        self.broken = True
                        raise
                    if not n:
                        self.broken = True
                        raise OSError("got end of file during message")
                    self._decoder.received += n
                done += n
                self._left -= n
        return done

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the payload (all that is left if negative)."""
        size = self._left if size < 0 else min(size, self._left)
        out = io.BytesIO()
        while out.tell() < size:
            chunk = bytearray(min(size - out.tell(), GROWTH_STEP))
            self.readinto(chunk)  # fills it: size is at most what is left
            out.write(chunk)
        return out.getvalue()

    def readline(self) -> bytes:
        """One line of the payload (protocol 0 pickles read text lines)."""
        line = bytearray()
        byte = bytearray(1)
        while self._left and not line.endswith(b"\n"):
            self.readinto(byte)
            line += byte
        return bytes(line)

    def skip_rest(self) -> None:
        """Read and drop what is left, so the next frame starts where it should."""
        scratch = bytearray(min(self._left, GROWTH_STEP))
        while self._left:
            self.readinto(memoryview(scratch)[: min(self._left, len(scratch))])
