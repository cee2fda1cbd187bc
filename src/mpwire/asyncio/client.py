"""connect() and wrap(): AsyncConnections to a listener, or from a blocking Connection."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as ssl_module
from typing import Any

from ..exceptions import HandshakeTimeout, TLSError, tls_problem
from ..protocol.handshake import FramedHandshake, Role
from ..serialize import Serializer
from ..sync.addresses import RETRY_CONNECT, address_type, open_socket, validate_family
from ..sync.listener import CLIENT_HANDSHAKE_TIMEOUT, check_authkey
from .connection import AsyncConnection, FrameProtocol

__all__ = ["connect", "wrap"]


async def connect(
    address: Any,
    *,
    family: str | None = None,
    authkey: bytes | None = None,
    timeout: float | None = None,
    handshake_timeout: float | None = CLIENT_HANDSHAKE_TIMEOUT,
    max_message_size: int | None = None,
    serializer: str | Serializer | None = None,
    digest: str = "sha256",
    allow_legacy_auth: bool = True,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncConnection:
    """Connect to the listener at ``address`` (stdlib or mpwire) and, with a key, authenticate.

    The options mean what they mean for the blocking ``Client``: ``timeout``
    bounds connecting and authenticating and retries a listener not up yet;
    ``handshake_timeout`` bounds the handshake alone (HandshakeTimeout);
    ``max_message_size``, ``serializer``, ``digest`` and ``allow_legacy_auth``
    as for the blocking Client; ``ssl`` (an SSLContext) runs it all inside TLS,
    checking the server's certificate for ``server_hostname`` (default: the host).
    """
    family = family or address_type(address)
    validate_family(family)
    check_authkey(authkey)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    async with asyncio.timeout_at(deadline):
        sock = await _connect_socket(address, family, retry=timeout is not None)
        handshake = None
        if authkey is not None:
            handshake = FramedHandshake(
                authkey, Role.CLIENT, digest=digest, allow_legacy=allow_legacy_auth
            )
        protocol = await _open(sock, address, handshake, max_message_size, ssl, server_hostname)
    if handshake_timeout is not None:
        limit = loop.time() + handshake_timeout
        deadline = limit if deadline is None else min(deadline, limit)
    try:
        async with asyncio.timeout_at(deadline):
            await protocol.authenticated
    except TimeoutError as exc:
        protocol.abort()
        raise HandshakeTimeout.from_listener(address) from exc
    except BaseException:
        protocol.abort()
        raise
    return AsyncConnection(protocol, serializer=serializer)


async def _open(
    sock: socket.socket,
    address: Any,
    handshake: FramedHandshake | None,
    max_message_size: int | None,
    context: ssl_module.SSLContext | None,
    server_hostname: str | None,
) -> FrameProtocol:
    """Start the transport over a connected socket: plain, or after the TLS handshake."""
    loop = asyncio.get_running_loop()

    def protocol() -> FrameProtocol:
        return FrameProtocol(max_message_size, handshake)

    if context is None:
        return (await loop.connect_accepted_socket(protocol, sock))[1]
    if server_hostname is None and isinstance(address, tuple):
        server_hostname = address[0]
    start = loop.create_unix_connection if sock.family == socket.AF_UNIX else loop.create_connection
    try:
        _, opened = await start(protocol, sock=sock, ssl=context, server_hostname=server_hostname)
    except ssl_module.SSLError as exc:
        raise TLSError(f"TLS handshake with {address!r} failed: {tls_problem(exc)}") from exc
    return opened


async def _connect_socket(address: Any, family: str, retry: bool) -> socket.socket:
    """A connected non-blocking socket; with ``retry``, wait for a listener not up yet.

    A Unix socket connects at once or not at all: EAGAIN means the listener's
    backlog is full, and is retried as a blocking connect() would wait (asyncio's
    sock_connect() would take it for a connection in progress).
    """
    loop = asyncio.get_running_loop()
    delay = 0.001
    while True:
        sock, target = open_socket(address, family)
        sock.setblocking(False)
        try:
            if sock.family == socket.AF_UNIX:
                sock.connect(target)
            else:
                await loop.sock_connect(sock, target)
            return sock
        except OSError as exc:
            sock.close()
            busy = isinstance(exc, BlockingIOError) and sock.family == socket.AF_UNIX
            if not busy and not (retry and exc.errno in RETRY_CONNECT):
                raise
        except BaseException:
            sock.close()
            raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def wrap(
    conn: Any,
    *,
    max_message_size: int | None = None,
    serializer: str | Serializer | None = None,
    digest: str = "sha256",
    allow_legacy_auth: bool = True,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncConnection:
    """An AsyncConnection on the running loop for a blocking mpwire or stdlib Connection.

    Takes the connection over: ``conn`` is closed, and its fd (with any bytes
    an mpwire Connection had read ahead) now belongs to the result. Sockets
    and one-way pipes both work, with no thread. A readable end that agreed
    on shared memory cannot be taken (its peer may send arrays as memfds,
    which an asyncio transport's reads would drop): make it with
    ``shared_memory=False`` (Pipe, Listener or Client). The loop reads
    ahead, and makes the file non-blocking: once wrapped, an end is this
    process's alone to read, even one that other processes may hold
    (inherited by a fork, or passed on), which must leave it alone; what was
    read ahead before it was shared comes along.
    """
    from ..sync.connection import Connection

    readable, writable = conn.readable, conn.writable
    if readable and getattr(conn, "shared_memory", False):
        raise ValueError(
            "the asyncio API cannot receive shared memory, which this connection agreed on: "
            "make it with shared_memory=False (Pipe, Listener or Client)"
        )
    fd = os.dup(conn.fileno())
    pending = conn._take_over_unread() if isinstance(conn, Connection) else b""
    conn.close()
    loop = asyncio.get_running_loop()
    protocol = FrameProtocol(max_message_size, None)
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        sock = None
    if sock is not None:
        sock.setblocking(False)
        await loop.connect_accepted_socket(lambda: protocol, sock)
    else:
        os.set_blocking(fd, False)
        pipe = os.fdopen(fd, "rb" if readable else "wb", buffering=0)
        if readable:
            await loop.connect_read_pipe(lambda: protocol, pipe)
        else:
            await loop.connect_write_pipe(lambda: protocol, pipe)
    protocol.data_received(pending)
    return AsyncConnection(protocol, readable, writable, serializer=serializer)
