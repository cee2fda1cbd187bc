"""Listener and Client: connections over TCP and Unix sockets, with the authkey check."""

from __future__ import annotations

import os
import socket
from functools import partial
from multiprocessing import util
from types import TracebackType
from typing import Any, Self

from ..protocol.handshake import Role
from .addresses import (
    address_type,
    arbitrary_address,
    default_family,
    is_abstract,
    is_tcp,
    open_socket,
    set_nodelay,
    validate_family,
)
from .auth import run_handshake
from .connection import Connection

__all__ = ["Client", "Listener"]


def _check_authkey(authkey: object) -> None:
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")


def _authenticated(sock: socket.socket, authkey: bytes | None, role: Role) -> Connection:
    """Wrap a connected socket in a Connection and, with a key, authenticate it.

    Over TCP the handshake's last message and the first message after it go
    back to back, and Nagle's algorithm would hold the second until the peer's
    delayed ACK of the first, 40 ms later: the stdlib loses that much per
    connection. So Nagle is off until the first message after the handshake
    has left, and on again after it, where it lets streams of small messages
    share packets (as with the stdlib).
    """
    conn = Connection(sock.detach())
    if authkey is None:
        return conn
    tcp = is_tcp(sock)
    try:
        if tcp:
            set_nodelay(conn.fileno(), True)
        run_handshake(conn, authkey, role)
    except BaseException:
        conn.close()
        raise
    if tcp:
        conn._after_first_send = partial(set_nodelay, conn.fileno(), False)
    return conn


class Listener:
    """A bound, listening socket that accepts authenticated Connections.

    ``address`` is ``(host, port)`` for TCP, a path or ``'\\0name'`` for a Unix
    socket, or None for a fresh Unix socket in a private folder. With an
    ``authkey``, accept() runs the challenge in both directions and raises
    AuthenticationError if the peer fails it.
    """

    def __init__(
        self,
        address: Any = None,
        family: str | None = None,
        backlog: int = 1,
        authkey: bytes | None = None,
    ) -> None:
        family = family or (address and address_type(address)) or default_family
        validate_family(family)
        _check_authkey(authkey)
        address = address or arbitrary_address(family)
        sock, address = open_socket(address, family)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
            bound = sock.getsockname()
        except OSError:
            sock.close()
            raise
        if sock.family == socket.AF_INET6 and bound[3] == 0:
            bound = bound[:2]
        self._socket: socket.socket | None = sock
        self._address = bound
        self._family = family
        self._authkey = authkey
        self._last_accepted: Any = None
        self._unlink: util.Finalize | None = None
        if family == "AF_UNIX" and not is_abstract(address):
            self._unlink = util.Finalize(self, os.unlink, args=(address,), exitpriority=0)

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

    def accept(self) -> Connection:
        """Accept a connection (and authenticate it, with an authkey)."""
        if self._socket is None:
            raise OSError("listener is closed")
        sock, self._last_accepted = self._socket.accept()
        # Under a default timeout (socket.setdefaulttimeout) the accepted
        # socket's fd is non-blocking, and the Connection reads it directly.
        sock.setblocking(True)
        return _authenticated(sock, self._authkey, Role.LISTENER)

    def close(self) -> None:
        """Close the socket, and remove its file for a Unix socket."""
        sock, self._socket = self._socket, None
        if sock is not None:
            try:
                sock.close()
            finally:
                unlink, self._unlink = self._unlink, None
                if unlink is not None:
                    unlink()


def Client(address: Any, family: str | None = None, authkey: bytes | None = None) -> Connection:
    """Connect to the Listener at ``address`` and, with an authkey, authenticate."""
    family = family or address_type(address)
    validate_family(family)
    _check_authkey(authkey)
    sock, address = open_socket(address, family)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return _authenticated(sock, authkey, Role.CLIENT)
