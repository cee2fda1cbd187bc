"""Connection options beyond the stdlib: timeouts, size limits, threads, SIGPIPE."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import mpwire
from mpwire.exceptions import MessageTooLong
from mpwire.protocol.frames import encode_header

pytestmark = pytest.mark.timeout(60)

Pair = tuple[mpwire.Connection, mpwire.Connection]

RECEIVES: dict[str, Callable[[mpwire.Connection, float], Any]] = {
    "recv": lambda c, t: c.recv(timeout=t),
    "recv_bytes": lambda c, t: c.recv_bytes(timeout=t),
    "recv_bytes_into": lambda c, t: c.recv_bytes_into(bytearray(100), timeout=t),
}


@pytest.mark.parametrize("method", sorted(RECEIVES))
def test_receive_timeout_leaves_the_connection_usable(conn_pair: Pair, method: str) -> None:
    a, b = conn_pair
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        RECEIVES[method](b, 0.2)
    assert 0.15 < time.monotonic() - started < 5
    assert not b.closed
    a.send("after")
    assert b.recv(timeout=5) == "after"


@pytest.mark.parametrize("method", ["recv_bytes", "recv_bytes_into"])
def test_a_timeout_mid_message_keeps_what_arrived(conn_pair: Pair, method: str) -> None:
    a, b = conn_pair
    body = bytes(range(256)) * 400  # larger than the read-ahead buffer
    frame = encode_header(len(body)) + body
    os.write(a.fileno(), frame[:50_000])
    with pytest.raises(TimeoutError):
        RECEIVES[method](b, 0.2)
    os.write(a.fileno(), frame[50_000:])
    if method == "recv_bytes":
        assert b.recv_bytes(timeout=5) == body
    else:
        target = bytearray(len(body))
        assert b.recv_bytes_into(target, timeout=5) == len(body)
        assert target == body


def test_recv_with_timeout_gets_large_objects_too(conn_pair: Pair, background: Any) -> None:
    a, b = conn_pair
    obj = {"big": b"\x07" * 3_000_000}
    sender = background(a.send, obj)
    assert b.recv(timeout=10) == obj
    sender.result()


def test_send_timeout_before_anything_left_keeps_the_connection(
    conn_pair: Pair, background: Any
) -> None:
    a, b = conn_pair
    filler = b"f" * 65536
    sent = 0
    with pytest.raises(TimeoutError):
        while True:  # fill every buffer between the two ends
            a.send_bytes(filler, timeout=0.2)
            sent += 1
    if a.closed:
        pytest.skip("the last filler frame was cut short, which closes (tested below)")
    with pytest.raises(TimeoutError):
        a.send_bytes(b"small", timeout=0.1)
    assert not a.closed
    drained = background(lambda: [b.recv_bytes(timeout=10) for _ in range(sent)])
    assert drained.result() == [filler] * sent
    a.send_bytes(b"small", timeout=5)
    assert b.recv_bytes(timeout=5) == b"small"


def test_send_timeout_after_part_of_a_frame_left_closes(conn_pair: Pair) -> None:
    a, b = conn_pair
    with pytest.raises(TimeoutError):
        a.send_bytes(bytes(50_000_000), timeout=0.2)
    assert a.closed
    with pytest.raises(OSError, match="end of file during message"):
        b.recv_bytes(timeout=5)


@pytest.mark.parametrize("limit", [0, 100, 100_000])
def test_max_message_size(limit: int) -> None:
    a, b = mpwire.Pipe(max_message_size=limit)
    with a, b:
        assert b.max_message_size == limit
        a.send_bytes(bytes(limit))
        assert b.recv_bytes() == bytes(limit)
        a.send_bytes(bytes(limit + 1))
        with pytest.raises(MessageTooLong) as caught:
            b.recv_bytes()
        assert (caught.value.size, caught.value.limit) == (limit + 1, limit)
        assert str(limit + 1) in str(caught.value) and str(limit) in str(caught.value)
        assert b.closed


def test_max_message_size_refuses_a_forged_header_before_allocating() -> None:
    a, b = mpwire.Pipe(max_message_size=1 << 20)
    with a, b:
        os.write(a.fileno(), encode_header(2**62))
        with pytest.raises(MessageTooLong):
            b.recv_bytes()


def test_max_message_size_on_listener_and_client(address: Any) -> None:
    with mpwire.Listener(address, max_message_size=10) as listener:
        client = mpwire.Client(listener.address, max_message_size=20)
        server = listener.accept()
    with client, server:
        assert (server.max_message_size, client.max_message_size) == (10, 20)
        client.send_bytes(bytes(11))
        server.send_bytes(bytes(21))
        with pytest.raises(MessageTooLong):
            server.recv_bytes()
        with pytest.raises(MessageTooLong):
            client.recv_bytes()


def test_negative_max_message_size_is_refused() -> None:
    with pytest.raises(ValueError):
        mpwire.Pipe(max_message_size=-1)


@pytest.mark.parametrize("method", sorted(RECEIVES))
def test_close_from_another_thread_wakes_a_blocked_receive(method: str, background: Any) -> None:
    # (Not a one-way Pipe: an os.pipe(), as the stdlib's, which nothing can shut down.)
    reader, writer = mpwire.Pipe()
    with writer:
        blocked = background(RECEIVES[method], reader, None)
        assert not blocked.done.wait(0.2)
        fd = reader.fileno()
        reader.close()
        error = blocked.error(timeout=5)
        assert isinstance(error, (EOFError, OSError)), error
        with pytest.raises(OSError):
            os.fstat(fd)  # closed once the receiver let go of it


def test_close_from_another_thread_wakes_a_blocked_send(conn_pair: Pair, background: Any) -> None:
    a, _ = conn_pair
    blocked = background(a.send_bytes, bytes(50_000_000))
    assert not blocked.done.wait(0.2)
    a.close()
    assert isinstance(blocked.error(timeout=5), OSError)


def _message(thread: int, seq: int, rng: random.Random) -> bytes:
    size = rng.choice([1, 10, 1000, 20_000, 100 * 1024])
    head = b"%d:%d:" % (thread, seq)
    return (head + bytes([seq % 251]) * size)[: max(size, len(head))]


def test_concurrent_senders_never_interleave_frames(conn_pair: Pair) -> None:
    a, b = conn_pair
    threads, count = 4, 250
    sent: dict[int, list[bytes]] = {}

    def sender(t: int) -> None:
        rng = random.Random(t)
        sent[t] = [_message(t, i, rng) for i in range(count)]
        for message in sent[t]:
            a.send_bytes(message)

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    got: dict[int, list[bytes]] = {t: [] for t in range(threads)}
    for _ in range(threads * count):
        message = b.recv_bytes(timeout=20)
        got[int(message.split(b":", 1)[0])].append(message)
    for worker in workers:
        worker.join(20)
    assert got == sent


def test_concurrent_receivers_each_get_whole_messages(conn_pair: Pair, background: Any) -> None:
    a, b = conn_pair
    messages = [bytes([i % 256]) * (i * 37 % 70_000) for i in range(400)]
    got: list[bytes] = []
    lock = threading.Lock()

    def receiver() -> None:
        while True:
            message = b.recv_bytes(timeout=20)
            if message == b"stop":
                return
            with lock:
                got.append(message)

    workers = [background(receiver) for _ in range(3)]
    for message in messages:
        a.send_bytes(message)
    for _ in workers:
        a.send_bytes(b"stop")
    for worker in workers:
        worker.result(timeout=30)
    assert sorted(got) == sorted(messages)


SIGPIPE_CHILD = """
import signal, mpwire
def send_to_closed(duplex):
    a, b = mpwire.Pipe(duplex)
    a.close()
    try:
        b.send_bytes(b"x" * 100_000)
    except BrokenPipeError:
        print("BrokenPipeError", flush=True)
send_to_closed(False)  # an os.pipe(): Python ignores SIGPIPE, as the stdlib relies on
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
send_to_closed(True)  # a socket: MSG_NOSIGNAL, whatever the program did to SIGPIPE
"""


def test_sigpipe_never_kills_the_sender() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGPIPE_CHILD], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done
    assert done.stdout.split() == ["BrokenPipeError"] * 2
