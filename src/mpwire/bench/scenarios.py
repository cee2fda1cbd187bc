"""The scenarios: what each measures, with which parameters, reported in which units."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BASELINE", "CANDIDATE", "MODULES", "SCENARIOS", "Metric", "Scenario", "select"]

MiB = 1024 * 1024

MODULES: dict[str, str] = {
    "stdlib": "multiprocessing.connection",
    "mpwire": "mpwire.connection",
    "mpwire.asyncio": "mpwire.asyncio",
    "pyzmq": "mpwire.bench.zmq_peer",
    "faster-fifo": "faster_fifo",
}
"""What a scenario can compare: name -> module (imported only in the children)."""

BASELINE = "stdlib"
CANDIDATE = "mpwire"
"""The pair most scenarios compare; a scenario may name another (its baseline runs first)."""


@dataclass(frozen=True)
class Metric:
    """One figure a scenario reports: ``key`` in the measuring child's result."""

    key: str
    unit: str
    higher_is_better: bool = True
    compared: bool = True
    """False for a figure shown for both but not a contest (no ratio)."""


PINNED_ROUNDS = 3
"""How many times the rounds asked for a pinned scenario runs (see Scenario)."""


@dataclass(frozen=True)
class Scenario:
    """A measurement, run once per round and implementation in fresh processes.

    ``kind`` picks the server and client functions in :mod:`mpwire.bench._worker`;
    ``measured_by`` is the role whose result holds the metrics, or "all":
    :func:`mpwire.bench.combine.combine` makes one result of the server's and
    every client process's (``params["client_processes"]`` of them, default 1;
    0 for a server that starts the processes it needs itself, with
    multiprocessing, as the shared-reader scenario does).
    ``baseline`` and ``candidate`` name the two implementations compared
    (keys of :data:`MODULES`); ``quick_name`` is the name shown for a
    quick run when the name spells out counts that quick mode changes.
    ``requires`` lists the modules it needs besides mpwire (numpy, zmq): a
    scenario whose modules are not installed is skipped, and says so.

    A ``pinned`` scenario runs ``PINNED_ROUNDS`` times the rounds asked for.
    On one CPU, a round's speed depends on where address-space layout
    randomisation put each process's interpreter: when the two processes'
    copies of libpython land at addresses that alias in the CPU's branch
    predictor, the round runs 20-30% slower, whichever library it measures.
    The median over more pairs of processes covers more placements.
    """

    name: str
    kind: str
    transport: str
    description: str
    params: dict[str, Any]
    quick_params: dict[str, Any]
    measured_by: str = "client"
    pinned: bool = False
    metrics: tuple[Metric, ...] = field(default=(Metric("rate", "round trips/s"),))
    baseline: str = BASELINE
    candidate: str = CANDIDATE
    quick_name: str | None = None
    requires: tuple[str, ...] = ()

    @property
    def implementations(self) -> tuple[str, str]:
        """The two implementations, in the order each round runs them."""
        return (self.baseline, self.candidate)

    def missing(self) -> list[str]:
        """The modules in ``requires`` that are not installed."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def rounds(self, asked: int) -> int:
        """How many rounds to run when ``asked`` are: more for a pinned scenario."""
        return asked * PINNED_ROUNDS if self.pinned else asked

    def label(self, quick: bool) -> str:
        """The name to show for a full or a quick run."""
        return (self.quick_name if quick else None) or self.name

    def parameters(self, quick: bool) -> dict[str, Any]:
        """The parameters for a full or a quick run."""
        return {**self.params, **(self.quick_params if quick else {})}


_PINGPONG = {"size": 64, "count": 40_000, "warmup": 1_000, "batches": 8}
_PINGPONG_QUICK = {"count": 6_000, "warmup": 500, "batches": 3}
_STREAM = {"size": 1024, "count": 200_000, "warmup": 5_000, "batches": 5}
_STREAM_QUICK = {"count": 40_000, "warmup": 2_000, "batches": 3}
_SHARED = {**_STREAM, "readers": 4, "start_method": "fork", "client_processes": 0}
"""The 1 KiB stream into one end shared by 4 readers: no client process, the server starts them."""
_MP = {"start_method": "fork", "client_processes": 0}
"""A multiprocessing scenario: no client process, the server starts what it needs (fork)."""
_MP_QUEUE = {**_MP, "count": 100_000, "warmup": 5_000, "batches": 5}
_MP_QUEUE_QUICK = {"count": 10_000, "warmup": 1_000, "batches": 3}
_SIZES = (("64B", 64, 200_000), ("16KiB", 16384, 16_000), ("256KiB", 256 * 1024, 1_000))
"""The stream sizes besides 1 KiB, for throughput against message size (``--plot``)."""
_BULK = {"size": 64 * MiB, "transfers": 6}
_BULK_QUICK = {"transfers": 3}
_CONNECT = {"count": 200, "warmup": 3, "max_seconds": 3.0}
_CONNECT_QUICK = {"count": 50, "max_seconds": 1.0}
_CLIENTS = {
    "clients": 1_000,
    "round_trips": 100,
    "size": 64,
    "warmup": 1,
    "backlog": 1024,
    "client_processes": 2,
}
_CLIENTS_QUICK = {"clients": 200, "round_trips": 20}
_CLIENTS_METRICS = (
    Metric("rate", "round trips/s"),
    Metric("seconds", "total seconds", higher_is_better=False),
    Metric("connect_seconds", "seconds to connect all", higher_is_better=False),
    Metric("replies", "replies checked", compared=False),
    Metric("server_cpus", "server CPUs busy", compared=False),
    Metric("client_cpus", "client CPUs busy", compared=False),
    Metric("other_cpus", "other CPUs busy (not this benchmark)", compared=False),
)
_BULK_METRICS = (
    Metric("rate", "GB/s"),
    Metric("rss_ratio", "peak RSS / payload", higher_is_better=False),
)
_ARRAY_METRICS = (
    *_BULK_METRICS,
    Metric("memcpy_rate", "GB/s copying into fresh memory (the limit)", compared=False),
)
_HUGE = {"size": 256 * MiB, "transfers": 4}
_HUGE_QUICK = {"size": 16 * MiB, "transfers": 3}


def _both(name: str, quick_name: str | None = None, **kwargs: Any) -> list[Scenario]:
    return [
        Scenario(
            f"{name}/{t}",
            transport=t,
            quick_name=quick_name and f"{quick_name}/{t}",
            **kwargs,
        )
        for t in ("unix", "tcp")
    ]


def _stream_1kib(
    name: str, description: str, batch: int | None = None, **kwargs: Any
) -> list[Scenario]:
    """The one-way 1 KiB stream over Unix and TCP, timed on the receiver.

    ``batch``: messages per ``batch()`` block, for the side that has it
    (mpwire); a pyzmq baseline needs zmq.
    """
    return _both(
        name,
        kind="stream",
        description=description,
        params=_STREAM if batch is None else {**_STREAM, "batch": batch},
        quick_params=_STREAM_QUICK,
        measured_by="server",
        metrics=(Metric("rate", "messages/s"),),
        requires=("zmq",) * (kwargs.get("baseline") == "pyzmq"),
        **kwargs,
    )


def _bulk(
    name: str,
    kind: str,
    description: str,
    huge: bool = False,
    transport: str = "unix",
    **kwargs: Any,
) -> Scenario:
    """A one-payload-at-a-time scenario (64 MiB, or 256 MiB if ``huge``), timed on the receiver.

    Arrays need numpy, and a pyzmq baseline needs zmq.
    """
    numpy = kind == "bulk-numpy"
    requires = ("numpy",) * numpy + ("zmq",) * (kwargs.get("baseline") == "pyzmq")
    return Scenario(
        name,
        kind=kind,
        transport=transport,
        description=description,
        params=_HUGE if huge else _BULK,
        quick_params=_HUGE_QUICK if huge else _BULK_QUICK,
        quick_name=name.replace("256MiB", "16MiB") if huge else None,
        measured_by="server",
        metrics=_ARRAY_METRICS if numpy else _BULK_METRICS,
        requires=requires,
        **kwargs,
    )


def _multiprocessing() -> list[Scenario]:
    """multiprocessing's classes end to end (see mpwire.bench.multiproc), all under fork."""
    queues = [
        Scenario(
            f"mp-queue-{name}{versus}/fork",
            kind="mp-queue",
            transport="fork",
            description=f"Queue of small dicts, {how} to 1 consumer, one get() each",
            params={**_MP_QUEUE, "producers": producers},
            quick_params=_MP_QUEUE_QUICK,
            measured_by="server",
            metrics=(Metric("rate", "messages/s"),),
            **extra,
        )
        for name, producers, how in (
            ("1producer", 1, "1 producer"),
            ("4producers", 4, "4 producers"),
        )
        for versus, extra in _AGAINST_FASTER_FIFO
    ]
    arrays = [
        Scenario(
            f"mp-{kind.removeprefix('mp-').removesuffix('-array')}-numpy-64MiB{versus}/fork",
            kind=kind,
            transport="fork",
            description=description,
            params={**_MP, **_BULK},
            quick_params=_BULK_QUICK,
            measured_by="server",
            metrics=_BULK_METRICS,
            **{**extra, "requires": ("numpy", *extra.get("requires", ()))},
        )
        for kind, description, against in (
            (
                "mp-executor-array",
                "a 64 MiB float64 array as a ProcessPoolExecutor argument; worker's peak RSS",
                _AGAINST_FASTER_FIFO[:1],
            ),
            (
                "mp-queue-array",
                "a 64 MiB float64 array through a Queue, on request; receiver's peak RSS",
                _AGAINST_FASTER_FIFO,
            ),
        )
        for versus, extra in against
    ]
    return [
        *queues,
        *(
            Scenario(
                name,
                kind=kind,
                transport="fork",
                description=description,
                params={**_MP, **params},
                quick_params=quick,
                measured_by="server",
                metrics=(Metric("rate", unit),),
            )
            for name, kind, description, params, quick, unit in _MP_RATES
        ),
        *arrays,
    ]


_MP_RATES: tuple[tuple[str, str, str, dict[str, int], dict[str, int], str], ...] = (
    (
        "mp-pool-map-20k/fork",
        "mp-pool-map",
        "Pool(2).map of 20,000 tiny tasks with chunksize=1",
        {"count": 20_000, "warmup": 2_000, "batches": 3, "processes": 2},
        {"count": 2_000, "warmup": 200},
        "tasks/s",
    ),
    (
        "mp-manager-dict/fork",
        "mp-manager-dict",
        "Manager().dict(): one key set and read, alternately",
        {"count": 20_000, "warmup": 1_000, "batches": 5},
        {"count": 2_000, "warmup": 200, "batches": 3},
        "operations/s",
    ),
    (
        "mp-manager-proxies/fork",
        "mp-manager-proxies",
        "Manager().list() proxies created and dropped (connections each)",
        {"count": 1_000, "warmup": 50, "batches": 5},
        {"count": 100, "warmup": 10, "batches": 3},
        "proxies/s",
    ),
)
"""The multiprocessing scenarios measured as a rate: name, kind, description, params, unit."""

_PRODUCERS = (("1producer", 1, "1 producer"), ("4producers", 4, "4 producers"))

_AGAINST_FASTER_FIFO: tuple[tuple[str, dict[str, Any]], ...] = (
    ("", {}),
    ("-vs-faster-fifo", {"baseline": "faster-fifo", "requires": ("faster_fifo",)}),
)
"""A Queue scenario against the stdlib, and the same against faster-fifo's Queue."""


SCENARIOS: list[Scenario] = [
    *_both(
        "pingpong-64B-bytes",
        kind="pingpong-bytes",
        description="send_bytes/recv_bytes round trips of 64 bytes",
        params=_PINGPONG,
        quick_params=_PINGPONG_QUICK,
    ),
    *_both(
        "pingpong-object",
        kind="pingpong-object",
        description="send/recv round trips of a small dict (pickled both ways)",
        params=_PINGPONG,
        quick_params=_PINGPONG_QUICK,
    ),
    Scenario(
        "pingpong-64B-bytes-pinned/unix",
        kind="pingpong-bytes",
        transport="unix",
        description="64-byte round trips with both processes on one CPU: CPU cost per message",
        params=_PINGPONG,
        quick_params=_PINGPONG_QUICK,
        pinned=True,
    ),
    *_stream_1kib(
        "stream-1KiB", "one-way stream of 1 KiB send_bytes messages, timed on the receiver"
    ),
    *(
        Scenario(
            f"stream-1KiB-shared-4readers/{transport}",
            kind="stream-shared",
            transport=transport,
            description=(
                f"the 1 KiB stream into one Pipe({args}) end read by 4 processes, each"
                " recv_bytes() under a shared Lock (as Queue and Pool read): their total rate"
            ),
            params={**_SHARED, "duplex": duplex},
            quick_params=_STREAM_QUICK,
            measured_by="server",
            metrics=(Metric("rate", "messages/s"),),
        )
        for transport, args, duplex in (("pipe", "duplex=False", False), ("duplex-pipe", "", True))
    ),
    *_stream_1kib(
        "stream-1KiB-batched",
        "the 1 KiB stream, mpwire sending 100 messages per conn.batch() block"
        " (the stdlib has no batching: one write per message)",
        batch=100,
    ),
    *(
        Scenario(
            f"stream-{name}/unix",
            kind="stream",
            transport="unix",
            description=f"one-way stream of {name} send_bytes messages: throughput by size",
            params={"size": size, "count": count, "warmup": count // 20, "batches": 3},
            quick_params={"count": count // 4, "warmup": count // 80},
            measured_by="server",
            metrics=(Metric("rate", "messages/s"),),
        )
        for name, size, count in _SIZES
    ),
    _bulk(
        "bytes-64MiB/unix",
        "bulk-bytes",
        "one 64 MiB send_bytes/recv_bytes at a time; receiver's peak RSS growth",
    ),
    _bulk(
        "numpy-64MiB/unix",
        "bulk-numpy",
        "a 64 MiB float64 array with send/recv; receiver's peak RSS growth",
    ),
    *(
        _bulk(
            f"numpy-256MiB/{transport}",
            "bulk-numpy",
            f"a 256 MiB float64 array with send/recv over {how}; receiver's peak RSS growth",
            huge=True,
            transport=transport,
        )
        for transport, how in (
            ("pipe", "Pipe() ends (shared memory for mpwire)"),
            ("unix", "a Unix socket (shared memory for mpwire, agreed with the authkey)"),
            ("tcp", "TCP loopback (no shared memory)"),
        )
    ),
    *_both(
        "connect-auth",
        kind="connect",
        description="Client() with authkey handshake, one send/recv round trip, close",
        params=_CONNECT,
        quick_params=_CONNECT_QUICK,
        metrics=(Metric("rate", "connections/s"),),
    ),
    *_both(
        "pingpong-64B-bytes-asyncio",
        kind="pingpong-bytes",
        description="64-byte round trips, mpwire.asyncio client and server against blocking mpwire",
        params=_PINGPONG,
        quick_params=_PINGPONG_QUICK,
        baseline="mpwire",
        candidate="mpwire.asyncio",
    ),
    Scenario(
        "pingpong-64B-bytes-asyncio-pinned/unix",
        kind="pingpong-bytes",
        transport="unix",
        description="64-byte round trips, asyncio against blocking, on one CPU: CPU cost",
        params=_PINGPONG,
        quick_params=_PINGPONG_QUICK,
        pinned=True,
        baseline="mpwire",
        candidate="mpwire.asyncio",
    ),
    *_both(
        "clients-1000x100",
        quick_name="clients-200x20",
        kind="clients",
        description=(
            "1,000 mpwire.asyncio clients at once (2 processes), 100 checked 64-byte round trips "
            "each; server: stdlib Listener + a thread per client, or mpwire.asyncio serve()"
        ),
        params=_CLIENTS,
        quick_params=_CLIENTS_QUICK,
        measured_by="all",
        metrics=_CLIENTS_METRICS,
        candidate="mpwire.asyncio",
    ),
    Scenario(
        "pingpong-64B-bytes-vs-pyzmq/unix",
        kind="pingpong-bytes",
        transport="unix",
        description="64-byte round trips, mpwire against pyzmq PAIR sockets over ipc://",
        params=_PINGPONG,
        quick_params=_PINGPONG_QUICK,
        baseline="pyzmq",
        requires=("zmq",),
    ),
    *_stream_1kib(
        "stream-1KiB-vs-pyzmq",
        "one-way stream of 1 KiB messages, mpwire against pyzmq PAIR sockets",
        baseline="pyzmq",
    ),
    *_stream_1kib(
        "stream-1KiB-batched-vs-pyzmq",
        "the 1 KiB stream, mpwire sending 100 messages per conn.batch() block"
        " against pyzmq (which batches in its I/O thread)",
        batch=100,
        baseline="pyzmq",
    ),
    _bulk(
        "bytes-64MiB-vs-pyzmq/unix",
        "bulk-bytes",
        "one 64 MiB send_bytes/recv_bytes at a time, mpwire against pyzmq",
        baseline="pyzmq",
    ),
    *(
        _bulk(
            f"numpy-{size}-vs-pyzmq/unix",
            "bulk-numpy",
            f"a {size} float64 array, mpwire send/recv against pyzmq's zero-copy",
            huge=size == "256MiB",
            baseline="pyzmq",
        )
        for size in ("64MiB", "256MiB")
    ),
    *_multiprocessing(),
]
"""Every scenario, in the order they run."""


def select(patterns: list[str] | tuple[str, ...] | str | None) -> list[Scenario]:
    """The scenarios whose name contains any of ``patterns`` (all of them for None)."""
    if patterns is None:
        return list(SCENARIOS)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen = [s for s in SCENARIOS if any(p in s.name for p in patterns)]
    if not chosen:
        names = ", ".join(s.name for s in SCENARIOS)
        raise ValueError(f"no scenario matches {list(patterns)!r}; scenarios: {names}")
    return chosen
