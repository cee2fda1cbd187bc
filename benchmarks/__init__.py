"""Benchmarks: mpwire.connection against multiprocessing.connection.

Run ``python -m benchmarks`` (``--quick``, ``--rounds N``, ``--only SUBSTRING``,
``--json FILE``, ``--list``), or from code::

    import benchmarks
    results = benchmarks.run(scenarios=["pingpong"], rounds=3, progress=print)
    print(benchmarks.format_table(results))

Method
------
* Every measurement runs in a fresh pair of processes, a server and a client,
  started with ``subprocess`` (``python -m benchmarks._worker``). The
  implementation is passed by name ("stdlib" -> ``multiprocessing.connection``,
  "mpwire" -> ``mpwire.connection``) and imported only inside the children, so
  nothing is shared or warmed up between measurements. The children report
  through JSON files, never through the connection being measured, and find
  each other through a "ready" file in which the server writes the address its
  Listener is bound to (a Unix socket in a private ``tempfile.mkdtemp()``
  folder, or 127.0.0.1 with an ephemeral port: no network beyond loopback).
* Implementations alternate within a run: for each scenario, round 1 runs
  stdlib then mpwire, round 2 stdlib then mpwire, and so on (5 rounds by
  default), so drift in machine load hits both alike. The table shows each
  implementation's median over rounds, with ± half the min-max range.
* Timers start after the connection is made and authenticated and after a
  warm-up, and stop on the side that sees the last message:
  - pingpong (64-byte ``send_bytes``/``recv_bytes``, or a small dict with
    ``send``/``recv``): round trips per second, timed on the client against a
    server that echoes; the ``-pinned`` variant puts both processes on one CPU
    (``os.sched_setaffinity``), so the figure reflects CPU cost per message
    rather than cross-core wake-up latency;
  - stream-1KiB: one-way ``send_bytes`` of 1 KiB messages as fast as the
    sender can, messages per second on the receiver between the end of the
    warm-up and the last message (an empty message ends the stream);
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
    whichever ends first; connections per second from those completed.
* ratio > 1 always means mpwire is better: mpwire/stdlib for rates,
  stdlib/mpwire for peak RSS / payload (lower is better).
* Every process pair is bounded by a timeout and killed when it runs over, or
  soon after one of the two fails; a failed measurement is recorded in its
  scenario (shown in the table and the JSON) and the run goes on.
"""

from .report import format_table
from .runner import MeasurementError, run
from .scenarios import SCENARIOS, Scenario

__all__ = ["SCENARIOS", "MeasurementError", "Scenario", "format_table", "run"]
