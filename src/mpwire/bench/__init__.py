"""Benchmarks: mpwire.connection against multiprocessing.connection, and mpwire.asyncio.

Run ``mpwire bench`` (``--quick``, ``--rounds N``, ``--only SUBSTRING``,
``--json FILE``, ``--loop auto|uvloop|asyncio``, ``--list``), or from code::

    from mpwire import bench
    results = bench.run(scenarios=["pingpong"], rounds=3, progress=print)
    print(bench.format_table(results))

Method
------
* Every measurement runs in fresh processes, a server and a client (or several
  client processes, or a server alone that starts its own processes with
  multiprocessing), started with ``subprocess`` (``python -m
  mpwire.bench._worker``). The implementation is passed by name ("stdlib" ->
  ``multiprocessing.connection``, "mpwire" -> ``mpwire.connection``,
  "mpwire.asyncio" -> ``mpwire.asyncio``, "pyzmq" ->
  ``mpwire.bench.zmq_peer``, pyzmq's PAIR sockets behind the same method
  names) and imported only inside the children, so nothing is shared or warmed
  up between measurements. The children report through JSON files, never
  through the connection being measured, and find each other through a "ready"
  file in which the server writes the address its Listener is bound to (a Unix
  socket in a private ``tempfile.mkdtemp()`` folder, or 127.0.0.1 with an
  ephemeral port: no network beyond loopback).
* Each scenario compares two implementations, a baseline and a candidate:
  stdlib and mpwire for most; mpwire (the blocking API) and mpwire.asyncio for
  the asyncio ping-pongs; stdlib and mpwire.asyncio (as the server) for the
  many-clients scenario; pyzmq and mpwire for the ``-vs-pyzmq`` scenarios
  (ping-pong, 1 KiB stream, 64 MiB bytes, and a 64 MiB array, which pyzmq
  sends with its zero-copy multipart idiom; zmq has no authkey, so its key is
  ignored). A scenario whose modules are not installed (numpy, pyzmq) is
  skipped, and the table and the JSON say why. They alternate within a run:
  round 1 runs the baseline then the candidate, round 2 the same, and so on (5 rounds by
  default), so drift in machine load hits both alike. The table groups the
  scenarios by pair and shows each side's median over rounds, with ± half the
  min-max range. mpwire.asyncio processes run on uvloop when it is installed
  (``--loop`` to choose); the table's "Setups" and the JSON say which.
* Timers start after the connection is made and authenticated and after a
  warm-up, and stop on the side that sees the last message:
  - pingpong (64-byte ``send_bytes``/``recv_bytes``, or a small dict with
    ``send``/``recv``): round trips per second, timed on the client against a
    server that echoes; the ``-pinned`` variant puts both processes on one CPU
    (``os.sched_setaffinity``), so the figure reflects CPU cost per message
    rather than cross-core wake-up latency, and runs three times the rounds
    (its speed varies with where each process's interpreter is mapped);
  - stream-1KiB: one-way ``send_bytes`` of 1 KiB messages as fast as the
    sender can, messages per second on the receiver between the end of the
    warm-up and the last message (an empty message ends the stream);
  - stream-1KiB-shared-4readers: the same stream into one end of a
    ``Pipe(duplex=False)`` (``/pipe``) or ``Pipe()`` (``/duplex-pipe``) of
    the implementation, read by 4 processes that each take one message at a
    time with ``recv_bytes()`` under a shared ``multiprocessing.Lock``, as
    multiprocessing's Queue, SimpleQueue and Pool do. The server process
    makes the Pipe and the Lock and starts a writer and the 4 readers
    (``fork``), handing each its end as a Process argument. Messages per
    second of all the readers together, on the machine's monotonic clock.
    The messages are numbered and each reader stops at an empty message (one
    per reader): the measurement fails, naming what went missing, unless
    every message was taken exactly once and every reader stopped, and gives
    up after a few seconds without a message taken (an implementation that
    reads ahead strands messages in one reader's memory);
  - for both, the timed messages are split into a few consecutive batches and
    the pair's figure is the median batch rate, so a moment of interference
    from other work on the machine does not decide it (the JSON also has every
    batch's rate and the overall rate);
  - bytes-64MiB / numpy-64MiB: the receiver asks for a 64 MiB payload
    (``send_bytes`` of bytes, or ``send`` of a float64 array whose shape the
    receiver checks) and times request to completed receive, several times per
    pair; the pair's figure is the median transfer time without the first
    (warm-up), reported in GB/s (1e9 bytes/s). The receiver drops each payload
    before asking for the next, and reports (peak RSS - RSS before the
    transfers) / payload, from ``ru_maxrss`` and ``/proc/self/status`` VmRSS:
    1.00x means the payload was received with no extra copy alive at once;
  - connect-auth: a Listener with an authkey accepts in a loop, the client
    connects (both ways of the HMAC challenge), does one ``send``/``recv``
    round trip and closes, for a fixed count or a few seconds of wall time,
    whichever ends first; connections per second from those completed;
  - pingpong-64B-bytes-asyncio: the 64-byte ping-pong with an mpwire.asyncio
    client and server (``connect()``, ``Listener.accept()``), against the same
    with the blocking mpwire API; ``-pinned`` as above;
  - clients-1000x100: one server, 1,000 clients connecting at once with an
    authkey (backlog 1024 on both servers), each doing 100 round trips of a
    64-byte message unique to the client and the round trip, every reply
    checked; 200x20 with ``--quick``. The server is a stdlib Listener with a
    thread per accepted client (the best a stdlib user can do) or
    mpwire.asyncio ``serve()`` in one process and one event loop. The clients
    are the same for both: mpwire.asyncio, in two processes that meet at a
    barrier once all their clients are connected and warmed up (one round
    trip each). Round trips per second (the ratio) are timed from the barrier
    to the last reply, on the machine's monotonic clock, across processes;
    the total time runs from the first connect() to the last reply. A reply
    lost or wrong fails the measurement. The table also shows how many CPUs
    the server, the clients and other work on the machine (/proc/stat) kept
    busy: on a 2-CPU machine, a server and clients that both near 1.0 share
    the machine, and the figure is a floor for the server alone.
* mp-*: multiprocessing's own classes end to end, under fork, with the
  program the same for both: the ``mpwire`` side calls ``mpwire.install()``
  first (as ``mpwire run`` does), the ``faster-fifo`` side (the bench extra)
  swaps the Queue for ``faster_fifo.Queue``. The measuring process is the
  consumer or the user of the Pool, executor or manager, and starts the
  processes it needs itself:
  - mp-queue-1producer / -4producers: small dicts put by 1 or 4 producer
    processes, taken one ``get()`` at a time; messages per second, the
    median of batches as for the streams; ``-vs-faster-fifo`` compares with
    faster-fifo's Queue instead of the stdlib's;
  - mp-pool-map-20k: ``Pool(2).map`` of 20,000 tiny tasks with
    ``chunksize=1``, three times; tasks per second;
  - mp-executor-numpy-64MiB / mp-queue-numpy-64MiB: a 64 MiB float64 array
    as a ``ProcessPoolExecutor`` argument, or through a ``Queue`` on request;
    GB/s as for the bulk transfers, and the receiving process's peak RSS
    growth over the payload;
  - mp-manager-dict: one key of a ``Manager().dict()`` set and read,
    alternately; operations per second;
  - mp-manager-proxies: ``Manager().list()`` proxies created and dropped,
    each opening connections to the manager; proxies per second.
* ratio > 1 always means the candidate is better: candidate/baseline for
  rates, baseline/candidate where lower is better (peak RSS / payload, seconds).
* Every process pair is bounded by a timeout and killed when it runs over, or
  soon after one of the two fails; a failed measurement is recorded in its
  scenario (shown in the table and the JSON) and the run goes on.
"""

from .report import format_table
from .runner import MeasurementError, run
from .scenarios import SCENARIOS, Scenario

__all__ = ["SCENARIOS", "MeasurementError", "Scenario", "format_table", "run"]
