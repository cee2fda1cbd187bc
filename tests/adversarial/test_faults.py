"""Faults with real processes and sockets: kills, signals, close() races, crowds of clients.

Nothing here waits a fixed time for another party to get somewhere. A test that
needs a thread (or the main thread) to be blocked in a system call on a given
file descriptor before it acts reads ``/proc/self/task/<tid>/syscall``, which
names the call only while the thread sleeps in it; child processes are waited
for through connections and ``Process.sentinel``.

Children are forked (they share this module's functions and the objects made
before the fork), and every wait on them is bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import multiprocessing
import os
import pickle
import platform
import random
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import connection as std_connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import numpy as np
import pytest

import mpwire
from mpwire.protocol.frames import encode_header

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
    pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
    ),
]

FORK = multiprocessing.get_context("fork")
KEY = b"adversarial faults"
WAIT = 30.0
"""The bound on any wait for a peer that behaves (failing tests end well before the timeout)."""

# Thread-based pytest-timeout for the tests that own SIGALRM (setitimer).
OWNS_SIGALRM = pytest.mark.timeout(90, method="thread")


@pytest.fixture(autouse=True)
def _no_stray_timer(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that owns SIGALRM: no timer left running, the handler restored."""
    marker = request.node.get_closest_marker("timeout")
    if marker is None or marker.kwargs.get("method") != "thread":
        yield
        return
    handler = signal.getsignal(signal.SIGALRM)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, handler)


class Interrupted(Exception):
    """Raised by the tests' signal handlers."""


# -- threads, system calls and child processes ---------------------------------

_SYSCALLS = {
    "x86_64": {"read": 0, "poll": 7, "sendto": 44, "sendmsg": 46, "recvmsg": 47},
    # poll is ppoll there
    "aarch64": {"read": 63, "poll": 73, "sendto": 206, "sendmsg": 211, "recvmsg": 212},
}.get(platform.machine())
RECEIVING = {"read", "recvmsg"}
"""How a receive blocks: recvmsg on connections that agreed on shared memory."""

needs_proc_syscall = pytest.mark.skipif(
    _SYSCALLS is None or not os.path.exists(f"/proc/self/task/{threading.get_native_id()}/syscall"),
    reason="needs /proc/<pid>/task/<tid>/syscall and a known syscall table",
)


def blocked_in(tid: int, calls: set[str], fd: int | None = None) -> bool:
    """Whether thread ``tid`` of this process sleeps in one of ``calls`` (on ``fd``)."""
    assert _SYSCALLS is not None
    try:
        with open(f"/proc/self/task/{tid}/syscall") as status:
            fields = status.read().split()
    except OSError:
        return False
    # "running" while on a CPU; "<nr> <args...> <sp> <pc>" while asleep in a call.
    if len(fields) < 3 or not fields[0].isdigit():
        return False
    if int(fields[0]) not in {_SYSCALLS[name] for name in calls}:
        return False
    return fd is None or int(fields[1], 16) == fd


def wait_until_blocked(tid: int, calls: set[str], fd: int | None = None) -> None:
    """Wait (polling /proc) until thread ``tid`` sleeps in one of ``calls`` on ``fd``."""
    deadline = time.monotonic() + WAIT
    while not blocked_in(tid, calls, fd):
        if time.monotonic() > deadline:
            raise AssertionError(f"thread {tid} never blocked in {sorted(calls)} on fd {fd}")
        time.sleep(0.0002)


def wait_until_sent(conn: mpwire.Connection) -> None:
    """Wait (polling the socket's send queue) until the peer's kernel has every byte sent."""
    deadline = time.monotonic() + WAIT
    while struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, bytes(4)))[0]:
        if time.monotonic() > deadline:
            raise AssertionError("the peer's kernel never took what was sent")
        time.sleep(0.0002)


class Call:
    """``fn(*args)`` in a daemon thread: its native id, when it ended, what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended = float("inf")
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()
        assert self._thread.native_id is not None
        self.tid: int = self._thread.native_id

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self.result = fn(*args)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()
            self.done.set()

    def outcome(self, timeout: float = WAIT) -> BaseException | None:
        """What the call raised (None if it returned); fails if it runs past ``timeout``."""
        if not self.done.wait(timeout):
            raise AssertionError(f"call still running after {timeout} s")
        self._thread.join(timeout)
        return self.error


def ended_by_hangup(error: BaseException | None) -> bool:
    """The failure a call woken by a hang-up (or a close) may end with."""
    return isinstance(error, (EOFError, OSError)) and not isinstance(error, TimeoutError)


def _child_main(
    endpoint: Any, parent_end: mpwire.Connection | None, target: Callable[..., None], args: Any
) -> None:
    """Child process: connect (or take the pipe end) and run ``target(conn, *args)``."""
    if parent_end is not None:
        parent_end.close()
    if isinstance(endpoint, mpwire.Connection):
        conn = endpoint
    else:
        conn = mpwire.Client(endpoint, authkey=KEY, timeout=WAIT)
    with conn:
        target(conn, *args)


@contextlib.contextmanager
def child_peer(
    kind: str, target: Callable[..., None], *args: Any
) -> Iterator[tuple[mpwire.Connection, BaseProcess]]:
    """A forked child running ``target(conn, *args)`` at the far end of our connection.

    ``kind`` is "pipe" (a ``Pipe()``), "unix" or "tcp" (an authenticated
    Listener/Client pair). On exit the child is killed if it still runs.
    """
    listener = None
    if kind == "pipe":
        ours, theirs = mpwire.Pipe()
        proc = FORK.Process(target=_child_main, args=(theirs, ours, target, args), daemon=True)
        proc.start()
        theirs.close()
    else:
        address = ("127.0.0.1", 0) if kind == "tcp" else None
        family = "AF_INET" if kind == "tcp" else "AF_UNIX"
        listener = mpwire.Listener(address, family, authkey=KEY)
        proc = FORK.Process(
            target=_child_main, args=(listener.address, None, target, args), daemon=True
        )
        proc.start()
        try:
            ours = listener.accept(timeout=WAIT)
        except BaseException:
            proc.kill()
            proc.join(WAIT)
            raise
        finally:
            listener.close()
    try:
        yield ours, proc
    finally:
        ours.close()
        if proc.is_alive():
            proc.kill()
        proc.join(WAIT)


def receive_report(conn: mpwire.Connection, proc: BaseProcess, timeout: float = 60) -> Any:
    """The object the child sends on ``conn``; fails if it dies or takes too long first."""
    ready = mpwire.wait([conn, proc.sentinel], timeout)
    if conn not in ready:
        raise AssertionError(f"no report from the child (exit code {proc.exitcode})")
    return conn.recv(timeout=WAIT)


# -- 1. a peer killed in the middle of a 200 MB message --------------------------------

HUGE = 200_000_000


def _send_huge(conn: mpwire.Connection) -> None:
    conn.send_bytes(bytes(HUGE))  # nobody reads: the parent kills us in the middle


def _never_read(conn: mpwire.Connection) -> None:
    threading.Event().wait()  # the parent kills us while it sends


@needs_proc_syscall
@pytest.mark.parametrize("kind", ["pipe", "unix", "tcp"])
@pytest.mark.parametrize("receiving", ["blocked in recv_bytes", "afterwards"])
def test_a_sender_killed_mid_message_ends_the_receive_promptly(kind: str, receiving: str) -> None:
    with child_peer(kind, _send_huge) as (conn, proc):
        # The first bytes are here; the frame is far larger than the socket buffers
        # and nobody reads it, so the sender is stuck in the middle of it.
        assert conn.poll(WAIT), "the sender never started"
        if receiving == "afterwards":
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(WAIT)
            killed = time.monotonic()
            call = Call(conn.recv_bytes)
        else:
            os.kill(proc.pid, signal.SIGSTOP)  # frozen mid-frame while we drain what arrived
            call = Call(conn.recv_bytes)
            wait_until_blocked(call.tid, RECEIVING, conn.fileno())
            killed = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
        error = call.outcome()
        assert proc.exitcode in (None, -signal.SIGKILL)
        assert ended_by_hangup(error), f"{error!r} (returned {len(call.result or b'')} bytes)"
        assert call.ended - killed < 5, f"the receive took {call.ended - killed:.1f} s"


@needs_proc_syscall
@pytest.mark.parametrize("kind", ["pipe", "unix", "tcp"])
def test_a_receiver_killed_mid_message_fails_the_send_promptly(kind: str) -> None:
    with child_peer(kind, _never_read) as (conn, proc):
        call = Call(conn.send_bytes, bytes(HUGE))
        wait_until_blocked(call.tid, {"sendmsg"}, conn.fileno())  # buffers full, mid-frame
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        error = call.outcome()
        assert ended_by_hangup(error), repr(error)
        assert call.ended - killed < 5
        assert conn.closed, "a frame cut short must close the connection"


# -- 2. four threads sharing one connection's send side ---------------------------------

THREADS = 4
PER_THREAD = 1000
LARGEST = 100 * 1024


def thread_message(thread: int, seq: int) -> tuple[str, bytes]:
    """Message ``seq`` of sender ``thread``: how it is sent, and its payload (1 B to 100 KiB).

    Sizes are log-uniform (about 11 KB on average, 45 MB in all), with both ends
    of the range in every thread.
    """
    rng = random.Random(thread * 1_000_003 + seq)
    size = {0: 1, 1: LARGEST}.get(seq) or min(LARGEST, int(2 ** rng.uniform(0, 17)))
    how = rng.choice(["send", "send_bytes", "send_bytes_offset"])
    return how, rng.randbytes(size)


def _check_thread_messages(conn: mpwire.Connection) -> None:
    """Child: receive every message, check each and the order per thread, report."""
    expected = [0] * THREADS
    errors: list[str] = []
    into = bytearray(LARGEST + 100)
    for i in range(THREADS * PER_THREAD):
        if i % 2:
            data = conn.recv_bytes(timeout=WAIT)
        else:
            data = bytes(into[: conn.recv_bytes_into(into, timeout=WAIT)])
        try:
            if data[:1] == b"R":
                thread, seq = struct.unpack_from("!HI", data, 1)
                payload, raw = data[7:], True
            else:
                thread, seq, payload = pickle.loads(data)
                raw = False
            how, want = thread_message(thread, seq)
            if seq != expected[thread]:
                errors.append(f"thread {thread}: got message {seq}, expected {expected[thread]}")
            elif payload != want or raw != (how != "send"):
                errors.append(f"thread {thread}: message {seq} is not what was sent")
            expected[thread] = seq + 1
        except Exception as exc:
            errors.append(f"message {i}: undecodable ({exc!r}): {data[:20]!r}")
    conn.send({"errors": errors[:5], "error_count": len(errors), "next": expected})


@pytest.mark.parametrize("kind", ["pipe", "tcp"])
def test_four_threads_share_one_connection_without_mixing_frames(kind: str) -> None:
    with child_peer(kind, _check_thread_messages) as (conn, proc):

        def sender(thread: int) -> None:
            for seq in range(PER_THREAD):
                how, payload = thread_message(thread, seq)
                if how == "send":
                    conn.send((thread, seq, payload))
                    continue
                frame = b"R" + struct.pack("!HI", thread, seq) + payload
                if how == "send_bytes":
                    conn.send_bytes(frame)
                else:
                    padded = bytearray(b"<<" + frame + b">>")
                    conn.send_bytes(memoryview(padded), 2, len(frame))

        senders = [Call(sender, t) for t in range(THREADS)]
        for call in senders:
            assert call.outcome(60) is None
        report = receive_report(conn, proc)
    assert report == {"errors": [], "error_count": 0, "next": [PER_THREAD] * THREADS}


# -- 3. signals every millisecond, and handlers that raise ------------------------------

SIGNALLED = 100 * 1024 * 1024


def signalled_body() -> bytes:
    """100 MiB in which every 4-byte word differs, so a lost or shifted byte shows."""
    return np.arange(SIGNALLED // 4, dtype="<u4").tobytes()


@functools.cache
def body_sha256() -> bytes:
    return hashlib.sha256(signalled_body()).digest()


def in_timer_cleanup(frame: Any) -> bool:
    """Whether a handler runs in contextlib's code (leaving signals_every_millisecond).

    An exception raised there would skip stopping the timer.
    """
    return frame is not None and frame.f_code.co_filename == contextlib.__file__


class SignalCounter:
    """A SIGALRM handler counting its calls; it raises Interrupted once, on call ``raise_at``
    (or the first one after it that does not land in the timer's own cleanup)."""

    def __init__(self, raise_at: int | None = None) -> None:
        self.count = 0
        self.raise_at = raise_at

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        due = self.raise_at is not None and self.count >= self.raise_at
        if due and not in_timer_cleanup(frame):
            self.raise_at = None
            raise Interrupted(f"signal {self.count}")


Handler = TypeVar("Handler", bound=Callable[[int, Any], None])


@contextlib.contextmanager
def signals_every_millisecond(handler: Handler) -> Iterator[Handler]:
    """SIGALRM every millisecond (ITIMER_REAL) handled by ``handler``, for the block."""
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        yield handler
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            # A signal delivered as the timer stopped runs its Python handler at
            # the next check: run it now, while ours is still installed.
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
        finally:
            signal.signal(signal.SIGALRM, previous)


def _send_under_signals(conn: mpwire.Connection, how: str, raise_at: int | None) -> None:
    """Child: send the body with its own 1 ms timer; report (outcome, signal count) after."""
    body = signalled_body()
    conn.send_bytes(b"ready")
    outcome = "sent"
    with signals_every_millisecond(SignalCounter(raise_at)) as counter:
        try:
            conn.send(body) if how == "send" else conn.send_bytes(body)
        except Interrupted:
            if conn.closed:
                outcome = "interrupted, closed"
            else:
                # Open, so no byte of the frame left: what a program may well do
                # next is send again.
                outcome = "interrupted, left open"
                with contextlib.suppress(OSError):
                    conn.send_bytes(body)
    # The report goes on a connection of its own, so that the data stream ends here.
    conn.close()
    with mpwire.Client(os.environ["MPWIRE_TEST_REPORT"], timeout=WAIT) as report:
        report.send((outcome, counter.count))


@contextlib.contextmanager
def report_listener() -> Iterator[mpwire.Listener]:
    """A Unix Listener whose address forked children find in the environment."""
    with mpwire.Listener(family="AF_UNIX") as listener:
        os.environ["MPWIRE_TEST_REPORT"] = listener.address
        try:
            yield listener
        finally:
            del os.environ["MPWIRE_TEST_REPORT"]


def collect_report(listener: mpwire.Listener) -> Any:
    with listener.accept(timeout=WAIT) as conn:
        return conn.recv(timeout=WAIT)


RECEIVERS: dict[str, Callable[[mpwire.Connection], bytes]] = {
    "recv_bytes": lambda c: c.recv_bytes(),
    "recv_bytes_timeout": lambda c: c.recv_bytes(timeout=WAIT),
    "recv_bytes_into": lambda c: (buf := bytearray(SIGNALLED))[: c.recv_bytes_into(buf)],
    "recv": lambda c: c.recv(),
}


@OWNS_SIGALRM
@pytest.mark.parametrize(
    ("send", "receive"),
    [
        ("send_bytes", "recv_bytes"),
        ("send_bytes", "recv_bytes_timeout"),
        ("send_bytes", "recv_bytes_into"),
        ("send", "recv"),
    ],
)
def test_100_mb_arrive_intact_under_signals_every_millisecond(send: str, receive: str) -> None:
    peer = child_peer("pipe", _send_under_signals, send, None)
    with report_listener() as reports, peer as (conn, _):
        assert conn.recv_bytes(timeout=WAIT) == b"ready"
        with signals_every_millisecond(SignalCounter()) as counter:
            got = RECEIVERS[receive](conn)
        outcome, child_signals = collect_report(reports)
    assert outcome == "sent"
    assert len(got) == SIGNALLED and hashlib.sha256(got).digest() == body_sha256()
    # 100 MiB take milliseconds (about 8 at best here): each side saw its timer fire during it.
    assert counter.count >= 2, f"the receiver's handler ran {counter.count} times"
    assert child_signals >= 2, f"the sender's handler ran {child_signals} times"


def _send_body(conn: mpwire.Connection) -> None:
    body = signalled_body()
    conn.send_bytes(b"ready")
    conn.send_bytes(body)


@OWNS_SIGALRM
def test_a_receive_interrupted_by_a_raising_handler_never_gives_a_corrupt_message() -> None:
    """The handler raises once, mid-transfer: the receive either got the whole message or
    the connection is closed (it cannot know whether the read it interrupted took bytes).

    Where the exception lands is up to the scheduler, so this takes several rounds,
    raising at a different signal each time. (The sender runs without signals here:
    it is faster so, and the receiver spends more of its time copying bytes.)
    """
    outcomes = []
    for round_, raise_at in enumerate([2, 40, 7, 55, 13, 30, 21, 48]):
        with child_peer("pipe", _send_body) as (conn, _):
            assert conn.recv_bytes(timeout=WAIT) == b"ready"
            # Decided before the signals start: a handler's exception may land on any line
            # in their window, this test's own bookkeeping included.
            outcome = "whole"
            with signals_every_millisecond(SignalCounter(raise_at)):
                try:
                    got = RECEIVERS["recv_bytes" if round_ % 2 else "recv_bytes_into"](conn)
                except Interrupted:
                    if conn.closed:  # interrupted inside the receive
                        outcomes.append("closed")
                        continue
                    # Interrupted in this test's own code, before the receive began
                    # (the message comes whole) or after it ended (the message is
                    # lost whole, and the sender's exit ends the stream).
                    try:
                        got = conn.recv_bytes(timeout=WAIT)
                    except EOFError:
                        outcomes.append("lost whole")
                        continue
                    outcome = "interrupted before"
            outcomes.append(outcome)
            assert hashlib.sha256(got).digest() == body_sha256(), (
                f"round {round_} (raising at signal {raise_at}): the message is corrupt"
            )
    assert "closed" in outcomes, outcomes


@OWNS_SIGALRM
@pytest.mark.parametrize("raise_at", [1, 3, 10])
def test_a_send_interrupted_by_a_raising_handler_never_corrupts_the_stream(raise_at: int) -> None:
    """The sender's handler raises once and it sends again: the peer never gets garbage."""
    with (
        report_listener() as reports,
        child_peer("pipe", _send_under_signals, "send_bytes", raise_at) as (conn, _),
    ):
        assert conn.recv_bytes(timeout=WAIT) == b"ready"
        try:
            got: bytes | OSError = conn.recv_bytes(timeout=WAIT)
        except OSError as exc:
            got = exc
        conn.close()  # a sender still writing (after a retry) fails and reports
        outcome, _count = collect_report(reports)
    assert outcome.startswith("interrupted")
    if isinstance(got, OSError):
        assert ended_by_hangup(got), repr(got)
    else:
        # The only acceptable message is the one that was sent.
        assert hashlib.sha256(got).digest() == body_sha256(), (
            f"the receiver got a corrupt message (the sender: {outcome!r}, then sent again)"
        )


# Deterministic versions: the main thread is put to sleep in the system call
# first, then signalled.


@pytest.fixture
def raising_sigusr1() -> Iterator[None]:
    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted("SIGUSR1")

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def signal_main_thread_once_blocked(calls: set[str], fd: int) -> None:
    main = threading.main_thread()
    assert main.native_id is not None and main.ident is not None
    wait_until_blocked(main.native_id, calls, fd)
    signal.pthread_kill(main.ident, signal.SIGUSR1)


@needs_proc_syscall
@pytest.mark.parametrize("size", [30_000, 3_000_000], ids=["read-ahead", "large"])
def test_a_handler_raising_just_after_a_read_closes_rather_than_lose_bytes(
    raising_sigusr1: None, size: int
) -> None:
    """A handler installed with SA_RESTART (``siginterrupt(sig, False)``) runs after read()
    returns the bytes it waited for, not inside it: the receive cannot know whether it
    noted them, so it must close instead of going on out of step.
    """
    signal.siginterrupt(signal.SIGUSR1, False)
    a, b = mpwire.Pipe()
    body = os.urandom(size)
    frame = encode_header(size) + body
    with a, b:
        os.write(a.fileno(), frame[:10_000])

        def interrupt_then_write() -> None:
            signal_main_thread_once_blocked(RECEIVING, b.fileno())
            rest = memoryview(frame)[10_000:]
            while rest:
                rest = rest[os.write(a.fileno(), rest) :]
            a.send_bytes(b"after")

        writer = Call(interrupt_then_write)
        with pytest.raises(Interrupted):
            b.recv_bytes()
        # The bytes that read() returned may or may not have been noted: the receive
        # cannot tell, so it closes rather than resume out of step.
        assert b.closed
        with pytest.raises(OSError, match="closed"):
            b.recv_bytes(timeout=2)
        writer.outcome()


@needs_proc_syscall
def test_a_send_interrupted_after_part_of_the_frame_left_closes(raising_sigusr1: None) -> None:
    """sendmsg() interrupted by a signal returns the count it sent; the handler's exception
    comes right after. Part of the frame has left: the connection must close, or the next
    frame sent on it is read as the rest of this one.
    """
    a, b = mpwire.Pipe()
    body = os.urandom(4_000_000)
    with a, b:
        Call(signal_main_thread_once_blocked, {"sendmsg"}, a.fileno())
        with pytest.raises(Interrupted):
            a.send_bytes(body)  # nobody reads yet: blocks once the buffers are full
        closed = a.closed
        retry = Call(a.send_bytes, body)  # what the program does next
        try:
            got = b.recv_bytes(timeout=5)
        except OSError as exc:
            assert ended_by_hangup(exc) or isinstance(exc, TimeoutError), repr(exc)
            got = None
        b.close()  # unblocks the retry if it waits for room
        retry.outcome()
    assert got is None or got == body, "the peer received a corrupt message"
    assert closed, "part of a frame left and the connection stayed open"


# Exceptions landing anywhere inside mpwire: a handler that raises whenever the
# signal finds the main thread in mpwire's code (as Ctrl-C would), on a stream of
# numbered messages.

MPWIRE_DIR = os.path.dirname(mpwire.__file__) + os.sep


class Stuck(Exception):
    """The chaos handler's way out of a call that never returns."""


class Chaos:
    """SIGALRM handler: Interrupted whenever the signal lands in mpwire's code.

    At most ``budget`` times; after ``seconds`` it raises Stuck wherever it lands,
    so a call that would block forever (a lock never released) ends the test.
    """

    def __init__(self, budget: int = 150, seconds: float = 5) -> None:
        self.count = 0
        self.raised = 0
        self.budget = budget
        self.deadline = time.monotonic() + seconds

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        where = f"{frame.f_code.co_name}:{frame.f_lineno}" if frame else "?"
        if time.monotonic() > self.deadline:
            signal.setitimer(signal.ITIMER_REAL, 0)  # once: the test ends with this
            raise Stuck(f"still running after {self.raised} interruptions, now in {where}")
        if self.raised < self.budget and frame and frame.f_code.co_filename.startswith(MPWIRE_DIR):
            self.raised += 1
            raise Interrupted(where)


SIZES = {"small": (0, 300), "large": (70_000, 150_000)}
COUNTS = {"small": 60_000, "large": 400}
END_MARKERS = 10


def numbered(number: int, sizes: tuple[int, int]) -> bytes:
    """Message ``number``: its number, then bytes that depend on it (no two alike)."""
    low, high = sizes
    size = low + number * 7919 % (high - low + 1)
    return struct.pack("!Q", number) + hashlib.shake_128(struct.pack("!Q", number)).digest(size)


def check_numbered(message: bytes, last: int, sizes: tuple[int, int]) -> int:
    """The number of ``message``, checked: intact, and after ``last`` (gaps are allowed)."""
    number = struct.unpack_from("!Q", message)[0] if len(message) >= 8 else -1
    if number <= last or message != numbered(number, sizes):
        raise AssertionError(
            f"after message {last}: a corrupt message ({len(message)} bytes, "
            f"starting {message[:16]!r})"
        )
    return number


def _send_numbered(conn: mpwire.Connection, kind: str) -> None:
    """Child: send the numbered stream and its end markers, then wait for the parent."""
    for number in range(COUNTS[kind] + END_MARKERS):
        conn.send_bytes(numbered(number, SIZES[kind]))
    with contextlib.suppress(EOFError, OSError):
        conn.recv()


def _receive_numbered(conn: mpwire.Connection, kind: str) -> None:
    """Child: check the numbered stream until an end marker or the end; report how it ended."""
    last, ending = -1, "end marker"
    try:
        while last < COUNTS[kind]:
            last = check_numbered(conn.recv_bytes(), last, SIZES[kind])
    except EOFError:
        ending = "end of stream between messages"
    except AssertionError as exc:
        ending = f"corrupt: {exc}"
    except OSError as exc:
        ending = "cut short" if "end of file during message" in str(exc) else repr(exc)
    with mpwire.Client(os.environ["MPWIRE_TEST_REPORT"], timeout=WAIT) as report:
        report.send((ending, last))


# One exception per connection, anywhere: what a program's Ctrl-C or alarm handler does.
# (Timed calls are left out: between a timed lock acquisition and the code that
# releases it there are a few bytecodes that no Python code can shield.)


@OWNS_SIGALRM
@pytest.mark.parametrize("kind", sorted(SIZES))
def test_a_handler_raising_anywhere_in_receives_never_desynchronises_the_stream(
    kind: str,
) -> None:
    """Whole messages may be lost to the exceptions, never bytes; nothing wedges.

    An interruption either leaves the connection in step or closes it (when it
    cannot know whether it lost bytes); rounds go on, each on a new connection,
    until the handler has raised often enough.
    """
    raised = rounds = 0
    while raised < 20 and rounds < 40:
        rounds += 1
        last = -1
        chaos = Chaos(budget=1)
        with child_peer("pipe", _send_numbered, kind) as (conn, _):
            with signals_every_millisecond(chaos):
                while last < COUNTS[kind]:
                    try:
                        if conn.closed:
                            break
                        message = conn.recv_bytes()
                    except Interrupted:
                        continue
                    except OSError as exc:
                        raise AssertionError(
                            f"round {rounds}, after message {last} and {chaos.raised} "
                            f"interruptions: {exc!r}"
                        ) from exc
                    last = check_numbered(message, last, SIZES[kind])
            if not conn.closed:
                conn.send("done")
        raised += chaos.raised
    assert raised >= 20, f"only {raised} interruptions in {rounds} rounds"


@OWNS_SIGALRM
@pytest.mark.parametrize("kind", sorted(SIZES))
def test_a_handler_raising_anywhere_in_sends_never_desynchronises_the_stream(kind: str) -> None:
    """An interrupted send either closes the connection or leaves the stream whole.

    Rounds go on, each on a new connection (an interruption part way through a
    frame closes one), until the handler has raised often enough; the child
    checks every message it receives.
    """
    raised = rounds = 0
    with report_listener() as reports:
        while raised < 20 and rounds < 40:
            rounds += 1
            chaos = Chaos(budget=1)
            with child_peer("pipe", _receive_numbered, kind) as (conn, _):
                number, error = 0, None
                with signals_every_millisecond(chaos):
                    while number < COUNTS[kind]:
                        try:
                            if conn.closed:
                                break
                            conn.send_bytes(numbered(number, SIZES[kind]))
                        except Interrupted:
                            pass
                        except OSError as exc:
                            error = f"message {number}: {exc!r}"
                            break
                        number += 1
                raised += chaos.raised
                still_open = not conn.closed
                if still_open and error is None:
                    try:
                        conn.send_bytes(numbered(COUNTS[kind], SIZES[kind]), timeout=3)
                    except OSError as exc:
                        error = f"the end marker: {exc!r}"
                conn.close()  # a child waiting for the rest of a frame sees the end
                ending, last = collect_report(reports)
            where = f"round {rounds}, after {raised} interruptions"
            assert error is None, f"{where}: the send failed ({error}); the receiver: {ending}"
            if still_open:
                assert ending == "end marker", f"{where}: {ending} after message {last}"
            else:
                assert ending in ("end of stream between messages", "cut short"), (
                    f"{where}: {ending} after message {last}"
                )
    assert raised >= 20, f"{raised} interruptions in {rounds} rounds"


# -- 4. close() from another thread wakes blocked calls ----------------------------------

ROUNDS = 12

PairMaker = Callable[[], tuple[mpwire.Connection, mpwire.Connection]]


def _tcp_pair() -> tuple[mpwire.Connection, mpwire.Connection]:
    with mpwire.Listener(("127.0.0.1", 0)) as listener:
        client = mpwire.Client(listener.address)
        return listener.accept(timeout=WAIT), client


PAIRS: dict[str, PairMaker] = {
    # (the end that blocks receiving, the end that blocks sending). Sockets only: a
    # one-way Pipe is an os.pipe(), as the stdlib's, and nothing can shut a pipe down.
    "pipe": lambda: mpwire.Pipe(),
    "tcp": _tcp_pair,
}


def fill_send_buffers(conn: mpwire.Connection) -> None:
    """Write raw filler until the socket would block (the peer never reads it)."""
    fd = conn.fileno()
    os.set_blocking(fd, False)
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(fd, bytes(65536))
    finally:
        os.set_blocking(fd, True)


# name: (what blocks, which end it uses, the system calls it sleeps in)
BLOCKING: dict[str, tuple[Callable[[mpwire.Connection], Any], str, set[str]]] = {
    "recv": (lambda c: c.recv(), "reader", RECEIVING),
    "recv_bytes": (lambda c: c.recv_bytes(), "reader", RECEIVING),
    "recv_bytes_into": (lambda c: c.recv_bytes_into(bytearray(64)), "reader", RECEIVING),
    "recv_bytes with a timeout": (lambda c: c.recv_bytes(timeout=60), "reader", {"poll"}),
    "recv_bytes mid-message": (lambda c: c.recv_bytes(), "reader-mid", RECEIVING),
    "small send, buffers full": (lambda c: c.send_bytes(b"x" * 100), "writer-full", {"sendto"}),
    "large send": (lambda c: c.send_bytes(bytes(50_000_000)), "writer", {"sendmsg"}),
    "send with a timeout": (
        lambda c: c.send_bytes(bytes(50_000_000), timeout=60),
        "writer",
        {"poll"},
    ),
}


@needs_proc_syscall
@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize("op", list(BLOCKING))
def test_close_from_another_thread_wakes_a_blocked_call(kind: str, op: str) -> None:
    call_op, end, calls = BLOCKING[op]
    for round_ in range(ROUNDS):
        reader, writer = PAIRS[kind]()
        with reader, writer:
            if end.startswith("reader"):
                conn, peer = reader, writer
                if end == "reader-mid":
                    os.write(peer.fileno(), encode_header(1 << 20) + bytes(1000))
            else:
                conn, peer = writer, reader
                if end == "writer-full":
                    fill_send_buffers(conn)
            fd = conn.fileno()
            call = Call(call_op, conn)
            wait_until_blocked(call.tid, calls, None if calls == {"poll"} else fd)
            closed = time.monotonic()
            conn.close()
            error = call.outcome(10)
            assert ended_by_hangup(error), f"round {round_}: {error!r}"
            assert call.ended - closed < 5
            assert conn.closed
            with pytest.raises(OSError):
                os.fstat(fd)  # the last call out closed the fd


@needs_proc_syscall
@pytest.mark.parametrize("kind", ["pipe", "tcp"])
def test_close_from_another_thread_wakes_a_blocked_poll(kind: str) -> None:
    """poll() is a call blocked on the socket too: close() must not leave it waiting."""
    reader, writer = PAIRS[kind]()
    with reader, writer:
        call = Call(reader.poll, 3.0)
        wait_until_blocked(call.tid, {"poll"})
        closed = time.monotonic()
        reader.close()
        error = call.outcome(10)
        assert error is None or ended_by_hangup(error), repr(error)
        assert call.ended - closed < 1.5, (
            f"poll() returned {call.result!r} {call.ended - closed:.1f} s after close(): "
            "it slept through it"
        )


def _close_mid_stream(kind: str, rng: random.Random) -> None:
    reader, writer = PAIRS[kind]()
    target = rng.choice([reader, writer])
    stop_after = rng.randrange(1, 200)
    received = threading.Event()

    def receive() -> None:
        count = 0
        while True:
            reader.recv_bytes(timeout=WAIT)
            count += 1
            if count == stop_after:
                received.set()

    def send() -> None:
        for i in range(100_000):
            writer.send_bytes(bytes(i % 3000))

    with reader, writer:
        fds = (reader.fileno(), writer.fileno())
        receiving, sending = Call(receive), Call(send)
        assert received.wait(WAIT), "the stream stalled"
        target.close()
        # The other end stays open: its call ends when the peer's close shows.
        error = receiving.outcome(10)
        assert ended_by_hangup(error), f"receive: {error!r}"
        error = sending.outcome(10)
        assert error is None or ended_by_hangup(error), f"send: {error!r}"
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_close_at_any_moment_of_a_busy_stream(kind: str) -> None:
    """A receiver and a sender stream messages; one end is closed somewhere in the middle.

    Both calls end (with EOFError/OSError), nothing hangs, every descriptor gets closed.
    """
    rng = random.Random(kind)
    for round_ in range(60):
        try:
            _close_mid_stream(kind, rng)
        except AssertionError as exc:
            raise AssertionError(f"round {round_}: {exc}") from exc


STALLS: dict[str, tuple[threading.Event, threading.Event]] = {}
"""Per test: (a stalled unpickle began, the unpickle may go on)."""


def _stall(name: str) -> None:
    began, go_on = STALLS[name]
    began.set()
    assert go_on.wait(WAIT)


class Stall:
    """Unpickles by waiting for the test's word: a receive stopped in the middle of a message."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return _stall, (self.name,)


@needs_proc_syscall
def test_a_receive_reading_after_close_resets_the_tcp_connection() -> None:
    """close() interrupts a receive that then reads the bytes the kernel held: the peer wakes.

    A read after the shutdown that close() makes does not reopen the TCP
    window, so a peer blocked sending would wait on a plain close for ever;
    the close must be a reset instead, as when unread bytes are dropped.
    """
    began, go_on = STALLS["reset"] = threading.Event(), threading.Event()
    reader, writer = _tcp_pair()
    with reader, writer:
        # The stall comes first in the pickle, and the large body after it
        # fills the window while the receive waits in the unpickler.
        sending = Call(writer.send, [Stall("reset"), bytes(64 << 20)])
        receiving = Call(reader.recv)
        assert began.wait(WAIT)
        wait_until_blocked(sending.tid, {"sendmsg"}, writer.fileno())
        reader.close()
        go_on.set()
        assert ended_by_hangup(receiving.outcome(10))
        error = sending.outcome(10)
        assert isinstance(error, ConnectionError), repr(error)


def test_a_receive_that_finishes_its_message_after_close_closes_gracefully() -> None:
    """A receive busy when close() came, which then reads the rest of its message: no reset.

    Nothing is left unread, so what this end sent before close() still
    arrives, then the end of the stream.
    """
    began, go_on = STALLS["graceful"] = threading.Event(), threading.Event()
    with mpwire.Listener(("127.0.0.1", 0)) as listener:
        writer = mpwire.Client(listener.address)
        reader = listener.accept(timeout=WAIT)
    reply = bytes(range(256)) * 4096  # 1 MiB
    with reader, writer:
        with socket.socket(fileno=os.dup(reader.fileno())) as sock:
            # Room for the whole message and the whole reply.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        # Over the read-ahead, so it is unpickled as it arrives.
        writer.send([Stall("graceful"), bytes(400_000)])
        receiving = Call(reader.recv)
        assert began.wait(WAIT)
        wait_until_sent(writer)  # the rest of the message waits in the reader's kernel
        reader.send_bytes(reply)
        reader.close()
        go_on.set()
        assert receiving.outcome(10) is None  # the message came whole
        assert writer.recv_bytes(timeout=WAIT) == reply
        with pytest.raises(EOFError):
            writer.recv_bytes(timeout=WAIT)


# -- 5. 200 clients, 100 round trips each -----------------------------------------------

CLIENT_PROCESSES = 4
CLIENTS_PER_PROCESS = 50
ROUND_TRIPS = 100


def request(client: int, seq: int) -> bytes:
    rng = random.Random(client * 7919 + seq)
    return b"%d:%d:" % (client, seq) + rng.randbytes(rng.choice([0, 10, 100, 1000, 4000]))


def reply_to(message: bytes) -> bytes:
    return hashlib.sha256(message).digest() + message[::-1]


def _run_clients(report: mpwire.Connection, address: Any, first: int, stdlib: bool) -> None:
    """Child: CLIENTS_PER_PROCESS threads, each a client doing ROUND_TRIPS round trips."""
    errors: list[str] = []
    checked = 0
    lock = threading.Lock()

    def client(number: int) -> None:
        nonlocal checked
        try:
            if stdlib:
                conn: Any = std_connection.Client(address, authkey=KEY)
            else:
                conn = mpwire.Client(address, authkey=KEY, timeout=WAIT)
            with conn:
                for seq in range(ROUND_TRIPS):
                    message = request(number, seq)
                    if seq % 3:
                        conn.send_bytes(message)
                        answer = conn.recv_bytes()
                    else:
                        conn.send(("obj", message))
                        answer = conn.recv()
                    if answer != reply_to(message):
                        with lock:
                            errors.append(f"client {number}, round trip {seq}: wrong reply")
                        return
                    with lock:
                        checked += 1
                conn.send_bytes(b"bye")
        except Exception as exc:
            with lock:
                errors.append(f"client {number}: {exc!r}")

    threads = [
        threading.Thread(target=client, args=(first + i,)) for i in range(CLIENTS_PER_PROCESS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.send({"checked": checked, "errors": errors[:5], "error_count": len(errors)})
    report.close()


def serve(conn: mpwire.Connection, served: list[int]) -> None:
    with conn:
        while (message := conn.recv_bytes(timeout=WAIT)) != b"bye":
            if message[:1] == b"\x80":
                tag, body = pickle.loads(message)
                assert tag == "obj"
                conn.send(reply_to(body))
            else:
                conn.send_bytes(reply_to(message))
            served.append(1)


@pytest.mark.parametrize("clients", ["mpwire", "stdlib"])
def test_200_clients_with_100_round_trips_each(clients: str) -> None:
    total = CLIENT_PROCESSES * CLIENTS_PER_PROCESS
    started = time.monotonic()
    with mpwire.Listener(("127.0.0.1", 0), backlog=total, authkey=KEY) as listener:
        reports, procs = [], []
        for p in range(CLIENT_PROCESSES):  # forked before this process starts any thread
            ours, theirs = mpwire.Pipe()
            proc = FORK.Process(
                target=_run_clients,
                args=(theirs, listener.address, p * CLIENTS_PER_PROCESS, clients == "stdlib"),
                daemon=True,
            )
            proc.start()
            theirs.close()
            reports.append(ours)
            procs.append(proc)
        served: list[int] = []
        servers = []
        try:
            for _ in range(total):
                servers.append(Call(serve, listener.accept(timeout=WAIT), served))
            results = [
                receive_report(r, p, timeout=60) for r, p in zip(reports, procs, strict=True)
            ]
            for server in servers:
                assert server.outcome() is None
        finally:
            for proc in procs:
                proc.join(WAIT)
                if proc.is_alive():
                    proc.kill()
            for conn in reports:
                conn.close()
    assert [r["errors"] for r in results] == [[]] * CLIENT_PROCESSES
    assert sum(r["checked"] for r in results) == total * ROUND_TRIPS
    assert len(served) == total * ROUND_TRIPS
    assert time.monotonic() - started < 45
