"""Drop-in replacement for ``multiprocessing.connection``.

``from mpwire import connection`` in place of ``from multiprocessing import
connection`` and nothing else changes: the same names, signatures, defaults,
exceptions and bytes on the wire, so either end may be the stdlib's.
"""

from multiprocessing import AuthenticationError as AuthenticationError
from multiprocessing import BufferTooShort as BufferTooShort

from .protocol.handshake import CHALLENGE as CHALLENGE
from .protocol.handshake import FAILURE as FAILURE
from .protocol.handshake import MESSAGE_LENGTH as MESSAGE_LENGTH
from .protocol.handshake import WELCOME as WELCOME
from .protocol.handshake import create_response, verify_response
from .sync.addresses import BUFSIZE as BUFSIZE
from .sync.addresses import CONNECTION_TIMEOUT as CONNECTION_TIMEOUT
from .sync.addresses import address_type as address_type
from .sync.addresses import arbitrary_address as arbitrary_address
from .sync.addresses import default_family as default_family
from .sync.addresses import families as families
from .sync.auth import answer_challenge as answer_challenge
from .sync.auth import deliver_challenge as deliver_challenge
from .sync.connection import Connection as Connection
from .sync.listener import Client, Listener
from .sync.pipe import Pipe
from .sync.sharing import rebuild_connection as rebuild_connection
from .sync.sharing import reduce_connection as reduce_connection
from .sync.wait import wait
from .sync.wrapper import ConnectionWrapper as ConnectionWrapper
from .sync.wrapper import XmlClient as XmlClient
from .sync.wrapper import XmlListener as XmlListener

__all__ = ["Client", "Listener", "Pipe", "wait"]

# The names CPython's own tests and older code reach for.
_CHALLENGE = CHALLENGE
_WELCOME = WELCOME
_FAILURE = FAILURE
_create_response = create_response
_verify_challenge = verify_response
