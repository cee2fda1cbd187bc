"""Connections handed to child processes: as Process arguments, through a Queue, over a Connection.

Each runs under the fork, spawn and forkserver start methods. Child targets are
module-level functions (spawn and forkserver import this module by name). The
parent never blocks without a bound: it waits on the connection and the
child's sentinel together, and joins children with a timeout, killing them if
they hang.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import mpwire

pytestmark = [
    pytest.mark.filterwarnings(
        # multiprocessing's resource sharer thread (it hands fds to children for
        # Queue and Connection transfers) may be alive when a later test forks.
        "ignore:This process .* is multi-threaded:DeprecationWarning"
    ),
    pytest.mark.timeout(60),  # a hang fails fast (each test takes well under a second)
]

TIMEOUT = 10.0


@pytest.fixture
def method(start_method: str) -> str:
    """The start method of the test (each in turn: see conftest.start_method)."""
    return start_method


KINDS = ("pipe", "one-way", "tcp")
MESSAGES: list[Any] = [None, "text", b"\x00" * 3, {"nested": [1, (2, 3)]}, b"x" * (1 << 20)]
STOP = "stop"

# -- child targets -----------------------------------------------------------------


def echo(inbox: mpwire.Connection, outbox: mpwire.Connection | None = None) -> None:
    """Child: send back ("echo", msg) for every message until STOP, then "done"."""
    outbox = inbox if outbox is None else outbox
    try:
        while (msg := inbox.recv()) != STOP:
            outbox.send(("echo", msg))
        outbox.send("done")
    finally:
        inbox.close()
        outbox.close()


def echo_from_queue(queue: Any) -> None:
    """Child: take the connection(s) from ``queue``, then echo."""
    echo(*queue.get(timeout=TIMEOUT))


def echo_from_connection(control: mpwire.Connection) -> None:
    """Child: receive the connection(s) over ``control``, acknowledge, then echo."""
    with control:
        conns = control.recv()
        control.send("received")
    echo(*conns)


def reply_with_next_message(conn: mpwire.Connection) -> None:
    """Child: receive one message (already read ahead by the parent) and send it back."""
    with conn:
        conn.send_bytes(b"child got: " + conn.recv_bytes())


def reply_from_queue(queue: Any) -> None:
    reply_with_next_message(queue.get(timeout=TIMEOUT))


def reply_from_connection(control: mpwire.Connection) -> None:
    with control:
        reply_with_next_message(control.recv())


# -- parent helpers ----------------------------------------------------------------


@contextlib.contextmanager
def running(ctx: Any, target: Any, *args: Any) -> Iterator[Any]:
    """A started child; on leaving, it must exit with 0 (it is killed if it hangs)."""
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        yield proc
        proc.join(TIMEOUT)
        assert proc.exitcode == 0, f"child exited with {proc.exitcode}"
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(TIMEOUT)


def recv_from(conn: mpwire.Connection, proc: Any, *, raw: bool = False) -> Any:
    """The next message from the child, failing (not hanging) if it does not come."""
    ready = mpwire.wait([conn, proc.sentinel], TIMEOUT)
    if not any(r is conn for r in ready):
        pytest.fail(f"no message from the child in {TIMEOUT} s (exit code {proc.exitcode})")
    return conn.recv_bytes() if raw else conn.recv()


@contextlib.contextmanager
def channel(kind: str) -> Iterator[tuple[tuple[Any, Any], tuple[Any, ...], list[Any]]]:
    """(parent's (send, receive) ends, the child's ends, everything to close at the end)."""
    if kind == "pipe":
        parent, child = mpwire.Pipe()
        ends: tuple[tuple[Any, Any], tuple[Any, ...], list[Any]] = (
            (parent, parent),
            (child,),
            [parent, child],
        )
    elif kind == "one-way":
        to_child_r, to_child_w = mpwire.Pipe(duplex=False)
        from_child_r, from_child_w = mpwire.Pipe(duplex=False)
        ends = (
            (to_child_w, from_child_r),
            (to_child_r, from_child_w),
            [to_child_r, to_child_w, from_child_r, from_child_w],
        )
    else:
        with mpwire.Listener(("127.0.0.1", 0)) as listener:
            client = mpwire.Client(listener.address)
            server = listener.accept()
        ends = ((client, client), (server,), [client, server])
    try:
        yield ends
    finally:
        for conn in ends[2]:
            conn.close()


def converse(send: mpwire.Connection, receive: mpwire.Connection, proc: Any) -> None:
    """Every message comes back from the child, then "done", then the end of the stream."""
    for msg in MESSAGES:
        send.send(msg)
        assert recv_from(receive, proc) == ("echo", msg)
    send.send(STOP)
    assert recv_from(receive, proc) == "done"


def assert_eof(conn: mpwire.Connection, proc: Any) -> None:
    proc.join(TIMEOUT)
    assert proc.exitcode == 0
    assert conn.poll(TIMEOUT)
    with pytest.raises(EOFError):
        conn.recv()


# -- tests -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_connection_as_process_argument(method: str, kind: str) -> None:
    ctx = multiprocessing.get_context(method)
    with (
        channel(kind) as ((send, receive), child_ends, _),
        running(ctx, echo, *child_ends) as proc,
    ):
        for conn in child_ends:
            conn.close()  # the child has its own copies
        converse(send, receive, proc)
        assert_eof(receive, proc)


@pytest.mark.parametrize("kind", KINDS)
def test_connection_through_queue(method: str, kind: str) -> None:
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    try:
        with (
            channel(kind) as ((send, receive), child_ends, _),
            running(ctx, echo_from_queue, queue) as proc,
        ):
            queue.put(child_ends)
            # The queue pickles in a background thread: keep our copies open
            # until the child shows that it has its own.
            send.send("first")
            assert recv_from(receive, proc) == ("echo", "first")
            for conn in child_ends:
                conn.close()
            converse(send, receive, proc)
            assert_eof(receive, proc)
    finally:
        queue.close()
        queue.join_thread()


@pytest.mark.parametrize("kind", KINDS)
def test_connection_over_a_connection(method: str, kind: str) -> None:
    ctx = multiprocessing.get_context(method)
    control, control_child = mpwire.Pipe()
    with control, running(ctx, echo_from_connection, control_child) as proc:
        control_child.close()
        # Made after the child started, so it cannot have inherited them.
        with channel(kind) as ((send, receive), child_ends, _):
            control.send(child_ends)
            assert recv_from(control, proc) == "received"
            for conn in child_ends:
                conn.close()
            converse(send, receive, proc)
            assert_eof(receive, proc)


@pytest.mark.parametrize("how", ["argument", "queue", "connection"])
def test_read_ahead_travels_with_the_connection(method: str, how: str) -> None:
    ctx = multiprocessing.get_context(method)
    ours, theirs = mpwire.Pipe()
    with ours, theirs:
        for message in (b"first", b"second", b"third"):
            ours.send_bytes(message)
        assert theirs.recv_bytes() == b"first"
        # "third" was read ahead with "first": the kernel holds nothing more.
        assert select.select([theirs.fileno()], [], [], 0) == ([], [], [])
        assert theirs.recv_bytes() == b"second"
        assert theirs._decoder.ready  # "third", split off that read
        assert theirs.poll(0)
        if how == "argument":
            with running(ctx, reply_with_next_message, theirs) as proc:
                theirs.close()
                assert recv_from(ours, proc, raw=True) == b"child got: third"
        elif how == "queue":
            queue = ctx.Queue()
            try:
                with running(ctx, reply_from_queue, queue) as proc:
                    queue.put(theirs)
                    assert recv_from(ours, proc, raw=True) == b"child got: third"
            finally:
                queue.close()
                queue.join_thread()
        else:
            control, control_child = mpwire.Pipe()
            with control, running(ctx, reply_from_connection, control_child) as proc:
                control_child.close()
                control.send(theirs)
                assert recv_from(ours, proc, raw=True) == b"child got: third"


def test_sockets_and_stdlib_connections_alongside(method: str) -> None:
    """An mpwire Connection travels in the same arguments as stdlib objects."""
    ctx = multiprocessing.get_context(method)
    ours, theirs = mpwire.Pipe()
    std_ours, std_theirs = multiprocessing.Pipe()
    raw_ours, raw_theirs = socket.socketpair()
    with (
        ours,
        theirs,
        std_ours,
        std_theirs,
        raw_ours,
        raw_theirs,
        running(ctx, relay, theirs, std_theirs, raw_theirs) as proc,
    ):
        theirs.close()
        std_theirs.close()
        raw_theirs.close()
        ours.send("via mpwire")
        assert recv_from(ours, proc) == "via mpwire, back over mpwire"
        assert std_ours.poll(TIMEOUT)
        assert std_ours.recv() == "via mpwire, over stdlib"
        raw_ours.settimeout(TIMEOUT)
        assert raw_ours.recv(64) == b"via mpwire, over a socket"


def relay(conn: mpwire.Connection, std_conn: Any, sock: socket.socket) -> None:
    """Child: pass one mpwire message on over all three channels."""
    with conn, std_conn, sock:
        msg = conn.recv()
        conn.send(f"{msg}, back over mpwire")
        std_conn.send(f"{msg}, over stdlib")
        sock.sendall(f"{msg}, over a socket".encode())
