"""The multiprocessing scenarios: Queue, Pool, ProcessPoolExecutor and Manager, end to end.

Run in the server role with no client process: this process is the
consumer (or the Pool's, executor's or manager's user) and starts the
processes it needs with multiprocessing (fork). For the ``mpwire``
implementation it calls :func:`mpwire.install` first, as ``mpwire run`` would,
so the program is the same for both; ``faster-fifo`` swaps the Queue for
``faster_fifo.Queue``. Figures are medians over batches (rates) or
transfers (arrays), as for the connection scenarios.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import multiprocessing
import statistics
import time
from typing import Any

__all__ = ["KINDS", "run"]

_perf = time.perf_counter
_TIMEOUT = 60.0
_QUEUE_BYTES = 256 * 1024 * 1024
"""faster-fifo's buffer: room for a 64 MiB array's pickle, and for queues of small objects."""


def _batches(count: int, batches: int) -> list[int]:
    base, extra = divmod(count, batches)
    return [base + (i < extra) for i in range(batches)]


def _time_batches(count: int, batches: int, run_batch: Any) -> list[float]:
    """The seconds ``run_batch(size)`` takes for each of ``batches`` parts of ``count``."""
    seconds = []
    for size in _batches(count, batches):
        t0 = _perf()
        run_batch(size)
        seconds.append(_perf() - t0)
    return seconds


def _rates(count: int, batches: int, seconds: list[float]) -> dict[str, Any]:
    rates = [n / s for n, s in zip(_batches(count, batches), seconds, strict=True)]
    return {"rate": statistics.median(rates), "batch_rates": rates, "count": count}


def _queue(impl: str, ctx: Any) -> Any:
    if impl == "faster-fifo":
        return importlib.import_module("faster_fifo").Queue(max_size_bytes=_QUEUE_BYTES)
    return ctx.Queue()


def _get(queue: Any) -> Any:
    return queue.get(timeout=_TIMEOUT)


class _Consumer:
    """Takes the producers' objects, counting the None each sends when done."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.ended = 0

    def take(self) -> Any:
        while (obj := _get(self.queue)) is None:
            self.ended += 1
        return obj


# -- queue of small objects ----------------------------------------------------------------------


def _produce(queue: Any, first: int, count: int) -> None:
    for i in range(first, first + count):
        queue.put({"id": i, "args": [1, 2, 3], "name": "x"})
    queue.put(None)


def queue_small(impl: str, ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``producers`` processes put small dicts; this process gets them one at a time."""
    producers, count, warmup, batches = (
        params["producers"],
        params["count"],
        params["warmup"],
        params["batches"],
    )
    queue = _queue(impl, ctx)
    share = (count + warmup) // producers
    procs = [
        ctx.Process(target=_produce, args=(queue, n * share, share), daemon=True)
        for n in range(producers)
    ]
    for proc in procs:
        proc.start()
    consumer = _Consumer(queue)
    try:
        for _ in range(share * producers - count):
            consumer.take()
        seconds = _time_batches(count, batches, lambda size: [consumer.take() for _ in range(size)])
        while consumer.ended < producers:
            if _get(queue) is not None:
                raise RuntimeError("objects left over after the count")
            consumer.ended += 1
    finally:
        for proc in procs:
            proc.join(_TIMEOUT)
            if proc.is_alive():
                proc.kill()
    return _rates(count, batches, seconds)


# -- Pool.map --------------------------------------------------------------------------------


def _task(x: int) -> int:
    return x + 1


def pool_map(impl: str, ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``Pool(processes).map`` of ``count`` tiny tasks with chunksize 1, ``batches`` times."""
    count, batches = params["count"], params["batches"]
    with ctx.Pool(params["processes"]) as pool:
        pool.map(_task, range(params["warmup"]), chunksize=1)
        seconds = []
        for _ in range(batches):
            t0 = _perf()
            results = pool.map(_task, range(count), chunksize=1)
            seconds.append(_perf() - t0)
            if results[-1] != count:
                raise RuntimeError("Pool.map returned wrong results")
    return _rates(count * batches, batches, seconds)


# -- 64 MiB arrays -----------------------------------------------------------------------------

_rss_at_start = 0


def _note_rss() -> None:
    from ._worker import vm_rss_bytes

    global _rss_at_start
    _rss_at_start = vm_rss_bytes()


def _receive_array(array: Any) -> tuple[int, int]:
    """In the executor's worker: the array's size, and this process's peak RSS growth."""
    from ._worker import peak_rss_bytes

    return int(array[::512].sum() >= 0) * array.nbytes, peak_rss_bytes() - _rss_at_start


def _array(size: int) -> Any:
    import numpy as np

    return np.arange(size // 8, dtype=np.float64)


def executor_array(impl: str, ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A 64 MiB array as a ProcessPoolExecutor argument: GB/s, the worker's peak RSS growth."""
    size, array = params["size"], _array(params["size"])
    seconds, growth = [], 0
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, initializer=_note_rss) as pool:
        pool.submit(_task, 0).result(_TIMEOUT)
        for _ in range(params["transfers"]):
            t0 = _perf()
            received, grown = pool.submit(_receive_array, array).result(_TIMEOUT)
            seconds.append(_perf() - t0)
            if received != size:
                raise RuntimeError(f"the worker got {received} bytes, not {size}")
            growth = max(growth, grown)
    median = statistics.median(seconds[1:])
    return {"rate": size / median / 1e9, "rss_ratio": growth / size, "transfer_seconds": seconds}


def _send_arrays(requests: Any, queue: Any, size: int) -> None:
    array = _array(size)
    while requests.get() == "go":
        queue.put(array)


def queue_array(impl: str, ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A 64 MiB array through a Queue, on request: GB/s, this process's peak RSS growth."""
    from ._worker import peak_rss_bytes, vm_rss_bytes

    size = params["size"]
    requests, queue = ctx.SimpleQueue(), _queue(impl, ctx)
    sender = ctx.Process(target=_send_arrays, args=(requests, queue, size), daemon=True)
    sender.start()
    baseline = vm_rss_bytes()
    seconds = []
    try:
        for _ in range(params["transfers"]):
            t0 = _perf()
            requests.put("go")
            array = _get(queue)
            seconds.append(_perf() - t0)
            if array.nbytes != size or array[-1] != size // 8 - 1:
                raise RuntimeError("received the wrong array")
            del array
        requests.put("stop")
    finally:
        sender.join(_TIMEOUT)
        if sender.is_alive():
            sender.kill()
    median = statistics.median(seconds[1:])
    peak = peak_rss_bytes()
    return {"rate": size / median / 1e9, "rss_ratio": (peak - baseline) / size}


# -- managers -----------------------------------------------------------------------------------


def manager_dict(impl: str, ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Set and get one key of a Manager dict, alternately: operations per second."""
    count, batches = params["count"], params["batches"]

    def set_and_get(size: int) -> None:
        for i in range(size // 2):
            shared["key"] = i
            shared["key"]

    with ctx.Manager() as manager:
        shared = manager.dict()
        set_and_get(params["warmup"])
        seconds = _time_batches(count, batches, set_and_get)
    return _rates(count, batches, seconds)


def manager_proxies(impl: str, ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Create a Manager list proxy and drop it (each opens connections): proxies per second."""
    count, batches = params["count"], params["batches"]
    with ctx.Manager() as manager:

        def create(size: int) -> None:
            for _ in range(size):
                manager.list()

        create(params["warmup"])
        seconds = _time_batches(count, batches, create)
    return _rates(count, batches, seconds)


KINDS = {
    "mp-queue": queue_small,
    "mp-pool-map": pool_map,
    "mp-executor-array": executor_array,
    "mp-queue-array": queue_array,
    "mp-manager-dict": manager_dict,
    "mp-manager-proxies": manager_proxies,
}


def run(kind: str, impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """Measure ``kind`` with ``impl`` (installing mpwire for "mpwire") in this process."""
    if impl == "mpwire":
        import mpwire

        mpwire.install()
    ctx = multiprocessing.get_context(params["start_method"])
    return KINDS[kind](impl, ctx, params)
