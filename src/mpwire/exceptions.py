"""Exception types.

mpwire raises multiprocessing's own classes where the stdlib raises them, so
existing ``except`` clauses keep working, and subclasses of them (or of
``OSError``, as the stdlib does for framing faults) for the new cases.
"""

from multiprocessing import AuthenticationError, BufferTooShort

__all__ = [
    "AuthenticationError",
    "BufferTooShort",
    "FrameError",
    "HandshakeTimeout",
    "MessageTooLong",
]


class FrameError(OSError):
    """The byte stream does not hold a valid frame (a corrupt or hostile peer)."""


class MessageTooLong(FrameError):
    """A frame declares a payload longer than the receiver accepts.

    The stdlib raises a plain ``OSError("bad message length")`` here; this is a
    subclass of it that names the declared size and the limit.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"bad message length: {size} bytes declared, limit is {limit}")
        self.size = size
        self.limit = limit


class HandshakeTimeout(TimeoutError, AuthenticationError):
    """The peer did not complete the authkey handshake in time.

    Both a TimeoutError and an AuthenticationError, so either ``except``
    clause catches it. A peer that uses no authkey at all ends this way.
    """
