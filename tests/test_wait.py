"""wait() over every kind of waitable: mpwire and stdlib Connections, sockets, fds, sentinels.

Child process targets are module-level functions, so spawn can import them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import mpwire

pytestmark = [
    pytest.mark.filterwarnings(
        # Forking while an earlier test's helper thread (multiprocessing's resource
        # sharer) lives is fine here: the child only runs the targets below.
        "ignore:This process .* is multi-threaded:DeprecationWarning"
    ),
    pytest.mark.timeout(60),  # a hang fails fast (each test takes well under a second)
]

JOIN_TIMEOUT = 10.0
KINDS = ("mpwire", "stdlib", "socket", "fd", "sentinel")


def exit_when_told(conn: mpwire.Connection) -> None:
    """Child: block until the parent says so (or hangs up), then exit."""
    with contextlib.suppress(EOFError), conn:
        conn.recv()


def send_ten(writer: mpwire.Connection, name: str) -> None:
    """Child of the demo: send ten (i, name) tuples, then close."""
    with writer:
        for i in range(10):
            writer.send((i, name))


def assert_same_objects(got: list[Any], expected: list[Any]) -> None:
    """``got`` holds exactly the objects of ``expected`` (by identity), in any order."""
    assert len(got) == len(expected), (got, expected)
    for obj in expected:
        assert any(g is obj for g in got), (obj, got)


@dataclass
class Waitables:
    """One waitable of each kind, none of them ready, and a way to make each ready."""

    ctx: Any
    objects: dict[str, Any] = field(default_factory=dict)
    _peers: dict[str, Any] = field(default_factory=dict)
    _cleanup: list[Callable[[], Any]] = field(default_factory=list)
    process: Any = None

    def open(self) -> None:
        a, b = mpwire.Pipe()
        self._track("mpwire", a, b, b.send, a.close, b.close)
        sa, sb = multiprocessing.Pipe()
        self._track("stdlib", sa, sb, sb.send, sa.close, sb.close)
        ra, rb = socket.socketpair()
        self._track("socket", ra, rb, rb.sendall, ra.close, rb.close)
        fr, fw = os.pipe()
        self._track("fd", fr, fw, lambda data: os.write(fw, data), lambda: os.close(fr))
        self._cleanup.append(lambda: os.close(fw))
        go_r, go_w = mpwire.Pipe(duplex=False)
        self.process = self.ctx.Process(target=exit_when_told, args=(go_r,), daemon=True)
        self.process.start()
        go_r.close()
        self._cleanup.append(go_w.close)
        self.objects["sentinel"] = self.process.sentinel
        self._peers["sentinel"] = go_w.send

    def _track(self, kind: str, obj: Any, peer: Any, make_ready: Any, *closers: Any) -> None:
        self.objects[kind] = obj
        self._peers[kind] = make_ready
        self._cleanup.extend(closers)

    def make_ready(self, kind: str) -> None:
        self._peers[kind](b"x" if kind in ("socket", "fd") else "x")

    def drain(self, kind: str) -> None:
        """Make ``kind`` not ready again (the sentinel stays ready once the child exits)."""
        obj = self.objects[kind]
        if kind in ("mpwire", "stdlib"):
            assert obj.recv() == "x"
        elif kind == "socket":
            assert obj.recv(16) == b"x"
        elif kind == "fd":
            assert os.read(obj, 16) == b"x"

    def close(self) -> None:
        # Tell the child to exit: under fork it holds a copy of the writer, so
        # closing ours would not reach it as an end of file.
        if "sentinel" in self._peers:
            with contextlib.suppress(OSError):
                self.make_ready("sentinel")
        for closer in reversed(self._cleanup):
            with contextlib.suppress(OSError):
                closer()
        if self.process is not None:
            self.process.join(JOIN_TIMEOUT)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(JOIN_TIMEOUT)


@pytest.fixture
def waitables() -> Iterator[Waitables]:
    w = Waitables(multiprocessing.get_context())
    w.open()
    try:
        yield w
    finally:
        w.close()


def test_nothing_ready(waitables: Waitables) -> None:
    objects = list(waitables.objects.values())
    assert mpwire.wait(objects, 0) == []
    assert mpwire.wait(objects, -1) == []
    assert mpwire.wait(objects, 0.01) == []


def test_returns_exactly_the_ready_ones(waitables: Waitables) -> None:
    objects = list(waitables.objects.values())
    ready: list[Any] = []
    for kind in KINDS:
        waitables.make_ready(kind)
        if kind == "sentinel":
            waitables.process.join(JOIN_TIMEOUT)
            assert waitables.process.exitcode == 0
        ready.append(waitables.objects[kind])
        # Every readiness above is complete once the call that caused it returns.
        assert_same_objects(mpwire.wait(objects, 0), ready)
        assert_same_objects(mpwire.wait(objects, 5), ready)
        assert_same_objects(mpwire.wait(objects, None), ready)
    for kind in KINDS[:-1]:
        waitables.drain(kind)
        ready.remove(waitables.objects[kind])
        assert_same_objects(mpwire.wait(objects, 0), ready)
    assert mpwire.wait(objects, 0) == [waitables.process.sentinel]


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_none_blocks_until_one_is_ready(
    waitables: Waitables, kind: str, background: Callable[..., Any]
) -> None:
    objects = list(waitables.objects.values())
    waiter = background(mpwire.wait, objects, None)
    assert not waiter.done.wait(0.1)  # nothing ready: still waiting
    waitables.make_ready(kind)  # for the sentinel: the child exits
    assert_same_objects(waiter.result(JOIN_TIMEOUT), [waitables.objects[kind]])


def test_ready_from_another_thread(waitables: Waitables, background: Callable[..., Any]) -> None:
    objects = list(waitables.objects.values())
    sender = background(waitables.make_ready, "stdlib")
    assert_same_objects(mpwire.wait(objects, None), [waitables.objects["stdlib"]])
    sender.result()


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5])
def test_zero_or_negative_timeout_returns_at_once(waitables: Waitables, timeout: float) -> None:
    objects = list(waitables.objects.values())
    start = time.monotonic()
    assert mpwire.wait(objects, timeout) == []
    assert time.monotonic() - start < 1.0


def test_timeout_elapses(waitables: Waitables) -> None:
    objects = list(waitables.objects.values())
    start = time.monotonic()
    assert mpwire.wait(objects, 0.2) == []
    elapsed = time.monotonic() - start
    assert elapsed >= 0.15
    assert elapsed < 5.0


def test_empty_list() -> None:
    assert mpwire.wait([], 0) == []
    start = time.monotonic()
    assert mpwire.wait([], 0.05) == []
    assert time.monotonic() - start < 5.0


def test_eof_counts_as_ready() -> None:
    a, b = mpwire.Pipe()
    reader, writer = mpwire.Pipe(duplex=False)
    with a, reader:
        b.close()
        writer.close()
        assert_same_objects(mpwire.wait([a, reader], 5), [a, reader])
        with pytest.raises(EOFError):
            a.recv()
        with pytest.raises(EOFError):
            reader.recv()


def test_read_ahead_connection_among_others(waitables: Waitables) -> None:
    a, b = mpwire.Pipe()
    with a, b:
        b.send("one")
        b.send("two")
        assert a.recv() == "one"  # "two" now sits in a's read-ahead, not in the kernel
        objects = [*waitables.objects.values(), a]
        assert mpwire.wait(objects, 0) == [a]
        assert mpwire.wait(objects, None) == [a]
        waitables.make_ready("socket")
        assert_same_objects(mpwire.wait(objects, 0), [a, waitables.objects["socket"]])
        assert a.recv() == "two"
        assert_same_objects(mpwire.wait(objects, 0), [waitables.objects["socket"]])


def test_any_reiterable_collection(waitables: Waitables) -> None:
    waitables.make_ready("socket")
    waitables.make_ready("fd")
    expected = [waitables.objects["socket"], waitables.objects["fd"]]
    objects = waitables.objects
    assert_same_objects(mpwire.wait(tuple(objects.values()), 5), expected)
    assert_same_objects(mpwire.wait(objects.values(), 5), expected)
    by_kind = {v: k for k, v in objects.items() if k != "fd"}
    assert_same_objects(mpwire.wait(by_kind.keys(), 5), expected[:1])


def test_iterator_of_objects(waitables: Waitables) -> None:
    waitables.make_ready("mpwire")
    waitables.make_ready("stdlib")
    expected = [waitables.objects["mpwire"], waitables.objects["stdlib"]]
    # A finite timeout keeps this bounded while the bug stands.
    got = mpwire.wait(iter(waitables.objects.values()), 1)
    assert_same_objects(got, expected)
    got = mpwire.wait((obj for obj in waitables.objects.values()), 1)
    assert_same_objects(got, expected)


def test_objects_with_fileno() -> None:
    class HasFileno:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    r, w = os.pipe()
    try:
        obj = HasFileno(r)
        assert mpwire.wait([obj], 0) == []
        os.write(w, b"x")
        assert mpwire.wait([obj], 5) == [obj]
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_seed_demo(method: str) -> None:
    """Four children each send ten (i, name) tuples; the parent waits on all readers."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method!r} unavailable")
    ctx = multiprocessing.get_context(method)
    names = [f"child-{n}" for n in range(4)]
    readers: list[mpwire.Connection] = []
    processes = []
    try:
        for name in names:
            reader, writer = mpwire.Pipe(duplex=False)
            proc = ctx.Process(target=send_ten, args=(writer, name), daemon=True)
            proc.start()
            writer.close()  # the child has its own copy now
            readers.append(reader)
            processes.append(proc)
        received: list[tuple[int, str]] = []
        remaining = list(readers)
        while remaining:
            ready = mpwire.wait(remaining, JOIN_TIMEOUT)
            assert ready, f"nothing from {len(remaining)} children in {JOIN_TIMEOUT} s"
            for reader in ready:
                try:
                    received.append(reader.recv())
                except EOFError:
                    remaining.remove(reader)
                    reader.close()
        assert len(received) == 40
        assert sorted(received) == sorted((i, name) for name in names for i in range(10))
        for name in names:  # each child's messages arrive in order
            assert [i for i, n in received if n == name] == list(range(10))
        for proc in processes:
            proc.join(JOIN_TIMEOUT)
            assert proc.exitcode == 0
    finally:
        for reader in readers:
            reader.close()
        for proc in processes:
            if proc.is_alive():
                proc.kill()
                proc.join(JOIN_TIMEOUT)
