"""Attacks on a Listener and its Connections by raw sockets sending hand-built frames.

Each attack runs against the module from ``attack_victim`` (mpwire by default;
``--victim=stdlib`` for ``multiprocessing.connection``). Victim calls run in
threads and every outcome is awaited with a bound, so a victim that hangs,
allocates wildly or loses good clients fails its test instead of hanging
pytest. Nothing sleeps to synchronise: waits are events, socket timeouts and
the victims' own timeouts (the trickling client is paced by ``Event.wait``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import pytest

import mpwire
from mpwire import AuthenticationError, HandshakeTimeout, MessageTooLong
from mpwire.protocol.frames import GROWTH_STEP, READ_AHEAD

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

KEY = b"the attacked key"
MiB = 1 << 20
CHALLENGE = b"#CHALLENGE#"
FAILURE = b"#FAILURE#"

HANG = 2.0
"""Seconds past its expected end after which a victim call counts as hung."""

STALL = 1.0
"""The victim's receive timeout while an attacker stalls mid-frame (mpwire only)."""

FORGED = {
    "2**31-1": struct.pack("!i", 2**31 - 1),
    "2**62": struct.pack("!iQ", -1, 2**62),
}
"""Headers announcing payloads the attacker never sends."""

FORGED_SIZE = {"2**31-1": 2**31 - 1, "2**62": 2**62}

RESPONSE = b"{sha256}" + bytes(32)
"""A valid-looking (wrong) answer to a challenge."""


def frame(payload: bytes) -> bytes:
    """A short-form frame: 4-byte signed big-endian length, then the payload."""
    return struct.pack("!i", len(payload)) + payload


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"peer closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def read_frame(sock: socket.socket) -> bytes:
    """One frame's payload from a raw socket (within the socket's timeout)."""
    (size,) = struct.unpack("!i", recv_exactly(sock, 4))
    return recv_exactly(sock, size)


def drain_until_closed(sock: socket.socket, within: float = 5.0) -> bytes:
    """Everything the victim still sends before hanging up; fails if it keeps the socket open."""
    sock.settimeout(within)
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # closed with our bytes unread: a reset instead of a FIN
    except TimeoutError:
        pytest.fail(f"the victim kept the attacker's socket open for {within} s")
    return bytes(data)


def raw_connect(address: Any, timeout: float = 5.0) -> socket.socket:
    """A plain socket connected to a Listener's address (Unix path or TCP)."""
    if isinstance(address, tuple):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        target: Any = address[:2]
    else:
        family, target = socket.AF_UNIX, address
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def mpwire_only(victim: ModuleType, **kwargs: Any) -> dict[str, Any]:
    """``kwargs`` for mpwire; none for the stdlib, which lacks them.

    The stdlib's call may then block: the test's bounded wait reports a hang.
    """
    return kwargs if victim is mpwire.connection else {}


def finish(call: Any, within: float, what: str) -> BaseException | None:
    """What a victim call raised (None if it returned); a failure if it runs past ``within``."""
    if not call.done.wait(within):
        pytest.fail(f"hang: {what} still blocked after {within:.1f} s")
    error: BaseException | None = call.error(0)
    return error


def mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


@contextlib.contextmanager
def traced_peak() -> Iterator[list[int]]:
    """Trace allocations (all threads); the peak in bytes lands in the yielded list."""
    tracemalloc.start()
    out: list[int] = []
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def good_round_trip(address: Any, timeout: float = 2.0) -> None:
    """A well-behaved mpwire client: authenticate, send, get the echo back."""
    with mpwire.Client(address, authkey=KEY, timeout=timeout) as client:
        client.send_bytes(b"ping", timeout=timeout)
        if (echo := client.recv_bytes(timeout=timeout)) != b"ping":
            raise AssertionError(f"echo was {echo!r}")


# -- the harness ----------------------------------------------------------


class AttackServer:
    """The victim's Listener accepting in a thread; every accepted Connection echoes.

    accept() errors are queued without their tracebacks (which would keep the
    failed client's socket alive), and the loop goes on accepting.
    """

    def __init__(self, victim: ModuleType, address: Any, authkey: bytes | None) -> None:
        self.listener = victim.Listener(address, backlog=64, authkey=authkey)
        self.address = self.listener.address
        self.errors: queue.Queue[BaseException] = queue.Queue()
        self._authkey = authkey
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="victim")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = self.listener.accept()
            except Exception as exc:
                exc.__traceback__ = None
                if not self._stopping.is_set():
                    self.errors.put(exc)
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: Any) -> None:
        with conn, contextlib.suppress(EOFError, OSError):
            while True:
                conn.send_bytes(conn.recv_bytes())

    def next_error(self, within: float = 5.0) -> BaseException:
        """The next exception accept() raised, waiting up to ``within`` s for one."""
        try:
            return self.errors.get(timeout=within)
        except queue.Empty:
            pytest.fail(f"accept() raised nothing within {within} s")

    def take_errors(self, count: int, within: float) -> list[BaseException]:
        """Up to ``count`` accept() errors, waiting at most ``within`` s in all."""
        deadline = time.monotonic() + within
        errors: list[BaseException] = []
        with contextlib.suppress(queue.Empty):
            while len(errors) < count:
                errors.append(self.errors.get(timeout=max(0.0, deadline - time.monotonic())))
        with contextlib.suppress(queue.Empty):
            while True:
                errors.append(self.errors.get_nowait())
        return errors

    def stop(self) -> None:
        """End the accept loop (a good client wakes a blocked accept()), then close."""
        self._stopping.set()
        if self._thread.is_alive():
            threading.Thread(target=self._wake, daemon=True).start()
            self._thread.join(5)
        self.listener.close()

    def _wake(self) -> None:
        with contextlib.suppress(Exception):
            mpwire.Client(self.address, authkey=self._authkey, timeout=2).close()


class Trickle:
    """A peer sending ``data`` one byte per ``interval`` s (a client reads its challenge first)."""

    def __init__(
        self,
        sock: socket.socket,
        data: bytes,
        interval: float,
        stop: threading.Event,
        read_challenge: bool,
    ) -> None:
        self.challenged = threading.Event()
        self.sent = 0
        self._read_challenge = read_challenge
        self._sock = sock
        self._data = data
        self._interval = interval
        self._stop = stop
        self.thread = threading.Thread(target=self._run, daemon=True, name="trickle")
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            if self._read_challenge and read_frame(self._sock).startswith(CHALLENGE):
                self.challenged.set()
        for byte in self._data:
            if self._stop.wait(self._interval):
                return
            try:
                self._sock.send(bytes([byte]))
            except OSError:
                return
            self.sent += 1


class Lab:
    """What one attack opens, torn down so that no victim thread stays blocked.

    The stdlib's calls cannot time out, so order matters: tricklers stop,
    attacker sockets and owned victim connections are shut down (a blocked
    read then sees end of file), servers stop, victim threads are waited for,
    and only then are victim fds closed (closing an fd another thread is
    blocked on would not wake it, and its number could be reused).
    """

    def __init__(self, background: Callable[..., Any]) -> None:
        self._background = background
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._owned: list[Any] = []
        self._calls: list[Any] = []
        self._trickles: list[Trickle] = []
        self._servers: list[AttackServer] = []

    def raw(self, address: Any, timeout: float = 5.0) -> socket.socket:
        """An attacker's plain socket, connected to ``address``."""
        return self.adopt(raw_connect(address, timeout))

    def adopt(self, sock: socket.socket) -> socket.socket:
        """Shut down and close an attacker's socket at teardown."""
        self._sockets.append(sock)
        return sock

    def own(self, obj: T) -> T:
        """Close a victim Connection or Listener at teardown."""
        self._owned.append(obj)
        return obj

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a victim call in a thread (a conftest ``Background``)."""
        call = self._background(fn, *args, **kwargs)
        self._calls.append(call)
        return call

    def server(self, victim: ModuleType, address: Any, authkey: bytes | None = KEY) -> AttackServer:
        server = AttackServer(victim, address, authkey)
        self._servers.append(server)
        return server

    def trickle(
        self, sock: socket.socket, data: bytes, interval: float = 0.1, read_challenge: bool = True
    ) -> Trickle:
        trickle = Trickle(sock, data, interval, self._stop, read_challenge)
        self._trickles.append(trickle)
        return trickle

    def close(self) -> None:
        self._stop.set()
        for trickle in self._trickles:
            trickle.thread.join(5)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for obj in self._owned:
            _shutdown(obj)
        for server in self._servers:
            server.stop()
        for call in self._calls:
            call.done.wait(5)
        for obj in reversed(self._owned):
            with contextlib.suppress(Exception):
                obj.close()


def _shutdown(obj: Any) -> None:
    """Shut down the socket under a Connection, waking any thread blocked on it."""
    try:
        fd = obj.fileno()
    except (AttributeError, OSError, ValueError):
        return
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def attack_lab(background: Callable[..., Any]) -> Iterator[Lab]:
    lab = Lab(background)
    try:
        yield lab
    finally:
        lab.close()


def accepted_pair(lab: Lab, victim: ModuleType, address: Any, **kwargs: Any) -> Any:
    """(victim Connection, attacker socket) over a Listener without authkey."""
    listener = lab.own(victim.Listener(address, **kwargs))
    attacker = lab.raw(listener.address)
    return lab.own(listener.accept()), attacker


# -- 1. forged headers ----------------------------------------------------

SENT = 5 * MiB
"""What the stalling attacker sends of its forged payload."""


def _send_then_stall(sock: socket.socket, header: bytes, chunk: bytes) -> None:
    """The forged header and SENT bytes of its payload (one reused chunk: nothing allocated)."""
    sock.sendall(header)
    for _ in range(SENT // len(chunk)):
        sock.sendall(chunk)


def _receive(method: str, conn: Any, target: bytearray, **kwargs: Any) -> Any:
    if method == "recv_bytes_into":
        return conn.recv_bytes_into(target, **kwargs)
    return getattr(conn, method)(**kwargs)


@pytest.mark.parametrize("method", ["recv_bytes", "recv_bytes_into"])
@pytest.mark.parametrize("header", sorted(FORGED))
def test_forged_header_then_stall_times_out_with_bounded_memory(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab, header: str, method: str
) -> None:
    """A header announcing 2 GiB / 4 EiB, 5 MiB of it, then silence.

    The receive must end with TimeoutError, having set aside memory in
    proportion to what arrived, not to what the header claims.
    """
    conn, attacker = accepted_pair(attack_lab, attack_victim, attack_address)
    chunk, target = bytes(64 * 1024), bytearray(MiB)
    with traced_peak() as peak:
        receiver = attack_lab.run(
            _receive, method, conn, target, **mpwire_only(attack_victim, timeout=STALL)
        )
        sender = attack_lab.run(_send_then_stall, attacker, FORGED[header], chunk)
        finished = receiver.done.wait(STALL + HANG)
    sent = len(FORGED[header]) + SENT
    # The payload buffer may run max(received, GROWTH_STEP) ahead of what arrived, and
    # io.BytesIO over-allocates small growths by 1/8; then the read-ahead and some slack.
    bound = (sent + max(sent, GROWTH_STEP)) * 9 // 8 + READ_AHEAD + 256 * 1024
    assert finished, (
        f"hang: {method}() still blocked {STALL + HANG:.0f} s after the attacker stalled; "
        f"peak traced memory {mib(peak[0])} for {mib(sent)} received"
    )
    error = receiver.error(0)
    assert isinstance(error, TimeoutError), f"{method}() raised {error!r}, peak {mib(peak[0])}"
    assert sender.error(0) is None, "the attacker could not send its 5 MiB before the timeout"
    assert peak[0] < bound, f"peak traced memory {mib(peak[0])} for {mib(sent)} received"
    # What arrived stays buffered: the attacker hanging up now cuts a message short.
    attacker.close()
    with pytest.raises(OSError, match="end of file during message"):
        _receive(method, conn, target, timeout=5)


@pytest.mark.parametrize("method", ["recv_bytes", "recv", "recv_bytes_into"])
@pytest.mark.parametrize("header", sorted(FORGED))
def test_forged_header_over_max_message_size_is_refused_before_allocating(
    attack_mpwire: ModuleType, attack_address: Any, attack_lab: Lab, header: str, method: str
) -> None:
    """A Listener(max_message_size=1 MiB): the forged header fails at once, nothing reserved."""
    conn, attacker = accepted_pair(attack_lab, attack_mpwire, attack_address, max_message_size=MiB)
    assert conn.max_message_size == MiB
    target = bytearray(MiB)
    with traced_peak() as peak:
        attacker.sendall(FORGED[header] + bytes(1000))
        started = time.monotonic()
        with pytest.raises(MessageTooLong) as caught:
            _receive(method, conn, target, timeout=5)
        elapsed = time.monotonic() - started
    assert (caught.value.size, caught.value.limit) == (FORGED_SIZE[header], MiB)
    assert elapsed < 1.0
    assert peak[0] < 256 * 1024, f"peak traced memory {mib(peak[0])}"
    assert conn.closed
    assert drain_until_closed(attacker) == b""


@pytest.mark.parametrize("header", sorted(FORGED))
def test_forged_header_to_a_client_with_max_message_size(
    attack_mpwire: ModuleType, socket_dir: Any, header: str
) -> None:
    """A hostile listener answers a Client(max_message_size=) with a forged header."""
    path = str(socket_dir / "hostile.sock")
    with socket.socket(socket.AF_UNIX) as hostile:
        hostile.settimeout(5)
        hostile.bind(path)
        hostile.listen()
        with attack_mpwire.Client(path, max_message_size=MiB) as client:
            peer, _ = hostile.accept()
            with peer:
                peer.sendall(FORGED[header])
                with pytest.raises(MessageTooLong):
                    client.recv_bytes(timeout=5)
            assert client.closed


@pytest.mark.parametrize("header", sorted(FORGED))
def test_forged_header_to_a_pipe_with_max_message_size(
    attack_mpwire: ModuleType, header: str
) -> None:
    """Pipe(max_message_size=): the writing end's raw fd forges the header."""
    writer, reader = mpwire.Pipe(max_message_size=MiB)
    with writer, reader:
        os.write(writer.fileno(), FORGED[header])
        with pytest.raises(MessageTooLong):
            reader.recv_bytes(timeout=5)
        assert reader.closed


@pytest.mark.parametrize("header", sorted(FORGED))
def test_forged_header_over_maxlength_fails_at_once(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab, header: str
) -> None:
    """recv_bytes(maxlength=1024) against a forged header: an OSError at once, nothing reserved."""
    conn, attacker = accepted_pair(attack_lab, attack_victim, attack_address)
    with traced_peak() as peak:
        receiver = attack_lab.run(conn.recv_bytes, 1024)
        attacker.sendall(FORGED[header] + bytes(1000))
        error = finish(receiver, HANG, "recv_bytes(1024)")
    assert isinstance(error, OSError), f"recv_bytes(1024) raised {error!r}"
    assert peak[0] < 256 * 1024, f"peak traced memory {mib(peak[0])}"
    if attack_victim is mpwire.connection:
        assert isinstance(error, MessageTooLong)
        assert (error.size, error.limit) == (FORGED_SIZE[header], 1024)
    with pytest.raises(OSError):  # the connection is unusable for receiving now
        conn.recv_bytes(1024)


@pytest.mark.parametrize("header", sorted(FORGED))
def test_forged_header_as_first_handshake_frame_is_refused_at_once(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab, header: str
) -> None:
    """Instead of answering the challenge, a forged header: handshake frames are capped.

    accept() raises AuthenticationError at once, and the Listener still serves.
    """
    server = attack_lab.server(attack_victim, attack_address)
    attacker = attack_lab.raw(server.address)
    with traced_peak() as peak:
        started = time.monotonic()
        attacker.sendall(FORGED[header] + bytes(1000))
        error = server.next_error(HANG)
        elapsed = time.monotonic() - started
    assert isinstance(error, AuthenticationError), f"accept() raised {error!r}"
    assert elapsed < 1.0
    assert peak[0] < 256 * 1024, f"peak traced memory {mib(peak[0])}"
    assert read_frame(attacker).startswith(CHALLENGE)
    assert drain_until_closed(attacker) == b""
    good_round_trip(server.address)


# -- 2. truncated frames --------------------------------------------------

_SMALL = pickle.dumps(b"s" * 1000, protocol=5)
_LARGE = pickle.dumps(b"L" * (2 * MiB), protocol=5)  # beyond the read-ahead: received apart
assert len(_LARGE) > READ_AHEAD

TRUNCATED = {
    "half-header": b"\0\0",
    "half-long-header": struct.pack("!i", -1) + b"\0\0\0\0",
    "small-payload": frame(_SMALL)[:500],
    "large-payload": frame(_LARGE)[:300_000],
    "long-form-payload": struct.pack("!iQ", -1, len(_LARGE)) + _LARGE[:300_000],
}
"""Frames cut short: the attacker sends these bytes and hangs up."""

RECEIVERS: dict[str, Callable[[Any], Any]] = {
    "recv_bytes": lambda conn: conn.recv_bytes(),
    "recv": lambda conn: conn.recv(),
    "recv_bytes_into": lambda conn: conn.recv_bytes_into(bytearray(3 * MiB)),
}


@pytest.mark.parametrize("method", sorted(RECEIVERS))
@pytest.mark.parametrize("cut", sorted(TRUNCATED))
def test_truncated_frame_then_hang_up_is_an_error_promptly(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab, cut: str, method: str
) -> None:
    """Part of a frame, then the attacker closes: OSError, promptly, never a hang."""
    conn, attacker = accepted_pair(attack_lab, attack_victim, attack_address)
    receiver = attack_lab.run(RECEIVERS[method], conn)
    attacker.sendall(TRUNCATED[cut])
    attacker.close()
    error = finish(receiver, HANG, f"{method}() after the attacker hung up mid-frame")
    assert isinstance(error, OSError), f"{method}() raised {error!r}"
    assert "got end of file during message" in str(error)


@pytest.mark.parametrize("method", sorted(RECEIVERS))
def test_hang_up_between_frames_is_eof(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab, method: str
) -> None:
    """A whole frame, then a clean close: the message, then EOFError."""
    conn, attacker = accepted_pair(attack_lab, attack_victim, attack_address)
    attacker.sendall(frame(pickle.dumps("whole", protocol=5)))
    attacker.close()
    first = attack_lab.run(RECEIVERS[method], conn)
    assert finish(first, HANG, f"{method}() of a whole frame") is None
    second = attack_lab.run(RECEIVERS[method], conn)
    error = finish(second, HANG, f"{method}() after a clean close")
    assert isinstance(error, EOFError), f"{method}() raised {error!r}"


@pytest.mark.parametrize("length", [-2, -(2**31)])
def test_negative_length_header_is_refused(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab, length: int
) -> None:
    """A negative length (other than -1, the long-form mark) is a corrupt stream, not a message."""
    conn, attacker = accepted_pair(attack_lab, attack_victim, attack_address)
    attacker.sendall(struct.pack("!i", length) + frame(b"next"))
    receiver = attack_lab.run(conn.recv_bytes)
    error = finish(receiver, HANG, "recv_bytes() of a negative length")
    assert isinstance(error, OSError), (
        f"recv_bytes() took length {length} as a message: returned {receiver.outcome(0)[0]!r}"
    )


# -- 3. handshake isolation -----------------------------------------------

GOOD_CLIENTS = 20


def test_stalled_handshakes_do_not_delay_good_clients(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab
) -> None:
    """A silent client and a trickling client hold handshakes open; 20 good clients come next.

    All 20 must be accepted and served within 1 s of starting.
    """
    server = attack_lab.server(attack_victim, attack_address)
    silent = attack_lab.raw(server.address)
    assert read_frame(silent).startswith(CHALLENGE)
    trickle = attack_lab.trickle(attack_lab.raw(server.address), frame(RESPONSE))
    trickling = trickle.challenged.wait(2.0)

    started = time.monotonic()
    clients = [attack_lab.run(good_round_trip, server.address, 3.0) for _ in range(GOOD_CLIENTS)]
    for client in clients:
        client.done.wait(max(0.0, started + 3.0 + HANG - time.monotonic()))
    elapsed = time.monotonic() - started
    errors = [c.error(0) if c.done.is_set() else "still running" for c in clients]
    lost = [e for e in errors if e is not None]
    assert not lost, f"{len(lost)} of {GOOD_CLIENTS} good clients lost, first: {lost[0]!r}"
    assert elapsed < 1.0, f"{GOOD_CLIENTS} good clients took {elapsed:.2f} s"
    assert trickling, "the trickling client never got its challenge"
    assert trickle.sent < len(frame(RESPONSE)), "the trickle finished: it held nothing open"


@pytest.mark.parametrize("kind", ["silent", "trickle"])
def test_stalled_handshake_is_dropped_after_handshake_timeout(
    attack_mpwire: ModuleType, attack_address: Any, attack_lab: Lab, kind: str
) -> None:
    """Listener(handshake_timeout=0.5): a silent or trickling client is hung up on.

    The deadline is absolute: bytes trickling in do not extend it.
    """
    listener = attack_lab.own(
        attack_mpwire.Listener(attack_address, backlog=8, authkey=KEY, handshake_timeout=0.5)
    )
    acceptor = attack_lab.run(listener.accept, timeout=20)
    attacker = attack_lab.raw(listener.address)
    if kind == "silent":
        assert read_frame(attacker).startswith(CHALLENGE)
    else:
        trickle = attack_lab.trickle(attacker, frame(RESPONSE))
        assert trickle.challenged.wait(5)
    started = time.monotonic()
    drain_until_closed(attacker)
    elapsed = time.monotonic() - started
    assert 0.3 < elapsed < 1.5, f"dropped after {elapsed:.2f} s"
    if kind == "trickle":
        assert trickle.sent >= 2, "the trickling client was dropped before it sent anything"
    with mpwire.Client(listener.address, authkey=KEY, timeout=5) as client:
        conn = attack_lab.own(acceptor.result(5))
        client.send_bytes(b"after the drop")
        assert conn.recv_bytes(timeout=5) == b"after the drop"


FD_LIMIT = 64
SILENT_FLOOD = 100

_FLOODED_LISTENER = r"""
import resource, sys, time
import multiprocessing.connection, mpwire.connection
victim, path, fd_limit, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
module = mpwire.connection if victim == "mpwire" else multiprocessing.connection
extra = {"handshake_timeout": 0.5} if victim == "mpwire" else {}
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard))
listener = module.Listener(path, backlog=256, authkey=key, **extra)
print("ready", flush=True)
seen = set()
end = time.monotonic() + 15
while time.monotonic() < end:
    try:
        conn = listener.accept()
    except Exception as exc:
        if repr(exc) not in seen:
            seen.add(repr(exc))
            print("accept() raised", repr(exc), flush=True)
        continue
    with conn:
        conn.send_bytes(conn.recv_bytes())
    print("served", flush=True)
    break
"""
"""A victim Listener limited to FD_LIMIT fds, accepting until it has served one client."""


def test_a_flood_of_silent_clients_past_the_fd_limit_is_temporary(
    attack_victim: ModuleType, socket_dir: Any, attack_lab: Lab
) -> None:
    """More silent clients than the listener has fds, then a good client.

    Accepting fails with EMFILE while the fds are held, but the silent clients'
    handshakes expire (handshake_timeout=0.5) and free them: the good client
    is served. The victim runs in a child process with a low RLIMIT_NOFILE.
    """
    path = str(socket_dir / "flooded.sock")
    victim = "mpwire" if attack_victim is mpwire.connection else "stdlib"
    argv = [sys.executable, "-c", _FLOODED_LISTENER, victim, path, str(FD_LIMIT), KEY.hex()]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        for _ in range(SILENT_FLOOD):
            attack_lab.raw(path)
        good = attack_lab.run(good_round_trip, path, 5.0)
        error = finish(good, 5.0 + HANG, "a good client behind the flood")
    finally:
        child.kill()
        output, _ = child.communicate(timeout=10)
    assert error is None, (
        f"good client lost behind {SILENT_FLOOD} silent clients to a listener limited to "
        f"{FD_LIMIT} fds: {error!r}\nthe listener's output:\n{output}"
    )


def test_a_hostile_listener_trickling_its_challenge_cannot_hold_a_client(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab
) -> None:
    """A listener that sends its challenge one byte per 100 ms: the bytes do not extend the wait.

    mpwire's Client(handshake_timeout=0.5) gives up with HandshakeTimeout in time.
    """
    family = socket.AF_UNIX if isinstance(attack_address, str) else socket.AF_INET
    hostile = attack_lab.adopt(socket.socket(family, socket.SOCK_STREAM))
    hostile.settimeout(5)
    hostile.bind(attack_address)
    hostile.listen()
    address = hostile.getsockname()
    started = time.monotonic()
    client = attack_lab.run(
        attack_victim.Client,
        address,
        authkey=KEY,
        **mpwire_only(attack_victim, handshake_timeout=0.5),
    )
    peer = attack_lab.adopt(hostile.accept()[0])
    challenge = frame(CHALLENGE + b"{sha256}" + bytes(40))
    trickle = attack_lab.trickle(peer, challenge, read_challenge=False)
    error = finish(client, 0.5 + HANG, "Client() of a listener trickling its challenge")
    elapsed = time.monotonic() - started
    assert isinstance(error, HandshakeTimeout), f"Client() raised {error!r}"
    assert elapsed < 1.5, f"Client() gave up after {elapsed:.2f} s"
    assert 2 <= trickle.sent < len(challenge)


# -- 4. wrong keys, missing keys, garbage, oversized answers ---------------


def wrong_key(address: Any) -> None:
    """An mpwire client with another key."""
    with pytest.raises(AuthenticationError):
        mpwire.Client(address, authkey=b"not the key", timeout=5)


def no_key(address: Any) -> None:
    """A client without authkey: it skips the handshake and sends a message at once."""
    with mpwire.Client(address) as client:
        client.send_bytes(b"hello")
        assert client.recv_bytes(timeout=5).startswith(CHALLENGE)
        assert client.recv_bytes(timeout=5) == FAILURE
        with pytest.raises(EOFError):
            client.recv_bytes(timeout=5)


def garbage_answer(size: int) -> Callable[[Any], None]:
    def attack(address: Any) -> None:
        """Random bytes, framed, in reply to the challenge: #FAILURE#, then a hang-up."""
        with raw_connect(address) as sock:
            assert read_frame(sock).startswith(CHALLENGE)
            sock.sendall(frame(random.Random(size).randbytes(size)))
            assert drain_until_closed(sock) == frame(FAILURE)

    attack.__name__ = f"garbage_{size}"
    return attack


def oversized_answer(header: bytes, body: bytes) -> Callable[[Any], None]:
    def attack(address: Any) -> None:
        """An answer over the 256-byte handshake cap: a hang-up without reply."""
        with raw_connect(address) as sock:
            assert read_frame(sock).startswith(CHALLENGE)
            sock.sendall(header + body)
            assert drain_until_closed(sock) == b""

    return attack


BAD_CLIENTS: dict[str, Callable[[Any], None]] = {
    "wrong-key": wrong_key,
    "no-key": no_key,
    **{f"garbage-{n}": garbage_answer(n) for n in (0, 16, 20, 48, 256)},
    "oversized-1000": oversized_answer(struct.pack("!i", 1000), bytes(1000)),
    "oversized-2**31-1": oversized_answer(FORGED["2**31-1"], bytes(1000)),
}
"""Clients that fail the authkey check: accept() raises AuthenticationError for each."""


@pytest.mark.parametrize("bad", sorted(BAD_CLIENTS))
def test_failed_authentication_then_the_listener_still_serves(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab, bad: str
) -> None:
    server = attack_lab.server(attack_victim, attack_address)
    BAD_CLIENTS[bad](server.address)
    error = server.next_error(HANG)
    assert isinstance(error, AuthenticationError), f"accept() raised {error!r}"
    good_round_trip(server.address)


def _accept_and_receive(listener: Any, lab: Lab) -> Any:
    conn = lab.own(listener.accept())
    return conn.recv_bytes()


def test_client_with_a_key_against_a_listener_without_one(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab
) -> None:
    """The client waits for a challenge that never comes: it must give up, not hang.

    mpwire's Client ends with HandshakeTimeout within its handshake_timeout;
    the listener's end then sees EOFError.
    """
    listener = attack_lab.own(attack_victim.Listener(attack_address))
    server_side = attack_lab.run(_accept_and_receive, listener, attack_lab)
    started = time.monotonic()
    client = attack_lab.run(
        attack_victim.Client,
        listener.address,
        authkey=KEY,
        **mpwire_only(attack_victim, handshake_timeout=0.5),
    )
    error = finish(client, 0.5 + HANG, "Client(authkey=...) of a listener without one")
    elapsed = time.monotonic() - started
    assert isinstance(error, HandshakeTimeout), f"Client() raised {error!r}"
    assert elapsed < 1.5, f"Client() gave up after {elapsed:.2f} s"
    error = finish(server_side, HANG, "the listener's recv_bytes() after the client gave up")
    assert isinstance(error, EOFError), f"the listener's recv_bytes() raised {error!r}"


# -- 5. a parade of bad clients between good ones ------------------------


def test_listener_serves_good_clients_between_any_bad_ones(
    attack_victim: ModuleType, attack_address: Any, attack_lab: Lab
) -> None:
    """One Listener, bad clients of every kind interleaved with good ones.

    Every good client is served; accept() raises only AuthenticationError (one
    per client that failed the check), whatever the others do.
    """
    server = attack_lab.server(attack_victim, attack_address)
    address = server.address

    def hang_up() -> None:
        """Connect and close at once."""
        raw_connect(address).close()

    def truncated_answer() -> None:
        """Half an answer, then a hang-up."""
        with raw_connect(address, timeout=2) as sock:
            assert read_frame(sock).startswith(CHALLENGE)
            sock.sendall(frame(RESPONSE)[:10])

    def silent() -> None:
        """Connect, take the challenge, say nothing (left open)."""
        sock = attack_lab.raw(address, timeout=2)
        assert read_frame(sock).startswith(CHALLENGE)

    def trickle() -> None:
        attack_lab.trickle(attack_lab.raw(address, timeout=2), frame(RESPONSE))

    def forged_first_frame() -> None:
        """A 2**62 long-form header before any challenge was read."""
        with raw_connect(address, timeout=2) as sock:
            sock.sendall(FORGED["2**62"])
            assert read_frame(sock).startswith(CHALLENGE)
            assert drain_until_closed(sock, 2) == b""

    bad: list[tuple[str, Callable[[], None]]] = [
        ("wrong-key", lambda: BAD_CLIENTS["wrong-key"](address)),
        ("garbage", lambda: BAD_CLIENTS["garbage-48"](address)),
        ("hang-up", hang_up),
        ("oversized", lambda: BAD_CLIENTS["oversized-1000"](address)),
        ("truncated-answer", truncated_answer),
        ("forged-first-frame", forged_first_frame),
        ("no-key", lambda: BAD_CLIENTS["no-key"](address)),
        ("silent", silent),
        ("trickle", trickle),
    ]
    failing_the_check = 5
    steps: list[tuple[str, Callable[[], None]]] = [("good", lambda: good_round_trip(address))]
    for name, attack in bad:
        steps += [(name, attack), (f"good after {name}", lambda: good_round_trip(address))]
    problems: list[str] = []
    for step, run in steps:
        try:
            run()
        except Exception as exc:
            problems.append(f"{step}: {exc!r}")
    errors = server.take_errors(failing_the_check, within=HANG)
    problems += [f"accept() raised {e!r}" for e in errors if not isinstance(e, AuthenticationError)]
    assert not problems, "\n".join(problems)
    assert len(errors) == failing_the_check, f"accept() raised {errors!r}"
