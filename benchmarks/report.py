"""The results as a plain-text table."""

from __future__ import annotations

from typing import Any

from .runner import BASELINE, CANDIDATE

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


def format_table(results: dict[str, Any]) -> str:
    """The medians and ratios of a :func:`benchmarks.run` result, with notes and failures."""
    meta = results["meta"]
    rounds = meta["rounds"]
    header = ["scenario", "unit", f"{BASELINE} median", f"{CANDIDATE} median", "ratio"]
    rows: list[list[str]] = []
    failures: list[str] = []
    for entry in results["scenarios"]:
        failed = {impl: 0 for impl in (BASELINE, CANDIDATE)}
        for error in entry["errors"]:
            failed[error["impl"]] = failed.get(error["impl"], 0) + 1
            failures.append(
                f"{entry['name']} {error['impl']} round {error['round']}: {error['error']}"
            )
        for metric in entry["metrics"]:
            unit = metric["unit"]
            ratio = metric["ratio"]
            rows.append(
                [
                    entry["name"],
                    unit + ("" if metric["higher_is_better"] else " (lower is better)"),
                    _cell(metric["summary"][BASELINE], unit, failed[BASELINE], rounds),
                    _cell(metric["summary"][CANDIDATE], unit, failed[CANDIDATE], rounds),
                    "n/a" if ratio is None else f"{ratio:.2f}x",
                ]
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:2], widths[:2], strict=True)]
        right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    quick = ", quick" if meta.get("quick") else ""
    out = [
        f"mpwire benchmarks: Python {meta['python']} on {meta['platform']}, "
        f"{meta['cpu_count']} CPUs, {rounds} round(s){quick}",
        f"Each round runs {BASELINE} then {CANDIDATE}, each in a fresh server + client pair.",
        "Medians over rounds; ±: half the min-max range, as % of the median.",
        f"ratio > 1 means {CANDIDATE} is better: {CANDIDATE}/{BASELINE} for rates, "
        f"{BASELINE}/{CANDIDATE} for peak RSS / payload.",
        "",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
    ]
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
