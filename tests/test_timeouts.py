"""Timeouts on connecting, accepting and the handshake."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mpwire
from mpwire.sync import listener as listener_module

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
