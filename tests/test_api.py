"""The public API over real sockets: Listener, Client, authentication, Connection and poll().

Socket tests run over every address kind (see conftest.py). Nothing sleeps to
synchronise: peers run in threads and every wait is a bounded blocking call.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import functools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import random
import select
import socket
import stat
import struct
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpwire
from mpwire import connection as mpconnection

# A hang fails fast (each test takes well under a second). The thread method, because
# Hypothesis re-runs a failing example while shrinking it and would outlast a signal.
pytestmark = pytest.mark.timeout(60, method="thread")

KEY = b"the right key"
MiB = 1 << 20

Pair = tuple[mpwire.Connection, mpwire.Connection]


@functools.cache
def payload(size: int) -> bytes:
    """Reproducible random bytes (the same ``size`` always gives the same bytes)."""
    return random.Random(size).randbytes(size)


def queued_bytes(fd: int) -> int:
    """How many received bytes the kernel holds for ``fd``, not yet read."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    return buf[0]


def wait_until_queued(fd: int, nbytes: int, timeout: float = 5.0) -> None:
    """Block (bounded) until the kernel holds at least ``nbytes`` unread bytes for ``fd``."""
    deadline = time.monotonic() + timeout
    while queued_bytes(fd) < nbytes:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {queued_bytes(fd)} of {nbytes} bytes arrived"
        select.select([fd], [], [], min(remaining, 0.01))


def kernel_has_nothing(fd: int) -> bool:
    return select.select([fd], [], [], 0) == ([], [], [])


def socket_family(conn: mpwire.Connection) -> int:
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        return sock.family


def assert_exchange(a: mpwire.Connection, b: mpwire.Connection) -> None:
    """Messages flow both ways between ``a`` and ``b``."""
    a.send(("ping", 1))
    assert b.recv() == ("ping", 1)
    b.send_bytes(b"pong")
    assert a.recv_bytes() == b"pong"


# -- the API surface ---------------------------------------------------------


def test_exceptions_are_multiprocessings_own() -> None:
    assert mpwire.AuthenticationError is multiprocessing.AuthenticationError
    assert mpwire.BufferTooShort is multiprocessing.BufferTooShort
    assert mpconnection.AuthenticationError is multiprocessing.AuthenticationError
    assert mpconnection.BufferTooShort is multiprocessing.BufferTooShort
    assert issubclass(mpwire.FrameError, OSError)
    assert issubclass(mpwire.MessageTooLong, mpwire.FrameError)
    assert not issubclass(mpwire.FrameError, EOFError)


def test_connection_module_has_the_stdlib_names() -> None:
    for name in multiprocessing.connection.__all__:
        assert hasattr(mpconnection, name), name
    for name in (
        "Connection",
        "answer_challenge",
        "deliver_challenge",
        "address_type",
        "arbitrary_address",
        "default_family",
        "families",
        "BUFSIZE",
        "CONNECTION_TIMEOUT",
    ):
        assert hasattr(mpconnection, name), name
    assert mpconnection.Listener is mpwire.Listener
    assert mpconnection.Client is mpwire.Client
    assert mpconnection.Pipe is mpwire.Pipe
    assert mpconnection.wait is mpwire.wait
    assert mpconnection.Connection is mpwire.Connection


@pytest.mark.parametrize(
    ("address", "family"),
    [
        (("127.0.0.1", 0), "AF_INET"),
        (("::1", 0), "AF_INET"),
        ("/tmp/x.sock", "AF_UNIX"),
        (Path("/tmp/x.sock"), "AF_UNIX"),
        ("\0abstract", "AF_UNIX"),
        (b"\0abstract", "AF_UNIX"),
        (r"\\.\pipe\name", "AF_PIPE"),
    ],
)
def test_address_type(address: Any, family: str) -> None:
    assert mpconnection.address_type(address) == family


def test_address_type_rejects_other_objects() -> None:
    with pytest.raises(ValueError):
        mpconnection.address_type(1234)


# -- Listener and Client -------------------------------------------------------


def test_listener_accept_client(address: Any, address_kind: str) -> None:
    with mpwire.Listener(address) as listener:
        assert listener.last_accepted is None
        client = mpwire.Client(listener.address)
        server = listener.accept()
        with client, server:
            assert isinstance(server, mpwire.Connection)
            assert isinstance(client, mpwire.Connection)
            assert_exchange(server, client)
            assert_exchange(client, server)
            if address_kind.startswith("tcp"):
                with socket.socket(fileno=os.dup(client.fileno())) as sock:
                    client_address = sock.getsockname()
                assert listener.last_accepted[:2] == client_address[:2]
            else:
                # An unbound Unix client has no name.
                assert listener.last_accepted in ("", b"")


def test_listener_address_form(address: Any, address_kind: str) -> None:
    with mpwire.Listener(address) as listener:
        bound = listener.address
        if address_kind == "tcp4":
            assert isinstance(bound, tuple)
            assert len(bound) == 2
            assert bound[0] == "127.0.0.1"
            assert isinstance(bound[1], int)
            assert bound[1] > 0
        elif address_kind == "tcp6":
            assert isinstance(bound, tuple)
            assert bound[:1] == ("::1",)
            assert bound == ("::1", bound[1])
            assert bound[1] > 0
        elif address_kind == "abstract":
            assert bound in (address, address.encode())
        else:
            assert bound == os.fspath(address)
            assert stat.S_ISSOCK(os.stat(bound).st_mode)
        # The address as reported is one Client takes.
        with mpwire.Client(bound) as client, listener.accept() as server:
            assert_exchange(client, server)


def test_client_takes_the_address_as_given(address: Any, address_kind: str) -> None:
    with mpwire.Listener(address) as listener:
        if address_kind.startswith("tcp"):
            given_address = (address[0], listener.address[1])
        else:
            given_address = address  # str, pathlib.Path or "\0name"
        with mpwire.Client(given_address) as client, listener.accept() as server:
            assert_exchange(client, server)


def test_family_inferred_from_the_address(address: Any, address_kind: str) -> None:
    expected = {
        "tcp4": socket.AF_INET,
        "tcp6": socket.AF_INET6,
    }.get(address_kind, socket.AF_UNIX)
    with (
        mpwire.Listener(address) as listener,
        mpwire.Client(listener.address) as client,
        listener.accept() as server,
    ):
        assert socket_family(client) == expected
        assert socket_family(server) == expected


def test_explicit_family_matching_the_address(address: Any, address_kind: str) -> None:
    family = "AF_INET" if address_kind.startswith("tcp") else "AF_UNIX"
    with (
        mpwire.Listener(address, family=family) as listener,
        mpwire.Client(listener.address, family=family) as client,
        listener.accept() as server,
    ):
        assert_exchange(client, server)


def test_accept_after_close_raises_oserror(address: Any) -> None:
    listener = mpwire.Listener(address)
    listener.close()
    with pytest.raises(OSError):
        listener.accept()
    listener.close()  # a second close is harmless
    with pytest.raises(OSError):
        listener.accept()


def test_listener_context_manager_closes(address: Any, address_kind: str) -> None:
    with mpwire.Listener(address) as listener:
        bound = listener.address
    with pytest.raises(OSError):
        listener.accept()
    if address_kind.startswith("unix"):
        assert not os.path.exists(bound)
    # Nothing listens there any more.
    with pytest.raises(OSError):
        mpwire.Client(bound)


def test_unix_socket_file_removed_on_close(socket_dir: Path) -> None:
    path = socket_dir / "removed.sock"
    listener = mpwire.Listener(path)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    listener.close()
    assert not path.exists()
    listener.close()  # the file is not removed twice


def test_address_in_use_raises_oserror(address: Any, address_kind: str) -> None:
    with mpwire.Listener(address) as listener:
        with pytest.raises(OSError) as info:
            mpwire.Listener(listener.address)
        assert info.value.errno == errno.EADDRINUSE
        if address_kind.startswith("unix"):
            # The failed second listener must not have removed the first one's file.
            assert os.path.exists(listener.address)
        with mpwire.Client(listener.address) as client, listener.accept() as server:
            assert_exchange(client, server)


def test_several_pending_clients_with_backlog(address: Any) -> None:
    with mpwire.Listener(address, backlog=4) as listener:
        clients = [mpwire.Client(listener.address) for _ in range(3)]
        try:
            for i, client in enumerate(clients):
                client.send(i)
            got = []
            for _ in clients:
                with listener.accept() as server:
                    got.append(server.recv())
                    server.send(got[-1] * 10)
            assert sorted(got) == [0, 1, 2]
            assert [c.recv() for c in clients] == [0, 10, 20]
        finally:
            for client in clients:
                client.close()


def test_client_to_nothing_raises_oserror(address: Any) -> None:
    with mpwire.Listener(address) as listener:
        bound = listener.address
    with pytest.raises(OSError):
        mpwire.Client(bound)


@pytest.mark.parametrize("family", [None, "AF_UNIX"])
def test_listener_without_address_is_a_unix_socket_file(family: str | None) -> None:
    listener = mpwire.Listener(family=family)
    try:
        path = listener.address
        assert isinstance(path, str)
        assert os.path.isabs(path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with mpwire.Client(path) as client, listener.accept() as server:
            assert socket_family(server) == socket.AF_UNIX
            assert_exchange(client, server)
    finally:
        listener.close()
    assert not os.path.exists(path)


def test_listener_af_inet_without_address() -> None:
    with mpwire.Listener(family="AF_INET") as listener:
        host, port = listener.address
        assert host == "127.0.0.1"
        assert port > 0
        with mpwire.Client(listener.address) as client, listener.accept() as server:
            assert socket_family(server) == socket.AF_INET
            assert_exchange(client, server)


@pytest.mark.parametrize("family", ["AF_BOGUS", "af_inet", "AF_PIPE", "AF_INET6"])
def test_bad_family_raises_valueerror(family: str, socket_dir: Path) -> None:
    with pytest.raises(ValueError):
        mpwire.Listener(family=family)
    path = socket_dir / "never.sock"
    with pytest.raises(ValueError):
        mpwire.Listener(path, family=family)
    assert not path.exists()
    with pytest.raises(ValueError):
        mpwire.Listener(("127.0.0.1", 0), family=family)
    with pytest.raises(ValueError):
        mpwire.Client(("127.0.0.1", 1), family=family)
    with pytest.raises(ValueError):
        mpwire.Client(path, family=family)


@pytest.mark.parametrize("name", [r"\\.\pipe", r"\\.\pipe\mpwire-test"])
def test_named_pipe_address_raises_valueerror(name: str) -> None:
    with pytest.raises(ValueError):
        mpwire.Listener(name)
    with pytest.raises(ValueError):
        mpwire.Client(name)


def test_unrecognised_address_raises_valueerror() -> None:
    with pytest.raises(ValueError):
        mpwire.Listener(12345)
    with pytest.raises(ValueError):
        mpwire.Client(12345)


@pytest.mark.parametrize("authkey", ["text", bytearray(b"key"), memoryview(b"key"), 1])
def test_non_bytes_authkey_raises_typeerror(authkey: Any, address: Any, address_kind: str) -> None:
    with pytest.raises(TypeError):
        mpwire.Listener(address, authkey=authkey)
    if address_kind.startswith("unix"):
        assert not os.path.exists(address)  # nothing was bound
    with mpwire.Listener(address) as listener, pytest.raises(TypeError):
        mpwire.Client(listener.address, authkey=authkey)


# -- authentication ------------------------------------------------------------


def _client_session(address: Any, authkey: bytes | None) -> Any:
    with mpwire.Client(address, authkey=authkey) as conn:
        conn.send("hello from the client")
        return conn.recv()


def test_right_authkey_lets_messages_flow(address: Any, background: Callable[..., Any]) -> None:
    with mpwire.Listener(address, authkey=KEY) as listener:
        client = background(_client_session, listener.address, KEY)
        with listener.accept() as server:
            assert server.recv() == "hello from the client"
            server.send("hello from the server")
        assert client.result() == "hello from the server"


def test_wrong_authkey_fails_on_both_sides(address: Any, background: Callable[..., Any]) -> None:
    with mpwire.Listener(address, authkey=KEY) as listener:
        client = background(_client_session, listener.address, b"the wrong key")
        with pytest.raises(multiprocessing.AuthenticationError):
            listener.accept()
        assert isinstance(client.error(), multiprocessing.AuthenticationError)
        # The listener goes on accepting.
        client = background(_client_session, listener.address, KEY)
        with listener.accept() as server:
            assert server.recv() == "hello from the client"
            server.send("ok")
        assert client.result() == "ok"


def _keyless_client_sends_a_message(address: Any) -> list[Any]:
    """A client with no authkey that sends one normal message and reads until EOF."""
    seen: list[Any] = []
    with mpwire.Client(address) as conn:
        conn.send_bytes(b"just a message")
        while True:
            try:
                seen.append(conn.recv_bytes())
            except EOFError:
                seen.append(EOFError)
                return seen


def test_authkey_on_listener_only(address: Any, background: Callable[..., Any]) -> None:
    """The listener takes the client's first message as the answer and fails it.

    The key-less client reads the listener's challenge as its first message and
    ``#FAILURE#`` as its second, then the end of the stream.
    """
    with mpwire.Listener(address, authkey=KEY) as listener:
        client = background(_keyless_client_sends_a_message, listener.address)
        with pytest.raises(multiprocessing.AuthenticationError):
            listener.accept()
        challenge, failure, end = client.result()
        assert challenge.startswith(b"#CHALLENGE#")
        assert failure == b"#FAILURE#"
        assert end is EOFError


def test_authkey_on_client_only(address: Any, background: Callable[..., Any]) -> None:
    """A keyed client expects a challenge; a normal first message fails it."""
    with mpwire.Listener(address) as listener:
        client = background(_client_session, listener.address, KEY)
        with listener.accept() as server:
            server.send_bytes(b"not a challenge")
            assert isinstance(client.error(), multiprocessing.AuthenticationError)
            # The client hung up without sending anything.
            with pytest.raises(EOFError):
                server.recv_bytes()


def _keyless_client_sends_a_long_message(address: Any) -> None:
    with mpwire.Client(address) as conn:
        conn.send_bytes(b"x" * 1000)
        with contextlib.suppress(EOFError, OSError):
            while True:
                conn.recv_bytes()


def test_overlong_answer_is_refused(address: Any, background: Callable[..., Any]) -> None:
    # No handshake message may exceed 256 bytes (the stdlib's limit too; it
    # raises OSError, mpwire the AuthenticationError of a failed handshake).
    with mpwire.Listener(address, authkey=KEY) as listener:
        client = background(_keyless_client_sends_a_long_message, listener.address)
        with pytest.raises(multiprocessing.AuthenticationError, match="bad message length"):
            listener.accept()
        client.result()
        _assert_still_accepting(listener, background)


def _assert_still_accepting(listener: mpwire.Listener, background: Callable[..., Any]) -> None:
    client = background(_client_session, listener.address, KEY)
    with listener.accept() as server:
        assert server.recv() == "hello from the client"
        server.send("still accepting")
    assert client.result() == "still accepting"


def _connect_and_hang_up(address: Any) -> None:
    mpwire.Client(address).close()


def test_client_hanging_up_during_authentication(
    address: Any, background: Callable[..., Any]
) -> None:
    # The stdlib's accept() raises EOFError or OSError here; mpwire drops the
    # client and goes on waiting for one that authenticates.
    with mpwire.Listener(address, authkey=KEY) as listener:
        background(_connect_and_hang_up, listener.address).result()
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.3)
        _assert_still_accepting(listener, background)


def test_deliver_and_answer_challenge(background: Callable[..., Any]) -> None:
    a, b = mpwire.Pipe()
    with a, b:
        answerer = background(mpwire.answer_challenge, b, KEY)
        mpwire.deliver_challenge(a, KEY)
        answerer.result()
        assert_exchange(a, b)


def test_deliver_and_answer_challenge_wrong_key(background: Callable[..., Any]) -> None:
    a, b = mpwire.Pipe()
    with a, b:
        answerer = background(mpwire.answer_challenge, b, b"other key")
        with pytest.raises(multiprocessing.AuthenticationError):
            mpwire.deliver_challenge(a, KEY)
        assert isinstance(answerer.error(), multiprocessing.AuthenticationError)


# -- send() and recv() -----------------------------------------------------------

OBJECTS: list[Any] = [
    None,
    True,
    0,
    -7,
    2**100,
    3.25,
    "",
    "text ü ✓",
    b"",
    b"\x00bytes\xff",
    bytearray(b"bytearray"),
    [],
    (),
    {},
    {1, 2, 3},
    frozenset({"a"}),
    [1, [2, [3, {"k": (4, 5, None)}]]],
    {"a": [None, {"b": {1, 2}}], (1, 2): "tuple key", None: [b"x", 2.5]},
    list(range(200_000)),
    {"big": [{"i": i, "s": str(i)} for i in range(20_000)]},
]


def test_send_recv_objects(conn_pair: Pair, background: Callable[..., Any]) -> None:
    a, b = conn_pair

    def send_all() -> None:
        for obj in OBJECTS:
            b.send(obj)

    sender = background(send_all)
    for obj in OBJECTS:
        got = a.recv()
        assert type(got) is type(obj)
        assert got == obj
    sender.result()
    assert not a.poll(0)


def test_recv_of_bytes_that_do_not_unpickle(conn_pair: Pair) -> None:
    a, b = conn_pair
    b.send_bytes(b"not a pickle")
    b.send("next")
    with pytest.raises(pickle.UnpicklingError):
        a.recv()
    assert a.recv() == "next"  # the bad message was consumed, the stream is in step


def test_send_recv_both_directions_interleaved(conn_pair: Pair) -> None:
    a, b = conn_pair
    for i in range(50):
        a.send(i)
        b.send(-i)
        assert b.recv() == i
        assert a.recv() == -i


def test_unpicklable_object_sends_nothing(conn_pair: Pair) -> None:
    a, b = conn_pair
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        b.send(lambda: None)
    b.send("after")
    assert a.recv() == "after"
    assert not a.poll(0)


# -- send_bytes() with offset and size -------------------------------------------


def _numpy_int32() -> Any:
    np = pytest.importorskip("numpy")
    return np.arange(3, dtype=np.int32)


BUFFERS: dict[str, Callable[[], Any]] = {
    # Each holds 12 bytes.
    "bytes": lambda: bytes(range(12)),
    "bytearray": lambda: bytearray(range(12)),
    "memoryview": lambda: memoryview(bytes(range(12))),
    "array-i": lambda: array.array("i", [1, -2, 0x01020304]),
    "numpy-int32": _numpy_int32,
}


def as_bytes(buf: Any) -> bytes:
    return memoryview(buf).cast("B").tobytes()


@pytest.mark.parametrize("kind", BUFFERS)
@pytest.mark.parametrize(
    ("offset", "size"),
    [
        (None, None),
        (0, None),
        (5, None),
        (12, None),
        (None, 5),
        (0, 12),
        (5, 7),
        (4, 0),
        (12, 0),
        (3, 2),
    ],
)
def test_send_bytes_offset_and_size_in_bytes(
    kind: str, offset: int | None, size: int | None
) -> None:
    buf = BUFFERS[kind]()
    raw = as_bytes(buf)
    assert len(raw) == 12
    start = offset or 0
    end = 12 if size is None else start + size
    a, b = mpwire.Pipe()
    with a, b:
        kwargs = {}
        if offset is not None:
            kwargs["offset"] = offset
        if size is not None:
            kwargs["size"] = size
        b.send_bytes(buf, **kwargs)
        assert a.recv_bytes() == raw[start:end]
        # Positional form, as the stdlib documents it.
        b.send_bytes(buf, start, end - start)
        assert a.recv_bytes() == raw[start:end]


@pytest.mark.parametrize("kind", BUFFERS)
@pytest.mark.parametrize(
    ("offset", "size"),
    [
        (-1, None),  # negative offset
        (-1, 1),
        (13, None),  # offset > len (in bytes)
        (13, 0),
        (0, -1),  # negative size
        (5, -1),
        (5, 8),  # offset + size > len
        (12, 1),
        (0, 13),
    ],
)
def test_send_bytes_bad_offset_or_size_raises_valueerror(
    kind: str, offset: int, size: int | None
) -> None:
    buf = BUFFERS[kind]()
    a, b = mpwire.Pipe()
    with a, b:
        with pytest.raises(ValueError):
            b.send_bytes(buf, offset, size)
        assert not a.poll(0)  # nothing was sent
        b.send_bytes(b"still fine")
        assert a.recv_bytes() == b"still fine"


def test_send_bytes_numpy_multibyte_items(conn_pair: Pair) -> None:
    np = pytest.importorskip("numpy")
    a, b = conn_pair
    arr = np.arange(10, dtype=np.int64)  # 80 bytes
    raw = arr.tobytes()
    b.send_bytes(arr)
    assert a.recv_bytes() == raw
    b.send_bytes(arr, 8)
    assert a.recv_bytes() == raw[8:]
    b.send_bytes(arr, 3, 17)  # offsets are in bytes, not items
    assert a.recv_bytes() == raw[3:20]
    b.send_bytes(arr, 80)
    assert a.recv_bytes() == b""
    for offset, size in [(81, None), (-1, None), (0, 81), (8, 73), (0, -1)]:
        with pytest.raises(ValueError):
            b.send_bytes(arr, offset, size)
    matrix = np.arange(12, dtype=np.float64).reshape(3, 4)
    b.send_bytes(matrix)
    assert a.recv_bytes() == matrix.tobytes()
    b.send_bytes(matrix, 8, 16)
    assert a.recv_bytes() == matrix.tobytes()[8:24]


def test_send_bytes_large_numpy_array(conn_pair: Pair, background: Callable[..., Any]) -> None:
    np = pytest.importorskip("numpy")
    a, b = conn_pair
    big = np.arange(500_000, dtype=np.int32)
    sender = background(b.send_bytes, big, 4, big.nbytes - 8)
    got = np.frombuffer(a.recv_bytes(), dtype=np.int32)
    sender.result()
    assert np.array_equal(got, big[1:-1])


# -- recv_bytes(maxlength) ---------------------------------------------------------


def test_recv_bytes_maxlength_at_the_limit(conn_pair: Pair) -> None:
    a, b = conn_pair
    b.send_bytes(b"x" * 10)
    assert a.recv_bytes(10) == b"x" * 10
    b.send_bytes(b"")
    assert a.recv_bytes(0) == b""


@pytest.mark.parametrize("method", ["recv_bytes", "recv"])
def test_recv_bytes_over_maxlength_raises_and_closes(conn_pair: Pair, method: str) -> None:
    a, b = conn_pair
    b.send_bytes(b"x" * 11)
    b.send_bytes(b"never read")
    with pytest.raises(OSError) as info:
        a.recv_bytes(10)
    assert isinstance(info.value, mpwire.MessageTooLong)
    assert info.value.size == 11
    assert info.value.limit == 10
    assert a.closed
    with pytest.raises(OSError, match="handle is closed"):
        getattr(a, method)()


def _send_ignoring_hangup(conn: mpwire.Connection, data: bytes) -> str:
    try:
        conn.send_bytes(data)
    except OSError:
        return "peer hung up"
    return "sent"


def test_large_message_over_maxlength_is_refused_early(
    conn_pair: Pair, background: Callable[..., Any]
) -> None:
    a, b = conn_pair
    sender = background(_send_ignoring_hangup, b, payload(4 * MiB))
    with pytest.raises(mpwire.MessageTooLong) as info:
        a.recv_bytes(MiB)
    assert info.value.size == 4 * MiB
    assert a.closed
    # The sender either fit everything into socket buffers or saw the hang-up.
    assert sender.result() in ("sent", "peer hung up")


def test_recv_bytes_negative_maxlength_raises_valueerror(conn_pair: Pair) -> None:
    a, b = conn_pair
    b.send_bytes(b"kept")
    with pytest.raises(ValueError):
        a.recv_bytes(-1)
    assert not a.closed
    assert a.recv_bytes() == b"kept"


# -- recv_bytes_into() ---------------------------------------------------------------


def test_recv_bytes_into_array_offset_in_bytes(conn_pair: Pair) -> None:
    a, b = conn_pair
    target = array.array("i", [-1] * 8)  # 32 bytes of 0xff
    message = bytes(range(1, 11))
    b.send_bytes(message)
    assert a.recv_bytes_into(target, 8) == 10
    raw = target.tobytes()
    assert raw[:8] == b"\xff" * 8
    assert raw[8:18] == message
    assert raw[18:] == b"\xff" * 14


def test_recv_bytes_into_array_unaligned_byte_offset(conn_pair: Pair) -> None:
    # The offset counts bytes even when it is not a multiple of the item size.
    a, b = conn_pair
    target = array.array("i", [-1] * 4)
    b.send_bytes(b"\x00\x01\x02")
    assert a.recv_bytes_into(target, 6) == 3
    assert target.tobytes() == b"\xff" * 6 + b"\x00\x01\x02" + b"\xff" * 7


def test_recv_bytes_into_bytearray(conn_pair: Pair) -> None:
    a, b = conn_pair
    target = bytearray(b"\xee" * 20)
    b.send_bytes(b"0123456789")
    assert a.recv_bytes_into(target, 3) == 10
    assert target == b"\xee" * 3 + b"0123456789" + b"\xee" * 7
    b.send_bytes(b"abc")
    assert a.recv_bytes_into(target) == 3
    assert target == b"abc" + b"0123456789" + b"\xee" * 7


def test_recv_bytes_into_exact_fit_and_empty(conn_pair: Pair) -> None:
    a, b = conn_pair
    target = bytearray(13)
    b.send_bytes(b"0123456789")
    assert a.recv_bytes_into(target, 3) == 10
    assert target == bytes(3) + b"0123456789"
    b.send_bytes(b"")
    assert a.recv_bytes_into(target, 13) == 0  # offset == len is allowed
    assert target == bytes(3) + b"0123456789"


def test_recv_bytes_into_numpy(conn_pair: Pair) -> None:
    np = pytest.importorskip("numpy")
    a, b = conn_pair
    target = np.full(4, -1, dtype=np.int64)
    b.send_bytes(np.array([7, 8], dtype=np.int64))
    assert a.recv_bytes_into(target, 8) == 16
    assert target.tolist() == [-1, 7, 8, -1]


def test_recv_bytes_into_large_message_with_offset(
    conn_pair: Pair, background: Callable[..., Any]
) -> None:
    a, b = conn_pair
    message = payload(300_001)
    target = bytearray(b"\xaa" * (len(message) + 100))
    sender = background(b.send_bytes, message)
    assert a.recv_bytes_into(target, 50) == len(message)
    sender.result()
    assert target[:50] == b"\xaa" * 50
    assert target[50 : 50 + len(message)] == message
    assert target[50 + len(message) :] == b"\xaa" * 50


def test_recv_bytes_into_too_small_small_message(conn_pair: Pair) -> None:
    a, b = conn_pair
    target = bytearray(b"\xee" * 12)
    b.send_bytes(b"0123456789")
    b.send_bytes(b"next")
    with pytest.raises(multiprocessing.BufferTooShort) as info:
        a.recv_bytes_into(target, 3)
    assert info.value.args[0] == b"0123456789"
    assert target == b"\xee" * 12
    assert not a.closed
    assert a.recv_bytes() == b"next"


def test_recv_bytes_into_too_small_large_message(
    conn_pair: Pair, background: Callable[..., Any]
) -> None:
    a, b = conn_pair
    message = payload(MiB + 12_345)
    target = bytearray(b"\xee" * MiB)

    def send() -> None:
        b.send_bytes(message)
        b.send_bytes(b"next")

    sender = background(send)
    with pytest.raises(multiprocessing.BufferTooShort) as info:
        a.recv_bytes_into(target)
    assert info.value.args[0] == message
    assert target == b"\xee" * MiB
    assert a.recv_bytes() == b"next"
    sender.result()


@pytest.mark.parametrize(
    ("target", "offset"),
    [
        (bytearray(10), -1),
        (bytearray(10), 11),
        (array.array("i", [0, 0]), -1),
        (array.array("i", [0, 0]), 9),  # 8 bytes
    ],
    ids=["bytearray-negative", "bytearray-too-large", "array-negative", "array-too-large"],
)
def test_recv_bytes_into_bad_offset_raises_valueerror(
    conn_pair: Pair, target: Any, offset: int
) -> None:
    a, b = conn_pair
    b.send_bytes(b"kept")
    before = as_bytes(target)
    with pytest.raises(ValueError):
        a.recv_bytes_into(target, offset)
    assert as_bytes(target) == before
    assert a.recv_bytes() == b"kept"


# -- message sizes ---------------------------------------------------------------------

SIZES = [0, 1, 65535, 65536, 65537, MiB + 1, 20 * MiB]


def _send_then_marker(conn: mpwire.Connection, data: bytes, as_object: bool) -> None:
    if as_object:
        conn.send(data)
    else:
        conn.send_bytes(data)
    conn.send_bytes(b"marker")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", ["recv_bytes", "recv_bytes_into", "recv"])
def test_message_sizes(
    conn_pair: Pair, background: Callable[..., Any], size: int, method: str
) -> None:
    a, b = conn_pair
    message = payload(size)
    sender = background(_send_then_marker, b, message, method == "recv")
    if method == "recv_bytes":
        assert a.recv_bytes() == message
    elif method == "recv":
        assert a.recv() == message
    else:
        target = bytearray(b"\x55" * (size + 16))
        assert a.recv_bytes_into(target, 8) == size
        assert target[:8] == b"\x55" * 8
        assert target[8 : 8 + size] == message
        assert target[8 + size :] == b"\x55" * 8
    assert a.recv_bytes() == b"marker"  # the stream is still in step
    sender.result()
    assert not a.poll(0)


_SIZES_ST = st.sampled_from([0, 1, 3, 4, 5, 8188, 8192, 8193, 65531, 65532, 65536, 65540, 200_000])
_RECEIVE_ST = st.sampled_from(["recv_bytes", "maxlength", "into", "into-offset"])


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=st.lists(st.tuples(_SIZES_ST, _RECEIVE_ST), min_size=1, max_size=12))
@pytest.mark.parametrize("transport", ["pipe", "tcp4"])
def test_mixed_message_sequence(
    background: Callable[..., Any], transport: str, plan: list[tuple[int, str]]
) -> None:
    """Any sequence of sizes and receive methods keeps the frames apart."""
    if transport == "pipe":
        a, b = mpwire.Pipe()
    else:
        with mpwire.Listener(("127.0.0.1", 0)) as listener:
            b = mpwire.Client(listener.address)
            a = listener.accept()
    with a, b:
        messages = [payload(size)[::-1] + bytes([i % 256]) for i, (size, _) in enumerate(plan)]

        def send_all() -> None:
            for m in messages:
                b.send_bytes(m)

        sender = background(send_all)
        for message, (_, how) in zip(messages, plan, strict=True):
            if how == "recv_bytes":
                assert a.recv_bytes() == message
            elif how == "maxlength":
                assert a.recv_bytes(len(message)) == message
            else:
                offset = 5 if how == "into-offset" else 0
                target = bytearray(len(message) + offset + 3)
                assert a.recv_bytes_into(target, offset) == len(message)
                assert target[offset : offset + len(message)] == message
        sender.result()
        assert not a.poll(0)


def test_long_form_header_is_accepted(conn_pair: Pair) -> None:
    # The 64-bit form (-1, then an unsigned length) may announce any size.
    a, b = conn_pair
    os.write(b.fileno(), struct.pack("!iQ", -1, 5) + b"hello" + struct.pack("!i", 2) + b"ok")
    assert a.recv_bytes() == b"hello"
    assert a.recv_bytes() == b"ok"


# -- end of stream and broken frames ------------------------------------------------------

RECEIVERS: dict[str, Callable[[mpwire.Connection], Any]] = {
    "recv": lambda c: c.recv(),
    "recv_bytes": lambda c: c.recv_bytes(),
    "recv_bytes_into": lambda c: c.recv_bytes_into(bytearray(64)),
}


@pytest.mark.parametrize("method", RECEIVERS)
def test_eof_after_peer_closes(conn_pair: Pair, method: str) -> None:
    a, b = conn_pair
    b.send("last")
    b.close()
    assert a.recv() == "last"  # queued messages still arrive
    assert a.poll(5)  # the end of the stream is readable
    with pytest.raises(EOFError):
        RECEIVERS[method](a)
    with pytest.raises(EOFError):
        RECEIVERS[method](a)
    assert not a.closed


@pytest.mark.parametrize("method", RECEIVERS)
def test_eof_on_one_way_pipe(method: str) -> None:
    reader, writer = mpwire.Pipe(duplex=False)
    with reader:
        writer.send_bytes(b"\x80\x05N.")  # a pickled None, readable by every method
        writer.close()
        assert RECEIVERS[method](reader) in (None, b"\x80\x05N.", 4)
        with pytest.raises(EOFError):
            RECEIVERS[method](reader)
        with pytest.raises(EOFError):
            RECEIVERS[method](reader)


TRUNCATED = {
    "header-claims-100": struct.pack("!i", 100) + b"0123456789",
    "half-a-header": b"\x00\x00",
    "header-claims-1MiB": struct.pack("!i", MiB) + b"0123456789",
    "half-a-long-header": struct.pack("!i", -1) + b"\x00\x00\x00",
    "long-header-claims-100": struct.pack("!iQ", -1, 100) + b"0123456789",
    "after-a-whole-frame": struct.pack("!i", 2) + b"ok" + struct.pack("!i", 100) + b"01234",
}


@pytest.mark.parametrize("data", TRUNCATED.values(), ids=TRUNCATED.keys())
@pytest.mark.parametrize("method", RECEIVERS)
def test_peer_closing_mid_frame_raises_oserror_not_eof(data: bytes, method: str) -> None:
    raw, wrapped = socket.socketpair()
    conn = mpwire.Connection(wrapped.detach())
    with conn:
        raw.sendall(data)
        raw.close()
        if data.startswith(struct.pack("!i", 2) + b"ok"):
            assert conn.recv_bytes() == b"ok"
        with pytest.raises((OSError, EOFError)) as info:
            RECEIVERS[method](conn)
        assert not isinstance(info.value, EOFError)
        assert isinstance(info.value, OSError)


def test_peer_closing_mid_frame_over_each_kind(conn_pair: Pair) -> None:
    a, b = conn_pair
    os.write(b.fileno(), struct.pack("!i", 100) + b"0123456789")
    b.close()
    with pytest.raises((OSError, EOFError)) as info:
        a.recv_bytes()
    assert type(info.value) is not EOFError
    assert isinstance(info.value, OSError)


def test_corrupt_header_raises_frame_error_and_closes(conn_pair: Pair) -> None:
    a, b = conn_pair
    os.write(b.fileno(), struct.pack("!i", -2) + b"junk")
    with pytest.raises(mpwire.FrameError):
        a.recv_bytes()
    assert a.closed


# -- closed connections, properties, constructor --------------------------------------------

CALLS: dict[str, Callable[[mpwire.Connection], Any]] = {
    "send": lambda c: c.send("x"),
    "send_bytes": lambda c: c.send_bytes(b"x"),
    "recv": lambda c: c.recv(),
    "recv_bytes": lambda c: c.recv_bytes(),
    "recv_bytes_into": lambda c: c.recv_bytes_into(bytearray(8)),
    "poll": lambda c: c.poll(),
    "poll-timeout": lambda c: c.poll(1),
    "fileno": lambda c: c.fileno(),
}


@pytest.mark.parametrize("call", CALLS)
def test_every_method_after_close_raises(conn_pair: Pair, call: str) -> None:
    a, b = conn_pair
    b.send("pending")  # even with data waiting
    a.close()
    assert a.closed
    with pytest.raises(OSError, match="handle is closed"):
        CALLS[call](a)
    a.close()  # closing twice is fine
    assert a.closed


def test_properties(conn_pair: Pair) -> None:
    a, b = conn_pair
    for conn in (a, b):
        assert not conn.closed
        assert conn.readable is True
        assert conn.writable is True
        fd = conn.fileno()
        assert isinstance(fd, int)
        assert fd >= 0
        assert stat.S_ISSOCK(os.fstat(fd).st_mode)
    assert a.fileno() != b.fileno()
    a.close()
    assert a.closed
    assert not b.closed


def test_close_closes_the_fd() -> None:
    a, b = mpwire.Pipe()
    with b:
        a.close()
        with pytest.raises(EOFError):
            b.recv()
        with pytest.raises(BrokenPipeError):
            b.send("nobody reads this")


def test_a_connection_whose_socket_object_was_closed_leaves_the_fd_number_alone() -> None:
    """Its owner closed the socket under it: the number may name another file by now."""
    ours, theirs = socket.socketpair()
    conn = mpwire.Connection.from_socket(ours)
    fd = ours.fileno()
    ours.close()
    read_end, write_end = os.pipe()
    try:
        if read_end != fd:
            os.dup2(read_end, fd)  # another file takes the number
        conn.close()
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
    finally:
        for end in {fd, read_end, write_end}:
            os.close(end)
        theirs.close()


def test_one_way_pipe() -> None:
    reader, writer = mpwire.Pipe(duplex=False)
    with reader, writer:
        assert reader.readable
        assert not reader.writable
        assert writer.writable
        assert not writer.readable
        assert stat.S_ISFIFO(os.fstat(reader.fileno()).st_mode)  # as the stdlib's: see Pipe()
        for call in ("send", "send_bytes"):
            with pytest.raises(OSError):
                CALLS[call](reader)
        for call in ("recv", "recv_bytes", "recv_bytes_into", "poll", "poll-timeout"):
            with pytest.raises(OSError):
                CALLS[call](writer)
        writer.send(["through", "the", "pipe"])
        assert reader.poll(5)
        assert reader.recv() == ["through", "the", "pipe"]


def test_connection_constructor_errors() -> None:
    with pytest.raises(ValueError):
        mpwire.Connection(-1)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError):
            mpwire.Connection(r, False, False)
        with pytest.raises(ValueError):
            mpwire.Connection(r, readable=False, writable=False)
        os.fstat(r)  # a refused handle is left open, as the caller's
    finally:
        os.close(r)
        os.close(w)


def test_connection_over_raw_fds_and_context_manager() -> None:
    r, w = os.pipe()
    writer = mpwire.Connection(w, readable=False)
    with mpwire.Connection(r, writable=False) as reader:
        assert reader.fileno() == r
        with writer:
            assert writer.fileno() == w
            writer.send({"via": "raw fds"})
        assert writer.closed
        assert reader.recv() == {"via": "raw fds"}
        with pytest.raises(EOFError):
            reader.recv()
    assert reader.closed
    with pytest.raises(OSError, match="handle is closed"):
        reader.fileno()


def test_connection_context_manager_closes(conn_pair: Pair) -> None:
    a, b = conn_pair
    with a as entered:
        assert entered is a
        a.send("bye")
    assert a.closed
    assert b.recv() == "bye"
    with pytest.raises(EOFError):
        b.recv()


# -- poll() and read-ahead ------------------------------------------------------------------


def test_poll(conn_pair: Pair) -> None:
    a, b = conn_pair
    assert a.poll() is False
    assert a.poll(0) is False
    start = time.monotonic()
    assert a.poll(-1) is False
    assert time.monotonic() - start < 1.0
    start = time.monotonic()
    assert a.poll(0.05) is False
    assert time.monotonic() - start >= 0.04
    b.send_bytes(b"data")
    assert a.poll(5) is True
    assert a.poll(0) is True  # polling consumes nothing
    assert a.poll() is True
    assert a.recv_bytes() == b"data"
    assert a.poll(0) is False


def test_poll_none_blocks_until_data(conn_pair: Pair, background: Callable[..., Any]) -> None:
    a, b = conn_pair
    waiter = background(a.poll, None)
    assert not waiter.done.wait(0.1)  # still waiting
    b.send("wake up")
    assert waiter.result(5) is True
    assert a.recv() == "wake up"


def test_poll_from_two_threads(background: Callable[..., Any]) -> None:
    a, b = mpwire.Pipe()
    with a, b:
        waiter = background(a.poll, 5)
        assert not waiter.done.wait(0.1)  # the other thread is waiting in poll()
        try:
            for _ in range(5):
                assert a.poll(0) is False
                assert a.poll(0.01) is False
        finally:
            b.send("wake up")  # let the waiter return either way
            waiter.result(5)
        assert a.recv() == "wake up"


def test_poll_none_returns_at_eof(conn_pair: Pair, background: Callable[..., Any]) -> None:
    a, b = conn_pair
    waiter = background(a.poll, None)
    assert not waiter.done.wait(0.05)
    b.close()
    assert waiter.result(5) is True
    with pytest.raises(EOFError):
        a.recv()


def test_read_ahead_is_visible_to_poll_and_wait(conn_pair: Pair) -> None:
    a, b = conn_pair
    messages = [b"first", b"second", b"third"]
    for m in messages:
        b.send_bytes(m)
    wait_until_queued(a.fileno(), sum(4 + len(m) for m in messages))
    assert a.recv_bytes() == b"first"
    # Everything else was read ahead: the kernel holds nothing more for this fd ...
    assert kernel_has_nothing(a.fileno())
    # ... yet the connection has data, for poll() and wait() alike.
    assert a.poll(0) is True
    assert a.poll() is True
    assert a.poll(-1) is True
    assert mpwire.wait([a], 0) == [a]
    assert mpwire.wait([a], None) == [a]
    other, other_peer = mpwire.Pipe()
    with other, other_peer:
        assert mpwire.wait([other, a], 0) == [a]
    assert a.recv_bytes() == b"second"
    assert a.poll(0) is True
    assert mpwire.wait([a], 0) == [a]
    assert a.recv_bytes() == b"third"
    assert a.poll(0) is False
    assert mpwire.wait([a], 0) == []


def test_a_message_read_ahead_over_maxlength_closes(conn_pair: Pair) -> None:
    a, b = conn_pair
    for message in (b"one", b"two", b"x" * 100):
        b.send_bytes(message)
    wait_until_queued(a.fileno(), 3 * 4 + 6 + 100)
    assert a.recv_bytes() == b"one"
    assert a.recv_bytes() == b"two"
    assert a._decoder.ready  # the long one, split off the read
    with pytest.raises(mpwire.MessageTooLong, match="bad message length"):
        a.recv_bytes(99)
    assert a.closed


def test_messages_read_ahead_are_not_received_after_close(conn_pair: Pair) -> None:
    a, b = conn_pair
    for message in (b"one", b"two", b"three"):
        b.send_bytes(message)
    wait_until_queued(a.fileno(), 3 * 4 + 11)
    assert a.recv_bytes() == b"one"
    assert a.recv_bytes() == b"two"
    assert a._decoder.ready
    a.close()
    for receive in (a.recv_bytes, a.recv, lambda: a.recv_bytes_into(bytearray(8))):
        with pytest.raises(OSError, match="closed"):
            receive()


def test_threads_receiving_together_get_each_message_once_and_in_order() -> None:
    """Messages read ahead are taken without the receive gate: never twice, never reordered."""
    a, b = mpwire.Pipe()
    count, receivers = 20_000, 4
    got: list[list[int]] = [[] for _ in range(receivers)]

    def receive(mine: list[int]) -> None:
        while (number := int(a.recv_bytes())) >= 0:
            mine.append(number)

    with a, b:
        threads = [threading.Thread(target=receive, args=(mine,)) for mine in got]
        for thread in threads:
            thread.start()
        for number in range(count):
            b.send_bytes(b"%d" % number)
        for _ in threads:
            b.send_bytes(b"-1")
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
    assert sorted(n for mine in got for n in mine) == list(range(count))
    assert all(mine == sorted(mine) for mine in got)


def test_read_ahead_on_one_way_pipe() -> None:
    reader, writer = mpwire.Pipe(duplex=False)
    with reader, writer:
        for i in range(3):
            writer.send(i)
        assert reader.recv() == 0
        assert kernel_has_nothing(reader.fileno())
        assert reader.poll(0)
        assert mpwire.wait([reader], 0) == [reader]
        assert reader.recv() == 1
        assert reader.recv_bytes_into(bytearray(64)) > 0
        assert not reader.poll(0)


def test_read_ahead_then_eof(conn_pair: Pair) -> None:
    a, b = conn_pair
    b.send_bytes(b"one")
    b.send_bytes(b"two")
    b.close()
    assert a.recv_bytes() == b"one"
    assert a.poll(0)
    assert a.recv_bytes() == b"two"
    assert a.poll(5)  # EOF is readable
    with pytest.raises(EOFError):
        a.recv_bytes()


def _nodelay(conn: mpwire.Connection) -> int:
    sock = socket.socket(fileno=conn.fileno())
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.detach()


def test_nagle_is_off_from_the_handshake_to_the_first_message(
    background: Callable[..., Any],
) -> None:
    """No delayed-ACK stall after the handshake; small messages share packets after it."""
    with mpwire.Listener(("127.0.0.1", 0), authkey=b"key") as listener:
        accepting = background(listener.accept)
        with mpwire.Client(listener.address, authkey=b"key") as client:
            server = accepting.result(10)
            with server:
                assert _nodelay(client) and _nodelay(server)
                client.send("first")
                assert server.recv() == "first"
                server.send_bytes(b"reply")
                assert client.recv_bytes() == b"reply"
                assert not _nodelay(client) and not _nodelay(server)


def test_xml_listener_and_client_interoperate_with_the_stdlib(
    background: Callable[..., Any],
) -> None:
    from multiprocessing.connection import XmlClient as StdlibXmlClient

    with mpwire.connection.XmlListener(("127.0.0.1", 0), authkey=b"k") as listener:
        accepting = background(listener.accept)
        client = StdlibXmlClient(listener.address, authkey=b"k")
        server = accepting.result(10)
        client.send({"a": [1, 2.5, "x"]})
        assert server.recv() == {"a": [1, 2.5, "x"]}
        server.send([True, None])
        assert client.recv() == [True, None]
        client.close()
        server.close()
    with mpwire.Listener(("127.0.0.1", 0)) as listener:
        accepting = background(listener.accept)
        wrapped = mpwire.connection.XmlClient(listener.address)
        with accepting.result(10) as plain:
            wrapped.send("hi")
            assert b"<string>hi</string>" in plain.recv_bytes()
        wrapped.close()


@pytest.mark.parametrize("authkey", [None, KEY], ids=["no-key", "key"])
def test_threads_may_accept_side_by_side(
    address: Any, authkey: bytes | None, background: Callable[..., Any]
) -> None:
    """As with the stdlib: each accept() returns a connection of its own."""
    with mpwire.Listener(address, backlog=4, authkey=authkey) as listener:

        def accept_one() -> Any:
            with listener.accept(timeout=20) as conn:
                return conn.recv(timeout=20)

        acceptors = [background(accept_one) for _ in range(3)]
        for number in range(3):
            with mpwire.Client(listener.address, authkey=authkey) as client:
                client.send(number)
        assert sorted(acceptor.result(30) for acceptor in acceptors) == [0, 1, 2]
