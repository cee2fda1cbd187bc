"""mpwire: a fast, safe, wire-compatible drop-in for multiprocessing.connection.

``from mpwire import connection`` replaces ``from multiprocessing import
connection``; the package also re-exports the public API directly.
"""

from . import connection
from .exceptions import (
    AuthenticationError,
    BufferTooShort,
    FrameError,
    HandshakeTimeout,
    InsecureListenerWarning,
    MessageTooLong,
    TLSError,
)
from .mp import get_context, install, installed, uninstall
from .sync import (
    Client,
    Connection,
    Listener,
    Pipe,
    answer_challenge,
    deliver_challenge,
    wait,
)
from .sync.shm import SharedBuffer, shared_array

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BufferTooShort",
    "Client",
    "Connection",
    "FrameError",
    "HandshakeTimeout",
    "InsecureListenerWarning",
    "Listener",
    "MessageTooLong",
    "Pipe",
    "SharedBuffer",
    "TLSError",
    "answer_challenge",
    "connection",
    "deliver_challenge",
    "get_context",
    "install",
    "installed",
    "shared_array",
    "uninstall",
    "wait",
]
