"""The asyncio front end: the same connections and wire format, from coroutines.

An asyncio server here serves stdlib clients, mpwire blocking clients and
asyncio clients alike, and ``connect()`` reaches any of their listeners.
"""

from .client import connect, wrap
from .connection import AsyncConnection
from .server import Listener, Server, serve

__all__ = ["AsyncConnection", "Listener", "Server", "connect", "serve", "wrap"]
