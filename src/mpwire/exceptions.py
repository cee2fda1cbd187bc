"""Exception types.

mpwire raises multiprocessing's own classes where the stdlib raises them, so
existing ``except`` clauses keep working, and subclasses of them (or of
``OSError``, as the stdlib does for framing faults) for the new cases.
"""

from __future__ import annotations

import ssl
from multiprocessing import AuthenticationError, BufferTooShort

__all__ = [
    "AuthenticationError",
    "BufferTooShort",
    "FrameError",
    "HandshakeTimeout",
    "InsecureListenerWarning",
    "MessageTooLong",
    "TLSError",
    "tls_problem",
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

    @classmethod
    def from_listener(cls, address: object) -> HandshakeTimeout:
        return cls(
            f"the listener at {address!r} did not complete the authkey handshake in time "
            "(is it busy, or does it use no authkey?)"
        )


class InsecureListenerWarning(UserWarning):
    """A listener anyone on the network can reach, with nothing to keep them out.

    Warned when a TCP Listener binds an address other than loopback with no
    authkey: every peer that connects can send pickles, which run code here.
    """


class TLSError(OSError):
    """The TLS handshake failed; the message names the problem (a bad certificate, say)."""


def tls_problem(exc: ssl.SSLError) -> str:
    """What went wrong in a TLS handshake, in words: the certificate check's verdict if any."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if exc.reason:  # OpenSSL's name for it, e.g. PEER_DID_NOT_RETURN_A_CERTIFICATE
        return str(exc.reason).replace("_", " ").lower()
    return str(exc)
