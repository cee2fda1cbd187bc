"""Connection: messages over a blocking socket or pipe file descriptor.

Same API, errors and wire format as ``multiprocessing.connection.Connection``,
with less work per message: received bytes are read ahead (one ``read`` can
bring many frames) while the end is this process's alone (see
:mod:`mpwire.sync.sharing`), large payloads land directly in the object
returned, and header and payload leave in one system call.

And safer: every send and receive takes a ``timeout``; ``max_message_size``
bounds what a peer can make us receive; threads may share a Connection (one
sender and one receiver at a time, each whole frames); ``close()`` from
another thread wakes a call blocked on a socket; and a frame cut short by an
error closes the connection instead of corrupting the stream.
"""

from __future__ import annotations

import _socket
import array
import contextlib
import io
import math
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from multiprocessing import reduction
from types import TracebackType
from typing import Any, Self, SupportsIndex

from ..buffers import message_view, target_view
from ..exceptions import BufferTooShort, FrameError, MessageTooLong
from ..protocol.frames import (
    DESCRIPTORS_FOLLOW,
    JOIN_LIMIT,
    MAX_SHARED_BUFFERS,
    FrameDecoder,
    LargeFrame,
    PayloadReader,
    ReadInto,
    SharedEntry,
    encode_frame,
    encode_shared_header,
    encode_short_header,
)
from ..serialize import (
    PickleSerializer,
    Serializer,
    dump_parts,
    dump_shared,
    get_serializer,
    inline_buffers,
)
from . import sharing, shm
from .batch import Batch
from .gate import Gate
from .tls import TLSSocket

__all__ = ["Connection"]

_family = _socket.socket.family.__get__
"""A socket's family as a plain int: ``socket.family`` makes an enum member (about 1 µs)."""

_NOSIGNAL = int(socket.MSG_NOSIGNAL)
"""A peer that hung up is an EPIPE error, never a SIGPIPE that kills the process.

Flags are plain ints: an operator on socket's IntFlag members costs about 1 µs."""
_DONTWAIT = int(socket.MSG_DONTWAIT)

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""SO_LINGER on, with no time: closing the socket sends a reset."""

_TLS_RECORD = 16384
"""The most plaintext one TLS record carries: what a timed TLS send writes at a time."""

_Buffer = Any
"""Any object supporting the buffer protocol (bytes, bytearray, memoryview, array, numpy)."""

_Payload = bytes | bytearray | memoryview | list[Any]
"""A frame's payload: one buffer, or a list of buffers sent as one (a pickle's parts)."""

_IOV_MAX = 1024
"""The most buffers one vectored write takes (Linux's IOV_MAX)."""

_Shared = tuple[bytes, list[int]]
"""A shared-memory message's header and the memfds that go with it."""


def _out_of_band(view: memoryview) -> bool:
    """Whether a pickled buffer goes as shared memory: large, or in a SharedBuffer already."""
    return view.nbytes >= shm.SHARED_THRESHOLD or _in_shared_buffer(view)


def _in_shared_buffer(view: memoryview) -> bool:
    """Whether a pickled buffer lies in a SharedBuffer (and so goes as one, whatever else)."""
    return shm.shared_entry(view) is not None


def _ready(fd: int, event: int, deadline: float) -> bool:
    """Wait until ``fd`` is ready for ``event``; False once the deadline has passed."""
    poller = select.poll()
    poller.register(fd, event)
    while not poller.poll(max(0, math.ceil((deadline - time.monotonic()) * 1000))):
        if time.monotonic() >= deadline:
            return False
    return True


def _socket_of(fd: int) -> socket.socket | None:
    """A socket object sharing ``fd`` if it is a socket, keeping its blocking mode."""
    blocking = socket.getdefaulttimeout() is None or os.get_blocking(fd)
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    if blocking:
        # socket.setdefaulttimeout() makes new socket objects non-blocking.
        sock.setblocking(True)
    return sock


class Connection:
    """A connection carrying whole messages over a file descriptor.

    ``handle`` is an open socket or pipe fd, which the Connection owns and
    closes. Objects go with send()/recv() (pickled), raw messages with
    send_bytes()/recv_bytes()/recv_bytes_into(). Messages longer than
    ``max_message_size`` bytes (None: no limit) are refused when they
    announce themselves, before any memory is set aside for them.
    ``serializer`` picks how send()/recv() encode objects (see
    :mod:`mpwire.serialize`; the default is pickle, as the stdlib).
    ``shared_memory=True`` on an end of a Unix socket pair whose other end
    is an mpwire Connection that says so too (as :func:`Pipe` ends do):
    large pickled buffers then travel as shared memory.
    """

    _handle: int | None = None

    def __init__(
        self,
        handle: SupportsIndex,
        readable: bool = True,
        writable: bool = True,
        *,
        max_message_size: int | None = None,
        serializer: str | Serializer | None = None,
        shared_memory: bool = False,
    ) -> None:
        fd = handle.__index__()
        if fd < 0:
            raise ValueError("invalid handle")
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        self._setup(fd, readable, writable, _socket_of(fd), max_message_size, serializer)
        if shared_memory:
            self._use_shared_memory()

    @classmethod
    def from_socket(
        cls,
        sock: socket.socket | TLSSocket,
        *,
        max_message_size: int | None = None,
        serializer: str | Serializer | None = None,
    ) -> Self:
        """A Connection over a connected, blocking socket object, which it takes over.

        The socket may be a :class:`~mpwire.sync.tls.TLSSocket`: messages then
        travel inside TLS.
        """
        conn = cls.__new__(cls)
        conn._setup(sock.fileno(), True, True, sock, max_message_size, serializer)
        return conn

    def _setup(
        self,
        fd: int,
        readable: bool,
        writable: bool,
        sock: socket.socket | TLSSocket | None,
        max_message_size: int | None,
        serializer: str | Serializer | None,
    ) -> None:
        if max_message_size is not None and max_message_size < 0:
            raise ValueError("max_message_size is negative")
        # One sender and one receiver at a time; close() defers closing the
        # fd (in _closing) while either is busy, so no call ever touches a
        # reused fd number.
        self._send_gate = Gate()
        self._recv_gate = Gate()
        self._closing: int | None = None
        self._close_lock = threading.Lock()
        self._polling = 0  # poll() calls waiting on the fd, which close() must wake too
        # What close() needs to know to make a TCP close a reset (see
        # _reset_if_unread_after_shutdown()).
        self._received_at_shutdown: int | None = None
        self._cut_short = False
        self._sock = sock
        self._tls = isinstance(sock, TLSSocket)
        self._handle = fd
        self._readable = readable
        self._writable = writable
        self._decoder = FrameDecoder(max_message_size)
        self._serializer = get_serializer(serializer)
        # Pickles can be unpickled as they arrive; other formats need the whole message.
        self._streams = isinstance(self._serializer, PickleSerializer)
        # The receive path's readinto, made on first use; and the fast path's,
        # the same while the fd is open.
        self._source: ReadInto | None = None
        self._readinto: ReadInto | None = None
        # Whether other processes may hold this end (see mpwire.sync.sharing),
        # and the bytes this process read ahead before, which all read first.
        self._shared = False
        self._spill: sharing.Spill | None = None
        # The fd while open and writable, so one test guards the send path.
        self._write_fd = fd if writable else None
        self._after_first_send: Callable[[], None] | None = None
        self._batch: Batch | None = None
        self._plain_sock = self._plain_socket()
        # The decoder's ready payloads, which receives pop without the gate;
        # None while that is not allowed (closed, or a batch is open).
        self._ready: deque[bytes] | None = self._decoder.ready
        # Set once both ends agreed on shared memory. Receives keep the fds
        # sent once the peer's DESCRIPTORS_FOLLOW mark is decoded; sends pass
        # memfds once this end has sent its own mark.
        self._fd_reader: shm.FdReader | None = None
        self._reading_fds = False
        self._marked = False
        self._send_budget: shm.SendBudget | None = None
        sharing.register(self)

    def _use_shared_memory(self) -> None:
        """Send and receive large pickled buffers as memfds (both ends agreed to).

        Only on a plain Unix socket: elsewhere the connection stays plain.
        """
        sock = self._sock
        if type(sock) is not socket.socket or _family(sock) != socket.AF_UNIX:
            return
        if not shm.available():
            return
        self._fd_reader = shm.FdReader(sock)
        self._reading_fds = self._shared  # (see _share())
        self._send_budget = shm.SendBudget(sock.fileno())
        self._decoder.accept_shared = True
        # Through a weak reference: the decoder must not keep its Connection
        # alive (a cycle would leave the fd open until the garbage collector
        # runs, and let it close the socket object first).
        connection = weakref.ref(self)
        self._decoder.on_descriptors = lambda: connection()._read_fds()  # type: ignore[union-attr]

    def _read_fds(self) -> None:
        """The peer's mark: receive with recvmsg from now on, it may send descriptors.

        The mark brings a descriptor of its own. A plain read let the kernel
        close it; if this end read it with recvmsg already, it is the first
        one waiting, and is closed here. On a shared end, a plain read made
        before it was shared may have taken the mark's last byte (and let the
        kernel close the descriptor), so there a mark may come without it.
        """
        fds = self._fd_reader.fds  # type: ignore[union-attr]
        if not self._reading_fds:
            self._reading_fds = True
            if self._source is not None:
                self._source = self._fd_reader
            if self._readinto is not None:
                self._readinto = self._fd_reader
        elif fds and not (self._shared and os.fstat(fds[0]).st_size):
            os.close(fds.popleft())
        elif not self._shared:
            raise FrameError("a descriptors mark came without its descriptor")

    @property
    def shared_memory(self) -> bool:
        """Whether large pickled buffers travel as shared memory on this connection."""
        return self._fd_reader is not None

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"fd={self._handle}"
        mode = "".join(("r" if self._readable else "", "w" if self._writable else ""))
        return f"<mpwire.Connection {state} {mode}>"

    def __del__(self) -> None:
        if self._handle is not None:
            self.close()

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

    @property
    def max_message_size(self) -> int | None:
        """The longest message this connection receives (None: no limit)."""
        return self._decoder.max_size

    def fileno(self) -> int:
        """File descriptor or handle of the connection."""
        return self._fd()

    def close(self) -> None:
        """Close the connection.

        Safe from any thread: a call blocked on this socket in another thread
        is woken and fails with EOFError or OSError.
        """
        handle = self._handle
        if handle is None:
            return
        self._handle = self._readinto = self._write_fd = self._plain_sock = self._ready = None
        self._closing = handle
        busy = self._polling or self._recv_gate.locked() or self._send_gate.locked()
        if self._sock is not None and busy:
            self._received_at_shutdown = self._decoder.received
            with contextlib.suppress(OSError):  # not connected any more: nothing to wake
                self._sock.shutdown(socket.SHUT_RDWR)
        self._finish_close()

    def _finish_close(self) -> None:
        """Close the fd once no call is using it (the last one out calls this).

        A call that takes its gate after close() began finds the connection
        closed before it touches the fd, so seeing both gates free is enough.
        """
        if self._polling or self._recv_gate.locked() or self._send_gate.locked():
            return
        with self._close_lock:
            handle, self._closing = self._closing, None
            if handle is not None:
                owned = True
                if self._sock is not None:
                    self._reset_if_unread_after_shutdown(self._sock)
                    # -1: the socket object was closed (by its owner, or its
                    # finalizer at exit), and the fd number may be another's now.
                    owned = self._sock.detach() >= 0
                if owned:
                    os.close(handle)
                if self._fd_reader is not None:
                    shm.close_all(self._fd_reader.fds)
                if self._spill is not None:
                    self._spill.close()

    def _reset_if_unread_after_shutdown(self, sock: socket.socket | TLSSocket) -> None:
        """Make the close a TCP reset if a call read bytes after close() shut the socket down,
        and left some of them unread or a message cut short.

        After a shutdown, reads no longer reopen the receive window, so a
        peer blocked sending into a window they emptied would wait on a
        plain close until the orphaned socket times out (a minute or more).
        The kernel resets a connection closed with unread bytes; so does
        this, for bytes it read. A receive that finished its message closes
        gracefully: what this end sent still arrives.
        """
        received = self._received_at_shutdown
        if received is None or received == self._decoder.received or sock.family == socket.AF_UNIX:
            return
        if not (self._decoder.pending or self._cut_short):
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)

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
        fd = self._readable_fd()
        source = self._source
        if source is None:
            if self._fd_reader is not None and self._reading_fds:
                source = self._fd_reader
            elif self._tls:
                assert self._sock is not None
                source = self._sock.recv_into
            else:
                source = io.FileIO(fd, "rb", closefd=False).readinto
            if self._spill is not None:
                source = self._spill.reader(source, self._spill_spent)
            self._source = source
        self._readinto = source
        return source

    def _spill_spent(self, then: ReadInto) -> None:
        self._source = then
        if self._readinto is not None:
            self._readinto = then
        self._read_payloads_plainly()

    def _read_payloads_plainly(self) -> None:
        """A shared end reading with recvmsg: payloads with a plain read (cheaper).

        Descriptors come with the first byte of a shared-memory header or the
        last byte of the mark, which header reads take; a peer's descriptors
        inside a payload would be closed by the kernel. Not while a spill is
        read: the payloads may be in it.
        """
        if self._fd_reader is not None and (self._spill is None or self._spill.spent):
            assert isinstance(self._sock, socket.socket)
            self._decoder.read_payload = self._sock.recv_into

    def _writable_fd(self) -> int:
        fd = self._fd()
        if not self._writable:
            raise OSError("connection is read-only")
        return fd

    # -- sending ---------------------------------------------------------

    def send_bytes(
        self,
        buf: _Buffer,
        offset: int = 0,
        size: int | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Send the bytes of a bytes-like object as one message.

        With a ``timeout`` (seconds), a peer that does not read makes this
        raise TimeoutError: the connection is still usable if nothing of the
        message left, and closed if part of it did.
        """
        if type(buf) is bytes and not offset and size is None:
            if timeout is None and len(buf) <= JOIN_LIMIT and self._plain_sock is not None:
                self._send_small(encode_short_header(len(buf)) + buf)
                return
            batch = self._batch
            if batch is not None and batch.owner == threading.get_ident():
                batch.add(buf, None)  # (what _send_frame() would do: one call less)
                return
            self._send_frame(buf, timeout)
            return
        self._writable_fd()
        self._send_frame(message_view(buf, offset, size), timeout)

    def send(self, obj: Any, *, timeout: float | None = None) -> None:
        """Send an object (pickled, or as ``serializer`` says); ``timeout`` as for send_bytes().

        Large buffers in a pickle (bytes, arrays) are sent from where they
        are, without a copy into the pickle.
        """
        self._writable_fd()
        if not self._streams:
            self._send_frame(self._serializer.dumps(obj), timeout)
            return
        if self._fd_reader is None:
            parts = dump_parts(obj)
        else:
            parts, buffers = dump_shared(obj, _out_of_band, MAX_SHARED_BUFFERS)
            if buffers:  # (the rare case: most pickles have none)
                in_band = self._send_shared(obj, parts, buffers, timeout)
                if in_band is None:
                    return
                parts = in_band
        if len(parts) > 1:
            self._send_frame(parts, timeout)
            return
        pickled = parts[0]
        if timeout is None and len(pickled) <= JOIN_LIMIT and self._plain_sock is not None:
            self._send_small(encode_short_header(len(pickled)) + pickled)
            return
        self._send_frame(pickled, timeout)

    def _send_shared(
        self, obj: Any, parts: list[Any], buffers: list[memoryview], timeout: float | None
    ) -> list[Any] | None:
        """Send the pickle of ``obj`` with its out-of-band ``buffers`` as memfds.

        Within the send budget: past it, buffers that would be copied go in
        band, and only those already in a SharedBuffer stay out. Returns the
        in-band pickle's parts, for the caller to send, if no buffer is left.
        """
        located = [(buffer, shm.shared_entry(buffer)) for buffer in buffers]
        copied = sum(buffer.nbytes for buffer, found in located if found is None)
        assert self._send_budget is not None
        if copied and not self._send_budget.admit(copied):
            parts, buffers = dump_shared(obj, _in_shared_buffer, MAX_SHARED_BUFFERS)
            if not buffers:
                return parts
            located = [(buffer, shm.shared_entry(buffer)) for buffer in buffers]
        self._send_with_memfds(parts, located, timeout)
        return None

    def _send_with_memfds(
        self,
        parts: list[Any],
        located: list[tuple[memoryview, tuple[SharedEntry, int] | None]],
        timeout: float | None,
    ) -> None:
        """Send the pickle ``parts`` with its out-of-band buffers as memfds beside it.

        ``located``: each buffer, and where it lies if in a SharedBuffer (its
        memfd goes as it is); another is copied into a new memfd.
        """
        entries: list[SharedEntry] = []
        fds: list[int] = []
        copies: list[int] = []
        try:
            for buffer, found in located:
                if found is None:
                    copies.append(shm.memfd_of(buffer))
                    found = SharedEntry(0, 0, buffer.nbytes), copies[-1]
                entries.append(found[0])
                fds.append(found[1])
            self._send_frame(parts, timeout, (encode_shared_header(entries), fds))
        finally:
            for fd in copies:
                os.close(fd)

    def _call_after_first_send(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` once the next frame has left (the Listener's Nagle switch)."""
        self._after_first_send = hook
        self._plain_sock = None

    def _reopen_shortcuts(self) -> None:
        """Open the fast paths again after what shut them (a batch, the first-send hook)."""
        self._plain_sock = self._plain_socket()
        self._ready = self._decoder.ready if self._batch is None else None
        if self._handle is None:  # closed meanwhile: close() clears _handle, then these
            self._plain_sock = self._ready = None

    def _plain_socket(self) -> socket.socket | None:
        """The socket small frames go to directly, if nothing else is to be done for them.

        That is while the connection is open and writable, a plain socket
        (not TLS), with no first-send hook and no batch.
        """
        sock = self._sock
        if self._write_fd is None or type(sock) is not socket.socket:
            return None
        if self._after_first_send is not None or self._batch is not None:
            return None
        return sock

    def batch(self, *, timeout: float | None = None) -> Batch:
        """A block whose sends leave together, in as few system calls as possible.

        In ``with conn.batch():``, this thread is the connection's only
        sender (others wait, as for one send), and send() and send_bytes()
        queue their frames (copying what the caller could change) instead of
        writing each at once. The frames leave in vectored writes: once
        256 KiB are queued, before a receive, poll() or wait() on this
        connection in the block (a request leaves before its answer is
        awaited), and when the block ends, even by an exception. ``timeout``
        bounds the wait for the other senders and each of those writes (the
        sends' own timeouts do not apply in the block); after a TimeoutError,
        none of the frames queued since the last write left, and the
        connection stays usable unless part of one did. Streams of small
        messages go several times faster this way.
        """
        return Batch(self, timeout)

    def _flush_own_batch(self) -> None:
        """Write this thread's batch, if it holds one on this connection."""
        batch = self._batch
        if batch is not None and batch.owner == threading.get_ident():
            batch.flush()

    def _send_small(self, frame: bytes) -> None:
        """Send a small frame, header and payload joined, with no timeout: the common case.

        The caller saw a plain socket; the shortest path, so kept short (one
        call less than _write_joined() would be).
        """
        gate = self._send_gate
        try:
            del gate.token[0]
        except IndexError:
            gate.acquire()
        try:
            sock = self._plain_sock
            if sock is None:  # closed since the caller looked
                raise OSError("handle is closed")
            try:
                written = sock.send(frame, _NOSIGNAL)
            except BaseException as exc:
                self._write_failed(exc)
                raise
            if written != len(frame):
                self._transmit(self._handle, [memoryview(frame)[written:]], None, True)  # type: ignore[arg-type]
        finally:
            gate.token.append(True)
            if gate.waiting:
                gate.wake()
            if self._closing is not None:
                self._finish_close()

    def _write_joined(self, fd: int, sock: socket.socket | TLSSocket | None, frame: bytes) -> None:
        """Write a joined frame with no timeout: one call, which a blocking fd finishes."""
        try:
            written = sock.send(frame, _NOSIGNAL) if sock else os.write(fd, frame)
        except BaseException as exc:
            self._write_failed(exc)
            raise
        if written != len(frame):
            self._transmit(fd, [memoryview(frame)[written:]], None, True)

    def _write_failed(self, exc: BaseException) -> None:
        """Close after the first write of a frame failed, unless nothing of it can have left.

        Nothing left on a non-blocking fd's EAGAIN; after anything else (an
        exception can even land just after the write returned), part of the
        frame may have.
        """
        if not isinstance(exc, BlockingIOError):
            self.close()

    def _send_frame(
        self, payload: _Payload, timeout: float | None, shared: _Shared | None = None
    ) -> None:
        """Send one frame, whole: other senders wait, and a frame cut short closes."""
        batch = self._batch
        if batch is not None and batch.owner == threading.get_ident():
            batch.add(payload, shared)
            return
        gate = self._send_gate
        try:
            if not gate.acquire(timeout):
                raise TimeoutError("send timed out waiting for another sender")
            try:
                self._write_frame(payload, timeout, shared)
            finally:
                gate.token.append(True)
                if gate.waiting:
                    gate.wake()
        finally:
            if self._closing is not None:
                self._finish_close()

    def _write_frame(
        self, payload: _Payload, timeout: float | None, shared: _Shared | None = None
    ) -> None:
        """Write the frame (the send gate held); a list payload is the frame's parts.

        ``shared``: the shared-memory header to put first, and the memfds to
        pass with it.
        """
        fd = self._write_fd
        if fd is None:
            fd = self._writable_fd()
        ancillary: Any = ()
        deadline = None if timeout is None else time.monotonic() + timeout
        parts = encode_frame(payload)
        if shared is not None:
            if not self._marked:
                self._mark_fds(fd, deadline)
            header, fds = shared
            parts[0] = header + parts[0]
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        elif len(parts) == 1 and timeout is None and self._after_first_send is None:
            self._write_joined(fd, self._sock, parts[0])
            return
        self._transmit(fd, parts, deadline, False, ancillary)
        if self._after_first_send is not None:
            hook, self._after_first_send = self._after_first_send, None
            hook()
            self._reopen_shortcuts()

    def _mark_fds(self, fd: int, deadline: float | None) -> None:
        """Tell the peer that descriptors follow, before the first ones (once).

        The peer reads with recvmsg (which keeps descriptors) only once it
        has decoded the mark. The mark's last byte goes alone, with a
        descriptor (an empty memfd): a read stops after bytes that bring
        descriptors, and one byte cannot be cut in two, so the peer's read
        that ends the mark takes nothing after it, and the peer decodes the
        mark before its next read, a recvmsg. So nothing waits for the peer.
        """
        token = shm.memfd_of(memoryview(b""))
        try:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [token]))]
            self._transmit(fd, [DESCRIPTORS_FOLLOW[:-1]], deadline, False)
            self._transmit(fd, [DESCRIPTORS_FOLLOW[-1:]], deadline, True, rights)
        finally:
            os.close(token)
        self._marked = True

    def _transmit(
        self,
        fd: int,
        parts: list[Any],
        deadline: float | None,
        began: bool,
        ancillary: Any = (),
    ) -> None:
        """Write every byte of ``parts``, resuming after partial writes.

        ``began`` tells whether a write of this frame was attempted already.
        Once one was, any failure may leave the peer with part of the frame
        (an exception can even land just after a write returned), so it
        closes the connection; a timeout before the first byte left leaves it
        usable. ``ancillary`` data goes with the first byte. A timed write
        first waits until the kernel reports room (for a Unix socket, three
        quarters of its buffer free), so a frame rarely starts where it cannot
        finish.
        """
        try:
            while parts:
                if deadline is not None and not _ready(fd, select.POLLOUT, deadline):
                    raise TimeoutError("send timed out")
                attempted, began = began, True
                written = self._write_some(fd, parts, deadline is not None, ancillary)
                if not written:
                    began = attempted  # nothing left: no more begun than before
                    continue
                ancillary = ()
                while parts and written >= len(parts[0]):
                    written -= len(parts.pop(0))
                if written:
                    parts[0] = memoryview(parts[0])[written:]
        except BaseException:
            if began:
                self.close()
            raise

    def _write_some(self, fd: int, parts: list[Any], timed: bool, ancillary: Any = ()) -> int:
        """One vectored write; ``timed``: the fd has room, and the write must not block."""
        sock = self._sock
        if isinstance(sock, TLSSocket):
            with memoryview(parts[0]) as first, first.cast("B") as flat:
                return sock.send(flat[:_TLS_RECORD] if timed else flat)
        if len(parts) > _IOV_MAX:
            parts = parts[:_IOV_MAX]
        if not timed:
            return sock.sendmsg(parts, ancillary, _NOSIGNAL) if sock else os.writev(fd, parts)
        if sock is not None:
            try:
                return sock.sendmsg(parts, ancillary, _NOSIGNAL | _DONTWAIT)
            except BlockingIOError:
                return 0
        # A pipe with room takes PIPE_BUF bytes without blocking.
        with memoryview(parts[0]) as first, first.cast("B") as flat:
            return os.write(fd, flat[: select.PIPE_BUF])

    # -- receiving -------------------------------------------------------

    def recv_bytes(self, maxlength: int | None = None, *, timeout: float | None = None) -> bytes:
        """Receive one message as bytes.

        A message longer than ``maxlength`` closes the connection and raises
        OSError (a :class:`~mpwire.exceptions.MessageTooLong`). With a
        ``timeout`` (seconds), raises TimeoutError if no whole message came in
        time; what arrived of it stays buffered for the next call.
        """
        if maxlength is None and timeout is None:
            payload = self._next_payload()
            if payload is not None:
                return payload
        elif maxlength is not None and maxlength < 0:
            self._readable_fd()
            raise ValueError("negative maxlength")
        return self._receive(maxlength, None, False, timeout)  # type: ignore[no-any-return]

    def recv(self, *, timeout: float | None = None) -> Any:
        """Receive a (pickled) object; ``timeout`` as for recv_bytes().

        Without a timeout, a large message is unpickled as it arrives, so
        large buffers inside it are received straight into the objects they
        become.
        """
        if timeout is None:
            payload = self._next_payload()
            if payload is not None:
                return self._serializer.loads(payload)
        return self._receive(None, None, True, timeout)

    def recv_bytes_into(
        self, buf: _Buffer, offset: int = 0, *, timeout: float | None = None
    ) -> int:
        """Receive one message into a writable buffer at byte ``offset``.

        Returns the message's size. If it does not fit, raises BufferTooShort
        with the whole message as ``args[0]``. ``timeout`` as for recv_bytes().
        """
        self._readable_fd()
        with target_view(buf, offset) as target:
            result = self._receive(None, target, False, timeout)
        if isinstance(result, int):
            return result
        raise BufferTooShort(result)

    def _receive(
        self, maxlength: int | None, into: memoryview | None, load: bool, timeout: float | None
    ) -> Any:
        """Take the next message: as bytes, into ``into``, or (``load``) unpickled.

        One receiver at a time; a malformed or oversized frame closes. A
        batch this thread holds on the connection is written first (another
        receiver may hold the gate, waiting for the answer to it).
        """
        self._flush_own_batch()
        gate = self._recv_gate
        try:
            if not gate.acquire(timeout):
                raise TimeoutError("recv timed out waiting for another receiver")
            try:
                return self._take(maxlength, into, load, timeout)
            finally:
                gate.token.append(True)
                if gate.waiting:
                    gate.wake()
        finally:
            if self._closing is not None:
                self._finish_close()

    def _next_payload(self) -> bytes | None:
        """The next message if it is ready, a plain frame here or in the next read, else None.

        The common case of receiving (no limit, no timeout), kept short: a
        ready payload needs no lock, else at most one read, and None leaves
        the rest to _receive().
        """
        ready = self._ready
        if ready:
            try:
                return ready.popleft()
            except IndexError:  # another thread took the last
                pass
        if self._batch is not None:
            return None  # frames to send first, maybe
        gate = self._recv_gate
        try:
            del gate.token[0]
        except IndexError:
            gate.acquire()
        try:
            readinto = self._readinto
            if readinto is None:
                return None  # closed, or never read from yet
            try:
                return self._decoder.next_payload(readinto)
            except BaseException as exc:
                self._receive_failed(exc)
                raise
        finally:
            gate.token.append(True)
            if gate.waiting:
                gate.wake()
            if self._closing is not None:
                self._finish_close()

    def _receive_failed(self, exc: BaseException) -> None:
        """Close after a receive failed, unless it is known to have taken nothing.

        Nothing is taken on a non-blocking fd's EAGAIN or the peer's clean
        end. A bad frame, or an exception (a signal handler's, say) that may
        have landed between a read and the decoder's note of it, leaves the
        stream out of step.
        """
        if not isinstance(exc, (BlockingIOError, EOFError)):
            self.close()

    def _take(
        self, maxlength: int | None, into: memoryview | None, load: bool, timeout: float | None
    ) -> Any:
        """Read and decode the next message (the receive gate held)."""
        readinto = self._readinto or self._reader()
        decoder = self._decoder
        stream = load and timeout is None and self._streams
        try:
            frame = decoder.next_frame(maxlength, into, stream)
            if frame is None:
                deadline = None if timeout is None else time.monotonic() + timeout
                while frame is None:
                    if (
                        deadline is not None
                        and not self._tls_buffered()
                        and not self._spill_waiting()
                        and not _ready(self._fd(), select.POLLIN, deadline)
                    ):
                        break  # what arrived of the message stays buffered
                    readinto = self._source or readinto  # (a mark or a spent spill switch it)
                    if not decoder.fill(readinto):
                        raise decoder.eof_error()
                    frame = decoder.next_frame(maxlength, into, stream)
        except BaseException as exc:
            self._receive_failed(exc)
            raise
        finally:
            if into is not None:
                decoder.release_target()
        if frame is None:
            raise TimeoutError("recv timed out")
        buffers = None
        if decoder.shared is not None:
            buffers = self._shared_buffers()
            if not load:
                return self._inline(frame, buffers, maxlength, into)
        if not load:
            return frame
        if isinstance(frame, LargeFrame):
            return self._load_streamed(frame, self._source or readinto, buffers)
        if buffers is not None:
            return self._serializer.loads(frame, buffers)  # type: ignore[arg-type,call-arg]
        return self._serializer.loads(frame)  # type: ignore[arg-type]  # bytes: no `into`

    def _shared_buffers(self) -> list[Any]:
        """Map the memfds of the shared-memory message just decoded (closing on error)."""
        entries, self._decoder.shared = self._decoder.shared, None
        assert entries is not None and self._fd_reader is not None
        fds = self._fd_reader.fds
        try:
            if len(fds) < len(entries):
                raise FrameError("a shared-memory message came without its file descriptors")
            maps = []
            for entry in entries:
                fd = fds.popleft()
                try:
                    maps.append(shm.map_memfd(fd, entry))
                finally:
                    os.close(fd)
        except BaseException:
            self.close()
            raise
        return maps

    def _inline(
        self, frame: Any, buffers: list[Any], maxlength: int | None, into: memoryview | None
    ) -> int | bytes:
        """A shared-memory message for recv_bytes(): the pickle with its buffers in band."""
        head = bytes(into[:frame]) if isinstance(frame, int) and into is not None else frame
        data = inline_buffers(head, buffers)
        if maxlength is not None and len(data) > maxlength:
            self.close()
            raise MessageTooLong(len(data), maxlength)
        if into is not None and len(data) <= len(into):
            into[: len(data)] = data
            return len(data)
        return data

    def _load_streamed(self, frame: LargeFrame, readinto: ReadInto, buffers: Any = None) -> Any:
        """Unpickle a large frame as its bytes arrive."""
        payload = PayloadReader(frame, readinto, self._decoder)
        assert isinstance(self._serializer, PickleSerializer)
        try:
            obj = self._serializer.unpickler(payload, buffers).load()
        except BaseException:
            if payload.broken:
                # Reading stopped part way through a message it cannot resume.
                self._cut_short = True
                self.close()
            else:
                payload.skip_rest()  # a bad pickle: the next message is intact
            raise
        payload.skip_rest()
        return obj

    # -- readiness -------------------------------------------------------

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is data to read, waiting up to ``timeout`` seconds (None: forever)."""
        fd = self._readable_fd()
        if self._decoder.pending or self._tls_buffered():
            return True
        self._flush_own_batch()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._polling += 1
        try:
            if self._spill_waiting():
                return True
            return bool(poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))
        finally:
            self._polling -= 1
            if self._closing is not None:
                self._finish_close()

    def _has_buffered(self) -> bool:
        """Whether a read-ahead (or TLS, or a spill) holds bytes that the fd does not show."""
        if self._handle is None or not self._readable:
            return False
        return self._decoder.pending or self._tls_buffered() or self._spill_waiting()

    def _spill_waiting(self) -> bool:
        """Whether the bytes read ahead before the end was shared are not all taken yet."""
        return self._spill is not None and self._spill.waiting()

    # -- sharing with other processes ------------------------------------

    def _share(self) -> None:
        """Other processes may hold this end from now on: read no message ahead.

        Reads stop at the end of the message being decoded, so the next one
        stays in the kernel for whichever holder asks first. What was read
        ahead goes into a spill that every holder reads first; except what a
        receive under way in another thread reads, and a shared-memory
        message whose descriptors came already (they cannot go into a
        spill): this process keeps those (see _holds_unread()).
        """
        if self._shared:
            return
        self._shared = True
        if self._handle is None or not self._readable or self._tls:
            return
        self._readinto = None  # remade (by _take()) once the reads take no message ahead
        self._decoder.exact = True
        if self._fd_reader is not None:
            self._reading_fds = True  # any holder's read may bring descriptors
            self._source = self._fd_reader  # (for a receive under way in another thread)
        gate = self._recv_gate
        try:
            del gate.token[0]
        except IndexError:
            return
        try:
            self._source = None  # remade by _reader(): the spill first, if any
            if self._fd_reader is not None and self._fd_reader.fds:
                return
            try:
                pending = self._decoder.take_pending()
            except ValueError:
                return
            if pending:
                try:
                    self._spill = sharing.Spill.of(pending)
                except BaseException:
                    self._decoder.feed(pending)
                    raise
            self._read_payloads_plainly()
        finally:
            gate.token.append(True)
            if gate.waiting:
                gate.wake()
            if self._closing is not None:
                self._finish_close()

    def _take_over_unread(self) -> bytes:
        """The bytes of the stream read but not returned, and what is left in the spill.

        For a reader that takes the end over (and its spill: the other holders
        will not get those messages).
        """
        pending = self._decoder.take_pending()
        if self._spill is None or not self._spill.waiting():
            return pending
        return pending + self._spill.rest()

    def _holds_unread(self) -> bool:
        """Whether this process holds bytes of the stream that no other holder can read."""
        if self._handle is None or not self._readable:
            return False
        fds = self._fd_reader is not None and bool(self._fd_reader.fds)
        return self._decoder.pending or fds or self._recv_gate.locked()

    def _forget_unread(self) -> None:
        """In a child forked while the parent kept unread bytes: they are the parent's."""
        self._decoder.clear()
        if self._fd_reader is not None:
            shm.close_all(self._fd_reader.fds)

    def _forget_calls_under_way(self) -> None:
        """In a forked child: the calls under way at the fork are the parent's.

        Those of other threads, and a batch block (the forking thread's too:
        the parent sends its frames, and the block ends in the parent).
        """
        if self._recv_gate.locked():
            self._recv_gate = Gate()
        if self._batch is not None:
            self._batch.forget()
            self._batch = None
        if self._send_gate.locked():
            self._send_gate = Gate()
        self._reopen_shortcuts()
        self._polling = 0
        if self._closing is not None:
            self._finish_close()

    def _tls_buffered(self) -> bool:
        """Whether the TLS layer holds decrypted bytes not read yet."""
        return self._tls and self._sock.pending()  # type: ignore[union-attr]


reduction.register(Connection, sharing.reduce_connection)
