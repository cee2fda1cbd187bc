"""The blocking front end: Connection, Listener, Client, Pipe and wait."""

from .addresses import address_type, arbitrary_address, families
from .auth import answer_challenge, deliver_challenge
from .connection import Connection
from .listener import Client, Listener
from .pipe import Pipe
from .wait import wait

__all__ = [
    "Client",
    "Connection",
    "Listener",
    "Pipe",
    "address_type",
    "answer_challenge",
    "arbitrary_address",
    "deliver_challenge",
    "families",
    "wait",
]
