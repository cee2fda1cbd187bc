"""One result from every process of a measurement: the server's and each client process's.

For scenarios measured by "all" (:class:`mpwire.bench.scenarios.Scenario`): the
runner hands over each role's result, and gets back one holding the metrics.
A RuntimeError means the measurement is not to be trusted (a lost reply).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["RoleResults", "combine", "combine_clients"]

RoleResults = dict[str, dict[str, Any]]
"""Each child's result by its name: "server", "client" or "client-0", "client-1", ..."""


def combine_clients(params: dict[str, Any], results: RoleResults) -> dict[str, Any]:
    """The clients scenario: every reply checked, times on the machine's one monotonic clock.

    The round trips are timed from the first client process starting them (all
    connections made and warmed up) to the last one done; the total runs from
    the first connect() to the last reply. CPU loads are in CPUs kept busy, on
    average: the server's from its last client connected to its last gone, the
    clients' and the rest of the machine's (from /proc/stat, other work than
    this measurement: it makes figures noisy) over the round trips.
    """
    server = results["server"]
    clients = [results[role] for role in sorted(results) if role != "server"]
    expected = params["clients"] * params["round_trips"]
    replies = sum(part["replies"] for part in clients)
    if replies != expected:
        raise RuntimeError(f"replies lost: {replies:,} of {expected:,} came back and checked")
    echoes = params["clients"] * (params["round_trips"] + params["warmup"])
    if server["echoed"] != echoes:
        raise RuntimeError(f"the server echoed {server['echoed']:,} messages, not {echoes:,}")
    started = min(part["started"] for part in clients)
    go = min(part["go"] for part in clients)
    finished = max(part["finished"] for part in clients)
    seconds = finished - go
    client_cpus = sum(part["cpu_seconds"] for part in clients) / seconds
    first = clients[0]
    machine_cpus = first["machine_cpu_seconds"] / (first["finished"] - first["go"])
    client_loops = ", ".join(sorted({part["loop"] for part in clients}))
    server_setup = server["setup"] + (f" on {server['loop']}" if "loop" in server else "")
    return {
        "rate": replies / seconds,
        "seconds": finished - started,
        "connect_seconds": max(part["connected"] for part in clients) - started,
        "round_trip_seconds": seconds,
        "replies": replies,
        "server_cpus": server["cpus"],
        "client_cpus": client_cpus,
        "other_cpus": max(0.0, machine_cpus - server["cpus"] - client_cpus),
        "machine_cpus": machine_cpus,
        "server_loop": server.get("loop"),
        "client_loop": client_loops,
        "setup": (
            f"server: {server_setup}; clients: {len(clients)} processes of "
            f"mpwire.asyncio connections on {client_loops}"
        ),
        "server": server,
        "clients": clients,
    }


_COMBINERS: dict[str, Callable[[dict[str, Any], RoleResults], dict[str, Any]]] = {
    "clients": combine_clients,
}


def combine(kind: str, params: dict[str, Any], results: RoleResults) -> dict[str, Any]:
    """One result for a measurement of ``kind`` from every child's."""
    return _COMBINERS[kind](params, results)
