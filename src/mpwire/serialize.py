"""Object serialization for ``send()`` and ``recv()``, chosen with ``serializer=``.

``"pickle"`` (the default) pickles as multiprocessing does: with the reducers
registered on ``multiprocessing.reduction.ForkingPickler`` (connections,
sockets, and whatever users register), so a Connection can travel inside a
message. Protocol 5 (every CPython since 3.8 reads it) writes large buffers
such as numpy arrays without the extra copy that protocol 4 makes.

Unpickling data from a peer runs code of the peer's choosing: plain pickle
from a peer you do not trust is remote code execution. ``"restricted-pickle"``
rebuilds only an allowlist of types and refuses every other global;
``"json"`` and ``"msgpack"`` carry plain data only. Any object with
``dumps(obj)`` and ``loads(data)`` is a serializer too.
"""

from __future__ import annotations

import builtins
import copyreg
import io
import json
import pickle
import pickletools
import struct
from collections import ChainMap
from collections.abc import Callable, Iterable
from multiprocessing.reduction import ForkingPickler
from typing import Any, Protocol

__all__ = [
    "JSON",
    "PICKLE",
    "PROTOCOL",
    "JsonSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "RestrictedPickle",
    "Serializer",
    "dump_parts",
    "dump_shared",
    "dumps",
    "get_serializer",
    "inline_buffers",
    "loads",
]

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


class _Parts:
    """A file for the pickler that keeps what it is given by reference.

    The pickler hands a payload of 64 KiB or more (a bytes object's data, a
    bytearray, a numpy array's ``PickleBuffer``) straight to its file's
    ``write()``, between the pickle's own chunks. Keeping a view of it
    instead of a copy lets the sender write the pickle with one vectored
    send from where the data already is: the same bytes on the wire as
    :func:`dumps`, without the copy into one buffer.
    """

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []

    def write(self, data: Any) -> int:
        if type(data) is not bytes:
            view = memoryview(data)
            data = (view if view.c_contiguous else memoryview(view.tobytes("A"))).cast("B")
        self.parts.append(data)
        return len(data)


def dump_parts(obj: Any) -> list[bytes | memoryview]:
    """Pickle ``obj`` as :func:`dumps` does, as a list of parts (large payloads not copied).

    The parts refer to ``obj``'s own buffers: send them before changing it.
    """
    out = _Parts()
    _Pickler(out, PROTOCOL).dump(obj)
    return out.parts


def dump_shared(
    obj: Any, out_of_band: Callable[[memoryview], bool], limit: int
) -> tuple[list[bytes | memoryview], list[memoryview]]:
    """Pickle ``obj`` with its first ``limit`` buffers that ``out_of_band`` picks out of band.

    Returns the pickle's parts (as :func:`dump_parts`) and the out-of-band
    buffers, which ``pickle.loads(..., buffers=)`` takes back in order. Only
    buffers that pickle as a ``PickleBuffer`` can go out of band: numpy
    arrays, and ``PickleBuffer`` objects of your own.
    """
    out = _Parts()
    shared: list[memoryview] = []

    def in_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: the pickler says why
            return True
        if len(shared) == limit or not out_of_band(view):
            return True
        shared.append(view)
        return False

    _Pickler(out, PROTOCOL, buffer_callback=in_band).dump(obj)
    return out.parts, shared


_FRAME = pickle.FRAME[0]
_NEXT_BUFFER = pickle.NEXT_BUFFER[0]
_READONLY_BUFFER = pickle.READONLY_BUFFER[0]
_LENGTH8 = struct.Struct("<Q").pack


def inline_buffers(head: bytes, buffers: list[Any]) -> bytes:
    """The pickle ``head`` with its out-of-band ``buffers`` written in band.

    What a protocol-5 pickler writes without a buffer callback (without the
    optional FRAME hints), so ``pickle.loads`` of the result needs no
    ``buffers=``; it is built from the opcodes, without unpickling anything.
    """
    pieces: list[Any] = []
    copied = 0
    taken = iter(buffers)
    for _opcode, _arg, pos in pickletools.genops(head):
        assert pos is not None  # always known for bytes
        code = head[pos]
        if code in (_FRAME, _NEXT_BUFFER, _READONLY_BUFFER):
            pieces.append(head[copied:pos])
            copied = pos + (9 if code == _FRAME else 1)
        if code == _NEXT_BUFFER:
            data = memoryview(next(taken)).cast("B")
            readonly = head[pos + 1 : pos + 2] == pickle.READONLY_BUFFER
            pieces += (pickle.BINBYTES8 if readonly else pickle.BYTEARRAY8, _LENGTH8(data.nbytes))
            pieces.append(data)
    pieces.append(head[copied:])
    out = io.BytesIO()
    out.seek(sum(map(len, pieces)) - 1)
    out.write(b"\0")  # sized once, so getvalue() hands over the bytes without a copy
    out.seek(0)
    for piece in pieces:
        out.write(piece)
    return out.getvalue()


loads = pickle.loads
"""Unpickle one message."""


class Serializer(Protocol):
    """What ``serializer=`` takes: turns objects into message bytes and back."""

    def dumps(self, obj: Any) -> bytes | bytearray | memoryview: ...

    def loads(self, data: bytes) -> Any: ...


class PickleSerializer:
    """Pickle, exactly as the stdlib's ``send()``/``recv()`` (the default)."""

    name = "pickle"

    def dumps(self, obj: Any) -> memoryview:
        return dumps(obj)

    def loads(self, data: bytes, buffers: Iterable[Any] | None = None) -> Any:
        return loads(data, buffers=buffers)

    def unpickler(self, file: Any, buffers: Iterable[Any] | None = None) -> pickle.Unpickler:
        """An unpickler reading ``file``, for messages unpickled as they arrive."""
        return pickle.Unpickler(file, buffers=buffers)

    def __reduce__(self) -> str:
        return "PICKLE"


PICKLE = PickleSerializer()

_SAFE_BUILTINS = frozenset(
    {"bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list"}
    | {"range", "set", "slice", "str", "tuple"}
)
_NUMPY_GLOBALS = frozenset(
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
        (f"{core}.numeric", "_frombuffer"),
    )
) | {("numpy", "ndarray"), ("numpy", "dtype")}


class RestrictedPickle(PickleSerializer):
    """Pickle that rebuilds only allowed types and refuses any other global.

    Allowed by default: the builtin scalars and containers (they need no
    global at all, or only ``builtins.set`` and the like), plus numpy arrays
    and dtypes when ``numpy`` is true (object arrays' elements are checked
    like everything else). ``allow`` adds classes (or functions) of your own,
    given as objects or as ``"module.qualname"`` strings. Anything else raises
    ``pickle.UnpicklingError`` naming the refused global, before it is looked up.
    """

    name = "restricted-pickle"

    def __init__(self, allow: Iterable[object | str] = (), *, numpy: bool = True) -> None:
        allowed = {("builtins", name) for name in _SAFE_BUILTINS}
        if numpy:
            allowed |= _NUMPY_GLOBALS
        for entry in allow:
            if isinstance(entry, str):
                module, _, name = entry.rpartition(".")
            else:
                module, name = entry.__module__, entry.__qualname__  # type: ignore[attr-defined]
            allowed.add((module, name))
        self.allowed = frozenset(allowed)

    def loads(self, data: bytes, buffers: Iterable[Any] | None = None) -> Any:
        return self.unpickler(io.BytesIO(data), buffers).load()

    def unpickler(self, file: Any, buffers: Iterable[Any] | None = None) -> pickle.Unpickler:
        return _RestrictedUnpickler(file, self.allowed, buffers)

    def __reduce__(self) -> Any:
        allow = [f"{module}.{name}" for module, name in sorted(self.allowed)]
        return _restricted, (allow,)


def _restricted(allow: list[str]) -> RestrictedPickle:
    return RestrictedPickle(allow, numpy=False)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(
        self, file: Any, allowed: frozenset[tuple[str, str]], buffers: Iterable[Any] | None
    ) -> None:
        super().__init__(file, buffers=buffers)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(
                f"refused to unpickle {module}.{name}: not an allowed type "
                "(pass it in RestrictedPickle(allow=[...]) if you trust it)"
            )
        if module == "builtins":
            return getattr(builtins, name)
        return super().find_class(module, name)


class JsonSerializer:
    """JSON text in UTF-8: plain data only (dicts, lists, str, numbers, bools, None)."""

    name = "json"

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


JSON = JsonSerializer()


class MsgpackSerializer:
    """MessagePack (the ``msgpack`` extra): plain data, bytes kept apart from str."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError:
            raise ImportError(
                "serializer='msgpack' needs the msgpack package: pip install 'mpwire[msgpack]'"
            ) from None
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb

    def dumps(self, obj: Any) -> bytes:
        return self._packb(obj, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> Any:
        return self._unpackb(data, raw=False)

    def __reduce__(self) -> Any:
        return MsgpackSerializer, ()


def get_serializer(spec: str | Serializer | None) -> Serializer:
    """The serializer that ``serializer=spec`` names (None: pickle)."""
    if spec is None or spec == "pickle":
        return PICKLE
    if spec == "restricted-pickle":
        return RestrictedPickle()
    if spec == "json":
        return JSON
    if spec == "msgpack":
        return MsgpackSerializer()
    if isinstance(spec, str) or not (hasattr(spec, "dumps") and hasattr(spec, "loads")):
        raise ValueError(
            f"unknown serializer {spec!r}: use 'pickle', 'restricted-pickle', 'json', "
            "'msgpack', or an object with dumps() and loads()"
        )
    return spec
