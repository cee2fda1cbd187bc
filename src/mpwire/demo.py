"""The seed document's two demos, run with real processes over mpwire.

1. A Listener with an authkey over TCP and a Client in a child process: an
   object, bytes, and an array received into a buffer.
2. wait(): four child processes write to one-way Pipes, the parent waits on
   all the read ends at once until each reports EOF.
"""

from __future__ import annotations

import multiprocessing as mp
from array import array
from typing import Any

from .sync import Client, Listener, Pipe, wait
from .sync.connection import Connection

AUTHKEY = b"secret password"


def _say(side: str, *values: Any) -> None:
    print(f"[{side}]", *values, flush=True)


def _client(address: Any) -> None:
    with Client(address, authkey=AUTHKEY) as conn:
        _say("client", conn.recv())
        _say("client", conn.recv_bytes())
        arr = array("i", [0, 0, 0, 0, 0])
        _say("client", conn.recv_bytes_into(arr))
        _say("client", arr)


def listener_client_demo(host: str = "localhost", port: int = 0) -> None:
    """Demo 1: send an object, bytes and an array to an authenticated client."""
    with Listener((host, port), authkey=AUTHKEY) as listener:
        _say("listener", "address :", listener.address)
        child = mp.Process(target=_client, args=(listener.address,))
        child.start()
        try:
            with listener.accept() as conn:
                _say("listener", "connection accepted from :", listener.last_accepted)
                conn.send([2.25, None, "junk", float])
                conn.send_bytes(b"hello")
                conn.send_bytes(array("i", [42, 1729]))
        finally:
            child.join(30)
    if child.exitcode != 0:
        raise RuntimeError(f"the client process failed (exit code {child.exitcode})")


def _writer(conn: Connection) -> None:
    for i in range(10):
        conn.send((i, mp.current_process().name))
    conn.close()


def wait_demo(children: int = 4) -> None:
    """Demo 2: wait() on the read ends of several one-way pipes."""
    readers = []
    processes = []
    for _ in range(children):
        r, w = Pipe(duplex=False)
        readers.append(r)
        p = mp.Process(target=_writer, args=(w,))
        p.start()
        processes.append(p)
        w.close()
    while readers:
        for r in wait(readers):
            try:
                msg = r.recv()
            except EOFError:
                readers.remove(r)
                r.close()
            else:
                _say("parent", msg)
    for p in processes:
        p.join(30)


def run() -> None:
    """Run both demos."""
    print("== Demo 1: Listener and Client, authkey, TCP ==", flush=True)
    listener_client_demo()
    print("== Demo 2: wait() on four child processes' pipes ==", flush=True)
    wait_demo()
