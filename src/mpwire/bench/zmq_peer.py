"""pyzmq behind the Listener/Client shape the benchmark drives: the "pyzmq" implementation.

A ``zmq.PAIR`` socket per side, over ``ipc://`` for a path and ``tcp://`` for
``(host, port)``. ``send_bytes``/``recv_bytes`` are single-frame messages.
``send(obj)`` is pyzmq's zero-copy idiom: a protocol-5 pickle whose
out-of-band buffers (a numpy array's data) go as further frames of one
multipart message with ``copy=False``, and ``recv()`` unpickles over the
received frames' memory. zmq has no multiprocessing-style authkey, so the key
is accepted and ignored: the figures compare the transport, not the handshake.
Imported only in the benchmark's child processes, and only when pyzmq is installed.
"""

from __future__ import annotations

import pickle
from typing import Any

import zmq

__all__ = ["Client", "Connection", "Listener"]

LINGER_MS = 5_000
"""How long close() waits for queued messages to leave (zmq sends from a background thread)."""


def _endpoint(address: Any) -> str:
    if isinstance(address, str):
        return f"ipc://{address}"
    host, port = address
    return f"tcp://{host}:{port or '*'}"


class Connection:
    """One end of a PAIR socket, with multiprocessing.connection's method names."""

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self._socket = socket

    def send_bytes(self, data: bytes) -> None:
        self._socket.send(data)

    def recv_bytes(self) -> bytes:
        return self._socket.recv()

    def send(self, obj: Any) -> None:
        buffers: list[pickle.PickleBuffer] = []
        head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        self._socket.send_multipart([head, *(b.raw() for b in buffers)], copy=False)

    def recv(self) -> Any:
        head, *frames = self._socket.recv_multipart(copy=False)
        return pickle.loads(head.buffer, buffers=[frame.buffer for frame in frames])

    def close(self) -> None:
        self._socket.close(linger=LINGER_MS)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Listener:
    """Binds a PAIR socket; ``accept()`` hands it over (a PAIR socket has one peer)."""

    def __init__(self, address: Any, authkey: bytes | None = None, backlog: int = 1) -> None:
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PAIR)
        self._socket.bind(_endpoint(address))
        endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if isinstance(address, str):
            self.address: Any = address
        else:
            host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
            self.address = (host, int(port))

    def accept(self) -> Connection:
        return Connection(self._socket)

    def close(self) -> None:
        self._socket.close(linger=LINGER_MS)


def Client(address: Any, authkey: bytes | None = None) -> Connection:
    """A PAIR socket connected to ``address``."""
    socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PAIR)
    socket.connect(_endpoint(address))
    return Connection(socket)
