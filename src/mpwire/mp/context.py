"""Multiprocessing contexts on mpwire: :func:`get_context`.

A context of multiprocessing's (fork, spawn or forkserver) whose Pipe, Queue,
JoinableQueue, SimpleQueue, Pool and Manager run on mpwire, and which has
mpwire's Listener and Client beside them. Nothing global changes: pass it
where a context goes (``Pool(context=)``, ``ProcessPoolExecutor(mp_context=)``)
or call its methods. Other code in the program keeps the stdlib's classes.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import context, managers
from typing import Any

from ..sync.connection import Connection
from ..sync.listener import Client, Listener
from ..sync.pipe import Pipe
from . import pool, queues
from .managers import SERIALIZER

__all__ = ["ForkContext", "ForkServerContext", "SpawnContext", "get_context"]


class _OnMpwire(context.BaseContext):
    """What a context of mpwire's changes: the classes it makes."""

    Listener = Listener
    Client = staticmethod(Client)

    def get_context(self, method: str | None = None) -> Any:
        return self if method is None else get_context(method)

    def Pipe(self, duplex: bool = True) -> tuple[Connection, Connection]:  # type: ignore[override]
        return Pipe(duplex)

    def Queue(self, maxsize: int = 0) -> queues.Queue:
        return queues.Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize: int = 0) -> queues.JoinableQueue:
        return queues.JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self) -> queues.SimpleQueue:
        return queues.SimpleQueue(ctx=self.get_context())

    def Pool(
        self,
        processes: int | None = None,
        initializer: Any = None,
        initargs: Any = (),
        maxtasksperchild: int | None = None,
    ) -> pool.Pool:
        return pool.Pool(
            processes, initializer, initargs, maxtasksperchild, context=self.get_context()
        )

    def Manager(self) -> managers.SyncManager:
        manager = managers.SyncManager(ctx=self.get_context(), serializer=SERIALIZER)
        manager.start()
        return manager


class ForkContext(_OnMpwire, context.ForkContext):
    """The fork start method, on mpwire."""


class SpawnContext(_OnMpwire, context.SpawnContext):
    """The spawn start method, on mpwire."""


class ForkServerContext(_OnMpwire, context.ForkServerContext):
    """The forkserver start method, on mpwire."""


_CONTEXTS: dict[str, _OnMpwire] = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
    "forkserver": ForkServerContext(),
}


def on_mpwire(name: str) -> Any:
    """The method ``name`` of mpwire's contexts (what install() gives the stdlib's)."""
    return vars(_OnMpwire)[name]


def get_context(method: str | None = None) -> Any:
    """A multiprocessing context for ``method`` whose classes run on mpwire.

    ``method`` is ``"fork"``, ``"spawn"`` or ``"forkserver"``; None means the
    start method multiprocessing would use now (the one set with
    ``set_start_method()``, else the platform's default). The same API as
    :func:`multiprocessing.get_context`, and the same errors.
    """
    if method is None:
        method = multiprocessing.get_start_method(allow_none=True)
        if method is None:
            method = multiprocessing.get_all_start_methods()[0]
    try:
        ctx = _CONTEXTS[method]
    except KeyError:
        raise ValueError(f"cannot find context for {method!r}") from None
    ctx._check_available()
    return ctx
