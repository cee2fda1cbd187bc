"""One end of a pipe shared by several processes, as multiprocessing's queues and Pool share it.

The stdlib reads exactly one message per receive and leaves the rest in the
kernel, so processes taking turns on one end (``with lock: reader.recv()``)
each get whole messages, each message once. An mpwire Connection may read
ahead only while its process is the end's only reader: these tests share ends
between readers and between writers, hand an end on after reading from it,
check that poll() and wait() tell every holder the truth, that a one-way
Pipe holds as much as the stdlib's before a writer blocks, and run
multiprocessing's own Queue, SimpleQueue and JoinableQueue over mpwire ends.

Each runs under the fork, spawn and forkserver start methods. Child targets
are module-level functions (spawn and forkserver import this module by
name), and report over a stdlib channel, so the mpwire channel under test is
the only thing varied. The parent never blocks without a bound, and joins
children with a timeout, killing them if they hang.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.queues
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

import pytest

import mpwire

pytestmark = [
    pytest.mark.filterwarnings(
        # multiprocessing's resource sharer and queue feeder threads may be
        # alive when a later test forks.
        "ignore:This process .* is multi-threaded:DeprecationWarning"
    ),
    pytest.mark.timeout(120),
]

TIMEOUT = 20.0


@pytest.fixture
def method(start_method: str) -> str:
    """The start method of the test (each in turn: see conftest.start_method)."""
    return start_method


READERS = 4
MESSAGES = 20_000
WRITERS = 4
PER_WRITER = 400
ARRAY_EVERY = 25  # every 25th message of a writer, its first included, is an array
ARRAY_ITEMS = (2 << 20) // 8  # 2 MiB of int64: shared memory on a duplex Pipe
PREFILL = 200  # small messages (5 KiB) waiting when the reading children start
READING = 2  # children taking turns reading what the writers send
HANDOFF_SENT = 50
HANDOFF_READ = 3
TASKS = 1_000
PRODUCERS = 2  # putting first, then as many again while the consumers take
CONSUMERS = 3
ITEMS = 3_000
ITEM_BASE = 1 << 20  # from here on, an int is a 21-byte frame on a queue's pipe
PRIMED = 120  # each first producer's items: 5 KiB waiting when the consumers start

# -- channels ----------------------------------------------------------------------


@contextlib.contextmanager
def pair(kind: str) -> Iterator[tuple[mpwire.Connection, mpwire.Connection]]:
    """(a receiving end, the sending end on the other side) of a channel of ``kind``."""
    if kind == "one-way":
        receiver, sender = mpwire.Pipe(duplex=False)
    elif kind == "duplex":
        receiver, sender = mpwire.Pipe()
    else:
        assert kind == "socket", kind
        with mpwire.Listener(("127.0.0.1", 0)) as listener:
            receiver = mpwire.Client(listener.address)
            sender = listener.accept()
    try:
        yield receiver, sender
    finally:
        receiver.close()
        sender.close()


@contextlib.contextmanager
def std_queue(ctx: Any) -> Iterator[Any]:
    """A stdlib ``ctx.Queue()`` (for children's reports), closed and flushed on leaving."""
    results = ctx.Queue()
    try:
        yield results
    finally:
        results.close()
        results.join_thread()


# -- child targets -----------------------------------------------------------------


@contextlib.contextmanager
def reporting_errors(results: Any, index: int) -> Iterator[None]:
    """In a child: an exception is reported to the parent (then raised: exit code 1)."""
    try:
        yield
    except BaseException:
        results.put(("error", index, traceback.format_exc()))
        raise


def take_until_none(reader: mpwire.Connection, lock: Any, results: Any, index: int) -> None:
    """Child: take messages one at a time under ``lock`` until a None; report what came."""
    got: list[Any] = []
    with reporting_errors(results, index):
        while True:
            with lock:
                msg = reader.recv()
            if msg is None:
                break
            got.append(msg)
    results.put(("done", index, got))


def square_tasks(tasks: mpwire.Connection, lock: Any, results: Any, index: int) -> None:
    """Child: a Pool-like worker, taking tasks under ``lock`` until a None."""
    done: list[tuple[int, int]] = []
    with reporting_errors(results, index):
        while True:
            with lock:
                task = tasks.recv()
            if task is None:
                break
            done.append((task, task * task))
    results.put(("done", index, done))


def stamp(writer: int, seq: int) -> int:
    """What fills the array writer ``writer`` sends as its message ``seq``."""
    return writer * 1_000_003 + seq * 7 + 1


def check_stamped(msg: Any, np: Any) -> tuple[int, int, bool]:
    """(writer, seq, whether the message is whole: its array, if it has one, intact)."""
    index, seq = msg[:2]
    if index == WRITERS or seq % ARRAY_EVERY:  # (WRITERS: the parent's, all small)
        return index, seq, msg == (index, seq)
    if len(msg) != 3:
        return index, seq, False
    array = msg[2]
    whole = array.dtype == np.int64 and array.shape == (ARRAY_ITEMS,)
    return index, seq, bool(whole and (array == stamp(index, seq)).all())


def write_stamped(writer_end: mpwire.Connection, lock: Any, results: Any, index: int) -> None:
    """Child: send (index, seq) messages under ``lock``; every 25th carries a stamped array."""
    import numpy as np

    with reporting_errors(results, index):
        for seq in range(PER_WRITER):
            if seq % ARRAY_EVERY == 0:
                msg: Any = (index, seq, np.full(ARRAY_ITEMS, stamp(index, seq), dtype=np.int64))
            else:
                msg = (index, seq)
            with lock:
                writer_end.send(msg)
    results.put(("done", index, None))


def read_stamped(
    reader: mpwire.Connection, lock: Any, results: Any, index: int, took_one: Any
) -> None:
    """Child: take stamped messages under ``lock`` until a None; report (writer, seq, whole).

    After its first message, a reader waits until every reader took one (so
    none can take all that waits before another reads).
    """
    import numpy as np

    got: list[tuple[int, int, bool]] = []
    with reporting_errors(results, index):
        for count in itertools.count():
            with lock:
                msg = reader.recv()
            if count == 0:
                took_one.wait(TIMEOUT)
            if msg is None:
                break
            got.append(check_stamped(msg, np))
    results.put(("done", index, got))


def read_rest(end: mpwire.Connection, report: Any, count: int) -> None:
    """Child: receive ``count`` messages, then report them and whether more are ready."""
    got = [end.recv() for _ in range(count)]
    report.send((got, end.poll(0)))


def read_rest_from_queue(handoff: Any, report: Any, count: int) -> None:
    read_rest(handoff.get(timeout=TIMEOUT), report, count)


def read_rest_from_connection(control: mpwire.Connection, report: Any, count: int) -> None:
    with control:
        end = control.recv()
    read_rest(end, report, count)


def wait_then_read(end: mpwire.Connection, control: Any, count: int) -> None:
    """Child: on "go", check that ``end`` shows ready, then receive ``count`` messages."""
    assert control.recv() == "go"
    polled = end.poll(TIMEOUT)
    ready = mpwire.wait([end], TIMEOUT if polled else 0)
    waited = len(ready) == 1 and ready[0] is end
    got = [end.recv() for _ in range(count)] if polled and waited else []
    control.send((polled, waited, got, end.poll(0)))


def read_one_then_wait(end: mpwire.Connection, control: Any) -> None:
    """Child: receive one message and report it; on "done", report whether more are ready."""
    control.send(end.recv())
    assert control.recv() == "done"
    control.send((end.poll(0), mpwire.wait([end], 0)))


def produce(items: Any, first: int, count: int, go: Any) -> None:
    """Child: put ``count`` ints from ``first`` on a multiprocessing queue (once ``go`` is set)."""
    if go is not None and not go.wait(TIMEOUT):
        raise TimeoutError("never told to go")
    for item in range(first, first + count):
        items.put(item)


def consume(items: Any, results: Any, index: int, joinable: bool, go: Any, took_one: Any) -> None:
    """Child: once ``go`` is set, get from a multiprocessing queue until a None; report.

    After its first item, a consumer waits until every consumer got one.
    """
    got: list[int] = []
    with reporting_errors(results, index):
        if not go.wait(TIMEOUT):
            raise TimeoutError("never told to go")
        for count in itertools.count():
            item = items.get()
            if count == 0:
                took_one.wait(TIMEOUT)
            if joinable:
                items.task_done()
            if item is None:
                break
            got.append(item)
    results.put(("done", index, got))


# -- parent helpers ----------------------------------------------------------------


@contextlib.contextmanager
def started(ctx: Any, target: Any, arg_lists: Iterable[tuple[Any, ...]]) -> Iterator[list[Any]]:
    """Started children, one per argument tuple; on leaving, all must exit with 0.

    Children still running at the end (or when the block fails) are killed.
    """
    procs = [
        ctx.Process(target=target, args=args, name=f"{target.__name__}-{i}", daemon=True)
        for i, args in enumerate(arg_lists)
    ]
    try:
        for proc in procs:
            proc.start()
        yield procs
        join_all(procs)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(TIMEOUT)


def join_all(procs: list[Any]) -> None:
    """Join children within TIMEOUT in all; each must have exited with 0."""
    deadline = time.monotonic() + TIMEOUT
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    codes = {proc.name: proc.exitcode for proc in procs}
    assert set(codes.values()) == {0}, f"children's exit codes: {codes} (None: still running)"


def collect(results: Any, procs: list[Any], first: int = 0) -> list[Any]:
    """The reports of ``procs`` (indices from ``first``), in order; failing, not hanging.

    Any child's error report fails at once.
    """
    reports: dict[int, Any] = {}
    deadline = time.monotonic() + TIMEOUT
    while len(reports) < len(procs):
        try:
            status, index, value = results.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            codes = [proc.exitcode for proc in procs]
            pytest.fail(
                f"{len(procs) - len(reports)} of {len(procs)} children did not report"
                f" in {TIMEOUT} s (exit codes {codes}, None: still running)"
            )
        if status == "error":
            pytest.fail(f"child {index} failed:\n{value}")
        assert first <= index < first + len(procs), f"child {index} reported out of turn"
        reports[index] = value
    return [reports[first + i] for i in range(len(procs))]


def recv_within(conn: Any, what: str) -> Any:
    """The next message on ``conn`` (mpwire or stdlib), failing if none comes in TIMEOUT."""
    if not conn.poll(TIMEOUT):
        pytest.fail(f"no {what} in {TIMEOUT} s")
    return conn.recv()


def assert_each_once(received: Iterable[Any], expected: Iterable[Any]) -> None:
    """``received`` holds every item of ``expected`` exactly once, and nothing else."""
    counts = collections.Counter(received)
    wanted = collections.Counter(expected)
    missing = sorted((wanted - counts).elements())
    extra = sorted((counts - wanted).elements())
    assert not missing and not extra, (
        f"{len(missing)} missing (first: {missing[:10]}),"
        f" {len(extra)} duplicated or unexpected (first: {extra[:10]})"
    )


@contextlib.contextmanager
def sending_in_thread(send: Callable[[Any], None], messages: Iterable[Any]) -> Iterator[None]:
    """Send ``messages`` from a thread while the block runs; all must have left by its end.

    If the block fails, the thread is left to end when the connection closes.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for msg in messages:
                send(msg)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"the parent's sends did not finish in {TIMEOUT} s"
    assert not errors, f"the parent's sends failed: {errors[0]!r}"


# -- 1. readers taking turns on one end --------------------------------------------


@pytest.mark.parametrize("kind", ["one-way", "duplex", "socket"])
def test_shared_readers_get_each_message_once(method: str, kind: str) -> None:
    """4 readers take turns on one end under a lock: each message reaches exactly one."""
    ctx = multiprocessing.get_context(method)
    lock = ctx.Lock()
    with pair(kind) as (reader, writer), std_queue(ctx) as results:
        arg_lists = [(reader, lock, results, i) for i in range(READERS)]
        with started(ctx, take_until_none, arg_lists) as procs:
            reader.close()  # the children have their own copies
            messages = itertools.chain(range(MESSAGES), [None] * READERS)
            with sending_in_thread(writer.send, messages):
                reports = collect(results, procs)
        assert_each_once(itertools.chain.from_iterable(reports), range(MESSAGES))


# -- 2. writers taking turns on one end --------------------------------------------


@pytest.mark.parametrize("readers", ["parent", "children"])
@pytest.mark.parametrize("kind", ["duplex", "one-way"])
def test_shared_writers_with_shared_memory_arrays(method: str, kind: str, readers: str) -> None:
    """4 writers take turns on one end, sending small tuples and 2 MiB arrays.

    On a duplex Pipe the arrays travel as shared memory, each writer's first
    one after its own mark that descriptors follow. The parent reads them
    all, or 2 children take turns reading them.
    """
    np = pytest.importorskip("numpy")
    ctx = multiprocessing.get_context(method)
    lock = ctx.Lock()
    read_lock = ctx.Lock()
    expected = [(index, seq) for index in range(WRITERS) for seq in range(PER_WRITER)]
    with (
        pair(kind) as (reader, writer),
        std_queue(ctx) as results,
        contextlib.ExitStack() as stack,
    ):
        if readers == "children":
            # Waiting for the readers, as tasks wait for a Pool's workers; as
            # from a 5th writer (the parent), before the 4 others start.
            for seq in range(PREFILL):
                writer.send((WRITERS, seq))
            expected += [(WRITERS, seq) for seq in range(PREFILL)]
        writer_args = [(writer, lock, results, i) for i in range(WRITERS)]
        writers = stack.enter_context(started(ctx, write_stamped, writer_args))
        if readers == "parent":
            writer.close()  # the children have their own copies
            got = []
            for _ in range(len(expected)):
                if not mpwire.wait([reader], TIMEOUT):
                    pytest.fail(f"stuck after {len(got)} messages")
                got.append(check_stamped(reader.recv(), np))
            by_reader = [got]
            assert collect(results, writers) == [None] * WRITERS
            join_all(writers)
            # The writers are gone, and left nothing more.
            assert reader.poll(TIMEOUT)
            with pytest.raises(EOFError):
                reader.recv()
        else:
            took_one = ctx.Barrier(READING)
            reader_args = [
                (reader, read_lock, results, WRITERS + i, took_one) for i in range(READING)
            ]
            reading = stack.enter_context(started(ctx, read_stamped, reader_args))
            reader.close()
            assert collect(results, writers) == [None] * WRITERS
            join_all(writers)
            for _ in reading:
                writer.send(None, timeout=TIMEOUT)
            by_reader = collect(results, reading, first=WRITERS)
    assert_each_once(((index, seq) for got in by_reader for index, seq, _ in got), expected)
    broken = [(index, seq) for got in by_reader for index, seq, whole in got if not whole]
    assert not broken, f"messages cut or arrays changed: {broken[:10]}"
    for got in by_reader:
        for index in range(WRITERS + 1):
            seqs = [seq for i, seq, _ in got if i == index]
            assert seqs == sorted(seqs), f"writer {index}'s messages out of order"


# -- 3. an end handed on after reading from it -------------------------------------


@pytest.mark.parametrize("how", ["argument", "queue", "connection"])
def test_read_then_hand_off(method: str, how: str) -> None:
    """The parent reads 3 of 50 messages; the child it hands the end to gets the other 47.

    Under fork, "argument" is a child forked after the parent read. The parent
    then gets none of the 47, and still the messages sent later.
    """
    ctx = multiprocessing.get_context(method)
    rest = HANDOFF_SENT - HANDOFF_READ
    report, report_child = ctx.Pipe(duplex=False)
    ours, theirs = mpwire.Pipe()
    with report, report_child, ours, theirs:
        for i in range(HANDOFF_SENT):
            ours.send(i)
        assert [theirs.recv() for _ in range(HANDOFF_READ)] == list(range(HANDOFF_READ))
        with contextlib.ExitStack() as stack:
            if how == "argument":
                stack.enter_context(started(ctx, read_rest, [(theirs, report_child, rest)]))
            elif how == "queue":
                handoff = stack.enter_context(std_queue(ctx))
                stack.enter_context(
                    started(ctx, read_rest_from_queue, [(handoff, report_child, rest)])
                )
                handoff.put(theirs)
            else:
                control, control_child = mpwire.Pipe()
                stack.enter_context(control)
                stack.enter_context(
                    started(ctx, read_rest_from_connection, [(control_child, report_child, rest)])
                )
                control_child.close()
                control.send(theirs)
            got, child_sees_more = recv_within(report, "report from the child")
            assert got == list(range(HANDOFF_READ, HANDOFF_SENT))
            assert not child_sees_more
            assert not theirs.poll(0), "the parent can still receive what the child took"
            assert mpwire.wait([theirs], 0) == []
        ours.send("later")
        assert recv_within(theirs, "later message") == "later"
        assert not theirs.poll(0)


# -- 4. poll() and wait() true for every holder ------------------------------------


def test_ready_for_the_child_after_the_parent_read(method: str) -> None:
    """The parent reads one of 20 messages; the child sharing the end sees the rest ready."""
    ctx = multiprocessing.get_context(method)
    sent = 20
    control, control_child = ctx.Pipe()
    ours, theirs = mpwire.Pipe()
    with (
        control,
        control_child,
        ours,
        theirs,
        started(ctx, wait_then_read, [(theirs, control_child, sent - 1)]),
    ):
        for i in range(sent):
            ours.send(i)
        assert recv_within(theirs, "first message") == 0
        control.send("go")
        polled, waited, got, child_sees_more = recv_within(control, "report from the child")
        assert polled, "poll() in the child missed messages sent before"
        assert waited, "wait() in the child missed messages sent before"
        assert got == list(range(1, sent))
        assert not child_sees_more
        assert not theirs.poll(0), "the parent's poll() shows messages the child took"
        assert mpwire.wait([theirs], 0) == []


def test_ready_for_the_parent_after_the_child_read(method: str) -> None:
    """The child reads one of 20 messages; the parent sharing the end sees the rest ready."""
    ctx = multiprocessing.get_context(method)
    sent = 20
    control, control_child = ctx.Pipe()
    ours, theirs = mpwire.Pipe()
    with (
        control,
        control_child,
        ours,
        theirs,
        started(ctx, read_one_then_wait, [(theirs, control_child)]),
    ):
        for i in range(sent):
            ours.send(i)
        assert recv_within(control, "the child's message") == 0
        assert theirs.poll(TIMEOUT), "poll() in the parent missed messages sent before"
        assert mpwire.wait([theirs], TIMEOUT) == [theirs], "wait() in the parent missed them"
        assert [theirs.recv() for _ in range(1, sent)] == list(range(1, sent))
        assert not theirs.poll(0)
        control.send("done")
        child_polled, child_waited = recv_within(control, "report from the child")
        assert not child_polled, "the child's poll() shows messages the parent took"
        assert child_waited == []


# -- 5. capacity -------------------------------------------------------------------


def sends_before_blocking(writer: Any) -> int:
    """How many small ints ``writer`` sends before its fd would block."""
    os.set_blocking(writer.fileno(), False)
    for count in itertools.count():
        try:
            writer.send(count)
        except BlockingIOError:
            return count
        if count >= 1_000_000:
            return count
    raise AssertionError("unreachable")


@pytest.mark.parametrize("duplex", [False, True], ids=["one-way", "duplex"])
def test_pipe_holds_as_much_as_the_stdlib(duplex: bool) -> None:
    """A Pipe's writer sends as many small messages as the stdlib's before it would block."""
    std_reader, std_writer = multiprocessing.Pipe(duplex)
    with std_reader, std_writer:
        std_count = sends_before_blocking(std_writer)
    reader, writer = mpwire.Pipe(duplex)
    with reader, writer:
        count = sends_before_blocking(writer)
    assert count >= std_count, f"mpwire holds {count} messages, the stdlib {std_count}"
    if not duplex:
        assert count >= 3_000


def test_tasks_sent_before_the_workers_start(method: str) -> None:
    """1,000 tasks (and a None per worker) go on a one-way Pipe before 4 workers start."""
    ctx = multiprocessing.get_context(method)
    lock = ctx.Lock()
    with pair("one-way") as (tasks, writer), std_queue(ctx) as results:
        # From a thread only to bound the wait: the sends must not block.
        with sending_in_thread(writer.send, itertools.chain(range(TASKS), [None] * READERS)):
            pass
        arg_lists = [(tasks, lock, results, i) for i in range(READERS)]
        with started(ctx, square_tasks, arg_lists) as procs:
            tasks.close()
            reports = collect(results, procs)
        assert_each_once(
            itertools.chain.from_iterable(reports), [(task, task * task) for task in range(TASKS)]
        )


# -- 6. multiprocessing's queues over mpwire ends ----------------------------------

QUEUE_CLASSES = ["Queue", "SimpleQueue", "JoinableQueue"]


@pytest.mark.parametrize("name", QUEUE_CLASSES)
def test_multiprocessing_queue_over_mpwire(
    method: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Producers and consumers in several processes share a queue made over an mpwire Pipe.

    Two producers put items and exit (so their items are in the pipe), then
    the consumers start, and two more producers put the rest meanwhile.
    """
    ctx = multiprocessing.get_context(method)
    joinable = name == "JoinableQueue"
    with std_queue(ctx) as results:
        monkeypatch.setattr(multiprocessing.connection, "Pipe", mpwire.Pipe)
        items = getattr(multiprocessing.queues, name)(ctx=ctx)
        monkeypatch.undo()
        assert multiprocessing.connection.Pipe is not mpwire.Pipe
        assert isinstance(items._reader, mpwire.Connection)
        assert isinstance(items._writer, mpwire.Connection)
        go = ctx.Event()
        primed = PRODUCERS * PRIMED
        share = (ITEMS - primed) // PRODUCERS
        first_args = [(items, ITEM_BASE + i * PRIMED, PRIMED, None) for i in range(PRODUCERS)]
        later_args = [(items, ITEM_BASE + primed + i * share, share, go) for i in range(PRODUCERS)]
        took_one = ctx.Barrier(CONSUMERS)
        consumer_args = [(items, results, i, joinable, go, took_one) for i in range(CONSUMERS)]
        try:
            with (
                started(ctx, consume, consumer_args) as consumers,
                started(ctx, produce, later_args) as later,
                started(ctx, produce, first_args) as first,
            ):
                join_all(first)  # a Queue's producer exits once its items are in the pipe
                go.set()
                join_all(later)
                for _ in range(CONSUMERS):
                    items.put(None)
                reports = collect(results, consumers)
            assert_each_once(
                itertools.chain.from_iterable(reports), range(ITEM_BASE, ITEM_BASE + ITEMS)
            )
            if joinable:
                joiner = threading.Thread(target=items.join, daemon=True)
                joiner.start()
                joiner.join(TIMEOUT)
                assert not joiner.is_alive(), f"JoinableQueue.join() still waits after {TIMEOUT} s"
        finally:
            items.close()
            if name != "SimpleQueue":
                items.join_thread()


# -- 7. an end passed on or forked while this process is receiving on it ---------------


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds (a state another thread or process reaches), or fail."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} in {TIMEOUT} s")
        time.sleep(0.001)


def receive_one(end: mpwire.Connection, report: Any) -> None:
    """Child: receive one message and report it."""
    report.send(end.recv_bytes(timeout=TIMEOUT))


def test_a_fork_while_a_thread_receives_leaves_the_child_free_to_receive() -> None:
    """The thread's call is the parent's: the child's copy of the end is not left taken."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("start method 'fork' unavailable")
    ctx = multiprocessing.get_context("fork")
    report, report_child = ctx.Pipe(duplex=False)
    ours, theirs = mpwire.Pipe()
    got: list[bytes] = []
    with report, report_child, ours, theirs:
        thread = threading.Thread(target=lambda: got.append(theirs.recv_bytes()), daemon=True)
        thread.start()
        until(theirs._recv_gate.locked, "the thread's receive")
        with started(ctx, receive_one, [(theirs, report_child)]):
            ours.send_bytes(b"one")
            until(lambda: bool(got) or report.poll(0), "the first message taken")
            ours.send_bytes(b"two")
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "the parent's receive never ended"
            child_got = recv_within(report, "message in the child")
        assert sorted([*got, child_got]) == [b"one", b"two"]


def test_an_end_passes_on_while_a_thread_receives_on_it() -> None:
    """As a consumer thread's Queue passes to a new worker: the receive goes on."""
    ours, theirs = mpwire.Pipe()
    got: list[bytes] = []
    with ours, theirs:
        thread = threading.Thread(target=lambda: got.append(theirs.recv_bytes()), daemon=True)
        thread.start()
        until(theirs._recv_gate.locked, "the thread's receive")
        ForkingPickler.loads(ForkingPickler.dumps(theirs)).close()
        ours.send_bytes(b"after")
        thread.join(TIMEOUT)
        assert got == [b"after"]


def test_an_end_cannot_pass_on_in_the_middle_of_a_message() -> None:
    """A shared end's receive that timed out part way holds part of a message: it stays."""
    ours, theirs = mpwire.Pipe()
    with ours, theirs:
        ForkingPickler.loads(ForkingPickler.dumps(theirs)).close()  # shared from now on
        os.write(ours.fileno(), (100).to_bytes(4, "big") + b"part")
        with pytest.raises(TimeoutError):
            theirs.recv_bytes(timeout=0.05)
        with pytest.raises(ValueError, match="middle of receiving a message"):
            ForkingPickler.dumps(theirs)
        os.write(ours.fileno(), bytes(96))
        assert theirs.recv_bytes(timeout=TIMEOUT) == b"part" + bytes(96)


# -- 8. what a fork leaves where ------------------------------------------------------

needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="start method 'fork' unavailable"
)


def take_ready(end: mpwire.Connection, report: Any) -> None:
    """Child: take the messages ready on ``end`` for this process, and report them."""
    got = []
    while end.poll(0):
        got.append(end.recv_bytes())
    report.send(got)


def child_takes_ready(end: mpwire.Connection) -> list[bytes]:
    """What a child forked now finds ready on ``end`` (and takes)."""
    ctx = multiprocessing.get_context("fork")
    report, report_child = ctx.Pipe(duplex=False)
    with report, report_child, started(ctx, take_ready, [(end, report_child)]):
        got: list[bytes] = recv_within(report, "report from the child")
    return got


def child_sees_ready(end: mpwire.Connection) -> bool:
    """Whether a child forked now finds a message ready on ``end``."""
    return bool(child_takes_ready(end))


@needs_fork
def test_a_second_fork_leaves_what_a_receive_under_way_read_to_the_parent() -> None:
    """A receive blocked since before a fork may read ahead once; a later fork copies none of it."""
    reader, writer = mpwire.Pipe(duplex=False)
    got: list[bytes] = []
    with reader, writer:
        thread = threading.Thread(target=lambda: got.append(reader.recv_bytes()), daemon=True)
        thread.start()
        until(reader._recv_gate.locked, "the thread's receive")
        assert not child_sees_ready(reader)  # the first fork
        frames = [b"m0", b"m1", b"m2", b"m3"]
        os.write(writer.fileno(), b"".join(len(m).to_bytes(4, "big") + m for m in frames))
        thread.join(TIMEOUT)
        assert got == [b"m0"]
        got += child_takes_ready(reader)
        while reader.poll(0):
            got.append(reader.recv_bytes())
        assert sorted(got) == frames


@needs_fork
def test_a_fork_leaves_a_shared_memory_message_read_ahead_to_the_parent() -> None:
    """Its descriptors came with the read: the parent keeps it, and every array is right."""
    np = pytest.importorskip("numpy")
    a, b = mpwire.Pipe()
    with a, b:
        b.send(np.zeros(ARRAY_ITEMS))  # (a mark first: a reads with recvmsg from then on)
        assert not a.recv().any()
        b.send_bytes(b"one")
        b.send_bytes(b"two")
        b.send(np.ones(ARRAY_ITEMS))
        assert a.recv_bytes() == b"one"  # the rest read ahead, with the array's descriptor
        assert not child_sees_ready(a)
        assert a.recv_bytes() == b"two"
        assert (a.recv() == 1).all()
        b.send(np.full(ARRAY_ITEMS, 2.0))
        assert (a.recv() == 2).all()


@needs_fork
def test_a_descriptors_mark_read_ahead_then_spilled() -> None:
    """A mark a plain read took (the kernel closed its descriptor) is decoded from the spill."""
    np = pytest.importorskip("numpy")
    ctx = multiprocessing.get_context("fork")
    a, b = mpwire.Pipe()
    report, report_child = ctx.Pipe(duplex=False)
    with a, b, report, report_child:
        b.send("one")
        b.send("two")
        b.send(np.ones(ARRAY_ITEMS))  # the mark, then the array
        assert a.recv() == "one"  # "two" and the mark read ahead: spilled at the fork
        with started(ctx, read_rest, [(a, report_child, 2)]):
            got, _ = recv_within(report, "report from the child")
        assert got[0] == "two" and (got[1] == 1).all()


@needs_fork
def test_a_fork_in_a_batch_block_leaves_its_frames_to_the_parent() -> None:
    """The child leaves the block too: its frames are the parent's to send, not the child's."""
    reader, writer = mpwire.Pipe(duplex=False)
    with reader, writer:
        with writer.batch():
            writer.send_bytes(b"queued before the fork")
            pid = os.fork()
        if pid == 0:  # the child
            try:
                writer.send_bytes(b"from the child")
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert sorted(reader.recv_bytes(timeout=TIMEOUT) for _ in range(2)) == [
            b"from the child",
            b"queued before the fork",
        ]
        assert not reader.poll(0), "the queued frames left twice"


@needs_fork
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the hook's)
def test_a_fork_shares_every_end_even_if_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spill that cannot be made leaves that end's read-ahead to the parent; the rest go on."""
    pairs = [mpwire.Pipe(duplex=False) for _ in range(2)]
    for reader, writer in pairs:
        for i in range(3):
            writer.send(i)
        assert reader.recv() == 0  # 1 and 2 read ahead
    monkeypatch.setattr(os, "memfd_create", lambda *_: (_ for _ in ()).throw(OSError(24, "")))
    try:
        assert [child_sees_ready(reader) for reader, _ in pairs] == [False, False]
    finally:
        monkeypatch.undo()
    for reader, writer in pairs:
        assert reader._shared
        assert [reader.recv(), reader.recv()] == [1, 2]
        reader.close()
        writer.close()


def test_a_timed_receive_takes_a_message_from_the_spill() -> None:
    reader, writer = mpwire.Pipe(duplex=False)
    with reader, writer:
        for i in range(3):
            writer.send(i)
        assert reader.recv() == 0  # 1 and 2 read ahead
        ForkingPickler.loads(ForkingPickler.dumps(reader)).close()  # passed on: spilled
        assert reader.recv(timeout=TIMEOUT) == 1
        assert reader.recv(timeout=0) == 2
