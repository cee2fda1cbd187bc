"""concurrent.futures' process-pool call queue on mpwire (what install() puts in its place)."""

from __future__ import annotations

from concurrent.futures import process

from .queues import QueueOnMpwire

__all__: list[str] = []


if issubclass(process._SafeQueue, QueueOnMpwire):
    # concurrent.futures was imported while install() was in effect.
    _SafeQueue = process._SafeQueue
else:

    class _SafeQueue(QueueOnMpwire, process._SafeQueue):  # type: ignore[no-redef]
        """ProcessPoolExecutor's call queue, sending and batching as mpwire's Queue does."""
