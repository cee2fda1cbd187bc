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
"""

from __future__ import annotations

import array
import collections
import fcntl
import mmap
import os
import socket

from ..exceptions import FrameError
from ..protocol.frames import MAX_SHARED_BUFFERS

__all__ = [
    "EXTENSION",
    "SHARED_THRESHOLD",
    "FdReader",
    "available",
    "close_all",
    "map_memfd",
    "memfd_of",
    "offer",
]

SHARED_THRESHOLD = 1 << 20
"""Pickled buffers this large or larger go through shared memory."""

_SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_MAX_WRITE = 0x7FFFF000
"""The most one write() transfers on Linux."""
_FD_SPACE = socket.CMSG_SPACE(MAX_SHARED_BUFFERS * array.array("i").itemsize)
_CTRUNC = int(socket.MSG_CTRUNC)
"""A plain int: flags & an IntFlag member goes through the enum machinery (about 1 µs)."""
_MAX_WAITING_FDS = 4 * MAX_SHARED_BUFFERS
"""Descriptors received ahead of their messages beyond this are a protocol error."""


EXTENSION = "shm"
"""The name both ends offer in the handshake to agree on shared memory."""


def offer(sock: socket.socket, tls: bool, shared_memory: bool | None) -> frozenset[str]:
    """What a Listener or Client on ``sock`` offers in its challenge.

    Shared memory works on Unix sockets without TLS; ``shared_memory=False`` turns it off.
    """
    if shared_memory is False or tls or sock.family != socket.AF_UNIX or not available():
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


def map_memfd(fd: int, length: int) -> mmap.mmap:
    """Map a received memfd of ``length`` bytes, writable; raise FrameError if it is unfit.

    The mapping is shared with the file, which only the sender's copy in
    :func:`memfd_of` wrote and which the sender closes once sent: the
    receiver's array is its own.
    """
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise FrameError(f"a shared buffer's file descriptor is not a memfd: {exc}") from None
    if seals & _SIZE_SEALS != _SIZE_SEALS:
        raise FrameError("a shared buffer's memfd is not sealed against resizing")
    if size < length or length < 1:
        raise FrameError(f"a shared buffer of {length} bytes came in a memfd of {size}")
    return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def close_all(fds: collections.deque[int]) -> None:
    """Close every descriptor in ``fds``, emptying it."""
    while fds:
        os.close(fds.popleft())


class FdReader:
    """A ``readinto`` for a Unix socket that also keeps descriptors sent beside the bytes.

    A plain ``read()`` would take the bytes and let the kernel close the
    descriptors that came with them, so a connection that agreed on shared
    memory receives everything with ``recvmsg``. Descriptors wait in
    :attr:`fds` until the message they belong to is decoded.
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
