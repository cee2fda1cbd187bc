"""install() and uninstall(): all of multiprocessing on mpwire, for the whole program.

install() points multiprocessing's own names at mpwire's (``Pipe``,
``Listener``, ``Client``, ``wait``, the authkey challenge, the managers'
``"pickle"`` and ``"xmlrpclib"`` connections), and every other module's
binding of those names too (``from multiprocessing.connection import wait``
before the call). The queues come from the contexts' ``Queue()``,
``JoinableQueue()`` and ``SimpleQueue()``, which make mpwire's, and
ProcessPoolExecutor's call queue is mpwire's; the stdlib's queue classes stay
as they are, since their own code and subclasses name them. Children started
by fork inherit it; those started by spawn or forkserver install it before
they unpickle anything of their parent's, through the preparation data every
child reads first. uninstall() puts back exactly what install() replaced,
where it is still in place.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import types
from multiprocessing import connection, context, managers, spawn
from typing import Any

from .. import sync
from ..sync import wrapper
from .context import on_mpwire

__all__ = ["install", "installed", "uninstall"]

_lock = threading.Lock()
_undo: list[tuple[Any, str, Any, Any]] | None = None
"""What install() changed: (namespace or class, name, original, replacement), in order."""


class _InstallInChild:
    """A marker in a child's preparation data: unpickling it installs mpwire there."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return install, ()


def _preparation_data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = _ORIGINAL_PREPARATION_DATA(name)
    data["mpwire"] = _InstallInChild()
    return data


_ORIGINAL_PREPARATION_DATA = spawn.get_preparation_data


_QUEUE_METHODS = ("Queue", "JoinableQueue", "SimpleQueue")


def _replacements() -> dict[int, tuple[Any, Any]]:
    """The stdlib objects install() replaces, by id: (original, replacement)."""
    pairs = [
        (connection.Pipe, sync.Pipe),
        (connection.Listener, sync.Listener),
        (connection.Client, sync.Client),
        (connection.wait, sync.wait),
        (connection.deliver_challenge, sync.deliver_challenge),
        (connection.answer_challenge, sync.answer_challenge),
        (connection.XmlListener, wrapper.XmlListener),  # type: ignore[attr-defined]
        (connection.XmlClient, wrapper.XmlClient),  # type: ignore[attr-defined]
        (_ORIGINAL_PREPARATION_DATA, _preparation_data),
    ]
    # multiprocessing.Queue() and the like: the default context's methods, bound at import.
    default = context._default_context
    for name in _QUEUE_METHODS:
        pairs.append((vars(multiprocessing)[name], types.MethodType(on_mpwire(name), default)))
    # Imported here (it is small) so that its call queue is replaced even when the program
    # imports it after install(): it subclasses the stdlib's Queue when first imported.
    from concurrent.futures import process as futures

    from . import futures as mpwire_futures

    pairs.append((futures._SafeQueue, mpwire_futures._SafeQueue))
    return {id(original): (original, replacement) for original, replacement in pairs}


def _namespaces() -> list[dict[str, Any]]:
    """Every loaded module's globals but mpwire's own."""
    found: list[dict[str, Any]] = []
    for name, module in list(sys.modules.items()):
        if name == "mpwire" or name.startswith("mpwire."):
            continue
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            found.append(namespace)
    return found


def install() -> None:
    """Run all of multiprocessing on mpwire, in this process and the children it starts.

    Idempotent and thread-safe; :func:`uninstall` undoes it.
    """
    global _undo
    with _lock:
        if _undo is not None:
            return
        table = _replacements()
        undo: list[tuple[Any, str, Any, Any]] = []
        for namespace in _namespaces():
            for name, value in list(namespace.items()):
                found = table.get(id(value))
                if found is not None and found[0] is value:
                    namespace[name] = found[1]
                    undo.append((namespace, name, value, found[1]))
        table_of_managers: dict[str, Any] = managers.listener_client  # type: ignore[attr-defined]
        for name, pair in list(table_of_managers.items()):
            ours = tuple(table.get(id(item), (item, item))[1] for item in pair)
            if ours != pair:
                table_of_managers[name] = ours
                undo.append((table_of_managers, name, pair, ours))
        for name in _QUEUE_METHODS:
            method = on_mpwire(name)
            undo.append((context.BaseContext, name, vars(context.BaseContext)[name], method))
            setattr(context.BaseContext, name, method)
        _undo = undo


def uninstall() -> None:
    """Put back what :func:`install` replaced (where nothing else replaced it since)."""
    global _undo
    with _lock:
        if _undo is None:
            return
        for namespace, name, original, replacement in reversed(_undo):
            if isinstance(namespace, dict):
                if namespace.get(name) is replacement:
                    namespace[name] = original
            elif vars(namespace).get(name) is replacement:
                setattr(namespace, name, original)
        _undo = None


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _undo is not None
