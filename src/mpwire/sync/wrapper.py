"""ConnectionWrapper, XmlListener and XmlClient: the stdlib's (undocumented) wrappers.

They carry objects with another serializer (XML-RPC's here) over the same
frames; kept so that code using them from multiprocessing.connection moves
over unchanged.
"""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Callable
from typing import Any

from .connection import Connection
from .listener import Client, Listener

__all__ = ["ConnectionWrapper", "XmlClient", "XmlListener"]


class ConnectionWrapper:
    """A Connection whose send()/recv() use ``dumps``/``loads`` instead of pickle."""

    def __init__(
        self, conn: Connection, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any]
    ) -> None:
        self._conn = conn
        self._dumps = dumps
        self._loads = loads
        self.fileno = conn.fileno
        self.close = conn.close
        self.poll = conn.poll
        self.recv_bytes = conn.recv_bytes
        self.send_bytes = conn.send_bytes

    def send(self, obj: Any) -> None:
        """Send ``obj`` serialized with ``dumps``."""
        self._conn.send_bytes(self._dumps(obj))

    def recv(self) -> Any:
        """Receive an object serialized with ``dumps``."""
        return self._loads(self._conn.recv_bytes())


def _xml_dumps(obj: Any) -> bytes:
    return xmlrpc.client.dumps((obj,), None, None, None, True).encode("utf-8")


def _xml_loads(data: bytes) -> Any:
    (obj,), _ = xmlrpc.client.loads(data.decode("utf-8"))
    return obj


class XmlListener(Listener):
    """A Listener whose connections carry XML-RPC-serialized objects."""

    def accept(self) -> ConnectionWrapper:  # type: ignore[override]
        """Accept a connection, wrapped for XML-RPC objects."""
        return ConnectionWrapper(Listener.accept(self), _xml_dumps, _xml_loads)


def XmlClient(*args: Any, **kwargs: Any) -> ConnectionWrapper:
    """Client() wrapped for XML-RPC objects."""
    return ConnectionWrapper(Client(*args, **kwargs), _xml_dumps, _xml_loads)
