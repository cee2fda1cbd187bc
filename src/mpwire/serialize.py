"""Object serialization for ``send()`` and ``recv()``.

Objects are pickled as multiprocessing pickles them: with the reducers
registered on ``multiprocessing.reduction.ForkingPickler`` (connections,
sockets, and whatever users register), so a Connection can travel inside a
message. Protocol 5 (every CPython since 3.8 reads it) writes large buffers
such as numpy arrays without the extra copy that protocol 4 makes.

Unpickling data from a peer runs code of the peer's choosing: only use
``send()``/``recv()`` with peers you trust.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from collections import ChainMap
from multiprocessing.reduction import ForkingPickler
from typing import Any

__all__ = ["PROTOCOL", "dumps", "loads"]

PROTOCOL = 5


class _Pickler(pickle.Pickler):
    # ForkingPickler copies both tables into a new dict for every message; a
    # live view of them gives the same lookups without the copy.
    dispatch_table: ChainMap[type, Any] = ChainMap(  # noqa: RUF012
        ForkingPickler._extra_reducers,  # type: ignore[attr-defined]
        copyreg.dispatch_table,
    )


def dumps(obj: Any) -> memoryview:
    """Pickle ``obj`` as multiprocessing does; the result may be sent as one frame."""
    buf = io.BytesIO()
    _Pickler(buf, PROTOCOL).dump(obj)
    return buf.getbuffer()


loads = pickle.loads
"""Unpickle one message."""
