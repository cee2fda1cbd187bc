"""multiprocessing's classes on mpwire through ``mpwire.get_context()``, under each start method.

Queues with many producers and consumers deliver every object once, Pools
survive ``maxtasksperchild``, ``terminate()`` and a worker killed mid-task,
Managers restart on the same address and serve remote clients over TCP with
an authkey, and large arrays cross without a copy into a pickle. Child
targets are module-level functions (spawn and forkserver import this module
by name); every blocking call in the parent has a bound.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import multiprocessing.managers
import multiprocessing.pool
import multiprocessing.queues
import os
import signal
import threading
import weakref
from collections import Counter
from typing import Any

import numpy as np
import pytest

import mpwire
from mpwire.mp import context as mp_context
from mpwire.mp import queues as mp_queues

pytestmark = [
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
    pytest.mark.timeout(120),
]

TIMEOUT = 30.0


@pytest.fixture
def ctx(start_method: str) -> Any:
    return mpwire.get_context(start_method)


# -- children ---------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def produce(q: Any, start: int, count: int) -> None:
    for i in range(start, start + count):
        q.put(i)


def consume(q: Any, results: Any) -> None:
    """Take objects until a None, then report what was taken."""
    get = q.get if isinstance(q, mp_queues.SimpleQueue) else lambda: q.get(timeout=TIMEOUT)
    taken = []
    while (obj := get()) is not None:
        taken.append(obj)
    results.put(taken)


def work_through(q: Any) -> None:
    """A JoinableQueue's consumer: take, then mark done, until a None."""
    while True:
        obj = q.get(timeout=TIMEOUT)
        q.task_done()
        if obj is None:
            return


def pid_of(_: object) -> int:
    return os.getpid()


def die(_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_busy: tuple[Any, Any] | None = None


def set_busy(started: Any, release: Any) -> None:
    global _busy
    _busy = started, release


def busy(_: object) -> None:
    """Say it started, then wait (bounded) for a release that the test never gives."""
    assert _busy is not None
    started, release = _busy
    started.put(os.getpid())
    release.wait(TIMEOUT)


def array_sum(array: np.ndarray) -> tuple[float, int]:
    return float(array.sum()), array.nbytes


def send_array(q: Any, size: int) -> None:
    q.put(np.arange(size, dtype=np.float64))


def put_in_dict(d: Any, key: str, value: object) -> None:
    d[key] = value


# -- the context --------------------------------------------------------------


def test_contexts_by_method() -> None:
    for method in multiprocessing.get_all_start_methods():
        ctx = mpwire.get_context(method)
        assert ctx.get_start_method() == method
        assert ctx.get_context() is ctx
        assert ctx.get_context(method) is ctx
        assert isinstance(ctx, type(multiprocessing.get_context(method)))
    assert mpwire.get_context().get_start_method() == (
        multiprocessing.get_start_method(allow_none=True)
        or multiprocessing.get_all_start_methods()[0]
    )
    with pytest.raises(ValueError, match="cannot find context"):
        mpwire.get_context("vfork")


def test_no_global_state_changes(ctx: Any) -> None:
    reader, writer = ctx.Pipe(duplex=False)
    with reader, writer:
        assert isinstance(reader, mpwire.Connection)
    queue = ctx.Queue()
    assert isinstance(queue, mp_queues.Queue)
    queue.close()
    assert multiprocessing.connection.Pipe is not mpwire.Pipe
    assert multiprocessing.connection.wait is not mpwire.wait
    assert multiprocessing.pool.wait is multiprocessing.connection.wait
    assert (
        multiprocessing.managers.listener_client["pickle"][1] is multiprocessing.connection.Client
    )
    stdlib_reader, stdlib_writer = multiprocessing.Pipe(duplex=False)
    with stdlib_reader, stdlib_writer:
        assert type(stdlib_reader) is multiprocessing.connection.Connection
    assert type(multiprocessing.Queue()) is multiprocessing.queues.Queue
    assert ctx.Listener is mpwire.Listener
    assert ctx.Client is mpwire.Client


# -- queues -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Queue", "SimpleQueue"])
def test_queue_many_producers_many_consumers(ctx: Any, kind: str) -> None:
    """4 producers and 3 consumers: every object arrives exactly once."""
    q = getattr(ctx, kind)()
    results = ctx.Queue()
    producers = [ctx.Process(target=produce, args=(q, n * 1000, 500)) for n in range(4)]
    consumers = [ctx.Process(target=consume, args=(q, results)) for _ in range(3)]
    for process in producers + consumers:
        process.start()
    for process in producers:
        process.join(TIMEOUT)
        assert process.exitcode == 0
    for _ in consumers:
        q.put(None)
    taken: Counter[int] = Counter()
    for _ in consumers:
        taken.update(results.get(timeout=TIMEOUT))
    for process in consumers:
        process.join(TIMEOUT)
        assert process.exitcode == 0
    assert taken == Counter(n * 1000 + i for n in range(4) for i in range(500))


def test_queue_put_before_exit_is_delivered(ctx: Any) -> None:
    """A producer that exits right after put() still delivers everything (the feeder flushes)."""
    q = ctx.Queue()
    producer = ctx.Process(target=produce, args=(q, 0, 2000))
    producer.start()
    assert [q.get(timeout=TIMEOUT) for _ in range(2000)] == list(range(2000))
    producer.join(TIMEOUT)
    assert producer.exitcode == 0


def test_queue_feeder_reports_what_will_not_pickle(ctx: Any) -> None:
    """An unpicklable object is dropped and reported; the objects around it still go."""
    reported: list[object] = []

    class Reporting(mp_queues.Queue):
        def _on_queue_feeder_error(self, e: Exception, obj: object) -> None:
            reported.append(obj)

    q = Reporting(ctx=ctx.get_context())
    bad = lambda: None  # noqa: E731
    for obj in (1, bad, 2):
        q.put(obj)
    assert [q.get(timeout=TIMEOUT), q.get(timeout=TIMEOUT)] == [1, 2]
    q.close()
    q.join_thread()
    assert reported == [bad]


class Referenced:
    """An object whose lifetime a weak reference watches."""


def test_queue_keeps_no_reference_to_what_it_sent(ctx: Any) -> None:
    """Once an object left, the feeder thread holds nothing of it (as the stdlib's)."""
    q = ctx.Queue()
    obj = Referenced()
    gone = threading.Event()
    watch = weakref.ref(obj, lambda _: gone.set())
    q.put(obj)
    del obj
    assert isinstance(q.get(timeout=TIMEOUT), Referenced)
    assert gone.wait(TIMEOUT)  # the feeder lets go once its batch is written
    assert watch() is None


def test_joinable_queue(ctx: Any) -> None:
    q = ctx.JoinableQueue()
    workers = [ctx.Process(target=work_through, args=(q,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for i in range(200):
        q.put(i)
    for _ in workers:
        q.put(None)
    q.join()
    for worker in workers:
        worker.join(TIMEOUT)
        assert worker.exitcode == 0


def test_queue_get_timeouts_and_close(ctx: Any) -> None:
    q = ctx.Queue()
    with pytest.raises(multiprocessing.queues.Empty):
        q.get(timeout=0.01)
    with pytest.raises(multiprocessing.queues.Empty):
        q.get(block=False)
    q.put("x")
    assert q.get(timeout=TIMEOUT) == "x"
    q.close()
    q.join_thread()
    with pytest.raises(ValueError, match="is closed"):
        q.put("y")
    with pytest.raises(ValueError, match="is closed"):
        q.get()


def test_large_array_through_queue(ctx: Any) -> None:
    q = ctx.Queue()
    sender = ctx.Process(target=send_array, args=(q, 1 << 21))
    sender.start()
    array = q.get(timeout=TIMEOUT)
    sender.join(TIMEOUT)
    assert array.shape == (1 << 21,)
    assert array[-1] == (1 << 21) - 1


# -- pools --------------------------------------------------------------------


def test_pool_map(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        assert isinstance(pool, multiprocessing.pool.Pool)
        assert pool.map(square, range(1000), chunksize=1) == [x * x for x in range(1000)]
        assert sorted(pool.imap_unordered(square, range(100))) == [x * x for x in range(100)]


def test_pool_maxtasksperchild(ctx: Any) -> None:
    with ctx.Pool(2, maxtasksperchild=1) as pool:
        pids = pool.map(pid_of, range(8), chunksize=1)
    assert len(set(pids)) == 8


def test_pool_terminate_stops_busy_workers(ctx: Any) -> None:
    started, release = ctx.Queue(), ctx.Event()
    pool = ctx.Pool(2, initializer=set_busy, initargs=(started, release))
    result = pool.map_async(busy, range(4), chunksize=1)
    busy_pids = {started.get(timeout=TIMEOUT) for _ in range(2)}
    workers = list(pool._pool)
    assert busy_pids == {worker.pid for worker in workers}
    pool.terminate()
    pool.join()
    assert all(worker.exitcode is not None for worker in workers)
    assert not result.ready()


def test_pool_survives_a_worker_killed_mid_task(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        lost = pool.apply_async(die, (None,))
        with pytest.raises(multiprocessing.TimeoutError):
            lost.get(timeout=1.0)  # the stdlib's Pool never answers for a task whose worker died
        assert pool.map(square, range(20)) == [x * x for x in range(20)]


def test_process_pool_executor(ctx: Any) -> None:
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as executor:
        assert list(executor.map(square, range(200))) == [x * x for x in range(200)]
        total, nbytes = executor.submit(array_sum, np.ones(1 << 20)).result(TIMEOUT)
        assert (total, nbytes) == (1 << 20, 8 << 20)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as executor:
        future = executor.submit(die, None)
        with pytest.raises(concurrent.futures.process.BrokenProcessPool):
            future.result(TIMEOUT)


# -- managers -----------------------------------------------------------------


def test_manager(ctx: Any) -> None:
    with ctx.Manager() as manager:
        assert manager._Client is mpwire.Client
        shared = manager.dict()
        workers = [ctx.Process(target=put_in_dict, args=(shared, f"k{i}", i)) for i in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(TIMEOUT)
            assert worker.exitcode == 0
        assert dict(shared) == {"k0": 0, "k1": 1, "k2": 2}
        q = manager.Queue()
        q.put([1, 2])
        assert q.get(timeout=TIMEOUT) == [1, 2]


class RemoteManager(multiprocessing.managers.BaseManager):
    pass


_REMOTE_STORE: dict[str, object] = {}


def remote_store() -> dict[str, object]:
    return _REMOTE_STORE


RemoteManager.register("store", callable=remote_store, proxytype=multiprocessing.managers.DictProxy)


def test_remote_manager_over_tcp_with_authkey(ctx: Any) -> None:
    server = RemoteManager(("127.0.0.1", 0), authkey=b"secret", serializer="mpwire", ctx=ctx)
    server.start()
    try:
        client = RemoteManager(server.address, authkey=b"secret", serializer="mpwire")
        client.connect()
        store = client.store()
        store["answer"] = 42
        assert (
            RemoteManager(server.address, authkey=b"secret").connect() is None
        )  # a stdlib client too
        assert client.store()["answer"] == 42
        intruder = RemoteManager(server.address, authkey=b"wrong", serializer="mpwire")
        with pytest.raises(multiprocessing.AuthenticationError):
            intruder.connect()
    finally:
        server.shutdown()


def test_manager_restarts_on_the_same_address(ctx: Any) -> None:
    first = RemoteManager(("127.0.0.1", 0), authkey=b"k", serializer="mpwire", ctx=ctx)
    first.start()
    address = first.address
    first.store()["a"] = 1
    first.shutdown()
    second = RemoteManager(address, authkey=b"k", serializer="mpwire", ctx=ctx)
    second.start()
    try:
        assert second.address == address
        assert "a" not in second.store()
    finally:
        second.shutdown()


def test_manager_serializer_name_pickles_through_processes() -> None:
    import pickle

    from mpwire.mp.managers import SERIALIZER

    assert pickle.loads(pickle.dumps(SERIALIZER)) is SERIALIZER
    assert multiprocessing.managers.listener_client["mpwire"] == (mpwire.Listener, mpwire.Client)
    assert mp_context.get_context("spawn").Manager.__qualname__.endswith("Manager")
