"""The child side of a measurement: one server or one client process.

Run as ``python -m benchmarks._worker SPEC.json``. The spec (written by the
runner) names the role, the scenario kind, the implementation, the address and
the parameters. The implementation's module is imported here, by name, so the
parent never touches the code being measured. The server binds a Listener,
announces its address in the spec's ``ready`` file and accepts; the client waits
for that file and connects. Each side writes ``{"ok": true, "result": {...}}``
(or ``{"ok": false, "error": ...}``) to its ``result`` file: the harness's own
reporting goes through files, never through the connection being measured.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

IMPLEMENTATIONS: dict[str, str] = {
    "stdlib": "multiprocessing.connection",
    "mpwire": "mpwire.connection",
}
"""Implementation name -> module offering Listener, Client and Connection."""

SMALL_OBJECT: dict[str, Any] = {"id": 1, "args": [1, 2, 3], "name": "x"}

_perf = time.perf_counter

# -- helpers ---------------------------------------------------------------------------------


def vm_rss_bytes() -> int:
    """This process's resident set size now (VmRSS), in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _wait_ready(path: str, timeout: float) -> Any:
    """The address the server announced in ``path``, waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"server did not announce its address within {timeout} s")
        time.sleep(0.002)
    with open(path, encoding="utf-8") as f:
        address = json.load(f)
    return tuple(address) if isinstance(address, list) else address


def _batches(count: int, batches: int) -> list[int]:
    """``count`` split into ``batches`` nearly equal positive parts."""
    batches = max(1, min(batches, count))
    base, extra = divmod(count, batches)
    return [base + (i < extra) for i in range(batches)]


def _batch_result(count: int, batches: int, seconds: list[float]) -> dict[str, Any]:
    """The median of the batches' rates (robust to a moment of interference) and the rest."""
    sizes = _batches(count, batches)
    rates = [n / s for n, s in zip(sizes, seconds, strict=True)]
    return {
        "rate": statistics.median(rates),
        "overall_rate": count / sum(seconds),
        "batch_rates": rates,
        "seconds": sum(seconds),
        "count": count,
    }


# -- servers: run on the accepted connection (or the listener, for connect) --------------------


def server_pingpong_bytes(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Echo byte messages until an empty one (which is echoed too)."""
    recv, send = conn.recv_bytes, conn.send_bytes
    while True:
        data = recv()
        send(data)
        if not data:
            return {}


def _timed_round_trips(send: Any, recv: Any, message: Any, params: dict[str, Any]) -> list[float]:
    """Seconds per batch of round trips of ``message``, after ``warmup`` untimed ones."""
    for _ in range(params["warmup"]):
        send(message)
        recv()
    seconds = []
    for n in _batches(params["count"], params["batches"]):
        t0 = _perf()
        for _ in range(n):
            send(message)
            recv()
        seconds.append(_perf() - t0)
    return seconds


def client_pingpong_bytes(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Round trips of ``size``-byte messages, timed in batches after ``warmup`` untimed ones."""
    seconds = _timed_round_trips(conn.send_bytes, conn.recv_bytes, b"x" * params["size"], params)
    conn.send_bytes(b"")
    if conn.recv_bytes() != b"":
        raise RuntimeError("bad final echo")
    return _batch_result(params["count"], params["batches"], seconds)


def server_pingpong_object(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Echo objects until None (which is echoed too)."""
    recv, send = conn.recv, conn.send
    while True:
        obj = recv()
        send(obj)
        if obj is None:
            return {}


def client_pingpong_object(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Round trips of a small dict with send()/recv(), timed in batches."""
    seconds = _timed_round_trips(conn.send, conn.recv, SMALL_OBJECT, params)
    conn.send(SMALL_OBJECT)  # a last, untimed check that the echo is faithful
    if conn.recv() != SMALL_OBJECT:
        raise RuntimeError("echoed object differs")
    conn.send(None)
    conn.recv()
    return _batch_result(params["count"], params["batches"], seconds)


def server_stream(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Receive ``count`` messages and an empty one; time all but the first ``warmup``."""
    recv = conn.recv_bytes
    count, warmup, size = params["count"], params["warmup"], params["size"]
    for _ in range(warmup):
        recv()
    timed = count - warmup
    seconds = []
    for n in _batches(timed, params["batches"]):
        t0 = _perf()
        for _ in range(n - 1):
            recv()
        last = recv()
        seconds.append(_perf() - t0)
        if len(last) != size:
            raise RuntimeError(f"message has {len(last)} bytes, expected {size}")
    if recv() != b"":
        raise RuntimeError("missing end-of-stream message")
    conn.send_bytes(b"done")
    return _batch_result(timed, params["batches"], seconds)


def client_stream(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Send ``count`` messages of ``size`` bytes as fast as possible, then an empty one."""
    payload = b"x" * params["size"]
    send = conn.send_bytes
    for _ in range(params["count"]):
        send(payload)
    send(b"")
    if conn.recv_bytes() != b"done":
        raise RuntimeError("receiver did not acknowledge")
    return {}


def _bulk_receiver(conn: Any, params: dict[str, Any], receive: Callable[[], int]) -> dict[str, Any]:
    """Ask for ``transfers`` payloads one at a time; time each, and track peak RSS."""
    baseline = vm_rss_bytes()
    size = params["size"]
    seconds = []
    for _ in range(params["transfers"]):
        t0 = _perf()
        conn.send_bytes(b"go")
        received = receive()
        seconds.append(_perf() - t0)
        if received != size:
            raise RuntimeError(f"received {received} bytes, expected {size}")
    conn.send_bytes(b"stop")
    peak = peak_rss_bytes()
    median = statistics.median(seconds[1:] or seconds)  # the first transfer is a warm-up
    return {
        "rate": size / median / 1e9,
        "rss_ratio": (peak - baseline) / size,
        "transfer_seconds": seconds,
        "baseline_rss": baseline,
        "peak_rss": peak,
    }


def server_bulk_bytes(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Receive each payload with recv_bytes() and drop it before the next."""

    def receive() -> int:
        data = conn.recv_bytes()
        n = len(data)
        del data
        return n

    return _bulk_receiver(conn, params, receive)


def client_bulk_bytes(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Send the payload with send_bytes() on each request."""
    size = params["size"]
    payload = bytes(range(256)) * (size // 256) + b"\x5a" * (size % 256)
    while conn.recv_bytes() == b"go":
        conn.send_bytes(payload)
    return {}


def server_bulk_numpy(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Receive each array with recv(), check its shape and drop it before the next."""
    import numpy  # noqa: F401  (imported before the RSS baseline, as unpickling would)

    shape = (params["size"] // 8,)

    def receive() -> int:
        array = conn.recv()
        if array.shape != shape:
            raise RuntimeError(f"received shape {array.shape}, expected {shape}")
        n = int(array.nbytes)
        del array
        return n

    return _bulk_receiver(conn, params, receive)


def client_bulk_numpy(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Send a float64 array with send() on each request."""
    import numpy as np

    array = np.arange(params["size"] // 8, dtype=np.float64)
    while conn.recv_bytes() == b"go":
        conn.send(array)
    return {}


def server_connect(listener: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Accept in a loop: one object echoed per connection, until the object "stop"."""
    accepted = 0
    while True:
        conn = listener.accept()
        try:
            obj = conn.recv()
            conn.send(obj)
        finally:
            conn.close()
        accepted += 1
        if obj == "stop":
            return {"accepted": accepted}


def client_connect(
    mod: Any, address: Any, authkey: bytes, params: dict[str, Any]
) -> dict[str, Any]:
    """Connect, authenticate, one round trip, close: ``count`` times or ``max_seconds``."""

    def once(obj: Any) -> None:
        conn = mod.Client(address, authkey=authkey)
        try:
            conn.send(obj)
            if conn.recv() != obj:
                raise RuntimeError("echoed object differs")
        finally:
            conn.close()

    for _ in range(params["warmup"]):
        once(SMALL_OBJECT)
    count, max_seconds = params["count"], params["max_seconds"]
    done = 0
    t0 = _perf()
    deadline = t0 + max_seconds
    elapsed = 0.0
    while done < count:
        once(SMALL_OBJECT)
        done += 1
        elapsed = _perf() - t0
        if _perf() > deadline:
            break
    once("stop")
    return {"rate": done / elapsed, "seconds": elapsed, "count": done}


_SERVERS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "pingpong-bytes": server_pingpong_bytes,
    "pingpong-object": server_pingpong_object,
    "stream": server_stream,
    "bulk-bytes": server_bulk_bytes,
    "bulk-numpy": server_bulk_numpy,
}
_CLIENTS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "pingpong-bytes": client_pingpong_bytes,
    "pingpong-object": client_pingpong_object,
    "stream": client_stream,
    "bulk-bytes": client_bulk_bytes,
    "bulk-numpy": client_bulk_numpy,
}


# -- roles -----------------------------------------------------------------------------------


def run_server(mod: Any, spec: dict[str, Any], authkey: bytes) -> dict[str, Any]:
    """Bind, announce the address, then serve one connection (or many, for connect)."""
    kind, params = spec["kind"], spec["params"]
    address = spec["address"]
    address = tuple(address) if isinstance(address, list) else address
    listener = mod.Listener(address, authkey=authkey, backlog=16)
    try:
        bound = listener.address
        _write_json(spec["ready"], list(bound) if isinstance(bound, tuple) else bound)
        if kind == "connect":
            return server_connect(listener, params)
        conn = listener.accept()
        try:
            return _SERVERS[kind](conn, params)
        finally:
            conn.close()
    finally:
        listener.close()


def run_client(mod: Any, spec: dict[str, Any], authkey: bytes) -> dict[str, Any]:
    """Wait for the server's address, connect, and drive the scenario."""
    kind, params = spec["kind"], spec["params"]
    address = _wait_ready(spec["ready"], spec.get("ready_timeout", 30.0))
    if kind == "connect":
        return client_connect(mod, address, authkey, params)
    conn = mod.Client(address, authkey=authkey)
    try:
        return _CLIENTS[kind](conn, params)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    """Run the role described by the spec file named on the command line."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result_path = spec["result"]
    try:
        if spec.get("pin") is not None:
            os.sched_setaffinity(0, {spec["pin"]})
        mod = importlib.import_module(IMPLEMENTATIONS[spec["impl"]])
        authkey = bytes.fromhex(spec["authkey"])
        role = run_server if spec["role"] == "server" else run_client
        result = role(mod, spec, authkey)
    except BaseException as exc:
        _write_json(
            result_path,
            {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            },
        )
        return 1
    _write_json(result_path, {"ok": True, "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
