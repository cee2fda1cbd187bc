"""Drop-in replacement for ``multiprocessing.connection``.

``from mpwire import connection`` in place of ``from multiprocessing import
connection`` and nothing else changes: the same names, signatures, defaults,
exceptions and bytes on the wire, so either end may be the stdlib's.
"""

from multiprocessing import AuthenticationError, BufferTooShort

from .protocol.handshake import (
    CHALLENGE,
    FAILURE,
    MESSAGE_LENGTH,
    WELCOME,
    create_response,
    verify_response,
)
from .sync.addresses import (
    BUFSIZE,
    CONNECTION_TIMEOUT,
    address_type,
    arbitrary_address,
    default_family,
    families,
)
from .sync.auth import answer_challenge, deliver_challenge
from .sync.connection import Connection, rebuild_connection, reduce_connection
from .sync.listener import Client, Listener
from .sync.pipe import Pipe
from .sync.wait import wait

__all__ = ["Client", "Listener", "Pipe", "wait"]

# The names CPython's own tests and older code reach for.
_CHALLENGE = CHALLENGE
_WELCOME = WELCOME
_FAILURE = FAILURE
_create_response = create_response
_verify_challenge = verify_response

__names_for_linters = (
    AuthenticationError,
    BufferTooShort,
    BUFSIZE,
    CONNECTION_TIMEOUT,
    MESSAGE_LENGTH,
    address_type,
    answer_challenge,
    arbitrary_address,
    default_family,
    deliver_challenge,
    families,
    Connection,
    rebuild_connection,
    reduce_connection,
)
