"""The sans-I/O core: frames and the authkey handshake, with no sockets or threads.

Both front ends (``mpwire.sync`` and, later, ``mpwire.asyncio``) drive these
objects with their own I/O, so the wire format lives in exactly one place.
"""

from .frames import FrameDecoder, encode_header
from .handshake import Handshake, Role

__all__ = ["FrameDecoder", "Handshake", "Role", "encode_header"]
