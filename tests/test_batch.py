"""Connection.batch(): sends held back and written together, in order, whole."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from multiprocessing import connection as stdlib_connection
from typing import Any

import numpy as np
import pytest

import mpwire
from mpwire.sync import shm

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair() -> Iterator[tuple[mpwire.Connection, mpwire.Connection]]:
    a, b = mpwire.Pipe()
    with a, b:
        yield a, b


class CountingSocket(socket.socket):
    """A socket object that records its write calls."""

    calls: list[str]

    def send(self, *args: Any) -> int:
        self.calls.append("send")
        return super().send(*args)

    def sendmsg(self, *args: Any) -> int:
        self.calls.append("sendmsg")
        return super().sendmsg(*args)


@contextlib.contextmanager
def counted_writes(conn: mpwire.Connection) -> Iterator[list[str]]:
    """The write calls the connection makes in the block."""
    original = conn._sock
    counting = CountingSocket(fileno=conn.fileno())
    counting.calls = []
    conn._sock = counting
    try:
        yield counting.calls
    finally:
        conn._sock = original
        counting.detach()


def echo(conn: mpwire.Connection, count: int) -> threading.Thread:
    def run() -> None:
        for _ in range(count):
            conn.send_bytes(conn.recv_bytes(timeout=30))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_batch_writes_its_messages_together_in_order(pair: Any) -> None:
    a, b = pair
    with counted_writes(a) as calls:
        with a.batch():
            for i in range(1000):
                a.send_bytes(b"%04d" % i + b"x" * 96)
            assert calls == []
        assert calls == ["sendmsg"]  # 100 KB: one vectored write
    assert [b.recv_bytes(timeout=10)[:4] for _ in range(1000)] == [b"%04d" % i for i in range(1000)]


def test_a_batch_writes_as_it_fills(pair: Any) -> None:
    a, b = pair
    message = b"m" * 1000
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(b.recv_bytes() for _ in range(2000)))
    reader.start()
    with counted_writes(a) as calls, a.batch():
        for _ in range(2000):
            a.send_bytes(message)
        written = len(calls)
    reader.join(30)
    assert written == 2000 * 1004 // (256 * 1024)  # 7 full batches before the block ended
    assert len(calls) == written + 1
    assert received == [message] * 2000


def test_every_kind_of_message_in_a_batch(pair: Any) -> None:
    a, b = pair
    buffer = bytearray(b"before")
    view = memoryview(bytearray(range(256)) * 400)  # larger than a joined frame
    sent: list[Any] = [{"an": "object"}, b"", b"x" * 300_000]
    received: list[Any] = []
    reader = threading.Thread(
        target=lambda: received.extend(
            [b.recv(), b.recv_bytes(), b.recv_bytes(), b.recv_bytes(), b.recv()]
        )
    )
    reader.start()
    with a.batch():
        a.send(sent[0])
        a.send_bytes(buffer)
        buffer[:] = b"after!"  # changed after the send: the frame holds what was sent
        a.send_bytes(view, 10, 50_000)
        a.send_bytes(sent[1])
        a.send(sent[2])
    reader.join(30)
    assert received == [sent[0], b"before", bytes(view[10:50_010]), b"", sent[2]]


def test_a_receive_in_the_block_sends_what_is_queued_first(pair: Any) -> None:
    a, b = pair
    thread = echo(b, 3)
    with a.batch():
        a.send_bytes(b"one")
        assert a.recv_bytes(timeout=10) == b"one"
        a.send_bytes(b"two")
        assert a.poll(10)
        assert a.recv_bytes(timeout=10) == b"two"
        a.send({"three": 3})
        assert a.recv(timeout=10) == {"three": 3}
    thread.join(10)


def test_a_receive_of_a_message_read_ahead_in_the_block_sends_first(pair: Any) -> None:
    a, b = pair
    for message in (b"first", b"early", b"ahead"):
        b.send_bytes(message)
    assert a.recv_bytes() == b"first"
    assert a.recv_bytes() == b"early"
    assert a._decoder.ready  # "ahead" came in the same read, ready to take
    with a.batch():
        a.send_bytes(b"queued")
        assert a.recv_bytes() == b"ahead"
        assert b.poll(10)
        assert b.recv_bytes() == b"queued"


def test_wait_sends_what_this_thread_queued_first(pair: Any) -> None:
    a, b = pair
    thread = echo(b, 1)
    with a.batch():
        a.send_bytes(b"request")
        assert mpwire.wait([a], timeout=10) == [a]
        assert a.recv_bytes(timeout=10) == b"request"
    thread.join(10)


def test_a_receive_in_the_block_sends_first_while_another_thread_receives(pair: Any) -> None:
    """The batch leaves before this receive waits for the receiver blocked in another thread."""
    a, b = pair
    got: list[bytes] = []
    other = threading.Thread(target=lambda: got.append(a.recv_bytes(timeout=30)))
    other.start()
    thread = echo(b, 2)
    with a.batch():
        a.send_bytes(b"one")
        a.send_bytes(b"two")
        mine = a.recv_bytes(timeout=10)
    other.join(30)
    thread.join(10)
    assert sorted([mine, *got]) == [b"one", b"two"]


def test_frames_of_a_batch_closed_under_it_are_reported(pair: Any) -> None:
    a, b = pair
    with pytest.raises(OSError, match="did not leave"), a.batch():
        a.send_bytes(b"queued")
        closer = threading.Thread(target=a.close)
        closer.start()
        closer.join(10)
    assert a.closed
    with pytest.raises(EOFError):
        b.recv_bytes(timeout=10)


def test_other_senders_wait_for_the_block(pair: Any) -> None:
    a, b = pair
    other = threading.Thread(target=a.send_bytes, args=(b"other",))
    with a.batch():
        a.send_bytes(b"first")
        other.start()
        other.join(0.2)
        assert other.is_alive()  # waiting for its turn
        a.send_bytes(b"second")
    other.join(10)
    assert [b.recv_bytes(timeout=10) for _ in range(3)] == [b"first", b"second", b"other"]


def test_a_nested_block_joins_the_outer_one(pair: Any) -> None:
    a, b = pair
    with counted_writes(a) as calls:
        with a.batch():
            a.send_bytes(b"1")
            with a.batch():
                a.send_bytes(b"2")
            a.send_bytes(b"3")
            assert calls == []
        assert calls == ["sendmsg"]
    assert [b.recv_bytes(timeout=10) for _ in range(3)] == [b"1", b"2", b"3"]


def test_an_exception_in_the_block_still_sends_what_was_queued(pair: Any) -> None:
    a, b = pair
    with pytest.raises(ZeroDivisionError), a.batch():
        a.send_bytes(b"sent")
        1 / 0  # noqa: B018
    assert b.recv_bytes(timeout=10) == b"sent"
    a.send_bytes(b"and after")  # the connection's sends are free again
    assert b.recv_bytes(timeout=10) == b"and after"


def test_a_batch_to_a_peer_that_does_not_read_times_out(pair: Any) -> None:
    a, _ = pair
    with pytest.raises(TimeoutError), a.batch(timeout=0.2):
        for _ in range(10_000):
            a.send_bytes(b"f" * 1000)


def test_a_batch_times_out_waiting_for_another_sender(pair: Any) -> None:
    a, b = pair
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with a.batch():
            a.send_bytes(b"held")
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    entered.wait(30)
    try:
        with pytest.raises(TimeoutError), a.batch(timeout=0.2):
            pass
    finally:
        leave.set()
        thread.join(30)
    assert b.recv_bytes(timeout=10) == b"held"


def test_a_batch_on_a_closed_or_read_only_connection_fails(pair: Any) -> None:
    a, _ = pair
    r, w = mpwire.Pipe(duplex=False)
    with r, w, pytest.raises(OSError, match="read-only"), r.batch():
        pass
    a.close()
    with pytest.raises(OSError, match="closed"), a.batch():
        pass


def test_a_one_way_pipe_batches_too() -> None:
    r, w = mpwire.Pipe(duplex=False)
    with r, w:
        with w.batch():
            for i in range(100):
                w.send(i)
        assert [r.recv(timeout=10) for _ in range(100)] == list(range(100))


def test_a_stdlib_peer_reads_a_batch() -> None:
    left, right = socket.socketpair()
    with mpwire.Connection(left.detach()) as conn:
        peer = stdlib_connection.Connection(right.detach())
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.extend(peer.recv_bytes() for _ in range(6)))
        reader.start()
        try:
            with conn.batch():
                for size in (0, 1, 16383, 16384, 16385, 300_000):
                    conn.send_bytes(b"s" * size)
            reader.join(30)
            assert [len(m) for m in got] == [0, 1, 16383, 16384, 16385, 300_000]
        finally:
            peer.close()


@pytest.mark.skipif(not shm.available(), reason="no memfd shared memory on this system")
def test_a_shared_memory_array_in_a_batch_keeps_its_place(pair: Any) -> None:
    a, b = pair
    array = np.arange(shm.SHARED_THRESHOLD // 8, dtype=np.float64)
    received: list[Any] = []
    reader = threading.Thread(target=lambda: received.extend(b.recv() for _ in range(3)))
    reader.start()
    with a.batch():
        a.send("before")
        a.send(array)
        a.send("after")
    reader.join(30)
    assert received[0] == "before" and received[2] == "after"
    np.testing.assert_array_equal(received[1], array)
    assert b.shared_memory and b._reading_fds
