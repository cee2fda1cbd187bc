"""Timeouts on connecting, accepting and the handshake."""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mpwire
from mpwire.protocol.frames import encode_short_header
from mpwire.protocol.handshake import WELCOME, FramedHandshake, Role
from mpwire.sync import listener as listener_module
from mpwire.sync.addresses import listening_socket

pytestmark = pytest.mark.timeout(60)

KEY = b"timeouts key"


def _session(address: Any, authkey: bytes | None = KEY, **options: Any) -> Any:
    with mpwire.Client(address, authkey=authkey, **options) as conn:
        conn.send("ping")
        return conn.recv(timeout=10)


def _serve_one(listener: mpwire.Listener) -> None:
    with listener.accept(timeout=10) as conn:
        conn.send(conn.recv(timeout=10) + "/pong")


@pytest.mark.parametrize("authkey", [None, KEY], ids=["no-key", "key"])
def test_accept_timeout(address: Any, authkey: bytes | None) -> None:
    with mpwire.Listener(address, authkey=authkey) as listener:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.2)
        assert 0.15 < time.monotonic() - started < 5
        client = threading.Thread(target=_session, args=(listener.address, authkey))
        client.start()
        _serve_one(listener)
        client.join(10)


def test_client_timeout_waits_for_a_listener_to_come_up(
    socket_dir: Path, background: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    address = str(socket_dir / "late.sock")
    refused = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # Client sleeps only between failed attempts
        refused.set()
        real_sleep(seconds)

    monkeypatch.setattr(listener_module.time, "sleep", sleep)
    client = background(_session, address, KEY, timeout=20)
    assert refused.wait(10)
    with mpwire.Listener(address, authkey=KEY) as listener:
        _serve_one(listener)
    assert client.result() == "ping/pong"


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_client_timeout_with_no_listener_ever(socket_dir: Path, kind: str) -> None:
    if kind == "unix":
        address: Any = str(socket_dir / "never.sock")
    else:
        with mpwire.Listener(("127.0.0.1", 0)) as unused:
            address = unused.address  # a port nobody listens on any more
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no listener"):
        mpwire.Client(address, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 5


def test_client_without_timeout_fails_at_once_like_the_stdlib(socket_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mpwire.Client(str(socket_dir / "missing.sock"))


def test_client_with_a_key_facing_a_listener_without_one(address: Any) -> None:
    with mpwire.Listener(address) as listener:
        started = time.monotonic()
        with pytest.raises(mpwire.HandshakeTimeout, match="no authkey") as caught:
            mpwire.Client(listener.address, authkey=KEY, handshake_timeout=0.3)
        assert 0.25 < time.monotonic() - started < 5
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, multiprocessing.AuthenticationError)
        with listener.accept(timeout=5) as server, pytest.raises(EOFError):
            server.recv_bytes(timeout=5)  # the client gave up and hung up


def test_client_timeout_bounds_the_handshake_too(address: Any) -> None:
    with mpwire.Listener(address) as listener:
        started = time.monotonic()
        with pytest.raises(mpwire.HandshakeTimeout):
            mpwire.Client(listener.address, authkey=KEY, timeout=0.3, handshake_timeout=None)
        assert time.monotonic() - started < 5


def test_a_listener_with_a_key_drops_a_client_without_one(address: Any) -> None:
    with mpwire.Listener(address, authkey=KEY, handshake_timeout=0.3) as listener:
        conn = mpwire.Client(listener.address)
        with conn:
            with pytest.raises(TimeoutError):
                listener.accept(timeout=1)
            assert conn.recv_bytes(timeout=5).startswith(b"#CHALLENGE#")
            with pytest.raises(EOFError):
                conn.recv_bytes(timeout=5)


def test_time_outside_accept_does_not_count_against_a_handshake(
    address: Any, background: Callable[..., Any]
) -> None:
    with mpwire.Listener(address, backlog=4, authkey=KEY, handshake_timeout=0.3) as listener:
        first = background(_session, listener.address)
        second = background(_session, listener.address)
        _serve_one(listener)  # may start the other client's handshake too
        time.sleep(0.5)  # longer than handshake_timeout, spent outside accept()
        _serve_one(listener)
        assert first.result() == second.result() == "ping/pong"


def _raw_listener(address: Any) -> tuple[Any, Any]:
    """A bare listening socket (no mpwire Listener behind it), and its address."""
    sock, bound = listening_socket(address, None, 1, KEY)
    sock.setblocking(True)
    sock.settimeout(10)
    return sock, bound


def test_a_listener_trickling_its_challenge_cannot_stretch_the_clients_handshake(
    address: Any, background: Callable[..., Any]
) -> None:
    """Each byte arrives within the read's timeout; the deadline still holds for the whole."""
    listening, bound = _raw_listener(address)
    challenge = FramedHandshake(KEY, Role.LISTENER).data_to_send()

    def trickle() -> None:
        conn, _ = listening.accept()
        with conn, contextlib.suppress(OSError):  # the client hung up
            for byte in challenge:  # about 5 s for the whole challenge
                conn.send(bytes([byte]))
                time.sleep(0.05)

    with listening:
        peer = background(trickle)
        started = time.monotonic()
        with pytest.raises(mpwire.HandshakeTimeout):
            mpwire.Client(bound, authkey=KEY, handshake_timeout=0.5)
        assert time.monotonic() - started < 2
        peer.result()


def test_a_client_challenges_behind_its_answer_on_the_wire(
    address: Any, background: Callable[..., Any]
) -> None:
    """An mpwire listener's offer gets the client's answer and challenge before any welcome."""
    listening, bound = _raw_listener(address)
    with listening:
        client = background(mpwire.Client, bound, authkey=KEY)
        conn, _ = listening.accept()
        with conn:
            conn.settimeout(10)
            handshake = FramedHandshake(KEY, Role.LISTENER)
            conn.sendall(handshake.data_to_send())
            queued: list[bytes] = []
            while len(queued) < 2:  # nothing sent meanwhile: a late challenge would time out
                assert handshake.fill(conn.recv_into)
                queued += handshake.messages_to_send()
            assert queued[0] == WELCOME and queued[1].startswith(b"{sha256}")
            conn.sendall(b"".join(encode_short_header(len(m)) + m for m in queued))
            while not handshake.done:
                assert handshake.fill(conn.recv_into)
            assert handshake.error is None
            with client.result() as connected:
                connected.send("after")
                data = handshake.leftover()
                while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                    data += conn.recv(100)
                assert pickle.loads(data[4:]) == "after"
