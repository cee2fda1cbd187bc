"""Managers on mpwire: the ``serializer="mpwire"`` choice of multiprocessing's managers.

multiprocessing's managers pick their Listener and Client by the name of a
serializer, in ``multiprocessing.managers.listener_client``; importing this
module adds ``"mpwire"`` there (nothing else changes). The name travels with
every proxy, so a process that unpickles one imports this module first: the
name is a ``str`` that pickles as a call to :func:`serializer`.
"""

from __future__ import annotations

from multiprocessing import managers

from ..sync.listener import Client, Listener

__all__ = ["SERIALIZER", "serializer"]


class _Name(str):
    __slots__ = ()

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return serializer, ()


SERIALIZER = _Name("mpwire")
"""The serializer name that gives a manager, its server and its proxies mpwire connections."""


def serializer() -> str:
    """:data:`SERIALIZER`, with ``listener_client`` knowing it (what an unpickled name calls)."""
    return SERIALIZER


managers.listener_client[SERIALIZER] = (Listener, Client)  # type: ignore[attr-defined]
