"""Shared fixtures: listener addresses of every kind, connected pairs, background threads.

Every socket test that takes ``address`` or ``conn_pair`` runs once per address
kind: a Unix socket path (as ``str`` and as ``pathlib.Path``), a Linux abstract
socket, TCP over IPv4 and TCP over IPv6 (skipped, with the reason, only when
``::1`` cannot be bound here). ``conn_pair`` adds a ``Pipe()`` socketpair.
"""

from __future__ import annotations

import functools
import multiprocessing
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mpwire

ADDRESS_KINDS = ("unix", "unix-pathlib", "abstract", "tcp4", "tcp6")
PAIR_KINDS = ("pipe", *ADDRESS_KINDS)

# sun_path holds 108 bytes; stay well below it.
_MAX_SOCKET_DIR = 80


@functools.cache
def ipv6_unavailable() -> str | None:
    """Why a TCP socket cannot be bound to ``::1`` here, or None if it can."""
    if not socket.has_ipv6:
        return "Python was built without IPv6 support"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind ('::1', 0): {exc}"
    return None


def make_address(kind: str, directory: Path) -> Any:
    """A fresh address of ``kind`` that a Listener can bind."""
    if kind == "unix":
        return str(directory / f"l-{uuid.uuid4().hex[:8]}.sock")
    if kind == "unix-pathlib":
        return directory / f"l-{uuid.uuid4().hex[:8]}.sock"
    if kind == "abstract":
        return f"\0mpwire-test-{uuid.uuid4().hex}"
    if kind == "tcp4":
        return ("127.0.0.1", 0)
    if kind == "tcp6":
        reason = ipv6_unavailable()
        if reason is not None:
            pytest.skip(f"IPv6 loopback unavailable: {reason}")
        return ("::1", 0)
    raise AssertionError(f"unknown address kind {kind!r}")


@pytest.fixture
def socket_dir(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, or a shorter private folder if Unix socket paths would get too long."""
    if len(str(tmp_path)) <= _MAX_SOCKET_DIR:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="mpw-"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(params=ADDRESS_KINDS)
def address_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def address(address_kind: str, socket_dir: Path) -> Any:
    """A fresh, unbound address of each kind in turn."""
    return make_address(address_kind, socket_dir)


def connect_pair(address: Any) -> tuple[mpwire.Connection, mpwire.Connection]:
    """(accepted, client) Connections over a Listener at ``address`` (no authkey)."""
    with mpwire.Listener(address) as listener:
        client = mpwire.Client(listener.address)
        try:
            server = listener.accept()
        except BaseException:
            client.close()
            raise
    return server, client


@pytest.fixture(params=PAIR_KINDS)
def conn_pair(
    request: pytest.FixtureRequest, socket_dir: Path
) -> Iterator[tuple[mpwire.Connection, mpwire.Connection]]:
    """Two connected duplex mpwire Connections: a Pipe(), or a Listener/Client pair."""
    if request.param == "pipe":
        a, b = mpwire.Pipe()
    else:
        a, b = connect_pair(make_address(request.param, socket_dir))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class Background:
    """A call running in a daemon thread; result() re-raises what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.done = threading.Event()
        self._fn = fn
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=args, kwargs=kwargs, daemon=True, name=f"bg-{fn.__name__}"
        )
        self._thread.start()

    def _run(self, *args: Any, **kwargs: Any) -> None:
        try:
            self._result = self._fn(*args, **kwargs)
        except BaseException as exc:
            self._error = exc
        finally:
            self.done.set()

    def outcome(self, timeout: float = 10.0) -> tuple[Any, BaseException | None]:
        """(result, exception) once the call has finished; fails if it takes over ``timeout``."""
        if not self.done.wait(timeout):
            raise AssertionError(f"{self._fn.__name__} still running after {timeout} s")
        self._thread.join(timeout)
        return self._result, self._error

    def result(self, timeout: float = 10.0) -> Any:
        """The call's return value (its exception is re-raised here)."""
        result, error = self.outcome(timeout)
        if error is not None:
            raise error
        return result

    def error(self, timeout: float = 10.0) -> BaseException | None:
        """The exception the call raised, or None."""
        return self.outcome(timeout)[1]


@pytest.fixture
def background() -> Callable[..., Background]:
    """Start ``fn(*args, **kwargs)`` in a daemon thread: ``background(fn, *args)``."""
    return Background


@pytest.fixture(
    params=[
        pytest.param(
            method,
            marks=pytest.mark.skipif(
                method not in multiprocessing.get_all_start_methods(),
                reason=f"start method {method!r} unavailable",
            ),
        )
        for method in ("fork", "spawn", "forkserver")
    ]
)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each multiprocessing start method this platform has (the others skipped, saying why)."""
    return str(request.param)
