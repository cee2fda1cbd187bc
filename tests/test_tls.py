"""TLS: Listener(ssl_context=), Client(ssl_context=, server_hostname=), and the asyncio API's ssl=.

Certificates come from trustme, made at test time: no key is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import multiprocessing
import pickle
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the certificates")

import mpwire  # noqa: E402
import mpwire.asyncio as mpa  # noqa: E402
from mpwire.sync.addresses import set_nodelay  # noqa: E402

pytestmark = pytest.mark.timeout(60)

KEY = b"tls key"
SECRET = b"the plaintext that must not show on the wire"


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


def server_context(ca: Any, *hosts: str, **issue: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(hosts or ("localhost", "127.0.0.1")), **issue).configure_cert(context)
    return context


def client_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def mutual(ca: Any) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = server_context(ca)
    server.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server)
    client = client_context(ca)
    ca.issue_cert("client@example.org").configure_cert(client)
    return server, client


def session(address: Any, **options: Any) -> Any:
    with mpwire.Client(address, **options) as conn:
        conn.send_bytes(SECRET)
        conn.send({"big": b"x" * 2_000_000})
        return conn.recv()


def serve_one(listener: mpwire.Listener) -> None:
    with listener.accept(timeout=10) as conn:
        assert conn.recv_bytes(timeout=10) == SECRET
        assert conn.recv(timeout=10) == {"big": b"x" * 2_000_000}
        conn.send("served over TLS")


@pytest.mark.parametrize("authkey", [None, KEY], ids=["no-key", "key"])
def test_server_authenticated_round_trip(
    ca: Any, authkey: bytes | None, background: Callable[..., Any]
) -> None:
    with mpwire.Listener(("127.0.0.1", 0), authkey=authkey, ssl_context=server_context(ca)) as lst:
        client = background(session, lst.address, authkey=authkey, ssl_context=client_context(ca))
        serve_one(lst)
        assert client.result() == "served over TLS"


def test_tls_over_a_unix_socket(ca: Any, tmp_path: Path, background: Callable[..., Any]) -> None:
    path = str(tmp_path / "tls.sock") if len(str(tmp_path)) < 90 else None
    with mpwire.Listener(path, authkey=KEY, ssl_context=server_context(ca)) as listener:
        options = {
            "authkey": KEY,
            "ssl_context": client_context(ca),
            "server_hostname": "localhost",
        }
        client = background(session, listener.address, **options)
        serve_one(listener)
        assert client.result() == "served over TLS"


def test_tls_over_a_unix_socket_needs_a_server_name(ca: Any) -> None:
    with (
        mpwire.Listener(None, ssl_context=server_context(ca)) as listener,
        pytest.raises(ValueError, match="server_hostname"),
    ):
        mpwire.Client(listener.address, ssl_context=client_context(ca))


def test_mutual_tls(ca: Any, background: Callable[..., Any]) -> None:
    server, client = mutual(ca)
    with mpwire.Listener(("127.0.0.1", 0), authkey=KEY, ssl_context=server) as listener:
        result = background(session, listener.address, authkey=KEY, ssl_context=client)
        serve_one(listener)
        assert result.result() == "served over TLS"


def _refused(
    listener: mpwire.Listener, background: Callable[..., Any], **client_options: Any
) -> tuple[BaseException | None, BaseException | None]:
    """(what the client raised, what accept() raised) for a client that TLS must refuse."""
    client = background(session, listener.address, **client_options)
    try:
        with listener.accept(timeout=5) as conn:
            conn.recv_bytes(timeout=5)
        accept_error: BaseException | None = None
    except (OSError, EOFError) as exc:
        accept_error = exc
    return client.error(), accept_error


def test_a_client_without_a_certificate_is_refused(ca: Any, background: Callable[..., Any]) -> None:
    server, _ = mutual(ca)
    with mpwire.Listener(("127.0.0.1", 0), ssl_context=server) as listener:
        client_error, accept_error = _refused(listener, background, ssl_context=client_context(ca))
    assert isinstance(accept_error, mpwire.TLSError), accept_error
    assert "certificate" in str(accept_error)
    assert isinstance(client_error, OSError), client_error


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("wrong-ca", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("wrong-host", "address mismatch, certificate is not valid for '127.0.0.1'"),
    ],
)
def test_bad_server_certificates_are_refused_with_the_reason(
    ca: Any, problem: str, expected: str, background: Callable[..., Any]
) -> None:
    if problem == "wrong-ca":
        context = server_context(trustme.CA())
    elif problem == "expired":
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        context = server_context(ca, not_before=past, not_after=past + datetime.timedelta(1))
    else:
        context = server_context(ca, "elsewhere.example.org")
    with mpwire.Listener(("127.0.0.1", 0), ssl_context=context) as listener:
        client_error, _ = _refused(listener, background, ssl_context=client_context(ca))
    assert isinstance(client_error, mpwire.TLSError), client_error
    assert expected in str(client_error)
    assert "certificate verify failed" in str(client_error)


def test_tls_with_a_wrong_authkey_still_fails_authentication(
    ca: Any, background: Callable[..., Any]
) -> None:
    with mpwire.Listener(("127.0.0.1", 0), authkey=KEY, ssl_context=server_context(ca)) as lst:
        client = background(
            mpwire.Client, lst.address, authkey=b"wrong", ssl_context=client_context(ca)
        )
        with pytest.raises(multiprocessing.AuthenticationError):
            lst.accept(timeout=10)
        assert isinstance(client.error(), multiprocessing.AuthenticationError)


class Relay:
    """A TCP proxy between a client and a listener that keeps every byte it relays."""

    def __init__(self, target: Any) -> None:
        self.captured = bytearray()
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = self._server.getsockname()
        self._threads: list[threading.Thread] = []
        self._start(self._serve)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        client, _ = self._server.accept()
        upstream = socket.create_connection(self._target)
        self._start(self._pump, client, upstream)
        self._start(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with source, contextlib.suppress(OSError):  # either side may hang up first
            while data := source.recv(65536):
                self.captured += data
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def relay_to() -> Iterator[Callable[[Any], Relay]]:
    relays: list[Relay] = []

    def start(target: Any) -> Relay:
        relays.append(Relay(target))
        return relays[-1]

    yield start
    for relay in relays:
        relay.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_relaying_proxy_sees_no_plaintext(
    ca: Any, tls: bool, relay_to: Callable[[Any], Relay], background: Callable[..., Any]
) -> None:
    context = server_context(ca) if tls else None
    with mpwire.Listener(("127.0.0.1", 0), authkey=KEY, ssl_context=context) as listener:
        relay = relay_to(listener.address)
        options: dict[str, Any] = {"authkey": KEY}
        if tls:
            options |= {"ssl_context": client_context(ca), "server_hostname": "127.0.0.1"}
        client = background(session, relay.address, **options)
        serve_one(listener)
        assert client.result() == "served over TLS"
    assert len(relay.captured) > 2_000_000
    # The control run shows the check can fail: without TLS the secret is on the wire.
    assert (SECRET in relay.captured) is not tls
    assert (b"#CHALLENGE#" in relay.captured) is not tls


def test_poll_and_wait_see_data_buffered_inside_tls(
    ca: Any, background: Callable[..., Any]
) -> None:
    with mpwire.Listener(("127.0.0.1", 0), ssl_context=server_context(ca)) as listener:
        client = background(mpwire.Client, listener.address, ssl_context=client_context(ca))
        with listener.accept(timeout=10) as server, client.result() as conn:
            set_nodelay(conn.fileno(), True)  # every message on the wire at once
            for index in range(50):
                conn.send(index)
            conn.send("last")
            received = [server.recv(timeout=5)]
            hidden = 0  # times only the TLS layer held the next message
            while received[-1] != "last":
                fd_ready = bool(select.select([server.fileno()], [], [], 0)[0])
                hidden += not fd_ready
                assert server.poll()
                assert mpwire.wait([server], timeout=0) == [server]
                received.append(server.recv(timeout=5))
            assert received == [*range(50), "last"]
            assert not server.poll()
            assert hidden, "the test never saw data held inside TLS"


def test_a_tls_connection_cannot_go_to_another_process(
    ca: Any, background: Callable[..., Any]
) -> None:
    with mpwire.Listener(("127.0.0.1", 0), ssl_context=server_context(ca)) as listener:
        client = background(mpwire.Client, listener.address, ssl_context=client_context(ca))
        with listener.accept(timeout=10) as server, client.result():
            with pytest.raises(TypeError, match="TLS"):
                multiprocessing.reduction.ForkingPickler.dumps(server)
            with pytest.raises(TypeError):
                pickle.dumps(server)


def test_exposed_tls_listener_without_authkey_does_not_warn(ca: Any) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mpwire.Listener(("0.0.0.0", 0), ssl_context=server_context(ca)).close()


# -- asyncio ---------------------------------------------------------------------


async def test_asyncio_client_of_a_tls_listener(ca: Any) -> None:
    with mpwire.Listener(("127.0.0.1", 0), authkey=KEY, ssl_context=server_context(ca)) as lst:
        served = asyncio.create_task(asyncio.to_thread(serve_one, lst))
        conn = await mpa.connect(lst.address, authkey=KEY, ssl=client_context(ca), timeout=10)
        async with conn:
            await conn.send_bytes(SECRET)
            await conn.send({"big": b"x" * 2_000_000})
            assert await conn.recv(timeout=10) == "served over TLS"
        await served


async def test_asyncio_tls_server_with_a_sync_client(ca: Any) -> None:
    server, client = mutual(ca)

    async def handler(conn: mpa.AsyncConnection) -> None:
        assert await conn.recv_bytes() == SECRET
        assert await conn.recv() == {"big": b"x" * 2_000_000}
        await conn.send("served over TLS")

    async with await mpa.serve(handler, ("127.0.0.1", 0), authkey=KEY, ssl=server) as running:
        result = await asyncio.to_thread(session, running.address, authkey=KEY, ssl_context=client)
        assert result == "served over TLS"


async def test_asyncio_client_refuses_a_wrong_host(ca: Any) -> None:
    context = server_context(ca, "elsewhere.example.org")
    async with mpa.Listener(("127.0.0.1", 0), ssl=context) as listener:
        with pytest.raises(mpwire.TLSError, match="mismatch, certificate is not valid"):
            await mpa.connect(listener.address, ssl=client_context(ca), timeout=10)
