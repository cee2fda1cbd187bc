"""Large pickled messages, which recv() unpickles as they arrive."""

from __future__ import annotations

import fcntl
import os
import pickle
import signal
import sys
import termios
import threading
import time
from typing import Any

import numpy as np
import pytest

import mpwire
from mpwire.protocol.frames import encode_header

pytestmark = pytest.mark.timeout(60)


def exchange(obj: Any) -> Any:
    a, b = mpwire.Pipe()
    with a, b:
        sender = threading.Thread(target=a.send, args=(obj,))
        sender.start()
        try:
            return b.recv()
        finally:
            sender.join(30)


@pytest.mark.parametrize(
    "obj",
    [
        np.arange(3_000_000, dtype=np.float64),
        np.arange(600_000, dtype=np.int32).reshape(600, 1000).T,  # Fortran order
        np.arange(2_000_000, dtype=np.uint8)[::3],  # non-contiguous
        b"\x01" * 5_000_000,
        bytearray(b"\x02" * 300_000),
        [np.ones(70_000), "text", {"k": b"v" * 100_000}, np.zeros((0, 4))],
        list(range(200_000)),
    ],
    ids=["float64", "fortran", "strided", "bytes", "bytearray", "mixed", "many-small"],
)
def test_large_objects_round_trip(obj: Any) -> None:
    got = exchange(obj)
    if isinstance(obj, np.ndarray):
        np.testing.assert_array_equal(got, obj)
        assert got.dtype == obj.dtype
        assert got.flags.writeable
    elif isinstance(obj, list) and isinstance(obj[0], np.ndarray):
        np.testing.assert_array_equal(got[0], obj[0])
        assert got[1:3] == obj[1:3]
        assert got[3].shape == (0, 4)
    else:
        assert got == obj


def test_pickled_large_buffers_are_sent_from_where_they_are() -> None:
    import tracemalloc

    from mpwire.serialize import dump_parts

    payload = bytearray(64 << 20)
    array = np.zeros(1 << 20)
    tracemalloc.start()
    try:
        parts = dump_parts({"bytes": payload, "array": array})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # no copy of either payload
    payload[0] = 7
    array[0] = 9.0
    sent = pickle.loads(b"".join(bytes(p) for p in parts))
    assert sent["bytes"][0] == 7 and sent["array"][0] == 9.0  # views of the originals


def test_parts_are_the_bytes_pickle_writes_for_a_fortran_order_buffer() -> None:
    from mpwire.serialize import dump_parts

    buffer = pickle.PickleBuffer(np.asfortranarray(np.arange(30_000.0).reshape(300, 100)))
    assert b"".join(bytes(p) for p in dump_parts(buffer)) == pickle.dumps(buffer, protocol=5)


def test_a_pickle_of_more_parts_than_one_vectored_write_takes() -> None:
    chunks = [bytes([i % 251]) * 65_536 for i in range(1_100)]  # 1,100 parts of 64 KiB
    assert exchange(chunks) == chunks


def test_old_protocols_from_stdlib_senders_are_read() -> None:
    a, b = mpwire.Pipe()
    with a, b:
        for protocol in range(6):
            payload = pickle.dumps({"n": list(range(30_000)), "s": "x" * 70_000}, protocol)
            sender = threading.Thread(target=a.send_bytes, args=(payload,))
            sender.start()
            assert b.recv() == pickle.loads(payload)
            sender.join(10)


def test_bad_large_pickle_raises_and_keeps_the_stream_in_step() -> None:
    a, b = mpwire.Pipe()
    with a, b:
        garbage = b"\x80\x05not a pickle" + os.urandom(200_000)
        sender = threading.Thread(target=lambda: (a.send_bytes(garbage), a.send("next")))
        sender.start()
        with pytest.raises(pickle.UnpicklingError):
            b.recv()
        assert b.recv() == "next"
        sender.join(10)


def test_trailing_bytes_after_the_pickle_are_skipped() -> None:
    a, b = mpwire.Pipe()
    with a, b:
        payload = pickle.dumps(b"x" * 100_000, 5) + b"\0" * 50_000
        sender = threading.Thread(target=lambda: (a.send_bytes(payload), a.send("next")))
        sender.start()
        assert b.recv() == b"x" * 100_000
        assert b.recv() == "next"
        sender.join(10)


def test_peer_closing_mid_pickle_is_an_error_not_a_hang() -> None:
    a, b = mpwire.Pipe()
    with b:
        body = pickle.dumps(np.ones(100_000), 5)

        def write_half_and_close() -> None:
            with a:
                data = memoryview(encode_header(len(body)) + body[: len(body) // 2])
                while data:
                    data = data[os.write(a.fileno(), data) :]

        writer = threading.Thread(target=write_half_and_close)
        writer.start()
        with pytest.raises(OSError, match="end of file during message"):
            b.recv()
        writer.join(10)


class Interrupted(Exception):
    pass


def _interrupt_once_drained(conn: mpwire.Connection) -> None:
    """Signal the main thread once it has read every byte sent so far (so it blocks in recv)."""
    deadline = time.monotonic() + 10
    waiting = bytearray(4)
    while time.monotonic() < deadline:
        fcntl.ioctl(conn.fileno(), termios.FIONREAD, waiting)
        if not int.from_bytes(waiting, sys.byteorder):
            break
        time.sleep(0.001)
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)


@pytest.fixture
def interruptible() -> Any:
    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    yield
    signal.signal(signal.SIGUSR1, previous)


def _send_half_then_interrupt(a: mpwire.Connection, b: mpwire.Connection, body: bytes) -> None:
    os.write(a.fileno(), encode_header(len(body)) + body[:100_000])
    threading.Thread(target=_interrupt_once_drained, args=(b,)).start()


@pytest.mark.parametrize("method", ["recv_bytes", "recv_bytes_into"])
def test_an_interrupted_large_receive_closes_rather_than_lose_its_place(
    interruptible: Any, method: str
) -> None:
    # The handler's exception may land just after a read returned, before the
    # decoder noted the bytes: the only safe answer is to close.
    a, b = mpwire.Pipe()
    body = bytes(range(256)) * 1000
    with a, b:
        _send_half_then_interrupt(a, b, body)
        with pytest.raises(Interrupted):
            if method == "recv_bytes":
                b.recv_bytes()
            else:
                b.recv_bytes_into(bytearray(300_000))
        assert b.closed


def test_an_interrupted_large_recv_closes_instead_of_waiting(interruptible: Any) -> None:
    a, b = mpwire.Pipe()
    with a, b:
        _send_half_then_interrupt(a, b, pickle.dumps(np.ones(30_000), 5))
        with pytest.raises(Interrupted):
            b.recv()
        assert b.closed


def test_a_non_blocking_fd_raises_blocking_io_error() -> None:
    a, b = mpwire.Pipe()
    with a, b:
        os.set_blocking(b.fileno(), False)
        with pytest.raises(BlockingIOError):
            b.recv_bytes()
        a.send_bytes(b"ok")
        assert b.recv_bytes() == b"ok"
