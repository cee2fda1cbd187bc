"""multiprocessing's Queue, JoinableQueue and SimpleQueue on mpwire ends.

The stdlib's classes with their pipe made by :func:`mpwire.Pipe` and objects
sent as :meth:`Connection.send` sends them (pickle protocol 5, large buffers
written from where they are and received straight into the objects they
become). A Queue's feeder thread writes every object it holds at once, in
one batch under the write lock, instead of one write each; ``put()``,
``close()``, ``join_thread()`` and delivery at exit behave as the stdlib's.
"""

from __future__ import annotations

import collections
import errno
import threading
import weakref
from multiprocessing import queues
from multiprocessing.util import Finalize, info, is_exiting
from queue import Empty
from typing import Any

from ..sync.batch import Batch
from ..sync.connection import Connection
from ..sync.pipe import Pipe

__all__ = ["JoinableQueue", "Queue", "QueueOnMpwire", "SimpleQueue"]


class QueueOnMpwire:
    """What a Queue class changes to run on mpwire: mixed in before the stdlib's class."""

    _buffer: collections.deque[Any]
    _closed: bool
    _ignore_epipe: bool
    _joincancelled: bool
    _jointhread: Finalize | None
    _notempty: threading.Condition
    _reader: Connection
    _rlock: Any
    _sem: Any
    _thread: threading.Thread | None
    _wlock: Any
    _writer: Connection
    _close: Finalize | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self._reader, Connection):  # the stdlib's Pipe made them
            self._reader.close()
            self._writer.close()
            self._reader, self._writer = Pipe(duplex=False)
            self._reset()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if block and timeout is None:
            with self._rlock:
                return self._receive()
        if not self._rlock.acquire(block, timeout):
            raise Empty
        try:
            if not self._reader.poll(timeout if block else 0.0):
                raise Empty
            return self._receive()
        finally:
            self._rlock.release()

    def _receive(self) -> Any:
        """The next object (the read lock held); its slot is freed once it was taken."""
        try:
            obj = self._reader.recv()
        except (EOFError, OSError):
            raise  # nothing was taken
        except BaseException:
            self._sem.release()  # taken, but it would not unpickle
            raise
        self._sem.release()
        return obj

    def _start_thread(self) -> None:
        self._buffer.clear()
        self._thread = threading.Thread(
            target=_feed,
            args=(
                self._buffer,
                self._notempty,
                self._reader,
                self._writer,
                self._wlock,
                self._ignore_epipe,
                self._on_queue_feeder_error,  # type: ignore[attr-defined]
                self._sem,
            ),
            name="QueueFeederThread",
            daemon=True,
        )
        try:
            self._thread.start()
        except BaseException:
            self._thread = None
            raise
        if not self._joincancelled:
            self._jointhread = Finalize(
                self._thread,
                queues.Queue._finalize_join,  # type: ignore[attr-defined]
                [weakref.ref(self._thread)],
                exitpriority=-5,
            )
        self._close = Finalize(
            self,
            queues.Queue._finalize_close,  # type: ignore[attr-defined]
            [self._buffer, self._notempty],
            exitpriority=10,
        )


def _feed(
    buffer: collections.deque[Any],
    notempty: threading.Condition,
    reader: Connection,
    writer: Connection,
    writelock: Any,
    ignore_epipe: bool,
    onerror: Any,
    queue_sem: Any,
) -> None:
    """The feeder thread: send what ``put()`` buffered, all of it in one batch each time.

    An object that will not pickle is dropped and reported to ``onerror``,
    as the stdlib's feeder does; the sentinel that ``close()`` appends ends
    the thread once everything before it left, closing this process's ends.
    Nothing sent stays referenced here while the thread waits.
    """
    sentinel = queues._sentinel  # type: ignore[attr-defined]
    while True:
        with notempty:
            while not buffer:
                notempty.wait()
        objects = []
        while buffer:
            obj = buffer.popleft()
            if obj is sentinel:
                break
            objects.append(obj)
        else:
            obj = None
        failed = _send_batch(writer, writelock, objects, ignore_epipe)
        del objects
        if failed is None:
            return  # the reader is gone and the queue was told to ignore that
        for failure in failed:
            queue_sem.release()  # the object never went: free its slot
            onerror(*failure)
        del failed
        if obj is sentinel:
            reader.close()
            writer.close()
            return


def _send_batch(
    writer: Connection, writelock: Any, objects: list[Any], ignore_epipe: bool
) -> list[tuple[Exception, Any]] | None:
    """Send ``objects`` in one batch: those that failed, and why (None: stop quietly)."""
    failed: list[tuple[Exception, Any]] = []
    obj = None
    try:
        with writelock, Batch(writer, None, borrowed=True):
            for obj in objects:
                try:
                    writer.send(obj)
                except Exception as error:
                    if _broken_write(error):
                        raise
                    failed.append((error, obj))
    except Exception as exc:
        if ignore_epipe and getattr(exc, "errno", 0) == errno.EPIPE:
            return None
        if is_exiting():
            info("error in queue thread: %s", exc)
            return None
        failed.append((exc, obj))
    return failed


def _broken_write(exc: Exception) -> bool:
    """Whether ``exc`` from one send in a batch ends it: a failed write does, a bad pickle not."""
    return isinstance(exc, OSError) and bool(exc.errno)


class Queue(QueueOnMpwire, queues.Queue):  # type: ignore[type-arg]
    """multiprocessing's Queue on mpwire."""


class JoinableQueue(QueueOnMpwire, queues.JoinableQueue):  # type: ignore[type-arg]
    """multiprocessing's JoinableQueue on mpwire."""


class SimpleQueue(queues.SimpleQueue):  # type: ignore[type-arg]
    """multiprocessing's SimpleQueue on mpwire: a locked one-way Pipe."""

    _reader: Connection
    _writer: Connection
    _rlock: Any
    _wlock: Any

    def __init__(self, *, ctx: Any) -> None:
        super().__init__(ctx=ctx)
        if not isinstance(self._reader, Connection):  # the stdlib's Pipe made them
            self._reader.close()
            self._writer.close()
            self._reader, self._writer = Pipe(duplex=False)
            self._poll = self._reader.poll

    def get(self) -> Any:
        with self._rlock:
            return self._reader.recv()

    def put(self, obj: Any) -> None:
        with self._wlock:
            self._writer.send(obj)
