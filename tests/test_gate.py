"""The Gate behind a Connection's one-sender, one-receiver rule.

Its point is that an exception from a signal handler never leaves it taken,
which ``lock.acquire()`` followed by ``try`` cannot promise: the tests run
both under a timer whose handler raises every 20 µs of CPU time, and count
what each leaves taken. (SIGPROF: pytest-timeout has SIGALRM.)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from mpwire import Pipe
from mpwire.sync import gate as gate_module
from mpwire.sync.connection import Connection
from mpwire.sync.gate import Gate

pytestmark = pytest.mark.timeout(60)


def hold(gate: Gate, body: Callable[[], object]) -> None:
    """Run ``body`` holding ``gate``, written as the Connection writes it."""
    try:
        del gate.token[0]
    except IndexError:
        gate.acquire()
    try:
        body()
    finally:
        gate.token.append(True)
        if gate.waiting:
            gate.wake()


def test_one_holder_at_a_time() -> None:
    gate = Gate()
    inside = 0
    most = 0
    total = 0

    def body() -> None:
        nonlocal inside, most, total
        inside += 1
        most = max(most, inside)
        value = total
        time.sleep(0)  # let another thread run here if it can
        total = value + 1
        inside -= 1

    def work() -> None:
        for _ in range(3000):
            hold(gate, body)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (most, total) == (1, 12000)
    assert not gate.locked() and not gate.waiting


def test_acquire_times_out_while_held() -> None:
    gate = Gate()
    assert gate.acquire(0)
    assert gate.locked()
    assert not gate.acquire(0)
    assert not gate.acquire(0.01)
    assert not gate.acquire(-1)
    gate.token.append(True)
    assert gate.acquire(0.01)


def test_release_wakes_the_waiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only wake() can end the wait here: the periodic look is an hour away."""
    monkeypatch.setattr(gate_module, "_RECHECK", 3600.0)
    gate = Gate()
    del gate.token[0]
    got = threading.Event()

    def waiter() -> None:
        gate.acquire()
        got.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    while not gate.waiting:  # until the waiter is inside acquire()
        time.sleep(0.001)
    gate.token.append(True)
    gate.wake()
    thread.join()
    assert got.is_set() and gate.locked()


class Tick(Exception):
    """What the timer's signal handler raises."""


@pytest.fixture
def ticking() -> Iterator[Callable[[Callable[[], object], Callable[[], None]], tuple[int, int]]]:
    """Run a loop under a signal handler that raises Tick every 20 µs of CPU time.

    Returns ``run(step, check, ticks)``: calls ``step`` until a Tick lands,
    then ``check()``, which returns whether what it checks was left taken
    (and frees it); stops after ``ticks`` ticks. Returns (ticks, leaks).
    """
    armed = False

    def handler(signum: int, frame: object) -> None:
        if armed:
            raise Tick

    previous = signal.signal(signal.SIGPROF, handler)

    def run(step: Callable[[], object], check: Callable[[], bool], count: int) -> tuple[int, int]:
        nonlocal armed
        ticks = leaks = 0
        signal.setitimer(signal.ITIMER_PROF, 2e-5, 2e-5)
        try:
            while ticks < count:
                armed = True
                try:
                    while True:
                        step()
                except Tick:
                    armed = False  # (first: a handler runs at calls, not here)
                    ticks += 1
                    leaks += check()
        finally:
            armed = False
            signal.setitimer(signal.ITIMER_PROF, 0)
        return ticks, leaks

    yield run  # type: ignore[misc]
    signal.signal(signal.SIGPROF, previous)


def test_a_signal_never_leaves_the_gate_taken(ticking: Callable[..., tuple[int, int]]) -> None:
    lock = threading.Lock()

    def lock_then_try() -> None:
        lock.acquire()
        try:
            pass
        finally:
            lock.release()

    def lock_left() -> bool:
        if lock.locked():
            lock.release()
            return True
        return False

    gate = Gate()

    def gate_left() -> bool:
        if gate.locked():
            gate.token.append(True)
            return True
        return False

    ticks, leaks = ticking(lock_then_try, lock_left, 300)
    assert ticks == 300 and leaks > 0, "the harness no longer shows acquire()'s gap"
    assert ticking(lambda: hold(gate, lambda: None), gate_left, 300) == (300, 0)


def test_a_signal_in_a_waiting_acquire_leaves_nothing_behind(
    ticking: Callable[..., tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signals land in a taker's wait (which looks again every µs here): it leaves cleanly."""
    monkeypatch.setattr(gate_module, "_RECHECK", 1e-6)
    gate = Gate()
    del gate.token[0]  # another holder's, all along
    stray: list[BaseException] = []

    def wait() -> None:
        try:
            gate.acquire(0.05)
        except Tick:
            raise
        except BaseException as exc:  # (a RuntimeError from a half-done wait, say)
            stray.append(exc)

    def counted_left() -> bool:
        left = bool(gate.waiting)
        gate.waiting.clear()
        return left

    assert ticking(wait, counted_left, 100) == (100, 0)
    assert not stray and gate.locked()


def test_a_signal_handler_may_send_while_its_thread_waits_to() -> None:
    """A handler sends (a goodbye, say) while its thread waits for the same connection.

    Another thread holds the send side in a batch; the main thread waits to
    send; the signal lands in that wait, and the handler waits too. Once the
    batch ends, both messages leave.
    """
    ours, theirs = Pipe()
    gate = ours._send_gate
    held, release = threading.Event(), threading.Event()
    sent: list[str] = []

    def holder() -> None:
        with ours.batch():
            held.set()
            release.wait()

    def until(condition: Callable[[], object]) -> None:
        while not condition():
            time.sleep(0.001)

    def signaller() -> None:
        until(lambda: gate.waiting)  # the main thread waits to send
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        until(lambda: sent and gate.waiting)  # and now its handler does
        release.set()

    def handler(signum: int, frame: object) -> None:
        sent.append("handler")
        ours.send_bytes(b"from the handler")
        sent.append("handler done")

    previous = signal.signal(signal.SIGUSR1, handler)
    threads = [threading.Thread(target=holder), threading.Thread(target=signaller)]
    try:
        threads[0].start()
        held.wait()
        threads[1].start()
        ours.send_bytes(b"from main")
    finally:
        signal.signal(signal.SIGUSR1, previous)
        release.set()
        for thread in threads:
            thread.join()
    assert sent == ["handler", "handler done"]
    assert [theirs.recv_bytes(), theirs.recv_bytes()] == [b"from the handler", b"from main"]
    assert not gate.locked() and not gate.waiting


def test_a_signal_never_leaves_a_connection_busy(ticking: Callable[..., tuple[int, int]]) -> None:
    """Signals land all over a ping-pong: in reads, sends and the gates around them.

    A signal that lands in a read or a send closes the connection (the
    stream may be out of step); a new pair then takes over. Whatever
    happens, neither gate of the connection is left taken.
    """
    pairs: list[tuple[Connection, threading.Thread]] = []

    def echo(peer: Connection) -> None:
        with peer:
            try:
                while True:
                    peer.send_bytes(peer.recv_bytes())
            except (EOFError, OSError):
                pass

    def connect() -> None:
        ours, theirs = Pipe()
        thread = threading.Thread(target=echo, args=(theirs,))
        thread.start()
        pairs.append((ours, thread))

    def step() -> None:
        conn = pairs[-1][0]
        conn.send_bytes(b"x" * 64)
        conn.recv_bytes()

    def busy_left() -> bool:
        """Whether a gate was left taken (then given back); a closed pair is replaced."""
        conn = pairs[-1][0]
        left = False
        for gate in (conn._send_gate, conn._recv_gate):
            if gate.locked():
                gate.token.append(True)
                left = True
        if conn.closed:
            connect()
        return left

    connect()
    try:
        assert ticking(step, busy_left, 1000) == (1000, 0)
        assert len(pairs) > 1, "no signal landed where it closes the connection"
    finally:
        for ours, thread in pairs:
            ours.close()
            thread.join()
