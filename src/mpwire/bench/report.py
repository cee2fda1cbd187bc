"""The results as a plain-text table."""

from __future__ import annotations

from typing import Any

from .runner import BASELINE, CANDIDATE
from .scenarios import MODULES

__all__ = ["format_table", "format_value"]


def format_value(value: float, unit: str) -> str:
    """A figure with as many digits as it deserves."""
    if unit == "peak RSS / payload":
        return f"{value:.2f}x"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(summary: dict[str, float] | None, unit: str, failed: int, rounds: int) -> str:
    if summary is None:
        return "FAILED" if failed else "-"
    median = summary["median"]
    text = format_value(median, unit)
    if median and summary["max"] > summary["min"]:
        spread = (summary["max"] - summary["min"]) / 2 / abs(median) * 100
        text += f" ±{spread:.0f}%"
    if failed:
        text += f" ({failed}/{rounds} failed)"
    return text


def _ratio_cell(metric: dict[str, Any]) -> str:
    if not metric.get("compared", True):
        return "-"
    ratio = metric["ratio"]
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _pair(entry: dict[str, Any]) -> tuple[str, str]:
    """The scenario's baseline and candidate (the default pair if the results do not say)."""
    return entry.get("baseline", BASELINE), entry.get("candidate", CANDIDATE)


def _caption(baseline: str, candidate: str) -> str:
    """What a group of rows compares, with the modules behind the names."""

    def named(impl: str) -> str:
        module = MODULES.get(impl, impl)
        return impl if module == impl else f"{impl} ({module})"

    return f"{named(candidate)} against {named(baseline)}:"


def _rows(entry: dict[str, Any], rounds: int) -> list[list[str]]:
    """A row per metric: label, unit, baseline median, candidate median, ratio."""
    baseline, candidate = _pair(entry)
    failed = {baseline: 0, candidate: 0}
    for error in entry["errors"]:
        failed[error["impl"]] = failed.get(error["impl"], 0) + 1
    rows = []
    for metric in entry["metrics"]:
        unit = metric["unit"]
        rows.append(
            [
                entry.get("label", entry["name"]),
                unit + ("" if metric["higher_is_better"] else " (lower is better)"),
                _cell(metric["summary"][baseline], unit, failed[baseline], rounds),
                _cell(metric["summary"][candidate], unit, failed[candidate], rounds),
                _ratio_cell(metric),
            ]
        )
    return rows


def _setups(entry: dict[str, Any]) -> list[str]:
    """How each side ran, where its results say (event loop, server model, client processes)."""
    lines = []
    for impl in _pair(entry):
        setups = {
            r["result"].get("setup") or f"event loop: {r['result']['loop']}"
            for r in entry["raw"][impl]
            if r["result"] is not None and ("setup" in r["result"] or "loop" in r["result"])
        }
        lines += [f"{entry.get('label', entry['name'])} {impl}: {s}" for s in sorted(setups)]
    return lines


def format_table(results: dict[str, Any]) -> str:
    """The medians and ratios of a :func:`mpwire.bench.run` result, with notes and failures.

    Scenarios are grouped by the pair they compare, each group under its own
    column headings: the baseline's median, then the candidate's.
    """
    meta = results["meta"]
    rounds = meta["rounds"]
    groups: dict[tuple[str, str], list[list[str]]] = {}
    failures: list[str] = []
    setups: list[str] = []
    skipped: list[str] = []
    for entry in results["scenarios"]:
        if "skipped" in entry:
            skipped.append(f"{entry.get('label', entry['name'])}: {entry['skipped']}")
            continue
        groups.setdefault(_pair(entry), []).extend(_rows(entry, rounds))
        setups += _setups(entry)
        failures += [
            f"{entry.get('label', entry['name'])} {error['impl']} round {error['round']}: "
            f"{error['error']}"
            for error in entry["errors"]
        ]
    headers = {
        pair: ["scenario", "unit", f"{pair[0]} median", f"{pair[1]} median", "ratio"]
        for pair in groups
    }
    everything = list(headers.values()) + [r for rows in groups.values() for r in rows]
    widths = [max((len(r[i]) for r in everything), default=0) for i in range(5)]

    def line(cells: list[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:2], widths[:2], strict=True)]
        right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    quick = ", quick" if meta.get("quick") else ""
    out = [
        f"mpwire benchmarks: Python {meta['python']} on {meta['platform']}, "
        f"{meta['cpu_count']} CPUs, {rounds} round(s){quick}",
        "Each round runs the baseline (left column) then the candidate, each in fresh processes.",
        "Medians over rounds; ±: half the min-max range, as % of the median.",
        "ratio > 1 means the candidate is better: candidate/baseline for rates, "
        "baseline/candidate where lower is better.",
    ]
    for (baseline, candidate), rows in groups.items():
        out += [
            "",
            _caption(baseline, candidate),
            line(headers[baseline, candidate]),
            line(["-" * w for w in widths]),
            *(line(r) for r in rows),
        ]
    if setups:
        out += ["", "Setups:", *(f"  {s}" for s in setups)]
    if skipped:
        out += ["", "Skipped:", *(f"  {s}" for s in skipped)]
    if failures:
        out += ["", "Failures:", *(f"  {f}" for f in failures)]
    footer = []
    elapsed = meta.get("elapsed_seconds")
    if elapsed is not None:
        footer.append(f"Total time: {elapsed:.0f} s")
    load = meta.get("loadavg_start")
    if load:
        footer.append(f"load average before the run: {load[0]:.2f} (1 min)")
    if footer:
        out += ["", "; ".join(footer) + "."]
    return "\n".join(out)
