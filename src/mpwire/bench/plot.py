"""``mpwire bench --plot FILE.png``: throughput against message size, a line per implementation.

Needs matplotlib (``pip install 'mpwire[plot]'``). The points are the one-way
stream scenarios over Unix sockets, from 64-byte messages to 64 MiB ones.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

__all__ = ["check_available", "plot"]


def check_available() -> None:
    """Raise ImportError with what to install, before a long run is wasted."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'mpwire[plot]'") from None


def _points(results: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """(message size, MB/s) for each implementation, from the one-way scenarios over Unix.

    An implementation measured at one size in several scenarios (mpwire against
    the stdlib, then against pyzmq) keeps its first figure.
    """
    points: dict[str, dict[int, float]] = defaultdict(dict)
    for entry in results["scenarios"]:
        one_way = entry["kind"] in ("stream", "bulk-bytes") and entry["transport"] == "unix"
        if not one_way or not entry.get("metrics"):
            continue
        size = entry["params"]["size"]
        rate = entry["metrics"][0]
        for impl, median in rate["median"].items():
            if median is None:
                continue
            # GB/s for bulk transfers, messages/s for streams: both as MB/s.
            mbps = median * 1000 if rate["unit"] == "GB/s" else median * size / 1e6
            points[impl].setdefault(size, mbps)
    return {impl: sorted(values.items()) for impl, values in points.items()}


def plot(results: dict[str, Any], path: str) -> None:
    """Write the chart to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for impl, values in _points(results).items():
        sizes, rates = zip(*values, strict=True)
        axes.plot(sizes, rates, marker="o", label=impl)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("message size (bytes)")
    axes.set_ylabel("throughput (MB/s)")
    meta = results["meta"]
    axes.set_title(f"One-way send_bytes over a Unix socket (Python {meta['python']})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
