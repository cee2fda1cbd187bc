"""The scenarios: what each measures, with which parameters, reported in which units."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SCENARIOS", "Metric", "Scenario", "select"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class Metric:
    """One figure a scenario reports: ``key`` in the measuring child's result."""

    key: str
    unit: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class Scenario:
    """A measurement, run once per round and implementation in a fresh process pair.

    ``kind`` picks the server and client functions in :mod:`benchmarks._worker`;
    ``measured_by`` is the role whose result holds the metrics.
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

    def parameters(self, quick: bool) -> dict[str, Any]:
        """The parameters for a full or a quick run."""
        return {**self.params, **(self.quick_params if quick else {})}


_PINGPONG = {"size": 64, "count": 40_000, "warmup": 1_000, "batches": 8}
_PINGPONG_QUICK = {"count": 6_000, "warmup": 500, "batches": 3}
_STREAM = {"size": 1024, "count": 200_000, "warmup": 5_000, "batches": 5}
_STREAM_QUICK = {"count": 40_000, "warmup": 2_000, "batches": 3}
_BULK = {"size": 64 * MiB, "transfers": 6}
_BULK_QUICK = {"transfers": 3}
_CONNECT = {"count": 200, "warmup": 3, "max_seconds": 3.0}
_CONNECT_QUICK = {"count": 50, "max_seconds": 1.0}
_BULK_METRICS = (
    Metric("rate", "GB/s"),
    Metric("rss_ratio", "peak RSS / payload", higher_is_better=False),
)


def _both(name: str, **kwargs: Any) -> list[Scenario]:
    return [Scenario(f"{name}/{t}", transport=t, **kwargs) for t in ("unix", "tcp")]


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
    *_both(
        "stream-1KiB",
        kind="stream",
        description="one-way stream of 1 KiB send_bytes messages, timed on the receiver",
        params=_STREAM,
        quick_params=_STREAM_QUICK,
        measured_by="server",
        metrics=(Metric("rate", "messages/s"),),
    ),
    Scenario(
        "bytes-64MiB/unix",
        kind="bulk-bytes",
        transport="unix",
        description="one 64 MiB send_bytes/recv_bytes at a time; receiver's peak RSS growth",
        params=_BULK,
        quick_params=_BULK_QUICK,
        measured_by="server",
        metrics=_BULK_METRICS,
    ),
    Scenario(
        "numpy-64MiB/unix",
        kind="bulk-numpy",
        transport="unix",
        description="a 64 MiB float64 array with send/recv; receiver's peak RSS growth",
        params=_BULK,
        quick_params=_BULK_QUICK,
        measured_by="server",
        metrics=_BULK_METRICS,
    ),
    *_both(
        "connect-auth",
        kind="connect",
        description="Client() with authkey handshake, one send/recv round trip, close",
        params=_CONNECT,
        quick_params=_CONNECT_QUICK,
        metrics=(Metric("rate", "connections/s"),),
    ),
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
