"""Listener and Client: connections over TCP and Unix sockets, with the authkey check.

A Listener with an authkey runs the handshakes of all the clients it has
accepted side by side, on non-blocking sockets, so a client that stays silent
or trickles bytes delays nobody: accept() returns whichever client proves the
key first, and a handshake that takes longer than ``handshake_timeout``
seconds is dropped.
"""

from __future__ import annotations

import errno
import math
import select
import socket
import ssl
import time
from functools import partial
from types import TracebackType
from typing import Any, Self

from ..exceptions import HandshakeTimeout, TLSError, tls_problem
from ..protocol.frames import ReadInto
from ..protocol.handshake import FramedHandshake, Role
from ..serialize import Serializer, get_serializer
from . import shm
from .addresses import (
    RETRY_CONNECT,
    address_type,
    is_tcp,
    listening_socket,
    open_socket,
    set_nodelay,
    unlink_on_close,
    validate_family,
)
from .auth import authenticate_socket
from .connection import Connection
from .gate import Gate
from .tls import TLSSocket

__all__ = ["CLIENT_HANDSHAKE_TIMEOUT", "HANDSHAKE_TIMEOUT", "Client", "Listener"]

HANDSHAKE_TIMEOUT = 5.0
"""Seconds a Listener gives an accepted client to prove the key (it answers at once)."""

CLIENT_HANDSHAKE_TIMEOUT = 20.0
"""Seconds a Client waits for the listener's side of the handshake.

Longer than the listener's: a busy listener may call accept() late. A listener
without an authkey never sends a challenge, so this is how that mistake ends.
"""


ACCEPT_BACKOFF = 0.05
"""Seconds a Listener out of file descriptors waits before accepting again."""

_SEND_NOW = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
"""Flags of the handshake's sends: a plain client's socket stays blocking."""

_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def check_authkey(authkey: object) -> None:
    """TypeError unless ``authkey`` is bytes or None, as the stdlib checks it."""
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")


def _poll_ms(deadline: float | None) -> int | None:
    return None if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))


def _restore_nagle_after_first_send(conn: Connection) -> None:
    """Over TCP, the handshake runs with Nagle's algorithm off; turn it on again later.

    The handshake's last message and the first message after it go back to
    back, and Nagle's algorithm would hold the second until the peer's delayed
    ACK of the first, 40 ms later: the stdlib loses that much per connection.
    Once the first message after the handshake has left, Nagle lets streams of
    small messages share packets again (as with the stdlib).
    """
    conn._call_after_first_send(partial(set_nodelay, conn.fileno(), False))


class _Pending:
    """An accepted client on its way in: TLS first (if any), then the authkey handshake."""

    __slots__ = ("deadline", "handshake", "peer", "readinto", "sock", "tls")

    def __init__(
        self,
        sock: socket.socket | TLSSocket,
        peer: Any,
        handshake: FramedHandshake | None,
        end: float,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.handshake = handshake
        self.deadline = end
        self.tls = isinstance(sock, TLSSocket)
        """Whether its TLS handshake is still under way."""
        self.readinto: ReadInto = (
            sock.recv_into
            if isinstance(sock, TLSSocket)
            else partial(sock.recv_into, flags=socket.MSG_DONTWAIT)
        )
        """Reads what the client sent, without blocking (a plain socket stays blocking)."""


class Listener:
    """A bound, listening socket that accepts authenticated Connections.

    ``address`` is ``(host, port)`` for TCP, a path or ``'\\0name'`` for a Unix
    socket, or None for a fresh Unix socket in a private folder. With an
    ``authkey``, accept() runs the challenge in both directions and raises
    AuthenticationError if a peer fails it; peers that hang up or take longer
    than ``handshake_timeout`` seconds (None: no limit) are dropped. Accepted
    Connections refuse messages over ``max_message_size`` bytes and encode
    objects with ``serializer`` (default: pickle).

    ``shared_memory``: with an authkey, an mpwire client on a Unix socket
    agrees in the handshake to send large pickled buffers (numpy arrays) as
    shared memory, unless either end passes False; stdlib clients never see
    it. Without an authkey, True says the clients will use it too.
    """

    def __init__(
        self,
        address: Any = None,
        family: str | None = None,
        backlog: int = 1,
        authkey: bytes | None = None,
        *,
        handshake_timeout: float | None = HANDSHAKE_TIMEOUT,
        max_message_size: int | None = None,
        serializer: str | Serializer | None = None,
        digest: str = "sha256",
        allow_legacy_auth: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        shared_memory: bool | None = None,
    ) -> None:
        check_authkey(authkey)
        sock, bound = listening_socket(address, family, backlog, authkey, ssl_context)
        self._shared_memory = shared_memory
        self._socket: socket.socket | None = sock
        self._address = bound
        self._authkey = authkey
        self._handshake_timeout = handshake_timeout
        self._digest = digest
        self._allow_legacy = allow_legacy_auth
        self._ssl_context = ssl_context
        self._max_message_size = max_message_size
        self._serializer = get_serializer(serializer)
        self._last_accepted: Any = None
        self._pending: dict[int, _Pending] = {}
        self._paused_at = time.monotonic()
        self._out_of_fds_until = 0.0
        self._tcp = is_tcp(sock)
        self._family = int(sock.family)
        self._extensions = shm.offer(not self._tcp, ssl_context is not None, shared_memory)
        """What its challenges offer (the same for every client)."""
        self._poller = select.poll()
        """Polls the listening socket (unless out of fds) and the handshakes under way."""
        self._accept_gate = Gate()
        """Held by the accept() that runs the handshakes."""
        self._poller.register(sock, select.POLLIN)
        self._unlink = unlink_on_close(self, sock, bound)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def address(self) -> Any:
        """The address this listener is bound to."""
        return self._address

    @property
    def last_accepted(self) -> Any:
        """The address of the last accepted peer, or None."""
        return self._last_accepted

    def accept(self, timeout: float | None = None) -> Connection:
        """Accept a connection (and authenticate it, with an authkey).

        With a ``timeout`` (seconds), raises TimeoutError if no client has
        connected (and proved the key) by then.
        """
        listening = self._listening()
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._authkey is None and self._ssl_context is None:
            while True:
                accepted = self._accept_one(listening, deadline)
                if accepted is not None:
                    sock, self._last_accepted = accepted
                    return self._connection(sock, bool(self._shared_memory))
        # One thread at a time runs the handshakes (and polls them); the others
        # wait their turn, for their timeout at most.
        gate = self._accept_gate
        try:
            del gate.token[0]
        except IndexError:
            if not gate.acquire(timeout):
                raise TimeoutError("accept timed out") from None
        try:
            return self._accept_authenticated(listening, deadline)
        finally:
            gate.token.append(True)
            if gate.waiting:
                gate.wake()

    def _listening(self) -> socket.socket:
        if self._socket is None:
            raise OSError("listener is closed")
        return self._socket

    def _accept_one(
        self, listening: socket.socket, deadline: float | None
    ) -> tuple[socket.socket, Any] | None:
        """A newly connected socket (blocking), or None if a client vanished first."""
        # A poll of its own: threads may accept side by side, as with the stdlib.
        poller = select.poll()
        poller.register(listening, select.POLLIN)
        if not poller.poll(_poll_ms(deadline)):
            raise TimeoutError("accept timed out")
        try:
            return self._accepted(listening)
        except (BlockingIOError, ConnectionAbortedError):
            return None

    def _accepted(self, listening: socket.socket) -> tuple[socket.socket, Any]:
        """accept(), for a blocking socket, without the enum conversions of socket.accept()."""
        fd, peer = listening._accept()  # type: ignore[attr-defined]
        sock = socket.socket(self._family, socket.SOCK_STREAM, 0, fileno=fd)
        if socket.getdefaulttimeout() is not None:
            sock.setblocking(True)
        return sock, peer

    def _connection(
        self, sock: socket.socket | TLSSocket, shared_memory: bool, leftover: bytes = b""
    ) -> Connection:
        return _connection(sock, self._max_message_size, self._serializer, shared_memory, leftover)

    def _accept_authenticated(self, listening: socket.socket, deadline: float | None) -> Connection:
        """Accept clients side by side (TLS, then the key) until one has come through.

        A handshake's clock runs only while accept() runs: time spent outside
        it is not the client's fault.
        """
        paused = time.monotonic() - self._paused_at
        pending_by_fd = self._pending
        for pending in pending_by_fd.values():
            pending.deadline += paused
        poll = self._poller.poll
        try:
            while True:
                listening = self._listening()  # closed by another thread?
                wake = math.inf if deadline is None else deadline
                if pending_by_fd:
                    wake = min(wake, *[p.deadline for p in pending_by_fd.values()])
                if self._out_of_fds_until:
                    wake = min(wake, self._out_of_fds_until)
                ready = poll(None if wake == math.inf else _poll_ms(wake))
                listening_fd = listening.fileno()
                for fd, _ in ready:
                    if fd == listening_fd:
                        self._start_handshake(listening)
                    elif fd in pending_by_fd:
                        conn = self._advance(pending_by_fd[fd])
                        if conn is not None:
                            return conn
                if wake != math.inf and time.monotonic() >= wake:
                    self._on_time(listening)
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError("accept timed out")
        finally:
            self._paused_at = time.monotonic()

    def _on_time(self, listening: socket.socket) -> None:
        """Drop the handshakes out of time; accept again after running out of fds."""
        now = time.monotonic()
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            self._drop(pending)
        if self._out_of_fds_until and now >= self._out_of_fds_until:
            self._out_of_fds_until = 0.0
            self._poller.register(listening, select.POLLIN)

    def _start_handshake(self, listening: socket.socket) -> None:
        """Accept a waiting client and start its handshakes.

        One per wake-up: the next waiting client wakes the poll again, and
        none waits behind a burst. Out of file descriptors (a flood of
        clients that say nothing, say), it stops accepting for a moment
        instead of spinning, while the handshakes under way finish or run out
        of time and free theirs.
        """
        limit = self._handshake_timeout
        try:
            sock, peer = self._accepted(listening)
        except (BlockingIOError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            self._out_of_fds_until = time.monotonic() + ACCEPT_BACKOFF
            self._poller.unregister(listening)
            return
        if self._tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel: socket.socket | TLSSocket = sock
        if self._ssl_context is not None:
            sock.setblocking(False)
            channel = TLSSocket(sock, self._ssl_context, server_side=True)
        handshake = None
        if self._authkey is not None:
            handshake = FramedHandshake(
                self._authkey,
                Role.LISTENER,
                digest=self._digest,
                allow_legacy=self._allow_legacy,
                extensions=self._extensions,
            )
        end = math.inf if limit is None else time.monotonic() + limit
        pending = _Pending(channel, peer, handshake, end)
        fd = channel.fileno()
        self._pending[fd] = pending
        self._poller.register(fd, select.POLLIN)
        if not pending.tls:
            self._send_or_drop(pending)

    def _advance(self, pending: _Pending) -> Connection | None:
        """Take what a client sent: its Connection once it has come through.

        Raises AuthenticationError (as the stdlib's accept() does) if it
        failed the key check, TLSError if it failed TLS; a client that hung
        up is dropped.
        """
        if pending.tls and not self._advance_tls(pending):
            return None
        handshake = pending.handshake
        if handshake is not None:
            received = self._receive(pending, handshake)
            if received is None:
                return None
            if not received:
                self._drop(pending)
                return None
            sent = self._send_or_drop(pending)
            if handshake.error is not None:
                self._drop(pending)
                raise handshake.error
            if not sent or not handshake.done:
                return None
        self._forget(pending)
        if isinstance(pending.sock, TLSSocket):
            pending.sock.setblocking(True)
        self._last_accepted = pending.peer
        if handshake is None:
            conn = self._connection(pending.sock, bool(self._shared_memory))
        else:
            shared = shm.EXTENSION in handshake.agreed
            conn = self._connection(pending.sock, shared, handshake.leftover())
        if self._tcp and handshake is not None:
            _restore_nagle_after_first_send(conn)
        return conn

    def _advance_tls(self, pending: _Pending) -> bool:
        """Go on with a client's TLS handshake; whether it is done (and the challenge sent)."""
        sock = pending.sock
        assert isinstance(sock, TLSSocket)
        try:
            sock.do_handshake()
        except BlockingIOError:
            return False
        except ssl.SSLError as exc:
            self._drop(pending)
            raise TLSError(
                f"TLS handshake with {pending.peer!r} failed: {tls_problem(exc)}"
            ) from exc
        except OSError:
            self._drop(pending)
            return False
        pending.tls = False
        return pending.handshake is None or self._send_or_drop(pending)

    @staticmethod
    def _receive(pending: _Pending, handshake: FramedHandshake) -> int | None:
        """Read what the client sent (all TLS holds too); 0 at its end, None if nothing yet."""
        sock = pending.sock
        readinto = pending.readinto
        total = 0
        try:
            while True:
                received = handshake.fill(readinto)
                if not received:
                    return total
                total += received
                if not (isinstance(sock, TLSSocket) and sock.pending()):
                    return total
        except BlockingIOError:
            return total or None
        except OSError:
            return 0

    def _send_or_drop(self, pending: _Pending) -> bool:
        """Send what the handshake has queued; drop the client if it cannot take it.

        The messages are tiny and the socket's buffer fresh, so anything but a
        whole write means the client is gone or hostile.
        """
        assert pending.handshake is not None
        data = pending.handshake.data_to_send()
        try:
            if not data or pending.sock.send(data, _SEND_NOW) == len(data):
                return True
        except OSError:
            pass
        self._drop(pending)
        return False

    def _drop(self, pending: _Pending) -> None:
        self._forget(pending)
        pending.sock.close()

    def _forget(self, pending: _Pending) -> None:
        fd = pending.sock.fileno()
        if self._pending.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def close(self) -> None:
        """Close the socket (and any unfinished handshakes); remove a Unix socket's file."""
        sock, self._socket = self._socket, None
        for pending in list(self._pending.values()):
            self._drop(pending)
        if sock is not None:
            try:
                sock.close()
            finally:
                unlink, self._unlink = self._unlink, None
                if unlink is not None:
                    unlink()


def Client(
    address: Any,
    family: str | None = None,
    authkey: bytes | None = None,
    *,
    timeout: float | None = None,
    handshake_timeout: float | None = CLIENT_HANDSHAKE_TIMEOUT,
    max_message_size: int | None = None,
    serializer: str | Serializer | None = None,
    digest: str = "sha256",
    allow_legacy_auth: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    shared_memory: bool | None = None,
) -> Connection:
    """Connect to the Listener at ``address`` and, with an authkey, authenticate.

    With a ``timeout`` (seconds), connecting and authenticating together take
    at most that long, and a listener that is not up yet is retried until
    then; expiry raises TimeoutError. The handshake alone is also bounded by
    ``handshake_timeout`` (None: no limit); expiry raises HandshakeTimeout.
    The Connection refuses messages over ``max_message_size`` bytes and
    encodes objects with ``serializer`` (default: pickle). ``shared_memory``
    as for :class:`Listener`.
    """
    family = family or address_type(address)
    validate_family(family)
    check_authkey(authkey)
    serializer = get_serializer(serializer)
    deadline = None if timeout is None else time.monotonic() + timeout
    sock = _connect(address, family, deadline)
    tcp = family == "AF_INET"
    try:
        channel: socket.socket | TLSSocket = sock
        if ssl_context is not None:
            channel = _start_tls(sock, ssl_context, address, server_hostname, deadline)
        if authkey is None:
            return _connection(channel, max_message_size, serializer, bool(shared_memory))
        if handshake_timeout is not None:
            limit = time.monotonic() + handshake_timeout
            deadline = limit if deadline is None else min(deadline, limit)
        handshake = FramedHandshake(
            authkey,
            Role.CLIENT,
            digest=digest,
            allow_legacy=allow_legacy_auth,
            extensions=shm.offer(not tcp, channel is not sock, shared_memory),
        )
        if tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            authenticate_socket(sock, channel, handshake, deadline)
        except TimeoutError as exc:
            raise HandshakeTimeout.from_listener(address) from exc
        shared = shm.EXTENSION in handshake.agreed
        conn = _connection(channel, max_message_size, serializer, shared, handshake.leftover())
    except BaseException:
        sock.close()
        raise
    if tcp:
        _restore_nagle_after_first_send(conn)
    return conn


def _connection(
    sock: socket.socket | TLSSocket,
    max_message_size: int | None,
    serializer: Serializer,
    shared_memory: bool,
    leftover: bytes = b"",
) -> Connection:
    """The Connection over a socket through its handshake, with what came behind the handshake.

    Handshakes are read with plain reads: a peer's mark that descriptors
    follow ends the read that takes it, so the descriptors behind it wait in
    the socket for the Connection, which decodes the mark first.
    """
    conn = Connection.from_socket(sock, max_message_size=max_message_size, serializer=serializer)
    if shared_memory:
        conn._use_shared_memory()
    if leftover:
        conn._decoder.feed(leftover)
    return conn


def _start_tls(
    sock: socket.socket,
    context: ssl.SSLContext,
    address: Any,
    server_hostname: str | None,
    deadline: float | None,
) -> TLSSocket:
    """Run the TLS handshake over a connected socket (the server's name: its host)."""
    if server_hostname is None and isinstance(address, tuple):
        server_hostname = address[0]
    try:
        if context.check_hostname and server_hostname is None:
            raise ValueError(f"TLS to {address!r} checks the server's name: pass server_hostname=")
        tls = TLSSocket(sock, context, server_side=False, server_hostname=server_hostname)
        sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
        tls.do_handshake()
        sock.settimeout(None)
    except ssl.SSLError as exc:
        sock.close()
        raise TLSError(f"TLS handshake with {address!r} failed: {tls_problem(exc)}") from exc
    except BaseException:
        sock.close()
        raise
    return tls


def _connect(address: Any, family: str, deadline: float | None) -> socket.socket:
    """A socket connected to ``address``; until ``deadline``, retry a listener not up yet."""
    delay = 0.005
    while True:
        sock, target = open_socket(address, family)
        try:
            if deadline is not None:
                # A zero timeout would make the socket non-blocking: keep it positive.
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            sock.connect(target)
            if deadline is not None:
                sock.setblocking(True)
            return sock
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"connecting to {address!r} timed out") from exc
            if deadline is None or exc.errno not in RETRY_CONNECT:
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no listener at {address!r} in time: {exc}") from exc
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.1)
        except BaseException:
            sock.close()
            raise
