"""Shared memory for large buffers between mpwire peers on one host (Linux).

A buffer travels as a memfd: an anonymous in-memory file, passed as a file
descriptor with ``SCM_RIGHTS`` beside the message on a Unix socket. The
sender copies the buffer in once (:func:`memfd_of`); the receiver maps it
(:func:`map_memfd`), and the array it unpickles is that mapping. A memfd
has no name anywhere (nothing in ``/dev/shm``), and the kernel frees it
when the last descriptor and mapping go, whichever process dies first.

The sender seals the file's size, so a peer cannot shrink it under the
receiver's mapping (which would make touching the array crash with SIGBUS);
the receiver refuses a descriptor without that seal, or smaller than announced.

A :class:`SharedBuffer` is memory that lives in a memfd from the start:
arrays over it travel with no copy at all, and both ends then share it.
"""

from __future__ import annotations

import array
import collections
import ctypes
import fcntl
import functools
import mmap
import os
import socket
import sys
import termios
import weakref
from typing import Any, Self

from ..exceptions import FrameError
from ..protocol.frames import MAX_SHARED_BUFFERS, SHARED_KEEP, SharedEntry

__all__ = [
    "EXTENSION",
    "SHARED_IN_FLIGHT",
    "SHARED_THRESHOLD",
    "FdReader",
    "SendBudget",
    "SharedBuffer",
    "available",
    "close_all",
    "map_memfd",
    "memfd_of",
    "offer",
    "shared_array",
    "shared_entry",
]

SHARED_THRESHOLD = 1 << 20
"""Pickled buffers this large or larger go through shared memory."""

SHARED_IN_FLIGHT = 256 << 20
"""Bytes copied into memfds that a sender lets wait unread by the peer (see SendBudget)."""

_SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_MAX_WRITE = 0x7FFFF000
"""The most one write() transfers on Linux."""
_FD_SPACE = socket.CMSG_SPACE(MAX_SHARED_BUFFERS * array.array("i").itemsize)
_MMAP_OPTIONS: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
"""mmap keeps a duplicate of the file descriptor unless told not to (3.13 and later)."""

_MAP_FAILED = ctypes.c_void_p(-1).value


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc's mmap and munmap, set up on first use (not at import)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


_CTRUNC = int(socket.MSG_CTRUNC)
"""A plain int: flags & an IntFlag member goes through the enum machinery (about 1 µs)."""
_MAX_WAITING_FDS = 4 * MAX_SHARED_BUFFERS
"""Descriptors received ahead of their messages beyond this are a protocol error."""


EXTENSION = "shm"
"""The name both ends offer in the handshake to agree on shared memory."""


def offer(unix: bool, tls: bool, shared_memory: bool | None) -> frozenset[str]:
    """What a Listener or Client offers in its challenge (``unix``: on a Unix socket).

    Shared memory works on Unix sockets without TLS; ``shared_memory=False`` turns it off.
    """
    if shared_memory is False or tls or not unix or not available():
        return frozenset()
    return frozenset({EXTENSION})


def available() -> bool:
    """Whether this system has memfds with seals (Linux 3.17 and later)."""
    return hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")


def _new_memfd(size: int) -> int:
    fd = os.memfd_create("mpwire", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def memfd_of(view: memoryview) -> int:
    """A new sealed memfd holding a copy of ``view``'s bytes (the caller closes it)."""
    size = view.nbytes
    fd = _new_memfd(size)
    try:
        with view.cast("B") as flat:
            done = 0
            while done < size:
                done += os.pwrite(fd, flat[done : done + _MAX_WRITE], done)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_memfd(fd: int, entry: SharedEntry) -> Any:
    """The buffer a received memfd holds, writable; raise FrameError if it is unfit.

    A copy the sender made (:func:`memfd_of`) is mapped and the descriptor
    may be closed: the sender closed its own once sent, so the receiver's
    array is its own. A buffer shared on purpose (``SHARED_KEEP``) comes back
    as a :class:`SharedBuffer` (or a view of one), which keeps the
    descriptor and can be sent on without a copy. The caller closes ``fd``.
    """
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise FrameError(f"a shared buffer's file descriptor is not a memfd: {exc}") from None
    if seals & _SIZE_SEALS != _SIZE_SEALS:
        raise FrameError("a shared buffer's memfd is not sealed against resizing")
    offset, length = entry.offset, entry.length
    if length < 1 or offset + length > size:
        raise FrameError(f"a shared buffer of {length} bytes at {offset} came in a memfd of {size}")
    if not entry.flags & SHARED_KEEP:
        if offset:
            raise FrameError("a copied shared buffer must start its memfd")
        return _map(fd, length)
    shared = SharedBuffer._adopt(os.dup(fd), size)
    if offset == 0 and length == size:
        return shared
    return memoryview(shared)[offset : offset + length]


def _map(fd: int, length: int) -> memoryview:
    """A writable view of a new shared mapping of ``fd``, unmapped when the last view goes.

    Mapped with libc rather than :class:`mmap.mmap`, which would keep a
    duplicate of the descriptor open for as long as the array lives (before
    Python 3.13): a process holding many received arrays would run out of them.
    """
    prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED
    libc = _libc()
    address = libc.mmap(None, length, prot, flags, fd, 0)
    if address == _MAP_FAILED or address is None:
        error = ctypes.get_errno()
        raise OSError(error, f"mmap of a shared buffer failed: {os.strerror(error)}")
    memory = (ctypes.c_ubyte * length).from_address(address)
    # Not at exit: a thread may still be reading the array while the interpreter ends.
    weakref.finalize(memory, libc.munmap, address, length).atexit = False
    return memoryview(memory).cast("B")


def close_all(fds: collections.deque[int]) -> None:
    """Close every descriptor in ``fds``, emptying it."""
    while fds:
        os.close(fds.popleft())


class SharedBuffer(mmap.mmap):
    """Writable memory in a memfd, which mpwire peers share instead of copying.

    Fill it (``memoryview(buf)``, or :func:`shared_array` for a numpy array
    over one) and send an array over it, or ``pickle.PickleBuffer(buf)``, on
    a connection that agreed on shared memory: the memory itself travels,
    with no copy, and both ends then see the same bytes (the receiver gets a
    SharedBuffer, or an array over one, that it can send on the same way).
    On other connections the bytes are copied, as for any buffer.
    """

    _fd = -1
    _address: int

    def __new__(cls, size: int) -> Self:
        if size < 1:
            raise ValueError("a SharedBuffer holds at least 1 byte")
        fd = _new_memfd(size)
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS)
        except BaseException:
            os.close(fd)
            raise
        return cls._adopt(fd, size)

    @classmethod
    def _adopt(cls, fd: int, size: int) -> Self:
        """A SharedBuffer mapping all of memfd ``fd``, which it owns."""
        try:
            self = super().__new__(cls, fd, size, **_MMAP_OPTIONS)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._address = ctypes.addressof(ctypes.c_char.from_buffer(self))
        return self

    def fileno(self) -> int:
        """The memfd behind the buffer."""
        return self._fd

    def close(self) -> None:
        """Unmap the buffer and close its memfd (fails while views of it exist)."""
        super().close()
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self._close_fd()


def shared_array(shape: Any, dtype: Any = float) -> Any:
    """A zeroed numpy array in a new :class:`SharedBuffer` (needs numpy)."""
    import numpy as np

    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    buffer = SharedBuffer(max(1, count * dtype.itemsize))
    return np.frombuffer(buffer, dtype, count).reshape(shape)


def shared_entry(view: memoryview) -> tuple[SharedEntry, int] | None:
    """Where ``view`` lies, if in a :class:`SharedBuffer`: its entry and the memfd.

    Follows the owners of the buffer (``.obj`` of views, ``.base`` of numpy
    arrays) down to a SharedBuffer; None for memory that is not in one.
    """
    if not view.nbytes:
        return None
    owner = view.obj
    for _ in range(64):
        if isinstance(owner, SharedBuffer):
            break
        below = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
        if below is None:
            return None
        owner = below
    else:
        return None
    if view.readonly or owner.closed:
        return None
    offset = ctypes.addressof(ctypes.c_char.from_buffer(view)) - owner._address
    if offset < 0 or offset + view.nbytes > len(owner):
        return None
    return SharedEntry(SHARED_KEEP, offset, view.nbytes), owner.fileno()


class SendBudget:
    """Keeps a sender from piling up shared memory that its peer does not read.

    A memfd passed on a socket counts for the size of the message that
    carries it, not for its own, so a peer that stops reading would not
    hold a sender back: it could queue gigabytes of memfds. Once more than
    :data:`SHARED_IN_FLIGHT` bytes were copied for messages the peer may not
    have read yet, and the socket still holds unread bytes, :meth:`admit`
    says no: the next buffers go in band, where the stream holds the sender
    back as usual.
    """

    __slots__ = ("_fd", "in_flight")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.in_flight = 0

    def admit(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more may go as copies into memfds now (and count them)."""
        if self.in_flight and self.in_flight + nbytes > SHARED_IN_FLIGHT:
            if _unread(self._fd):
                return False
            self.in_flight = 0
        self.in_flight += nbytes
        return True


def _unread(fd: int) -> int:
    """Bytes sent on socket ``fd`` that the peer has not read yet (SIOCOUTQ)."""
    return int.from_bytes(fcntl.ioctl(fd, termios.TIOCOUTQ, bytes(4)), sys.byteorder)


class FdReader:
    """A ``readinto`` for a Unix socket that also keeps descriptors sent beside the bytes.

    A plain ``read()`` would take the bytes and let the kernel close the
    descriptors that came with them, so a connection that agreed on shared
    memory receives with ``recvmsg`` once the peer marks that descriptors
    may follow. Descriptors wait in :attr:`fds` until the message they
    belong to is decoded.
    """

    __slots__ = ("_sock", "fds")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.fds: collections.deque[int] = collections.deque()

    def __call__(self, buffer: memoryview) -> int:
        nbytes, ancdata, flags, _ = self._sock.recvmsg_into([buffer], _FD_SPACE)
        if ancdata or flags & _CTRUNC:
            self._keep(ancdata, flags)
        return nbytes

    def _keep(self, ancdata: list[tuple[int, int, bytes]], flags: int) -> None:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self.fds.extend(fds)
        if flags & _CTRUNC:
            raise FrameError("the peer sent more file descriptors than a message may carry")
        if len(self.fds) > _MAX_WAITING_FDS:
            raise FrameError("the peer sent file descriptors without the messages that use them")
