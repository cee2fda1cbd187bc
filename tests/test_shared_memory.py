"""Shared memory between mpwire peers: large pickled buffers travel as memfds."""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mpwire
from mpwire.exceptions import FrameError
from mpwire.protocol.frames import (
    DESCRIPTORS_FOLLOW,
    MAX_SHARED_BUFFERS,
    SHARED_KEEP,
    SharedEntry,
    encode_header,
    encode_shared_header,
)
from mpwire.sync import shm

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not shm.available(), reason="needs memfd_create and file seals (Linux)"),
]

AUTHKEY = b"shared secret"
BIG = shm.SHARED_THRESHOLD
FDS_PER_SHARED_BUFFER = 1 if sys.version_info >= (3, 13) else 2
"""Its own, and before 3.13 the duplicate that mmap keeps."""


def exchange(sender: mpwire.Connection, receiver: mpwire.Connection, obj: Any) -> Any:
    """``obj`` sent on one end (in a thread: it may not fit the socket) and received."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sender.send(obj)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        return receiver.recv(timeout=60)
    finally:
        thread.join(60)
        if errors:
            raise errors[0]


def mapped(value: Any) -> bool:
    """Whether ``value``'s memory (an array's or a buffer's) lies in a memfd mapping."""
    if not memoryview(value).nbytes:
        return False
    if isinstance(value, np.ndarray):
        address = value.__array_interface__["data"][0]
    else:
        address = ctypes.addressof(ctypes.c_char.from_buffer(value))
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        for line in maps:
            span, *_, path = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in span.split("-"))
            if start <= address < end:
                return "/memfd:" in path
    return False


def memfds() -> int:
    """How many memfds this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    return count


def mapped_memfds() -> int:
    """How many memfd mappings this process has."""
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        return sum("/memfd:mpwire" in line for line in maps)


def wait_until_unread(conn: mpwire.Connection, nbytes: int) -> None:
    """Wait (bounded) until at least ``nbytes`` wait in the kernel for ``conn`` to read."""
    deadline = time.monotonic() + 30
    while struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, bytes(4)))[0] < nbytes:
        assert time.monotonic() < deadline, "the bytes never came"
        select.select([], [], [], 0.001)


@pytest.fixture
def pipe() -> Iterator[tuple[mpwire.Connection, mpwire.Connection]]:
    a, b = mpwire.Pipe()
    with a, b:
        yield a, b


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        np.arange(BIG // 8, dtype=np.float64),
        np.arange(BIG, dtype=np.uint8).reshape(1024, -1),
        np.asfortranarray(np.arange(BIG // 4, dtype=np.int32).reshape(512, -1)),
        np.arange(3 * BIG, dtype=np.int16)[::3],  # not contiguous: copied in band
        np.arange(BIG // 16, dtype=np.complex128),
        np.zeros((0, 5)),
        np.array(3.5),
        np.arange(10),
    ],
    ids=["float64", "2d-uint8", "fortran", "strided", "complex", "empty", "0-d", "small"],
)
def test_arrays_round_trip(pipe: Any, value: np.ndarray[Any, Any]) -> None:
    a, b = pipe
    got = exchange(a, b, value)
    np.testing.assert_array_equal(got, value)
    assert got.dtype == value.dtype and got.shape == value.shape
    assert got.flags.writeable
    large_and_contiguous = value.nbytes >= BIG and (
        value.flags.c_contiguous or value.flags.f_contiguous
    )
    assert mapped(got) == large_and_contiguous


def test_the_received_array_is_its_own(pipe: Any) -> None:
    a, b = pipe
    sent = np.zeros(BIG // 8)
    first = exchange(a, b, sent)
    sent[:] = 1.0  # the sender's changes after sending do not reach it
    second = exchange(a, b, sent)
    first[:] = 2.0  # nor do the receiver's changes to another message's array
    assert mapped(first) and mapped(second)
    assert (second == 1.0).all() and (sent == 1.0).all() and (first == 2.0).all()


@pytest.mark.parametrize("size", [0, 1, 100, BIG - 1, BIG, 64 << 20, 512 << 20])
@pytest.mark.parametrize("kind", [bytes, bytearray, pickle.PickleBuffer])
def test_buffers_of_every_size(pipe: Any, kind: type, size: int) -> None:
    a, b = pipe
    data = bytearray(size)
    data[::4096] = b"\x07" * len(data[::4096])
    got = exchange(a, b, kind(data))
    if kind is pickle.PickleBuffer:
        assert memoryview(got) == memoryview(data)
        assert mapped(got) == (size >= BIG)
    else:
        assert type(got) is kind and got == data


@pytest.mark.parametrize("size", [0, 1, BIG, 64 << 20, 512 << 20])
def test_send_bytes_of_a_memoryview_lands_in_the_callers_buffer(pipe: Any, size: int) -> None:
    a, b = pipe
    data = bytearray(size)
    data[::4096] = b"\x09" * len(data[::4096])
    target = bytearray(size + 8)
    thread = threading.Thread(target=a.send_bytes, args=(memoryview(data),))
    thread.start()
    try:
        assert b.recv_bytes_into(target, 8, timeout=60) == size
    finally:
        thread.join(60)
    assert memoryview(target)[8:] == memoryview(data)


def test_many_small_and_large_buffers_in_one_object(pipe: Any) -> None:
    a, b = pipe
    value = {
        "large": [np.full(BIG // 8, float(i)) for i in range(MAX_SHARED_BUFFERS + 6)],
        "small": [np.full(100, i) for i in range(200)],
        "text": "x" * 10_000,
        "bytes": b"y" * (2 * BIG),
    }
    got = exchange(a, b, value)
    assert len(got["large"]) == MAX_SHARED_BUFFERS + 6
    for i, item in enumerate(got["large"]):
        assert (item == float(i)).all()
    assert sum(mapped(item) for item in got["large"]) == MAX_SHARED_BUFFERS  # the rest in band
    assert all((item == i).all() for i, item in enumerate(got["small"]))
    assert got["text"] == value["text"] and got["bytes"] == value["bytes"]


def test_recv_bytes_gets_the_pickle_with_its_buffers_in_band(pipe: Any) -> None:
    import tracemalloc

    a, b = pipe
    value = [np.arange(BIG // 8, dtype=np.float64), pickle.PickleBuffer(b"r" * BIG), "x"]
    a.send(value)
    tracemalloc.start()
    try:
        data = b.recv_bytes()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(data) + (1 << 20)  # built in place: one copy of the buffers
    back = pickle.loads(data)  # no buffers= needed
    np.testing.assert_array_equal(back[0], value[0])
    assert bytes(back[1]) == b"r" * BIG and back[2] == "x"
    a.send(value)
    into = bytearray(len(data) + 10)
    assert b.recv_bytes_into(into, 5) == len(data)
    assert into[5 : 5 + len(data)] == data
    a.send(value)
    with pytest.raises(mpwire.BufferTooShort) as raised:
        b.recv_bytes_into(bytearray(100))
    assert raised.value.args[0] == data


def test_max_message_size_counts_the_shared_buffers() -> None:
    a, b = mpwire.Pipe(max_message_size=BIG)
    with a, b:
        a.send(np.zeros(BIG // 8 + 1))
        with pytest.raises(mpwire.MessageTooLong):
            b.recv()
        assert b.closed


def test_a_timed_send_into_a_full_socket_keeps_its_descriptors(pipe: Any) -> None:
    a, b = pipe
    filler = b"f" * 100  # small: a timed send that finds no room leaves nothing behind
    sent = 0
    while True:  # until the socket takes no more
        try:
            a.send_bytes(filler, timeout=0.05)
        except TimeoutError:
            break
        sent += 1
    value = np.arange(BIG // 8, dtype=np.float64)
    thread = threading.Thread(target=a.send, args=(value,), kwargs={"timeout": 30})
    thread.start()
    try:
        for _ in range(sent):
            assert b.recv_bytes(timeout=30) == filler
        got = b.recv(timeout=30)
    finally:
        thread.join(30)
    np.testing.assert_array_equal(got, value)
    assert mapped(got)


def test_a_peer_that_stops_reading_holds_back_shared_memory_too(pipe: Any) -> None:
    """Memfds take no room in the socket: past a budget, arrays go in band, which blocks."""
    a, b = pipe
    value = np.ones((16 << 20) // 8)
    sent = 0
    with pytest.raises(TimeoutError):
        for _ in range(100):
            a.send(value, timeout=1)
            sent += 1
    assert sent == shm.SHARED_IN_FLIGHT // value.nbytes
    for _ in range(sent):
        assert mapped(b.recv(timeout=30))


def test_past_the_budget_an_array_in_a_shared_buffer_still_goes_as_shared_memory(
    pipe: Any,
) -> None:
    """Only copies count against the budget: a SharedBuffer's memfd goes as it is."""
    a, b = pipe
    value = np.ones((16 << 20) // 8)
    for _ in range(shm.SHARED_IN_FLIGHT // value.nbytes):
        a.send(value, timeout=10)  # the peer reads none of them yet
    shared = mpwire.shared_array(1000)
    # Over the budget: the copy goes in band (in a thread: the stream holds it back).
    sender = threading.Thread(target=a.send, args=([value, shared],), kwargs={"timeout": 30})
    sender.start()
    wait_until_unread(b, 64 << 10)  # the copy is on its way in band: read from now on
    backlog = [b.recv(timeout=30) for _ in range(shm.SHARED_IN_FLIGHT // value.nbytes)]
    copied, same = b.recv(timeout=30)
    sender.join(30)
    assert all(mapped(array) for array in backlog)
    assert not mapped(copied)
    shared[0] = 5.0
    assert same[0] == 5.0


def test_a_peer_that_reads_gets_every_array_as_shared_memory(pipe: Any) -> None:
    a, b = pipe
    value = np.ones((64 << 20) // 8)
    for _ in range(3 * shm.SHARED_IN_FLIGHT // value.nbytes):
        got = exchange(a, b, value)
        assert mapped(got)
        del got


def test_a_dropped_end_is_freed_at_once() -> None:
    """No reference cycle: an end dropped without close() closes its fd at once."""
    import gc
    import weakref

    a, b = mpwire.Pipe()
    assert a.shared_memory
    gone = weakref.ref(a)
    gc.disable()
    try:
        del a
        assert gone() is None
    finally:
        gc.enable()
    with pytest.raises(EOFError):
        b.recv_bytes(timeout=10)


def test_reads_keep_descriptors_only_from_the_mark_on() -> None:
    """Plain messages are read with read(); recvmsg only once memfds may follow."""
    a, b = mpwire.Pipe()
    with a, b:
        for _ in range(3):
            a.send_bytes(b"ping")
            assert b.recv_bytes() == b"ping"
            b.send({"small": 1})
            assert a.recv() == {"small": 1}
        assert not (a._reading_fds or b._reading_fds or a._marked or b._marked)
        assert mapped(exchange(a, b, np.ones(BIG // 8)))
        assert b._reading_fds and a._marked
        assert not (a._reading_fds or b._marked)  # the other way is still plain
        b.send_bytes(b"pong")
        assert a.recv_bytes() == b"pong"


def test_the_mark_and_the_first_arrays_go_back_to_back() -> None:
    """Nothing waits for the peer: one thread sends small and shared messages, then reads."""
    a, b = mpwire.Pipe()
    with a, b:
        small = mpwire.shared_array((8,), dtype=np.uint8)
        for _ in range(3):
            a.send_bytes(b"before")
            a.send(small)
            a.send(np.arange(BIG // 8, dtype=np.float64))
        for _ in range(3):
            assert b.recv_bytes() == b"before"
            assert mapped(b.recv())
            got = b.recv()
            assert mapped(got) and got[-1] == BIG // 8 - 1


def test_a_mark_read_with_recvmsg_closes_its_descriptor(raw_peer: Any) -> None:
    peer, conn = raw_peer  # conn reads with recvmsg already
    before = memfds()
    send_with_fds(peer, DESCRIPTORS_FOLLOW, [a_memfd(0)])
    peer.sendall(encode_header(2) + b"ok")
    assert conn.recv_bytes(timeout=10) == b"ok"
    assert memfds() == before and not conn._fd_reader.fds
    peer.sendall(DESCRIPTORS_FOLLOW)  # without its descriptor
    with pytest.raises(FrameError, match="without its descriptor"):
        conn.recv_bytes(timeout=10)
    assert conn.closed


def test_timed_receives_and_sends(pipe: Any) -> None:
    a, b = pipe
    value = np.arange(BIG // 8, dtype=np.float64)
    a.send(value, timeout=10)
    np.testing.assert_array_equal(b.recv(timeout=10), value)
    with pytest.raises(TimeoutError):
        b.recv(timeout=0.01)


# -- SharedBuffer: memory both ends share ----------------------------------------------


def test_a_shared_array_travels_without_a_copy_and_stays_shared(pipe: Any) -> None:
    a, b = pipe
    sent = mpwire.shared_array((300, 7), dtype=np.float32)
    sent[:] = 3
    got = exchange(a, b, sent)
    assert got.shape == (300, 7) and got.dtype == np.float32 and (got == 3).all()
    sent[0, 0] = 42  # one memory: each end sees the other's writes
    got[1, 1] = 7
    assert got[0, 0] == 42 and sent[1, 1] == 7
    part = exchange(a, b, sent[10:20])  # a view into it: its offset travels
    assert part.shape == (10, 7)
    part[0, 0] = -1
    assert sent[10, 0] == -1
    strided = exchange(a, b, sent[10:20, 2:])  # numpy copies what is not contiguous
    strided[0, 0] = -2
    assert sent[10, 2] == 3
    forwarded = exchange(b, a, got)  # what was received goes on without a copy too
    forwarded[2, 2] = 9
    assert sent[2, 2] == 9


def test_a_shared_buffer_comes_back_as_one(pipe: Any) -> None:
    a, b = pipe
    buffer = mpwire.SharedBuffer(5000)
    memoryview(buffer)[:3] = b"abc"
    got = exchange(a, b, pickle.PickleBuffer(buffer))
    assert isinstance(got, mpwire.SharedBuffer) and len(got) == 5000
    assert got[:3] == b"abc"
    got[3:6] = b"def"
    assert buffer[:6] == b"abcdef"


def test_a_shared_buffer_is_copied_where_there_is_no_shared_memory(tmp_path: Path) -> None:
    server, client = connect_pair("AF_INET", tmp_path, {"authkey": AUTHKEY}, {"authkey": AUTHKEY})
    with server, client:
        sent = mpwire.shared_array(1000)
        got = exchange(client, server, sent)
        got[0] = 5.0
        assert sent[0] == 0.0 and not mapped(got)


def test_received_shared_buffers_release_their_descriptors(pipe: Any) -> None:
    a, b = pipe
    sent = mpwire.shared_array(1000)
    before = memfds()
    received = [exchange(a, b, sent) for _ in range(50)]
    assert memfds() == before + 50 * FDS_PER_SHARED_BUFFER  # each keeps its memfd, to send on
    del received
    assert memfds() == before


def test_an_empty_view_of_a_shared_buffer_is_sent_in_band(pipe: Any) -> None:
    a, b = pipe
    got = exchange(a, b, mpwire.shared_array(10)[3:3])
    assert got.shape == (0,)


def test_a_received_array_outlives_the_interpreter_in_a_daemon_thread() -> None:
    """Mappings are not undone at exit, under a thread still reading them (no SIGSEGV)."""
    script = textwrap.dedent(
        """
        import threading, time
        import numpy as np
        import mpwire
        a, b = mpwire.Pipe()
        sender = threading.Thread(target=a.send, args=(np.ones(1 << 18),))
        sender.start()
        received = b.recv()
        sender.join()
        started = threading.Event()
        def read():
            while True:
                received.sum()
                started.set()
        threading.Thread(target=read, daemon=True).start()
        started.wait()
        """
    )
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", script], timeout=60)
        assert result.returncode == 0


def test_shared_buffer_sizes() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        mpwire.SharedBuffer(0)
    assert mpwire.shared_array((0, 3)).shape == (0, 3)
    buffer = mpwire.SharedBuffer(10)
    fd = buffer.fileno()
    buffer.close()
    with pytest.raises(OSError):
        os.fstat(fd)


# -- who agrees ------------------------------------------------------------------------


def connect_pair(
    family: str, tmp_path: Path, listener_kw: dict[str, Any], client_kw: dict[str, Any]
) -> tuple[mpwire.Connection, mpwire.Connection]:
    address: Any = str(tmp_path / "s") if family == "AF_UNIX" else ("127.0.0.1", 0)
    with mpwire.Listener(address, **listener_kw) as listener:
        result: list[mpwire.Connection] = []
        thread = threading.Thread(target=lambda: result.append(listener.accept(timeout=10)))
        thread.start()
        client = mpwire.Client(listener.address, timeout=10, **client_kw)
        thread.join(10)
    return result[0], client


@pytest.mark.parametrize(
    ("family", "listener_kw", "client_kw", "agreed"),
    [
        ("AF_UNIX", {"authkey": AUTHKEY}, {"authkey": AUTHKEY}, True),
        ("AF_INET", {"authkey": AUTHKEY}, {"authkey": AUTHKEY}, False),
        ("AF_UNIX", {"authkey": AUTHKEY, "shared_memory": False}, {"authkey": AUTHKEY}, False),
        ("AF_UNIX", {"authkey": AUTHKEY}, {"authkey": AUTHKEY, "shared_memory": False}, False),
        ("AF_UNIX", {}, {}, False),
        ("AF_UNIX", {"shared_memory": True}, {"shared_memory": True}, True),
    ],
    ids=["unix-authkey", "tcp", "listener-declines", "client-declines", "no-key", "no-key-opt-in"],
)
def test_who_agrees(
    tmp_path: Path, family: str, listener_kw: Any, client_kw: Any, agreed: bool
) -> None:
    server, client = connect_pair(family, tmp_path, listener_kw, client_kw)
    with server, client:
        assert server.shared_memory == client.shared_memory == agreed
        value = np.arange(BIG // 8, dtype=np.float64)
        got = exchange(client, server, value)
        np.testing.assert_array_equal(got, value)
        assert mapped(got) == agreed
        np.testing.assert_array_equal(exchange(server, client, value), value)


def test_arrays_sent_right_behind_the_handshake_keep_their_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client is done once it has sent its last handshake message, and may send at once.

    The listener, reading late, gets that message and the client's mark that descriptors
    follow in one read (which stops there): the new Connection must decode the mark and
    keep the memfds of the arrays queued behind it.
    """
    from mpwire.sync import listener as listener_module

    receive = listener_module.Listener._receive
    gate = threading.Event()

    def late(pending: Any, handshake: Any) -> Any:
        if handshake.peer_extensions:  # answered the client: its last one is next
            gate.wait(10)  # let the client's first messages queue behind it
        return receive(pending, handshake)

    monkeypatch.setattr(listener_module.Listener, "_receive", staticmethod(late))
    with mpwire.Listener(str(tmp_path / "s"), authkey=AUTHKEY) as listener:

        def client() -> None:
            with mpwire.Client(listener.address, authkey=AUTHKEY) as conn:
                conn.send(("first", np.full(BIG // 8, 1.0)))
                conn.send(("second", np.full(BIG // 8, 2.0)))
                gate.set()
                conn.recv(timeout=30)

        thread = threading.Thread(target=client)
        thread.start()
        try:
            with listener.accept(timeout=30) as conn:
                first, second = conn.recv(timeout=30), conn.recv(timeout=30)
                conn.send("done")
        finally:
            gate.set()
            thread.join(30)
    assert first[0] == "first" and (first[1] == 1.0).all() and mapped(first[1])
    assert second[0] == "second" and (second[1] == 2.0).all() and mapped(second[1])


def test_a_connection_passed_to_a_child_keeps_shared_memory(pipe: Any) -> None:
    import multiprocessing

    a, b = pipe
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_send_back_shared, args=(b,))
    child.start()
    try:
        value = np.arange(BIG // 8, dtype=np.float64)
        a.send(value)
        got = a.recv(timeout=60)
        np.testing.assert_array_equal(got, value * 2)
        assert mapped(got)
    finally:
        child.join(60)
    assert child.exitcode == 0


def _send_back_shared(conn: mpwire.Connection) -> None:
    assert conn.shared_memory
    value = conn.recv()
    assert mapped(value)
    conn.send(value * 2)


# -- nothing leaks ---------------------------------------------------------------------


def test_no_descriptor_or_mapping_leaks_after_ten_thousand_transfers(pipe: Any) -> None:
    a, b = pipe
    before = (memfds(), mapped_memfds(), sorted(os.listdir("/dev/shm")))
    value = np.ones(BIG // 8)
    for _ in range(10_000):
        a.send(value)
        got = b.recv()
        assert mapped(got)
        del got
    assert (memfds(), mapped_memfds(), sorted(os.listdir("/dev/shm"))) == before


_KILLED_SENDER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import mpwire
    conn = mpwire.Client(sys.argv[1], authkey=b"shared secret")
    assert conn.shared_memory
    value = np.ones(64 << 17)
    while True:
        conn.send(value)
    """
)


def test_a_sender_killed_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    before = (memfds(), mapped_memfds(), sorted(os.listdir("/dev/shm")))
    with mpwire.Listener(str(tmp_path / "s"), authkey=AUTHKEY) as listener:
        child = subprocess.Popen([sys.executable, "-c", _KILLED_SENDER, listener.address])
        try:
            with listener.accept(timeout=30) as conn:
                assert conn.shared_memory
                got = conn.recv(timeout=30)
                assert mapped(got)
                del got
                os.kill(child.pid, signal.SIGKILL)
                child.wait(30)
                with pytest.raises((EOFError, OSError)):
                    while True:
                        conn.recv(timeout=30)
        finally:
            child.kill()
            child.wait(30)
    assert (memfds(), mapped_memfds(), sorted(os.listdir("/dev/shm"))) == before


def test_a_receiver_killed_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    script = (
        "import sys, mpwire\n"
        "conn = mpwire.Client(sys.argv[1], authkey=b'shared secret')\n"
        "conn.recv()\n"
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    before = (memfds(), mapped_memfds())
    with mpwire.Listener(str(tmp_path / "s"), authkey=AUTHKEY) as listener:
        child = subprocess.Popen([sys.executable, "-c", script, listener.address])
        try:
            with listener.accept(timeout=30) as conn:
                value = np.ones(64 << 17)
                with pytest.raises(OSError):
                    for _ in range(10_000):
                        conn.send(value, timeout=30)
        finally:
            child.kill()
            child.wait(30)
    assert (memfds(), mapped_memfds()) == before


# -- bad peers -------------------------------------------------------------------------


@pytest.fixture
def raw_peer() -> Iterator[tuple[socket.socket, mpwire.Connection]]:
    """A raw socket as the peer of a Connection that agreed on shared memory."""
    left, right = socket.socketpair()
    conn = mpwire.Connection(right.detach())
    conn._use_shared_memory()
    with left, conn:
        left.sendall(DESCRIPTORS_FOLLOW + encode_header(0))
        assert conn.recv_bytes(timeout=10) == b""
        yield left, conn


def a_memfd(size: int, seals: int = shm._SIZE_SEALS) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def send_with_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], rights)
    for fd in fds:
        os.close(fd)


def a_pickle_of_one_buffer() -> bytes:
    return pickle.dumps(pickle.PickleBuffer(bytearray(8)), 5, buffer_callback=lambda b: False)


def shared_message(entries: list[SharedEntry]) -> bytes:
    head = a_pickle_of_one_buffer() if len(entries) == 1 else b""
    return encode_shared_header(entries) + encode_header(len(head)) + head


@pytest.mark.parametrize(
    ("fds", "entries", "message"),
    [
        ([], [SharedEntry(0, 0, 4096)], "without its file descriptors"),
        (["unsealed"], [SharedEntry(0, 0, 4096)], "not sealed"),
        (["small"], [SharedEntry(0, 0, 8192)], "came in a memfd of 4096"),
        (["small"], [SharedEntry(SHARED_KEEP, 4000, 100)], "at 4000 came in a memfd of 4096"),
        (["small"], [SharedEntry(0, 4096, 1)], "at 4096 came in a memfd"),
        (["large"], [SharedEntry(0, 4096, 1)], "must start its memfd"),
        (["small"], [SharedEntry(0, 0, 0)], "of 0 bytes"),
        (["socket"], [SharedEntry(0, 0, 4096)], "not a memfd"),
    ],
)
def test_bad_shared_messages_close_the_connection(
    raw_peer: Any, fds: list[str], entries: list[SharedEntry], message: str
) -> None:
    peer, conn = raw_peer
    made = {
        "unsealed": lambda: a_memfd(4096, seals=0),
        "small": lambda: a_memfd(4096),
        "large": lambda: a_memfd(8192),
        "socket": lambda: os.dup(peer.fileno()),
    }
    send_with_fds(peer, shared_message(entries), [made[name]() for name in fds])
    before = memfds()
    with pytest.raises(FrameError, match=message):
        conn.recv(timeout=10)
    assert conn.closed
    assert memfds() <= before


def test_descriptors_before_the_mark_are_closed_and_refused() -> None:
    """A peer that skips the mark: the plain read drops (closes) what it sent."""
    left, right = socket.socketpair()
    with left, mpwire.Connection(right.detach(), shared_memory=True) as conn:
        before = memfds()
        send_with_fds(left, shared_message([SharedEntry(0, 0, 4096)]), [a_memfd(4096)])
        with pytest.raises(FrameError, match="without its file descriptors"):
            conn.recv(timeout=10)
        assert conn.closed
        assert memfds() <= before


def test_a_mark_on_a_plain_connection_is_a_corrupt_frame() -> None:
    left, right = socket.socketpair()
    with left, mpwire.Connection(right.detach()) as conn:
        left.sendall(DESCRIPTORS_FOLLOW + encode_header(0))
        with pytest.raises(FrameError, match="negative length -3"):
            conn.recv_bytes(timeout=10)


def test_descriptors_without_messages_are_refused(raw_peer: Any) -> None:
    peer, conn = raw_peer
    for byte in b"\0\0\0dx":  # the start of a 100-byte frame, a byte at a time
        send_with_fds(peer, bytes([byte]), [a_memfd(4096) for _ in range(MAX_SHARED_BUFFERS)])
    with pytest.raises(FrameError, match="without the messages"):
        conn.recv_bytes(timeout=10)
    assert conn.closed


def test_a_shared_header_with_a_bad_count_is_refused(raw_peer: Any) -> None:
    peer, conn = raw_peer
    peer.sendall(struct.pack("!iI", -2, MAX_SHARED_BUFFERS + 1))
    with pytest.raises(FrameError, match="buffers"):
        conn.recv(timeout=10)


def test_a_shared_header_on_a_plain_connection_is_a_corrupt_frame() -> None:
    left, right = socket.socketpair()
    with left, mpwire.Connection(right.detach()) as conn:
        assert not conn.shared_memory
        left.sendall(encode_shared_header([SharedEntry(0, 0, 4096)]))
        with pytest.raises(FrameError, match="negative length -2"):
            conn.recv(timeout=10)
