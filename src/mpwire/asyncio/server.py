"""Listener and serve(): accept AsyncConnections from stdlib, mpwire and asyncio clients.

Every accepted client runs its handshake in its own protocol, concurrently
with all the others, under ``handshake_timeout``; only clients that proved
the key reach ``accept()`` or the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from ..exceptions import AuthenticationError
from ..protocol.handshake import FramedHandshake, Role
from ..serialize import Serializer, get_serializer
from ..sync.addresses import listening_socket, unlink_on_close
from ..sync.listener import HANDSHAKE_TIMEOUT, check_authkey
from .connection import AsyncConnection, FrameProtocol

__all__ = ["Listener", "Server", "serve"]

Handler = Callable[[AsyncConnection], Awaitable[Any]]


class Listener:
    """A listening socket whose accept() is awaited: the shape of the blocking Listener.

    Binds at once (``address`` is known straight away) and starts accepting
    on the first accept() or ``async with``. A client that fails the key check
    makes accept() raise AuthenticationError, as the blocking Listener does;
    one that hangs up or runs out of time is dropped.
    """

    def __init__(
        self,
        address: Any = None,
        family: str | None = None,
        backlog: int = 100,
        authkey: bytes | None = None,
        *,
        handshake_timeout: float | None = HANDSHAKE_TIMEOUT,
        max_message_size: int | None = None,
        serializer: str | Serializer | None = None,
        digest: str = "sha256",
        allow_legacy_auth: bool = True,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        check_authkey(authkey)
        self._socket, self._address = listening_socket(address, family, backlog, authkey, ssl)
        self._ssl = ssl
        self._backlog = backlog
        self._unlink = unlink_on_close(self, self._socket, self._address)
        self._authkey = authkey
        self._handshake_timeout = handshake_timeout
        self._digest = digest
        self._allow_legacy = allow_legacy_auth
        self._max_message_size = max_message_size
        self._serializer = get_serializer(serializer)
        self._server: asyncio.AbstractServer | None = None
        self._accepted: asyncio.Queue[AsyncConnection | BaseException] = asyncio.Queue()
        self._handshaking: set[FrameProtocol] = set()
        self._closed = False

    @property
    def address(self) -> Any:
        """The address this listener is bound to."""
        return self._address

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    async def start(self) -> None:
        """Start accepting clients (accept() does this on first use)."""
        if self._closed:
            raise OSError("listener is closed")
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        if self._socket.family == socket.AF_UNIX:
            start = loop.create_unix_server
        else:
            start = loop.create_server  # type: ignore[assignment]
        self._server = await start(
            self._protocol, sock=self._socket, ssl=self._ssl, backlog=self._backlog
        )

    async def accept(self, timeout: float | None = None) -> AsyncConnection:
        """The next client that connected (and proved the key)."""
        await self.start()
        async with asyncio.timeout(timeout):
            accepted = await self._accepted.get()
        if isinstance(accepted, BaseException):
            raise accepted
        return accepted

    def close(self) -> None:
        """Stop listening, drop unfinished handshakes, remove a Unix socket's file."""
        if self._closed:
            return
        self._closed = True
        for protocol in list(self._handshaking):
            protocol.abort()
        if self._server is not None:
            self._server.close()
        else:
            self._socket.close()
        unlink, self._unlink = self._unlink, None
        if unlink is not None:
            unlink()

    async def wait_closed(self) -> None:
        """Wait until the listening socket is closed."""
        if self._server is not None:
            await self._server.wait_closed()

    def _protocol(self) -> FrameProtocol:
        """A new client: start its handshake, and hand it on once it is done."""
        handshake = None
        if self._authkey is not None:
            handshake = FramedHandshake(
                self._authkey, Role.LISTENER, digest=self._digest, allow_legacy=self._allow_legacy
            )
        protocol = FrameProtocol(self._max_message_size, handshake)
        self._handshaking.add(protocol)
        asyncio.get_running_loop().create_task(self._authenticate(protocol))
        return protocol

    async def _authenticate(self, protocol: FrameProtocol) -> None:
        try:
            async with asyncio.timeout(self._handshake_timeout):
                await protocol.authenticated
        except AuthenticationError as exc:
            self._accepted.put_nowait(exc)
        except (OSError, EOFError):
            protocol.abort()  # out of time, or hung up: drop it
        else:
            self._accepted.put_nowait(AsyncConnection(protocol, serializer=self._serializer))
        finally:
            self._handshaking.discard(protocol)


class Server:
    """What serve() returns: runs ``handler(conn)`` for each client until closed."""

    def __init__(self, listener: Listener, handler: Handler) -> None:
        self._listener = listener
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept_forever())

    @property
    def address(self) -> Any:
        """The address the server listens on."""
        return self._listener.address

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    async def _accept_forever(self) -> None:
        while True:
            try:
                conn = await self._listener.accept()
            except AuthenticationError:
                continue  # that client is gone; the others are served
            task = asyncio.get_running_loop().create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: AsyncConnection) -> None:
        async with conn:
            with contextlib.suppress(EOFError, ConnectionError):
                await self._handler(conn)

    async def serve_forever(self) -> None:
        """Serve until the server is closed (or this call is cancelled)."""
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting

    def close(self) -> None:
        """Stop accepting and cancel the handlers still running."""
        self._accepting.cancel()
        self._listener.close()
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the listener and every handler have finished."""
        await self._listener.wait_closed()
        await asyncio.gather(self._accepting, *self._tasks, return_exceptions=True)


async def serve(
    handler: Handler,
    address: Any = None,
    *,
    family: str | None = None,
    backlog: int = 100,
    authkey: bytes | None = None,
    handshake_timeout: float | None = HANDSHAKE_TIMEOUT,
    max_message_size: int | None = None,
    serializer: str | Serializer | None = None,
    digest: str = "sha256",
    allow_legacy_auth: bool = True,
    ssl: ssl_module.SSLContext | None = None,
) -> Server:
    """Listen at ``address`` and run ``await handler(conn)`` for each authenticated client.

    The connection is closed when the handler returns; a client hanging up
    (EOFError) ends its handler quietly.
    """
    listener = Listener(
        address,
        family,
        backlog,
        authkey,
        handshake_timeout=handshake_timeout,
        max_message_size=max_message_size,
        serializer=serializer,
        digest=digest,
        allow_legacy_auth=allow_legacy_auth,
        ssl=ssl,
    )
    await listener.start()
    return Server(listener, handler)
