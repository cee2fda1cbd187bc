"""mpwire against the stdlib's ``multiprocessing.connection`` in another process.

Each test starts ``peer.py`` (stdlib only) under one of the Pythons conftest
found (``peer_python``), with mpwire as the listener or as the client, over a
Unix socket or TCP, with or without an authkey. One peer process runs a whole
session: bytes of every interesting size both ways (through recv_bytes and
recv_bytes_into), pickled objects both ways, bursts of back-to-back messages
both ways, and a clean close. Wrong-key runs are separate, short ones.

Pythons before 3.12 authenticate the legacy way (a 20-byte challenge, an
unprefixed HMAC-MD5 answer), 3.12 and later the modern way (``{sha256}``
prefixes); the peer records the handshake, so each test checks the dialect
that was actually spoken as well as its outcome.
"""

from __future__ import annotations

import array
import ast
import asyncio
import contextlib
import importlib.util
import json
import multiprocessing
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import mpwire
import mpwire.asyncio
from mpwire.protocol.handshake import MESSAGE_LENGTH, offered_extensions

PEER_SCRIPT = Path(__file__).with_name("peer.py")
PEER_LIFETIME = 60
"""Seconds after which a peer kills itself (SIGALRM), whatever this side does."""
LINE_TIMEOUT = 30.0
"""Seconds to wait for the peer's next stdout line."""
EXIT_TIMEOUT = 30.0
"""Seconds to wait for the peer to exit once the session is over."""
GRACE_PERIOD = 5.0
"""Seconds a peer gets to exit by itself after a failed test, before it is killed."""

AUTHKEY = b"mpwire interop \x00\xff key"
WRONG_AUTHKEY = b"not the interop key"

MiB = 1 << 20
SIZES = (
    0,
    1,
    8192,  # mpwire joins header and payload up to here, and writev()s beyond
    8193,
    16383,  # the stdlib does the same around 16 KiB
    16384,
    16385,
    65532,  # header + payload = mpwire's 64 KiB read-ahead exactly
    65533,  # one byte too many: received as a large message
    MiB + 1,
    5 * MiB,
)
BURST_COUNT = 300


def _load_peer_module() -> Any:
    spec = importlib.util.spec_from_file_location("mpwire_interop_peer", PEER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peer_lib = _load_peer_module()

FAMILIES = [pytest.param("unix", id="unix"), pytest.param("tcp", id="tcp")]
AUTH_MODES = [pytest.param(AUTHKEY, id="authkey"), pytest.param(None, id="noauth")]


# -- the peer process --------------------------------------------------------


class PeerFailure(AssertionError):
    """The peer did not do what the test needed from it."""


@dataclass
class Peer:
    """peer.py running under one Python; its stdout is JSON lines."""

    python: Any
    args: list[str]
    proc: subprocess.Popen[bytes] = field(init=False)
    _unread: bytearray = field(init=False, default_factory=bytearray)
    _stderr: bytes = field(init=False, default=b"")
    _collected: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        argv = [self.python.executable, "-I", str(PEER_SCRIPT), *self.args]
        argv += ["--timeout", str(PEER_LIFETIME)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if not self._collected:
            # After a failure on this side the connection is closed by now, so
            # the peer is normally on its way out and can say why first.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=GRACE_PERIOD)
            self.proc.kill()
            with contextlib.suppress(PeerFailure):
                self._collect()
        if exc is not None:
            exc.add_note(self.report())

    def read_event(self) -> dict[str, Any]:
        """The next JSON line the peer prints (within LINE_TIMEOUT)."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        deadline = time.monotonic() + LINE_TIMEOUT
        while b"\n" not in self._unread:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerFailure(f"no line from the peer in {LINE_TIMEOUT} s")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise PeerFailure("the peer closed its stdout without a line")
                self._unread += chunk
        line, _, rest = self._unread.partition(b"\n")
        self._unread = bytearray(rest)
        return json.loads(line)

    def listening_address(self) -> Any:
        event = self.read_event()
        if event.get("event") != "listening":
            raise PeerFailure(f"expected the peer's address, got {event}")
        address = event["address"]
        return tuple(address) if isinstance(address, list) else address

    def result(self) -> dict[str, Any]:
        """Wait for the peer to exit; its result line, with ``returncode`` added."""
        self._collect()
        lines = [json.loads(line) for line in self._unread.splitlines() if line.strip()]
        results = [line for line in lines if line.get("event") == "result"]
        if len(results) != 1:
            raise PeerFailure(f"expected one result line from the peer, got {lines}")
        return {**results[0], "returncode": self.proc.returncode}

    def _collect(self) -> None:
        if self._collected:
            return
        self._collected = True
        try:
            out, err = self.proc.communicate(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=EXIT_TIMEOUT)
            self._unread += out
            self._stderr += err
            raise PeerFailure(f"the peer did not exit within {EXIT_TIMEOUT} s") from None
        self._unread += out
        self._stderr += err

    def report(self) -> str:
        return (
            f"peer {self.python.id} ({self.python.executable}) {' '.join(self.args)}\n"
            f"  exit code: {self.proc.returncode}\n"
            f"  stdout: {bytes(self._unread).decode(errors='replace')!r}\n"
            f"  stderr: {self._stderr.decode(errors='replace')}"
        )


def start_peer(python: Any, role: str, family: str, authkey: bytes | None, **options: str) -> Peer:
    args = [role, "--family", family]
    for name, value in options.items():
        args += [f"--{name}", value]
    if authkey is not None:
        args += ["--authkey", authkey.hex()]
    return Peer(python, args)


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[str]:
    """A Unix socket path in tmp_path, or in /tmp if that would be too long (107 bytes)."""
    path = tmp_path / "s"
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="mpwire-") as short:
        yield os.path.join(short, "s")


def listen_address(family: str, socket_path: str) -> Any:
    return socket_path if family == "unix" else ("127.0.0.1", 0)


def accept(listener: mpwire.Listener, peer: Peer) -> mpwire.Connection:
    """listener.accept(), which does not wait forever for a peer that died.

    If the peer exits (or outlives PEER_LIFETIME) while accept() is still
    waiting, a throwaway connection wakes accept() up; the test then fails on
    that connection, and the peer's output is in the report.
    """
    accepted = threading.Event()

    def wake_if_peer_gone() -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            peer.proc.wait(timeout=PEER_LIFETIME)
        if not accepted.is_set():
            family = socket.AF_UNIX if isinstance(listener.address, str) else socket.AF_INET
            with socket.socket(family) as sock, contextlib.suppress(OSError):
                sock.connect(listener.address)

    threading.Thread(target=wake_if_peer_gone, daemon=True).start()
    try:
        return listener.accept()
    finally:
        accepted.set()


# -- checks --------------------------------------------------------------------


def check_bytes(got: bytes | bytearray | memoryview, expected: bytes, what: str) -> None:
    """Compare payloads without pytest diffing megabytes."""
    if got == expected:
        return
    got = bytes(got)
    if len(got) != len(expected):
        pytest.fail(f"{what}: {len(got)} bytes instead of {len(expected)}")
    first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
    pytest.fail(f"{what}: {len(got)} bytes, first difference at offset {first}")


def message_shape(message: bytes) -> str:
    """A handshake message as its kind and dialect, e.g. ``challenge{sha256}+40``."""
    if message in (b"#WELCOME#", b"#FAILURE#"):
        return message.strip(b"#").decode()
    kind = "challenge" if message.startswith(b"#CHALLENGE#") else "response"
    body = message.removeprefix(b"#CHALLENGE#")
    # A raw 16-byte MD5 digest may happen to look like b"{...}...": the legacy
    # lengths decide first, as in the protocol itself.
    prefixed = re.fullmatch(rb"\{([a-z0-9_]+)\}(.*)", body, re.DOTALL)
    if prefixed and len(body) not in (16, 20):
        payload = prefixed[2]
        offered = offered_extensions(body) if kind == "challenge" else frozenset()
        if offered:
            payload = payload[:MESSAGE_LENGTH]
        offering = f" offering {','.join(sorted(offered))}" if offered else ""
        return f"{kind}{{{prefixed[1].decode()}}}+{len(payload)}{offering}"
    return f"{kind}+{len(body)}"


def transcript_shapes(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(way, message_shape(bytes.fromhex(data))) for way, data in result["transcript"]]


def mpwire_challenge(offers: bool) -> str:
    """mpwire's challenge: modern, offering the early challenge (a listener's or client's),
    and shared memory from a blocking Unix socket end (``offers``)."""
    return "challenge{sha256}+40 offering early-challenge" + (",shm" if offers else "")


def expected_handshake(
    python: Any, peer_listens: bool, offers: bool = False
) -> list[tuple[str, str]]:
    """The handshake as the peer records it, when both ends hold the same key.

    mpwire challenges the modern way, as 3.12+ does (``offers``: with its
    offer of shared memory after the random bytes, which every Python answers
    like any challenge); legacy Pythons still answer with a bare HMAC-MD5 (of
    the whole prefixed challenge), and mpwire answers their 20-byte
    challenges in kind.
    """
    if python.legacy_auth:
        peer_challenge, peer_answer, mpwire_answer = "challenge+20", "response+16", "response+16"
    else:
        peer_challenge = "challenge{sha256}+40"
        peer_answer = mpwire_answer = "response{sha256}+32"
    peer_challenges = [
        ("sent", peer_challenge),
        ("received", mpwire_answer),
        ("sent", "WELCOME"),
    ]
    peer_answers = [
        ("received", mpwire_challenge(offers)),
        ("sent", peer_answer),
        ("received", "WELCOME"),
    ]
    # A listener challenges first; a client answers first.
    if peer_listens:
        return peer_challenges + peer_answers
    return peer_answers + peer_challenges


def check_result(
    peer: Peer, outcome: str, handshake: list[tuple[str, str]], **fields: Any
) -> dict[str, Any]:
    result = peer.result()
    assert result["outcome"] == outcome, result
    assert result["returncode"] == peer_lib.EXIT_CODES[outcome], result
    assert result["python"] == peer.python.version_string
    assert transcript_shapes(result) == handshake
    for name, value in fields.items():
        assert result[name] == value, (name, result)
    return result


# -- the session -----------------------------------------------------------------


class Session:
    """Drives a peer's serve() loop from the mpwire side of ``conn``."""

    def __init__(self, conn: mpwire.Connection, python: Any) -> None:
        self.conn = conn
        self.python = python
        self.commands = 0

    def command(self, *command: Any) -> None:
        self.conn.send(command)
        self.commands += 1

    def hello(self) -> None:
        hello = self.conn.recv()
        assert hello == ("hello", list(self.python.version), "CPython")

    def bytes_echo(self, size: int, how: str) -> None:
        """Send ``size`` bytes; receive the peer's ``size`` bytes with ``how``."""
        tag = f"{how}-{size}"
        self.command("bytes", size, tag)
        outgoing = peer_lib.pattern(size, "to-peer-" + tag)
        if how == "recv_bytes":
            self.conn.send_bytes(outgoing)
        else:  # the same message, cut out of a larger buffer
            self.conn.send_bytes(bytearray(b"<<" + outgoing + b">>>"), 2, size)
        expected = peer_lib.pattern(size, "from-peer-" + tag)
        what = f"{size} bytes from the peer via {how}"
        if how == "recv_bytes":
            check_bytes(self.conn.recv_bytes(), expected, what)
        elif how == "recv_bytes_into":
            buf = bytearray(b"\xaa" * (size + 10))
            assert self.conn.recv_bytes_into(buf, 3) == size, what
            assert buf[:3] == b"\xaa" * 3 and buf[3 + size :] == b"\xaa" * 7, what
            check_bytes(memoryview(buf)[3 : 3 + size], expected, what)
        elif how == "recv_bytes_into_exact":
            buf = bytearray(size)
            assert self.conn.recv_bytes_into(buf) == size, what
            check_bytes(buf, expected, what)
        else:
            raise AssertionError(how)

    def bytes_into_array(self) -> None:
        """recv_bytes_into an array('i'): the offset counts bytes."""
        size = 16384
        self.command("bytes", size, "array")
        self.conn.send_bytes(peer_lib.pattern(size, "to-peer-array"))
        target = array.array("i", [7] * (size // 4 + 3))
        assert self.conn.recv_bytes_into(target, 8) == size
        assert target[:2].tolist() == [7, 7] and target[-1] == 7
        raw = memoryview(target).cast("B")
        check_bytes(raw[8 : 8 + size], peer_lib.pattern(size, "from-peer-array"), "into array")

    def buffer_too_short(self, size: int) -> None:
        """A message too long for the buffer: BufferTooShort holds all of it."""
        tag = f"too-short-{size}"
        self.command("bytes", size, tag)
        self.conn.send_bytes(peer_lib.pattern(size, "to-peer-" + tag))
        with pytest.raises(multiprocessing.BufferTooShort) as caught:
            self.conn.recv_bytes_into(bytearray(100))
        check_bytes(caught.value.args[0], peer_lib.pattern(size, "from-peer-" + tag), tag)

    def objects(self) -> None:
        for index, obj in enumerate(peer_lib.sample_objects()):
            self.command("object", index)
            self.conn.send(obj)
            assert self.conn.recv() == obj, f"sample object {index}"

    def burst_to_peer(self) -> None:
        self.command("burst_to_peer", BURST_COUNT, "in")
        for index in range(BURST_COUNT):
            how, item = peer_lib.burst_item(index, "in")
            if how == "object":
                self.conn.send(item)
            else:
                self.conn.send_bytes(item)
        assert self.conn.recv() == ("received", BURST_COUNT)

    def burst_from_peer(self) -> None:
        self.command("burst_from_peer", BURST_COUNT, "out")
        buf = bytearray(2048)
        for index in range(BURST_COUNT):
            how, expected = peer_lib.burst_item(index, "out")
            what = f"burst item {index}"
            if how == "object":
                assert self.conn.recv() == expected, what
            elif index % 2:
                check_bytes(self.conn.recv_bytes(), expected, what)
            else:
                size = self.conn.recv_bytes_into(buf)
                check_bytes(memoryview(buf)[:size], expected, what)

    def bye(self) -> None:
        self.command("bye")
        assert self.conn.recv() == ("bye", self.commands)
        with pytest.raises(EOFError):
            self.conn.recv_bytes()

    def run(self) -> None:
        self.hello()
        for how in ("recv_bytes", "recv_bytes_into", "recv_bytes_into_exact"):
            for size in SIZES:
                self.bytes_echo(size, how)
        self.bytes_into_array()
        self.buffer_too_short(16385)
        self.buffer_too_short(65533)
        self.objects()
        self.burst_to_peer()
        self.burst_from_peer()
        self.bye()


# -- tests -------------------------------------------------------------------------


def test_peer_imports_only_the_stdlib() -> None:
    tree = ast.parse(PEER_SCRIPT.read_text(), str(PEER_SCRIPT))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported, "no imports found"
    assert {name.partition(".")[0] for name in imported} <= sys.stdlib_module_names


@pytest.mark.parametrize("authkey", AUTH_MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_mpwire_listener_stdlib_client(
    peer_python: Any, family: str, authkey: bytes | None, socket_path: str
) -> None:
    with mpwire.Listener(listen_address(family, socket_path), authkey=authkey) as listener:
        address = json.dumps(listener.address)
        with start_peer(peer_python, "connect", family, authkey, address=address) as peer:
            with accept(listener, peer) as conn:
                session = Session(conn, peer_python)
                session.run()
            assert not conn.shared_memory  # a stdlib peer never agrees
            offers = family == "unix"
            handshake = expected_handshake(peer_python, False, offers) if authkey else []
            check_result(peer, "ok", handshake, commands=session.commands)


@pytest.mark.parametrize("authkey", AUTH_MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_stdlib_listener_mpwire_client(
    peer_python: Any, family: str, authkey: bytes | None, socket_path: str
) -> None:
    path = {"path": socket_path} if family == "unix" else {}
    with start_peer(peer_python, "listen", family, authkey, **path) as peer:
        with mpwire.Client(peer.listening_address(), authkey=authkey) as conn:
            assert not conn.shared_memory  # a stdlib peer never agrees
            session = Session(conn, peer_python)
            session.run()
        offers = family == "unix"
        handshake = expected_handshake(peer_python, True, offers) if authkey else []
        check_result(peer, "ok", handshake, commands=session.commands)


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_key_mpwire_listener(peer_python: Any, family: str, socket_path: str) -> None:
    with mpwire.Listener(listen_address(family, socket_path), authkey=AUTHKEY) as listener:
        address = json.dumps(listener.address)
        with start_peer(peer_python, "connect", family, WRONG_AUTHKEY, address=address) as peer:
            with pytest.raises(multiprocessing.AuthenticationError):
                accept(listener, peer)
            # The peer answered our challenge, wrongly, and got #FAILURE#.
            answer = "response+16" if peer_python.legacy_auth else "response{sha256}+32"
            handshake = [
                ("received", mpwire_challenge(offers=family == "unix")),
                ("sent", answer),
                ("received", "FAILURE"),
            ]
            check_result(peer, "AuthenticationError", handshake, message="digest sent was rejected")


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_key_stdlib_listener(peer_python: Any, family: str, socket_path: str) -> None:
    path = {"path": socket_path} if family == "unix" else {}
    with start_peer(peer_python, "listen", family, AUTHKEY, **path) as peer:
        with pytest.raises(multiprocessing.AuthenticationError):
            mpwire.Client(peer.listening_address(), authkey=WRONG_AUTHKEY)
        # The peer challenged us, rejected our answer and sent #FAILURE#.
        if peer_python.legacy_auth:
            challenge, answer = "challenge+20", "response+16"
        else:
            challenge, answer = "challenge{sha256}+40", "response{sha256}+32"
        handshake = [("sent", challenge), ("received", answer), ("sent", "FAILURE")]
        check_result(peer, "AuthenticationError", handshake, message="digest received was wrong")


def test_authentication_error_is_the_stdlib_class() -> None:
    assert mpwire.AuthenticationError is multiprocessing.AuthenticationError


# -- the asyncio front end ---------------------------------------------------------
#
# The same sessions, with mpwire's end an AsyncConnection on an event loop in
# another thread, driven through a blocking facade.

CALL_TIMEOUT = 60.0


class Blocking:
    """Calls an AsyncConnection's coroutines from this thread, on ``loop``."""

    def __init__(self, conn: mpwire.asyncio.AsyncConnection, loop: asyncio.AbstractEventLoop):
        self._conn = conn
        self._loop = loop

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT)

    def send(self, obj: Any) -> None:
        self._call(self._conn.send(obj))

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        self._call(self._conn.send_bytes(buf, offset, size))

    def recv(self) -> Any:
        return self._call(self._conn.recv())

    def recv_bytes(self) -> bytes:
        return self._call(self._conn.recv_bytes())  # type: ignore[no-any-return]

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        return self._call(self._conn.recv_bytes_into(buf, offset))  # type: ignore[no-any-return]

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._call(self._conn.aclose())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def run(loop: asyncio.AbstractEventLoop, coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(CALL_TIMEOUT)


def asyncio_listener(
    loop: asyncio.AbstractEventLoop, address: Any, authkey: bytes | None
) -> mpwire.asyncio.Listener:
    """An mpwire.asyncio.Listener made on ``loop`` (its queue belongs to that loop)."""

    async def listen() -> mpwire.asyncio.Listener:
        return mpwire.asyncio.Listener(address, authkey=authkey)

    return run(loop, listen())  # type: ignore[no-any-return]


@pytest.mark.parametrize("authkey", AUTH_MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_asyncio_listener_stdlib_client(
    peer_python: Any,
    family: str,
    authkey: bytes | None,
    socket_path: str,
    loop: asyncio.AbstractEventLoop,
) -> None:
    listener = asyncio_listener(loop, listen_address(family, socket_path), authkey)
    try:
        address = json.dumps(listener.address)
        with start_peer(peer_python, "connect", family, authkey, address=address) as peer:
            with Blocking(run(loop, listener.accept(timeout=LINE_TIMEOUT)), loop) as conn:
                session = Session(conn, peer_python)  # type: ignore[arg-type]
                session.run()
            handshake = expected_handshake(peer_python, peer_listens=False) if authkey else []
            check_result(peer, "ok", handshake, commands=session.commands)
    finally:
        loop.call_soon_threadsafe(listener.close)


@pytest.mark.parametrize("authkey", AUTH_MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_stdlib_listener_asyncio_client(
    peer_python: Any,
    family: str,
    authkey: bytes | None,
    socket_path: str,
    loop: asyncio.AbstractEventLoop,
) -> None:
    path = {"path": socket_path} if family == "unix" else {}
    with start_peer(peer_python, "listen", family, authkey, **path) as peer:
        connecting = mpwire.asyncio.connect(peer.listening_address(), authkey=authkey)
        with Blocking(run(loop, connecting), loop) as conn:
            session = Session(conn, peer_python)  # type: ignore[arg-type]
            session.run()
        handshake = expected_handshake(peer_python, peer_listens=True) if authkey else []
        check_result(peer, "ok", handshake, commands=session.commands)


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_key_asyncio_listener(
    peer_python: Any, family: str, socket_path: str, loop: asyncio.AbstractEventLoop
) -> None:
    listener = asyncio_listener(loop, listen_address(family, socket_path), AUTHKEY)
    try:
        address = json.dumps(listener.address)
        with start_peer(peer_python, "connect", family, WRONG_AUTHKEY, address=address) as peer:
            with pytest.raises(multiprocessing.AuthenticationError):
                run(loop, listener.accept(timeout=LINE_TIMEOUT))
            result = peer.result()
            assert result["outcome"] == "AuthenticationError", result
    finally:
        loop.call_soon_threadsafe(listener.close)


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_key_stdlib_listener_asyncio_client(
    peer_python: Any, family: str, socket_path: str, loop: asyncio.AbstractEventLoop
) -> None:
    path = {"path": socket_path} if family == "unix" else {}
    with start_peer(peer_python, "listen", family, AUTHKEY, **path) as peer:
        with pytest.raises(multiprocessing.AuthenticationError):
            run(loop, mpwire.asyncio.connect(peer.listening_address(), authkey=WRONG_AUTHKEY))
        result = peer.result()
        assert result["outcome"] == "AuthenticationError", result
