"""Runs the scenarios: fresh process pairs, alternating implementations, medians and ratios."""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._worker import read_outcome
from .combine import combine
from .scenarios import BASELINE, CANDIDATE, Metric, Scenario, select

__all__ = [
    "BASELINE",
    "CANDIDATE",
    "IMPLEMENTATIONS",
    "LOOPS",
    "MeasurementError",
    "Progress",
    "run",
]

IMPLEMENTATIONS = (BASELINE, CANDIDATE)
"""The default pair, run in this order within each round: stdlib, mpwire, stdlib, mpwire, ...

A scenario may compare another pair (``Scenario.baseline``, ``Scenario.candidate``).
"""

LOOPS = ("auto", "uvloop", "asyncio")
"""The event loop for asyncio processes: "auto" is uvloop when installed, else asyncio's own."""

DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 2
DEFAULT_TIMEOUT = 90.0
QUICK_TIMEOUT = 30.0
MAX_FAILURES = 2
"""After this many failed rounds, an implementation's remaining rounds of a scenario are skipped."""
KILL_GRACE = 3.0
"""Seconds the other process gets to finish once one of the pair has failed."""

Progress = Callable[[str], None]
"""Called with one line of text as each measurement ends."""

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding this mpwire package: the children import this very copy."""


class MeasurementError(Exception):
    """A measurement failed: a child raised, crashed or timed out."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _meta(rounds: int, quick: bool, timeout: float, loop: str) -> dict[str, Any]:
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "mpwire_version": _version("mpwire"),
        "numpy_version": _version("numpy"),
        "uvloop_version": _version("uvloop"),
        "rounds": rounds,
        "quick": quick,
        "timeout": timeout,
        "loop": loop,
        "implementations": list(IMPLEMENTATIONS),
        "baseline": BASELINE,
        "candidate": CANDIDATE,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine makes figures noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _child_env() -> dict[str, str]:
    """The environment for children: this mpwire importable wherever we run."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(_PACKAGE_ROOT) + (os.pathsep + path if path else "")
    return env


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])


def _pin_cpu() -> int | None:
    try:
        return max(os.sched_getaffinity(0))
    except AttributeError:
        return None


def measure(
    scenario: Scenario,
    impl: str,
    params: dict[str, Any],
    workdir: Path,
    timeout: float,
    loop: str = "auto",
) -> dict[str, Any]:
    """Run ``scenario`` once for ``impl`` in a fresh server and client(s); the measured result.

    Every child is killed if it outlives ``timeout`` seconds, and the others
    soon after any of them fails. Raises MeasurementError.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="m-", dir=workdir))
    try:
        return _measure_in(scenario, impl, params, run_dir, timeout, loop)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _roles(params: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(name, role, index) of each child: the server, then "client" or "client-0", "client-1"...

    The server alone with ``client_processes`` 0: it starts the processes it needs itself.
    """
    processes = params.get("client_processes", 1)
    if processes == 0:
        return [("server", "server", 0)]
    if processes == 1:
        return [("server", "server", 0), ("client", "client", 0)]
    return [("server", "server", 0)] + [(f"client-{i}", "client", i) for i in range(processes)]


def _measure_in(
    scenario: Scenario,
    impl: str,
    params: dict[str, Any],
    run_dir: Path,
    timeout: float,
    loop: str,
) -> dict[str, Any]:
    address: Any = str(run_dir / "s") if scenario.transport == "unix" else ["127.0.0.1", 0]
    common = {
        "kind": scenario.kind,
        "impl": impl,
        "params": params,
        "address": address,
        "authkey": secrets.token_hex(16),
        "ready": str(run_dir / "ready.json"),
        "ready_timeout": timeout,
        "pin": _pin_cpu() if scenario.pinned else None,
        "loop": loop,
        "processes": params.get("client_processes", 1),
    }
    env = _child_env()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    results: dict[str, Path] = {}
    roles = _roles(params)
    # The "pipe" transport between a server and a client: a socket pair made here, an end
    # inherited by each child (a server alone makes its own Pipe()).
    pair = socket.socketpair() if scenario.transport == "pipe" and len(roles) == 2 else ()
    try:
        for (name, role, index), end in itertools.zip_longest(roles, pair):
            spec_path = run_dir / f"{name}.spec.json"
            results[name] = run_dir / f"{name}.result.json"
            logs[name] = run_dir / f"{name}.log"
            spec = {**common, "role": role, "index": index, "result": str(results[name])}
            spec["pipe_fd"] = end and end.fileno()
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            with open(logs[name], "wb") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "mpwire.bench._worker", str(spec_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=() if end is None else (end.fileno(),),
                )
        for end in pair:
            end.close()
        timed_out = _wait_all(procs, timeout)
    finally:
        for end in pair:
            end.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    problems = []
    outcome: dict[str, dict[str, Any]] = {}
    for role, proc in procs.items():
        outcome[role] = read_outcome(results[role])
        if not outcome[role].get("ok"):
            error = outcome[role].get("error")
            if error is None:
                output = _tail(logs[role])
                if role in timed_out and not output:
                    continue  # the timeout says it all
                state = "killed" if role in timed_out else f"exit code {proc.returncode}"
                error = f"{state}; output: {output or '(none)'}"
            problems.append(f"{role}: {error}")
    if timed_out:
        problems.insert(0, f"timed out after {timeout:g} s ({', '.join(timed_out)} still running)")
    if problems:
        raise MeasurementError("; ".join(problems))
    if scenario.measured_by != "all":
        result: dict[str, Any] = outcome[scenario.measured_by]["result"]
        return result
    try:
        return combine(scenario.kind, params, {role: o["result"] for role, o in outcome.items()})
    except RuntimeError as exc:
        raise MeasurementError(str(exc)) from exc


def _wait_all(procs: dict[str, subprocess.Popen[bytes]], timeout: float) -> list[str]:
    """Wait for every process; kill stragglers. The roles still running at the timeout."""
    deadline = time.monotonic() + timeout
    failed_at: float | None = None
    while True:
        running = [role for role, p in procs.items() if p.poll() is None]
        if not running:
            return []
        now = time.monotonic()
        if failed_at is None and any(p.returncode for p in procs.values() if p.poll() is not None):
            failed_at = now
        if now > deadline:
            for role in running:
                procs[role].kill()
            return running
        if failed_at is not None and now - failed_at > KILL_GRACE:
            for role in running:
                procs[role].kill()
            return []
        time.sleep(0.01)


def _summarize(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ratio(metric: Metric, baseline: float | None, candidate: float | None) -> Any:
    if not metric.compared or baseline is None or candidate is None:
        return None
    num, den = (candidate, baseline) if metric.higher_is_better else (baseline, candidate)
    return num / den if den else None


def _finish(entry: dict[str, Any], scenario: Scenario) -> None:
    """Fill in each metric's samples, medians and ratio from the raw round results."""
    metrics = []
    baseline, candidate = scenario.implementations
    for metric in scenario.metrics:
        samples = {
            impl: [r["result"][metric.key] for r in entry["raw"][impl] if r["result"] is not None]
            for impl in scenario.implementations
        }
        summary = {impl: _summarize(samples[impl]) for impl in scenario.implementations}
        median = {impl: (s["median"] if s else None) for impl, s in summary.items()}
        metrics.append(
            {
                "key": metric.key,
                "unit": metric.unit,
                "higher_is_better": metric.higher_is_better,
                "compared": metric.compared,
                "samples": samples,
                "summary": summary,
                "median": median,
                "ratio": _ratio(metric, median[baseline], median[candidate]),
            }
        )
    entry["metrics"] = metrics


def _describe(scenario: Scenario, result: dict[str, Any]) -> str:
    parts = []
    for metric in scenario.metrics:
        value = result[metric.key]
        parts.append(f"{value:,.0f}" if value >= 1000 else f"{value:.3g}")
        parts[-1] += f" {metric.unit}"
    return ", ".join(parts)


def run(
    scenarios: Sequence[str] | str | None = None,
    rounds: int | None = None,
    quick: bool = False,
    progress: Progress | None = None,
    timeout: float | None = None,
    loop: str = "auto",
) -> dict[str, Any]:
    """Run the benchmarks; return every raw sample with medians and ratios.

    ``scenarios`` are substrings of scenario names (None: all of them).
    ``rounds`` defaults to 5 (2 with ``quick``, which also uses smaller counts).
    Each round runs the scenario's baseline (stdlib for most) then its
    candidate (mpwire for most), each in a fresh server and client process(es);
    ``timeout`` (seconds) bounds each measurement. ``loop`` picks the event
    loop of asyncio processes (see :data:`LOOPS`). A failed measurement is
    recorded in its scenario's ``errors`` and the run goes on. ``progress`` is
    called with a line of text after each measurement.

    The result holds ``meta`` and ``scenarios``, a list of dicts with ``name``,
    ``label`` (the name shown, with quick counts), ``description``,
    ``baseline`` and ``candidate``, ``params``, ``raw`` (per implementation,
    one entry per round: the measured full result or None, and the error),
    ``errors``, ``skipped`` (why, for a scenario whose ``requires`` are not
    installed; it has no ``metrics``) and ``metrics`` (per metric: ``unit``, ``higher_is_better``,
    ``samples``, ``median`` per implementation, and ``ratio``, > 1 when the
    candidate is better; None for a figure not ``compared``).
    """
    chosen = select(
        scenarios if scenarios is None or isinstance(scenarios, str) else list(scenarios)
    )
    rounds = (QUICK_ROUNDS if quick else DEFAULT_ROUNDS) if rounds is None else rounds
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}, not {loop!r}")
    timeout = (QUICK_TIMEOUT if quick else DEFAULT_TIMEOUT) if timeout is None else timeout
    results: dict[str, Any] = {"meta": _meta(rounds, quick, timeout, loop), "scenarios": []}
    missing = {s.name: s.missing() for s in chosen}
    total = sum(len(s.implementations) * s.rounds(rounds) for s in chosen if not missing[s.name])
    done = 0
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mpwire-bench-"))
    try:
        for scenario in chosen:
            params = scenario.parameters(quick)
            entry: dict[str, Any] = {
                "name": scenario.name,
                "label": scenario.label(quick),
                "description": scenario.description,
                "baseline": scenario.baseline,
                "candidate": scenario.candidate,
                "kind": scenario.kind,
                "transport": scenario.transport,
                "pinned": scenario.pinned,
                "params": params,
                "raw": {impl: [] for impl in scenario.implementations},
                "errors": [],
            }
            if missing[scenario.name]:
                entry["skipped"] = f"needs {', '.join(missing[scenario.name])}: not installed"
                if progress:
                    progress(f"{entry['label']}: skipped, {entry['skipped']}")
                results["scenarios"].append(entry)
                continue
            failures = dict.fromkeys(scenario.implementations, 0)
            scenario_rounds = scenario.rounds(rounds)
            for round_no in range(1, scenario_rounds + 1):
                for impl in scenario.implementations:
                    done += 1
                    label = (
                        f"[{done:>3}/{total}] {entry['label']}"
                        f" round {round_no}/{scenario_rounds} {impl}"
                    )
                    if failures[impl] >= MAX_FAILURES:
                        if progress:
                            progress(f"{label}: skipped after {failures[impl]} failures")
                        continue
                    t0 = time.monotonic()
                    try:
                        result = measure(scenario, impl, params, workdir, timeout, loop)
                    except MeasurementError as exc:
                        failures[impl] += 1
                        error = str(exc)
                        entry["raw"][impl].append(
                            {"round": round_no, "result": None, "error": error}
                        )
                        entry["errors"].append({"impl": impl, "round": round_no, "error": error})
                        if progress:
                            progress(f"{label}: FAILED: {error}")
                        continue
                    entry["raw"][impl].append(
                        {
                            "round": round_no,
                            "result": result,
                            "error": None,
                            "wall_seconds": time.monotonic() - t0,
                        }
                    )
                    if progress:
                        progress(f"{label}: {_describe(scenario, result)}")
            _finish(entry, scenario)
            results["scenarios"].append(entry)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["elapsed_seconds"] = time.monotonic() - started
    results["meta"]["loadavg_end"] = _loadavg()
    return results
