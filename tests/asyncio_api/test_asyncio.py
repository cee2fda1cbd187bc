"""mpwire.asyncio: serve, connect, Listener, AsyncConnection and wrap, with every kind of peer."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection as stdlib
import os
import pickle
import socket
from collections.abc import AsyncIterator
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import pytest

import mpwire
import mpwire.asyncio as mpa
from mpwire.protocol.frames import encode_header

pytestmark = pytest.mark.timeout(60)

KEY = b"asyncio key"


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "tcp":
        return ("127.0.0.1", 0)
    return str(tmp_path / "s") if len(str(tmp_path)) < 90 else None


async def echo(conn: mpa.AsyncConnection) -> None:
    async for message in conn:
        await conn.send(("echo", message))


@pytest.fixture
async def server(address: Any) -> AsyncIterator[mpa.Server]:
    async with await mpa.serve(echo, address, authkey=KEY) as running:
        yield running


async def test_asyncio_client_and_server(server: mpa.Server) -> None:
    async with await mpa.connect(server.address, authkey=KEY) as conn:
        for message in ["one", b"two", list(range(1000)), {"big": b"x" * 3_000_000}]:
            await conn.send(message)
            assert await conn.recv() == ("echo", message)


def _stdlib_session(address: Any) -> Any:
    with stdlib.Client(address, authkey=KEY) as conn:
        conn.send("from the stdlib")
        return conn.recv()


def _mpwire_sync_session(address: Any) -> Any:
    with mpwire.Client(address, authkey=KEY) as conn:
        conn.send("from mpwire")
        return conn.recv()


async def test_sync_and_stdlib_clients_of_an_asyncio_server(server: mpa.Server) -> None:
    results = await asyncio.gather(
        asyncio.to_thread(_stdlib_session, server.address),
        asyncio.to_thread(_mpwire_sync_session, server.address),
        asyncio.to_thread(_stdlib_session, server.address),
    )
    assert results == [
        ("echo", "from the stdlib"),
        ("echo", "from mpwire"),
        ("echo", "from the stdlib"),
    ]


@pytest.mark.parametrize("listener_module", [stdlib, mpwire], ids=["stdlib", "mpwire"])
async def test_asyncio_client_of_a_blocking_listener(address: Any, listener_module: Any) -> None:
    with listener_module.Listener(address, authkey=KEY) as listener:

        def serve_one() -> None:
            with listener.accept() as conn:
                conn.send_bytes(conn.recv_bytes()[::-1])

        served = asyncio.create_task(asyncio.to_thread(serve_one))
        async with await mpa.connect(listener.address, authkey=KEY) as conn:
            await conn.send_bytes(b"olleh")
            assert await conn.recv_bytes() == b"hello"
        await served


async def test_large_objects_both_ways_with_a_blocking_peer(address: Any) -> None:
    import numpy as np

    value = {"array": np.arange(1 << 20, dtype=np.float64), "bytes": b"b" * (3 << 20)}
    with mpwire.Listener(address, authkey=KEY) as listener:

        def serve_one() -> None:
            with listener.accept() as conn:
                conn.send(conn.recv())

        served = asyncio.create_task(asyncio.to_thread(serve_one))
        async with await mpa.connect(listener.address, authkey=KEY) as conn:
            await conn.send(value)
            echoed = await conn.recv()
        await served
    np.testing.assert_array_equal(echoed["array"], value["array"])
    assert echoed["bytes"] == value["bytes"]


async def test_wrong_key_fails_both_sides(address: Any) -> None:
    async with mpa.Listener(address, authkey=KEY) as listener:
        client = asyncio.create_task(mpa.connect(listener.address, authkey=b"wrong"))
        with pytest.raises(multiprocessing.AuthenticationError):
            await listener.accept(timeout=10)
        with pytest.raises(multiprocessing.AuthenticationError):
            await client
        client = asyncio.create_task(mpa.connect(listener.address, authkey=KEY))
        async with await listener.accept(timeout=10) as accepted, await client as conn:
            await conn.send("still accepting")
            assert await accepted.recv() == "still accepting"


async def test_serve_goes_on_after_bad_clients(server: mpa.Server) -> None:
    # Without a key, the client takes the challenge for a message (as with the stdlib).
    refused = (multiprocessing.AuthenticationError, pickle.UnpicklingError, EOFError, OSError)
    for key in (b"wrong", None):
        with pytest.raises(refused):
            conn = await mpa.connect(server.address, authkey=key)
            await conn.send("no key")
            await conn.recv(timeout=10)
    async with await mpa.connect(server.address, authkey=KEY) as conn:
        await conn.send("good")
        assert await conn.recv() == ("echo", "good")


async def test_a_silent_client_delays_nobody_and_is_dropped(address: Any) -> None:
    async with mpa.Listener(address, authkey=KEY, handshake_timeout=0.5) as listener:
        family = socket.AF_UNIX if isinstance(listener.address, str) else socket.AF_INET
        silent = socket.socket(family)
        silent.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(silent, listener.address)
        good = asyncio.create_task(mpa.connect(listener.address, authkey=KEY))
        async with await listener.accept(timeout=5), await good:
            pass
        received = b""
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(silent, 1024):
                received += chunk  # the challenge, then EOF once dropped
        assert received.startswith(encode_header(len(received) - 4) + b"#CHALLENGE#")
        silent.close()


async def test_many_concurrent_handshakes(server: mpa.Server) -> None:
    async def session(index: int) -> Any:
        async with await mpa.connect(server.address, authkey=KEY, timeout=30) as conn:
            await conn.send(index)
            return await conn.recv()

    results = await asyncio.gather(*(session(index) for index in range(200)))
    assert results == [("echo", index) for index in range(200)]


async def test_recv_timeout_then_usable(server: mpa.Server) -> None:
    async with await mpa.connect(server.address, authkey=KEY) as conn:
        with pytest.raises(TimeoutError):
            await conn.recv(timeout=0.1)
        await conn.send("late")
        assert await conn.recv(timeout=10) == ("echo", "late")


async def test_connect_timeout_retries_until_the_listener_is_up(tmp_path: Path) -> None:
    path = str(tmp_path / "late") if len(str(tmp_path)) < 90 else None
    if path is None:
        pytest.skip("temporary path too long for a Unix socket")
    connecting = asyncio.create_task(mpa.connect(path, authkey=KEY, timeout=20))
    await asyncio.sleep(0.1)  # let it fail at least once: no socket file yet
    assert not connecting.done()
    async with (
        mpa.Listener(path, authkey=KEY) as listener,
        await listener.accept(timeout=10),
        await connecting,
    ):
        pass


async def test_connect_timeout_with_nothing_listening(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError):
        await mpa.connect(str(tmp_path / "nothing"), timeout=0.3)


async def test_client_with_a_key_facing_a_listener_without_one(address: Any) -> None:
    async with mpa.Listener(address) as listener:
        with pytest.raises(mpwire.HandshakeTimeout):
            await mpa.connect(listener.address, authkey=KEY, handshake_timeout=0.3)
        accepted = await listener.accept(timeout=5)
        with pytest.raises(EOFError):
            await accepted.recv(timeout=5)


async def test_cancelled_receives_lose_nothing(server: mpa.Server) -> None:
    count = 2000
    async with await mpa.connect(server.address, authkey=KEY) as conn:

        async def produce() -> None:
            for index in range(count):
                await conn.send(index)

        producer = asyncio.create_task(produce())
        got: list[Any] = []
        attempts = 0
        while len(got) < count:
            attempts += 1
            receive = asyncio.create_task(conn.recv())
            # Cancel some receives before they finish, at every possible point.
            await asyncio.sleep(0) if attempts % 3 else None
            if attempts % 2:
                receive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                got.append(await receive)
        await producer
        assert got == [("echo", index) for index in range(count)]
        assert attempts > count


async def test_backpressure_bounds_the_sender(address: Any) -> None:
    async with mpa.Listener(address) as listener:
        sender = await mpa.connect(listener.address)
        receiver = await listener.accept(timeout=5)
        chunk = bytes(1 << 20)
        sent = 0
        with pytest.raises(TimeoutError):
            while True:  # the receiver reads nothing
                await sender.send_bytes(chunk, timeout=0.5)
                sent += 1
                assert sent < 200, "send never waited for the reader"
        transport = sender.transport
        assert transport.get_write_buffer_size() <= 2 * len(chunk) + (1 << 20)
        for _ in range(sent + 1):  # the last one was queued before the timeout
            assert await receiver.recv_bytes(timeout=10) == chunk
        await sender.aclose()
        await receiver.aclose()


async def test_max_message_size(address: Any) -> None:
    async with mpa.Listener(address, max_message_size=100) as listener:
        client = await mpa.connect(listener.address, max_message_size=10)
        accepted = await listener.accept(timeout=5)
        await client.send_bytes(bytes(100))
        assert await accepted.recv_bytes() == bytes(100)
        await client.send_bytes(bytes(101))
        with pytest.raises(mpwire.MessageTooLong):
            await accepted.recv_bytes()
        assert accepted.closed
        await accepted.aclose()
        with pytest.raises(EOFError):
            await client.recv_bytes()
        await client.aclose()


async def test_maxlength_closes(server: mpa.Server) -> None:
    async with await mpa.connect(server.address, authkey=KEY) as conn:
        await conn.send("x" * 100)
        with pytest.raises(mpwire.MessageTooLong):
            await conn.recv_bytes(maxlength=10)
        assert conn.closed
        with pytest.raises(OSError, match="closed"):
            await conn.send("more")


async def test_recv_bytes_into_and_buffer_too_short(server: mpa.Server) -> None:
    async with mpa.Listener(None) as listener:
        client = await mpa.connect(listener.address)
        accepted = await listener.accept(timeout=5)
        await client.send_bytes(b"0123456789", 2, 5)
        buf = bytearray(8)
        assert await accepted.recv_bytes_into(buf, 1) == 5
        assert buf == b"\x0023456\x00\x00"
        await client.send_bytes(b"x" * 20)
        with pytest.raises(multiprocessing.BufferTooShort) as caught:
            await accepted.recv_bytes_into(bytearray(10))
        assert caught.value.args[0] == b"x" * 20
        await client.aclose()
        with pytest.raises(EOFError):
            await accepted.recv_bytes()
        await accepted.aclose()


def _child_writes(conn: Any) -> None:
    for index in range(100):
        conn.send(("from the child", index))
    conn.send_bytes(b"x" * 2_000_000)
    conn.close()


def _plain_mpwire_pipe(duplex: bool) -> Any:
    return mpwire.Pipe(duplex, shared_memory=False)


@pytest.mark.parametrize(
    "make_pipe", [_plain_mpwire_pipe, multiprocessing.Pipe], ids=["mpwire", "stdlib"]
)
@pytest.mark.parametrize("duplex", [True, False])
async def test_wrap_a_pipe_shared_with_a_child(make_pipe: Any, duplex: bool) -> None:
    reader, writer = make_pipe(duplex)
    child = multiprocessing.get_context("spawn").Process(target=_child_writes, args=(writer,))
    child.start()
    writer.close()
    conn = await mpa.wrap(reader)
    assert reader.closed
    for index in range(100):
        assert await conn.recv(timeout=30) == ("from the child", index)
    assert await conn.recv_bytes(timeout=30) == b"x" * 2_000_000
    with pytest.raises(EOFError):
        await conn.recv(timeout=30)
    await conn.aclose()
    await asyncio.to_thread(child.join, 30)
    assert child.exitcode == 0


async def test_wrap_refuses_to_read_an_end_that_agreed_on_shared_memory() -> None:
    reader, writer = mpwire.Pipe()
    with reader, writer:
        with pytest.raises(ValueError, match="shared_memory=False"):
            await mpa.wrap(reader)
        assert not reader.closed


async def test_wrap_takes_an_end_over_with_what_was_read_before_it_was_shared() -> None:
    a, b = mpwire.Pipe(shared_memory=False)
    with a, b:
        for i in range(3):
            a.send(i)
        assert b.recv() == 0  # 1 and 2 are read ahead with it
        # Passed on (here, to this process again): shared, 1 and 2 spilled.
        ForkingPickler.loads(ForkingPickler.dumps(b)).close()
        conn = await mpa.wrap(b)
        assert [await conn.recv(timeout=5) for _ in range(2)] == [1, 2]
        a.send(3)
        assert await conn.recv(timeout=5) == 3
        await conn.aclose()


async def test_wrap_keeps_bytes_read_ahead() -> None:
    a, b = mpwire.Pipe(shared_memory=False)
    a.send("first")
    a.send("second")
    assert b.recv() == "first"  # "second" is now in b's read-ahead
    conn = await mpa.wrap(b)
    assert await conn.recv(timeout=5) == "second"
    a.close()
    await conn.aclose()


async def test_wrap_a_one_way_writer() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    conn = await mpa.wrap(writer)
    await conn.send({"to": "a stdlib reader"})
    assert await asyncio.to_thread(reader.recv) == {"to": "a stdlib reader"}
    with pytest.raises(OSError):
        await conn.recv()
    await conn.aclose()
    reader.close()


async def test_closed_connection_refuses_calls(server: mpa.Server) -> None:
    conn = await mpa.connect(server.address, authkey=KEY)
    await conn.aclose()
    assert conn.closed
    with pytest.raises(OSError):
        await conn.send("x")
    with pytest.raises(OSError):
        await conn.recv()


async def test_serve_without_address_uses_a_fresh_unix_socket() -> None:
    async with await mpa.serve(echo) as running:
        assert os.path.exists(running.address)
        async with await mpa.connect(running.address) as conn:
            await conn.send(1)
            assert await conn.recv() == ("echo", 1)
        path = running.address
    assert not os.path.exists(path)
