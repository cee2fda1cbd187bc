"""multiprocessing's Pool on mpwire: its queues are mpwire SimpleQueues (from the context)."""

from __future__ import annotations

from multiprocessing import pool
from typing import Any

from ..sync.wait import wait

__all__ = ["Pool"]


class Pool(pool.Pool):
    """multiprocessing's Pool, waiting for its workers and queues with mpwire's wait()."""

    @staticmethod
    def _wait_for_updates(
        sentinels: list[Any], change_notifier: Any, timeout: float | None = None
    ) -> None:
        wait(sentinels, timeout=timeout)
        while not change_notifier.empty():
            change_notifier.get()
