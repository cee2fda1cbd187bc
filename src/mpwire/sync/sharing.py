"""Ends shared between processes: when a Connection may read ahead, and what happens when it stops.

multiprocessing's queues and pools share one end of a pipe between
processes, each taking one message at a time under a lock. That works
because every message stays in the kernel until a holder takes it. Read-ahead
(one read bringing many messages into this process's memory) breaks it, so
a Connection reads ahead only while its process is provably the end's only
holder: from its creation until the process forks, or the Connection is
pickled for another process. From then on it is *shared*: each read stops at
the end of the message it is decoding, whatever holder reads next finds the
next message in the kernel, as with the stdlib.

What this process had read ahead by then goes into a :class:`Spill`, which
every holder reads before the stream itself, so those messages too go to
exactly one of them.
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Callable
from multiprocessing import reduction
from typing import TYPE_CHECKING, Any

from .. import serialize
from ..protocol.frames import ReadInto

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Spill", "rebuild_connection", "reduce_connection", "register"]


class Spill:
    """The bytes read ahead from a stream, where every holder of the end reads them first.

    A memfd, read from its start: its file offset is shared by every
    descriptor duplicated from it (by fork, or passed to another process as
    multiprocessing passes fds), so each byte goes to whichever holder reads
    it first, once, as it would from the stream.
    """

    __slots__ = ("fd", "size", "spent")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.spent = False
        """Whether every byte was read (by any holder); the reads go to the stream then."""

    @classmethod
    def of(cls, data: bytes) -> Spill:
        """A new spill holding ``data``."""
        fd = os.memfd_create("mpwire-spill", os.MFD_CLOEXEC)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], done)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, len(data))

    def waiting(self) -> bool:
        """Whether bytes are left to read (one system call until none are)."""
        if not self.spent and os.lseek(self.fd, 0, os.SEEK_CUR) >= self.size:
            self.spent = True
        return not self.spent

    def reader(self, then: ReadInto, spent: Callable[[ReadInto], None]) -> ReadInto:
        """A readinto that takes the spill's bytes, then ``then``'s (told to ``spent``)."""

        def readinto(buffer: memoryview) -> int | None:
            if not self.spent:
                received = os.readv(self.fd, [buffer])
                if received:
                    return received
                self.spent = True
                spent(then)
            return then(buffer)

        return readinto

    def rest(self) -> bytes:
        """Read what is left (taking it from the other holders)."""
        chunks = []
        while chunk := os.read(self.fd, max(self.size, 1)):
            chunks.append(chunk)
        self.spent = True
        return b"".join(chunks)

    def close(self) -> None:
        os.close(self.fd)


def reduce_connection(conn: Connection) -> tuple[Any, tuple[Any, ...]]:
    """Pickle support: the fd travels as multiprocessing sends fds.

    The end is shared from now on: what this process read ahead travels as
    a spill both processes read first. A receive under way in another
    thread goes on here (with what it reads). Part of a message received
    here once the end was shared already (a receive that timed out part
    way) cannot go along: ValueError.
    """
    if conn._tls:
        raise TypeError("a TLS connection cannot be passed to another process")
    if conn._fd_reader is not None and conn._fd_reader.fds:
        raise ValueError("cannot pass a connection on while file descriptors wait in it")
    fd = conn.fileno()
    conn._share()
    if conn._decoder.pending and not conn._recv_gate.locked():
        raise ValueError("cannot pass a connection on in the middle of receiving a message")
    spill = conn._spill
    spilled = None
    if spill is not None and spill.waiting():
        spilled = (reduction.DupFd(spill.fd), spill.size)
    serializer = None if conn._serializer is serialize.PICKLE else conn._serializer
    shared = conn._marked if conn.shared_memory else None
    state = (spilled, conn.max_message_size, serializer, shared)
    return rebuild_connection, (reduction.DupFd(fd), conn.readable, conn.writable, *state)


def rebuild_connection(
    df: Any,
    readable: bool,
    writable: bool,
    spilled: tuple[Any, int] | None = None,
    max_message_size: int | None = None,
    serializer: serialize.Serializer | None = None,
    marked: bool | None = None,
) -> Connection:
    """Unpickle a Connection made by reduce_connection(): an end shared with its sender.

    ``spilled``: the spill the sender made of what it read ahead, and its
    size. ``marked``: None unless shared memory is on, else whether the
    sender's end sent its mark that descriptors follow.
    """
    from .connection import Connection

    conn = Connection(
        df.detach(),
        readable,
        writable,
        max_message_size=max_message_size,
        serializer=serializer,
        shared_memory=marked is not None,
    )
    if marked is not None and conn.shared_memory:
        conn._marked = marked
    if spilled is not None:
        spill_df, size = spilled
        conn._spill = Spill(spill_df.detach(), size)
    conn._share()
    return conn


_live: dict[int, weakref.ref[Connection]] = {}
"""Every Connection of this process, which a fork shares (and resets in the child)."""
_keys = itertools.count()
_kept: list[Connection] = []
"""The Connections that held unread bytes at the fork which could not be spilled."""


def register(conn: Connection) -> None:
    """Have forks share ``conn`` (a new Connection of this process)."""
    key = next(_keys)
    _live[key] = weakref.ref(conn, lambda _, key=key: _live.pop(key, None))  # type: ignore[misc]


def _connections() -> list[Connection]:
    return [conn for ref in list(_live.values()) if (conn := ref()) is not None]


def _before_fork() -> None:
    """Both processes will hold every end: share them, spilling what was read ahead.

    What a Connection holds that could not be spilled stays the parent's
    (the child forgets it), even if sharing it failed.
    """
    _kept.clear()
    failed: list[BaseException] = []
    for conn in _connections():
        try:
            conn._share()
        except BaseException as exc:  # (the others must be shared all the same)
            failed.append(exc)
        if conn._holds_unread():
            _kept.append(conn)
    if failed:
        raise failed[0]  # os.fork() reports it, and forks


def _after_fork_in_parent() -> None:
    _kept.clear()


def _after_fork_in_child() -> None:
    """The parent keeps what could not be spilled; the calls under way are the parent's."""
    for conn in _kept:
        conn._forget_unread()
    _kept.clear()
    for conn in _connections():
        conn._forget_calls_under_way()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
