"""The child side of a measurement: one server or one client process.

Run as ``python -m mpwire.bench._worker SPEC.json``. The spec (written by the
runner) names the role, the scenario kind, the implementation, the address and
the parameters. The implementation's module is imported here, by name, so the
parent never touches the code being measured. The server binds a Listener,
announces its address in the spec's ``ready`` file and accepts; the client waits
for that file and connects. Each side writes ``{"ok": true, "result": {...}}``
(or ``{"ok": false, "error": ...}``) to its ``result`` file: the harness's own
reporting goes through files, never through the connection being measured.

The shared-reader stream has a server alone: it makes the implementation's
Pipe() and starts the writer and reader processes itself, with
multiprocessing; they report to it through files too.

mpwire.asyncio servers and clients run on the event loop the spec names
("auto": uvloop when installed); their results say which. The clients
scenario's client processes are mpwire.asyncio whatever the server, and meet
at a barrier of files beside the ``ready`` file before they start timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import itertools
import json
import multiprocessing
import os
import resource
import statistics
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import multiproc
from .scenarios import MODULES

ASYNCIO = "mpwire.asyncio"
"""The implementation whose servers and clients run on an event loop."""

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


def raise_fd_limit() -> None:
    """Let this process open as many files as the hard limit allows (a socket per client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def now() -> float:
    """CLOCK_MONOTONIC: one clock for every process on the machine, so their times combine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """A new-loop function for ``choice`` ("auto", "uvloop" or "asyncio"), and its name."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            version = importlib.metadata.version("uvloop")
            return uvloop.new_event_loop, f"uvloop {version}"
    return asyncio.new_event_loop, "asyncio"


def run_on_loop(
    spec: dict[str, Any], main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]
) -> dict[str, Any]:
    """Run ``main()`` on the event loop the spec asks for; its result, naming the loop."""
    factory, name = _loop_factory(spec.get("loop", "auto"))
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(main())
    return {**result, "loop": name}


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _outcome(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``{"ok": true, "result": work()}``, or ``{"ok": false, "error": ...}`` if it raised."""
    try:
        return {"ok": True, "result": work()}
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        return {"ok": False, "error": error, "traceback": traceback.format_exc()}


def read_outcome(path: Path) -> dict[str, Any]:
    """What a process wrote to its result file; ``{"ok": false, "error": None}`` if nothing."""
    try:
        outcome: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"ok": False, "error": None}
    return outcome


def _announce(spec: dict[str, Any], address: Any) -> None:
    """Tell the client(s) the address the server is bound to."""
    _write_json(spec["ready"], list(address) if isinstance(address, tuple) else address)


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


async def aserver_pingpong_bytes(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """server_pingpong_bytes on an AsyncConnection."""
    recv, send = conn.recv_bytes, conn.send_bytes
    while True:
        data = await recv()
        await send(data)
        if not data:
            return {}


async def _atimed_round_trips(conn: Any, message: bytes, params: dict[str, Any]) -> list[float]:
    """_timed_round_trips of byte messages on an AsyncConnection."""
    send, recv = conn.send_bytes, conn.recv_bytes
    for _ in range(params["warmup"]):
        await send(message)
        await recv()
    seconds = []
    for n in _batches(params["count"], params["batches"]):
        t0 = _perf()
        for _ in range(n):
            await send(message)
            await recv()
        seconds.append(_perf() - t0)
    return seconds


async def aclient_pingpong_bytes(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """client_pingpong_bytes on an AsyncConnection."""
    seconds = await _atimed_round_trips(conn, b"x" * params["size"], params)
    await conn.send_bytes(b"")
    if await conn.recv_bytes() != b"":
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
    """Send ``count`` messages of ``size`` bytes as fast as possible, then an empty one.

    With ``batch``, a connection that has batch() (mpwire's) sends that many
    messages per block; the others send one at a time all the same.
    """
    payload = b"x" * params["size"]
    send = conn.send_bytes
    count, batch = params["count"], params.get("batch")
    if batch and hasattr(conn, "batch"):
        for start in range(0, count, batch):
            with conn.batch():
                for _ in range(min(batch, count - start)):
                    send(payload)
    else:
        for _ in range(count):
            send(payload)
    send(b"")
    if conn.recv_bytes() != b"done":
        raise RuntimeError("receiver did not acknowledge")
    return {}


# -- one reader end shared by several processes, as multiprocessing's Queue and Pool read ----------

_NUMBER = struct.Struct("<Q")
"""The number at the start of each message of the shared-reader stream."""

STALL_SECONDS = 5.0
"""A shared-reader measurement gives up once no reader has taken a message for this long."""


def _in_child(result_path: str, work: Callable[..., dict[str, Any]], *args: Any) -> None:
    """The target of a process the server starts: ``work(*args)``, its outcome to a file.

    Exits with 1 if ``work`` raised: a failed process shows at once in its exit code.
    """
    outcome = _outcome(lambda: work(*args))
    _write_json(result_path, outcome)
    if not outcome["ok"]:
        sys.exit(1)


def shared_reader(
    conn: Any, lock: Any, seen: Any, marks: dict[int, int], times: Any, size: int
) -> dict[str, Any]:
    """Take messages from the shared end, each recv_bytes() under ``lock``, until an empty one.

    Counts each message's number in ``seen`` (shared by the readers: every
    count must end at 1), and stores the time at which a message in ``marks``
    (number -> index) arrived in ``times``: the ends of the timed batches.
    A message of another size or number than sent fails at once.
    """
    recv, unpack = conn.recv_bytes, _NUMBER.unpack_from
    sent = len(seen)
    received = 0
    while True:
        with lock:
            data = recv()
        if not data:
            return {"received": received}
        if len(data) != size:
            raise RuntimeError(f"a message of {len(data):,} bytes, not {size:,}: a frame cut")
        (number,) = unpack(data)
        if number >= sent:
            raise RuntimeError(f"a message numbered {number:,}, of {sent:,} sent: a frame cut")
        seen[number] += 1
        received += 1
        mark = marks.get(number)
        if mark is not None:
            times[mark] = now()


def shared_writer(conn: Any, count: int, size: int, readers: int) -> dict[str, Any]:
    """Send ``count`` numbered messages of ``size`` bytes, then an empty one per reader."""
    send, pack = conn.send_bytes, _NUMBER.pack
    padding = b"x" * (size - _NUMBER.size)
    for number in range(count):
        send(pack(number) + padding)
    for _ in range(readers):
        send(b"")
    return {"sent": count}


def _await_shared(procs: dict[str, Any], seen: Any, deadline: float) -> tuple[list[str], str]:
    """Wait for the writer and readers to end; those still running, and why waiting stopped.

    Stops early once one has failed, or when no message was taken for
    ``STALL_SECONDS`` (stranded in a reader's buffer, or never sent).
    """
    taken, taken_at = -1, time.monotonic()
    while True:
        running = [name for name, proc in procs.items() if proc.exitcode is None]
        if not running:
            return [], ""
        t = time.monotonic()
        so_far = len(seen) - bytes(seen).count(0)
        if so_far != taken:
            taken, taken_at = so_far, t
        if any(proc.exitcode for proc in procs.values()):
            return running, "after another process failed"
        if t - taken_at > STALL_SECONDS:
            return running, f"after {STALL_SECONDS:g} s without a message taken"
        if t > deadline:
            return running, "at the time limit"
        time.sleep(0.02)


def _shared_problems(
    procs: dict[str, Any], outcomes: dict[str, Any], running: list[str], why: str, seen: Any
) -> list[str]:
    """What went wrong in a shared-reader measurement: processes and messages (none: all well)."""
    problems = []
    waiting = [name for name in running if name != "writer"]
    if waiting:
        problems.append(
            f"{len(waiting)} of {len(procs) - 1} readers never got their empty message"
            f" ({', '.join(waiting)}), killed {why}"
        )
    if "writer" in running:
        problems.append(f"the writer was still sending, killed {why}")
    elif waiting and outcomes["writer"]["ok"]:
        problems.append(f"the writer had sent every message and {len(procs) - 1} empty ones")
    for name, outcome in outcomes.items():
        if name not in running and not outcome["ok"]:
            problems.append(f"{name}: {outcome['error'] or f'exit code {procs[name].exitcode}'}")
    counts = bytes(seen)
    sent, missing = len(counts), counts.count(0)
    if missing:
        problems.append(
            f"{sent - missing:,} of {sent:,} messages taken, {missing:,} never"
            " (lost, or stranded in another reader's buffer)"
        )
    repeated = sent - missing - counts.count(1)
    if repeated:
        problems.append(f"{repeated:,} of {sent:,} messages taken more than once")
    if problems:
        return problems
    received = sum(o["result"]["received"] for name, o in outcomes.items() if name != "writer")
    return [] if received == sent else [f"the readers counted {received:,} messages, not {sent:,}"]


def server_stream_shared(
    mod: Any, params: dict[str, Any], folder: Path, timeout: float
) -> dict[str, Any]:
    """One writer process streams into a Pipe() end shared by ``readers`` reader processes.

    This process makes the Pipe (one-way unless ``duplex``) and a Lock, and
    starts the writer and the readers with multiprocessing (``start_method``),
    handing each its end as a Process argument, then closes its own copies.
    Each child's outcome comes back in a file in ``folder``. Timed as
    server_stream is, from when the messages numbered ``warmup - 1`` and
    those ending each batch were taken, on the machine's monotonic clock.

    Every process is waited for with a bound (see _await_shared; at most
    ``timeout`` less STALL_SECONDS in all) and killed past it. Fails unless
    each reader got its empty message and every message was taken exactly
    once, saying what went missing.
    """
    ctx = multiprocessing.get_context(params["start_method"])
    count, warmup, size = params["count"], params["warmup"], params["size"]
    readers, batches = params["readers"], params["batches"]
    timed = count - warmup
    ends = list(itertools.accumulate(_batches(timed, batches), initial=warmup - 1))
    marks = {number: index for index, number in enumerate(ends)}
    seen, times, lock = ctx.RawArray("B", count), ctx.RawArray("d", len(ends)), ctx.Lock()
    reader_end, writer_end = mod.Pipe(duplex=params["duplex"])
    reading = (shared_reader, reader_end, lock, seen, marks, times, size)
    roles: dict[str, tuple[Any, ...]] = {f"reader-{i}": reading for i in range(readers)}
    roles["writer"] = (shared_writer, writer_end, count, size, readers)
    procs = {
        name: ctx.Process(
            target=_in_child, args=(str(folder / f"{name}.json"), *work), name=name, daemon=True
        )
        for name, work in roles.items()
    }
    deadline = time.monotonic() + max(timeout - STALL_SECONDS, timeout / 2)
    try:
        with reader_end, writer_end:  # this process's copies, closed once the children have theirs
            for proc in procs.values():
                proc.start()
        running, why = _await_shared(procs, seen, deadline)
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.kill()
            if proc.pid is not None:
                proc.join(5)
    outcomes = {name: read_outcome(folder / f"{name}.json") for name in procs}
    problems = _shared_problems(procs, outcomes, running, why, seen)
    if problems:
        raise RuntimeError("shared reader end: " + "; ".join(problems))
    seconds = [b - a for a, b in itertools.pairwise(times)]
    received = [outcomes[name]["result"]["received"] for name in procs if name != "writer"]
    return {**_batch_result(timed, batches, seconds), "readers": readers, "received": received}


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


def memcpy_rate(size: int) -> float:
    """GB/s of copying ``size`` bytes into fresh memory here: what one copy costs at best."""
    import numpy as np

    source = np.ones(size // 8)
    seconds = []
    for _ in range(3):
        t0 = _perf()
        copy = source.copy()
        seconds.append(_perf() - t0)
        del copy
    return size / min(seconds) / 1e9


def server_bulk_numpy(conn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Receive each array with recv(), check it on every page and drop it before the next.

    Reading an element of every page makes the memory of the array real for
    every implementation (a mapping is otherwise filled in only when touched),
    and checks the values against the sender's ``arange``.
    """
    import numpy as np

    count = params["size"] // 8
    stride = 4096 // 8
    expected = float(sum(range(0, count, stride)))

    def receive() -> int:
        array = conn.recv()
        if array.shape != (count,):
            raise RuntimeError(f"received shape {array.shape}, expected {(count,)}")
        if float(np.sum(array[::stride])) != expected:
            raise RuntimeError("received values differ from those sent")
        n = int(array.nbytes)
        del array
        return n

    result = _bulk_receiver(conn, params, receive)
    return {**result, "memcpy_rate": memcpy_rate(params["size"])}  # after the peak RSS


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


# -- many clients: one server, ``clients`` connections from ``client_processes`` processes ---------


def machine_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(field) for field in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal; guests are in user


def _cpu_mark() -> tuple[float, float, float]:
    """Wall clock, this process's CPU time (every thread's) and the machine's, now."""
    return now(), time.process_time(), machine_cpu_seconds()


def _cpus(start: tuple[float, ...], end: tuple[float, ...]) -> dict[str, Any]:
    """How many CPUs this process kept busy between two marks, on average."""
    wall, cpu = end[0] - start[0], end[1] - start[1]
    return {"cpus": cpu / wall if wall > 0 else 0.0, "busy_seconds": wall, "cpu_seconds": cpu}


def _echo_until_eof(conn: Any) -> int:
    """Echo byte messages until the peer hangs up; how many were echoed."""
    recv, send = conn.recv_bytes, conn.send_bytes
    echoed = 0
    with contextlib.closing(conn):
        while True:
            try:
                data = recv()
            except EOFError:
                return echoed
            send(data)
            echoed += 1


def server_clients_threads(listener: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Accept ``clients`` connections, each echoed by a thread of its own until it hangs up.

    The CPU load is measured from the last accept to the last hang-up.
    """
    clients = params["clients"]
    with ThreadPoolExecutor(max_workers=clients) as threads:
        echoes = [threads.submit(_echo_until_eof, listener.accept()) for _ in range(clients)]
        start = _cpu_mark()
        echoed = sum(echo.result() for echo in echoes)
        end = _cpu_mark()
    cls = type(listener)
    setup = f"{cls.__module__}.{cls.__name__}, a thread per client"
    return {"echoed": echoed, **_cpus(start, end), "setup": setup}


async def _aecho_until_eof(conn: Any) -> int:
    """_echo_until_eof on an AsyncConnection."""
    recv, send = conn.recv_bytes, conn.send_bytes
    echoed = 0
    while True:
        try:
            data = await recv()
        except EOFError:
            return echoed
        await send(data)
        echoed += 1


async def aserver_clients(mod: Any, spec: dict[str, Any], authkey: bytes) -> dict[str, Any]:
    """serve() an echo handler to ``clients`` connections, all in this one event loop.

    The CPU load is measured from the last handler starting to the last one done.
    """
    params = spec["params"]
    clients = params["clients"]
    marks: list[tuple[float, float, float]] = []
    echoed: list[int] = []
    errors: list[BaseException] = []
    all_gone = asyncio.Event()
    served = 0

    async def echo(conn: Any) -> None:
        nonlocal served
        served += 1
        if served == clients:
            marks.append(_cpu_mark())
        try:
            echoed.append(await _aecho_until_eof(conn))
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            if len(echoed) + len(errors) == clients:
                marks.append(_cpu_mark())
                all_gone.set()

    server = await mod.serve(echo, _address(spec), authkey=authkey, backlog=params["backlog"])
    async with server:
        _announce(spec, server.address)
        await all_gone.wait()
    if errors:
        raise errors[0]
    setup = f"{mod.__name__}.serve(), one event loop"
    return {"echoed": sum(echoed), **_cpus(*marks), "setup": setup}


def _message(ident: int, seq: int, size: int) -> bytes:
    """The ``seq``-th message of client ``ident``: no two clients' or round trips' alike."""
    return f"{ident}:{seq}:".encode().ljust(size, b".")


async def _checked_round_trips(conn: Any, ident: int, first: int, count: int, size: int) -> int:
    """``count`` round trips, each reply checked against its message; how many came back."""
    send, recv = conn.send_bytes, conn.recv_bytes
    for seq in range(first, first + count):
        message = _message(ident, seq, size)
        await send(message)
        reply = await recv()
        if reply != message:
            raise RuntimeError(f"client {ident} sent {message!r} and got back {reply!r}")
    return count


async def _barrier(spec: dict[str, Any]) -> None:
    """Wait for every client process to get here (a file each, beside the ready file)."""
    folder = Path(spec["ready"]).parent
    (folder / f"barrier-{spec['index']}").touch()
    others = [folder / f"barrier-{i}" for i in range(spec["processes"])]
    deadline = time.monotonic() + spec.get("ready_timeout", 30.0)
    while not all(path.exists() for path in others):
        if time.monotonic() > deadline:
            raise TimeoutError("the other client processes did not connect in time")
        await asyncio.sleep(0.001)


async def _all_round_trips(
    conns: list[Any], idents: range, first: int, count: int, size: int
) -> int:
    """_checked_round_trips on every connection at once; the replies checked in all."""
    pairs = zip(conns, idents, strict=True)
    return sum(
        await asyncio.gather(*(_checked_round_trips(c, i, first, count, size) for c, i in pairs))
    )


async def aclients(mod: Any, address: Any, authkey: bytes, spec: dict[str, Any]) -> dict[str, Any]:
    """This process's share of the clients: connect all, warm up, meet the others, time.

    Every client connects (at once, all of them) and does ``warmup`` round
    trips; once every client process has got that far, all of them do
    ``round_trips`` more at once. Every reply is checked.
    """
    params = spec["params"]
    shares = _batches(params["clients"], spec["processes"])
    first = sum(shares[: spec["index"]])
    idents = range(first, first + shares[spec["index"]])
    size, warmup, count = params["size"], params["warmup"], params["round_trips"]
    timeout = spec.get("ready_timeout", 30.0)
    started = now()
    conns = await asyncio.gather(
        *(mod.connect(address, authkey=authkey, timeout=timeout) for _ in idents)
    )
    connected = now()
    try:
        await _all_round_trips(conns, idents, 0, warmup, size)
        await _barrier(spec)
        go = _cpu_mark()
        replies = await _all_round_trips(conns, idents, warmup, count, size)
        finished = _cpu_mark()
    finally:
        await asyncio.gather(*(conn.aclose() for conn in conns))
    if replies != len(idents) * count:
        raise RuntimeError(f"{replies:,} replies checked, not {len(idents) * count:,}")
    return {
        "clients": len(idents),
        "replies": replies,
        "started": started,
        "connected": connected,
        "go": go[0],
        "finished": finished[0],
        "cpu_seconds": finished[1] - go[1],
        "machine_cpu_seconds": finished[2] - go[2],
    }


_ASYNC_SERVERS: dict[str, Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "pingpong-bytes": aserver_pingpong_bytes,
}
_ASYNC_CLIENTS: dict[str, Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "pingpong-bytes": aclient_pingpong_bytes,
}
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


def _address(spec: dict[str, Any]) -> Any:
    """The address to bind, as Listener takes it."""
    address = spec["address"]
    return tuple(address) if isinstance(address, list) else address


def _pipe_end(mod: Any, spec: dict[str, Any]) -> Any:
    """This process's end of the socket pair the runner made (the "pipe" transport).

    A Connection on it, as ``Pipe()`` makes them: mpwire's with shared memory.
    """
    options = {"shared_memory": True} if spec["impl"] == "mpwire" else {}
    return mod.Connection(spec["pipe_fd"], **options)


def run_server(mod: Any, spec: dict[str, Any], authkey: bytes) -> dict[str, Any]:
    """Bind, announce the address, then serve one connection (or many, for connect, clients)."""
    kind, params = spec["kind"], spec["params"]
    if kind in multiproc.KINDS:
        return multiproc.run(kind, spec["impl"], params)
    if kind == "stream-shared":
        folder = Path(spec["result"]).parent
        return server_stream_shared(mod, params, folder, spec.get("ready_timeout", 30.0))
    if spec.get("pipe_fd") is not None:
        with contextlib.closing(_pipe_end(mod, spec)) as conn:
            return _SERVERS[kind](conn, params)
    if spec["impl"] == ASYNCIO:
        return run_on_loop(spec, lambda: arun_server(mod, spec, authkey))
    listener = mod.Listener(_address(spec), authkey=authkey, backlog=params.get("backlog", 16))
    try:
        _announce(spec, listener.address)
        if kind == "connect":
            return server_connect(listener, params)
        if kind == "clients":
            return server_clients_threads(listener, params)
        conn = listener.accept()
        try:
            return _SERVERS[kind](conn, params)
        finally:
            conn.close()
    finally:
        listener.close()


async def arun_server(mod: Any, spec: dict[str, Any], authkey: bytes) -> dict[str, Any]:
    """run_server for mpwire.asyncio, on the running loop."""
    kind, params = spec["kind"], spec["params"]
    if kind == "clients":
        return await aserver_clients(mod, spec, authkey)
    async with mod.Listener(_address(spec), authkey=authkey, backlog=16) as listener:
        _announce(spec, listener.address)
        async with await listener.accept() as conn:
            return await _ASYNC_SERVERS[kind](conn, params)


def run_client(mod: Any, spec: dict[str, Any], authkey: bytes) -> dict[str, Any]:
    """Wait for the server's address, connect, and drive the scenario.

    The clients scenario's clients are mpwire.asyncio, whatever the server.
    """
    kind, params = spec["kind"], spec["params"]
    if spec.get("pipe_fd") is not None:
        with contextlib.closing(_pipe_end(mod, spec)) as conn:
            return _CLIENTS[kind](conn, params)
    address = _wait_ready(spec["ready"], spec.get("ready_timeout", 30.0))
    if kind == "clients":
        amod = importlib.import_module(MODULES[ASYNCIO])
        return run_on_loop(spec, lambda: aclients(amod, address, authkey, spec))
    if spec["impl"] == ASYNCIO:
        return run_on_loop(spec, lambda: arun_client(mod, address, authkey, spec))
    if kind == "connect":
        return client_connect(mod, address, authkey, params)
    conn = mod.Client(address, authkey=authkey)
    try:
        return _CLIENTS[kind](conn, params)
    finally:
        conn.close()


async def arun_client(
    mod: Any, address: Any, authkey: bytes, spec: dict[str, Any]
) -> dict[str, Any]:
    """run_client for mpwire.asyncio, on the running loop."""
    async with await mod.connect(address, authkey=authkey) as conn:
        return await _ASYNC_CLIENTS[spec["kind"]](conn, spec["params"])


def main(argv: list[str] | None = None) -> int:
    """Run the role described by the spec file named on the command line."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))

    def work() -> dict[str, Any]:
        if spec.get("pin") is not None:
            os.sched_setaffinity(0, {spec["pin"]})
        raise_fd_limit()
        mod = importlib.import_module(MODULES[spec["impl"]])
        authkey = bytes.fromhex(spec["authkey"])
        role = run_server if spec["role"] == "server" else run_client
        return role(mod, spec, authkey)

    outcome = _outcome(work)
    _write_json(spec["result"], outcome)
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
