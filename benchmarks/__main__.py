"""``python -m benchmarks``: see :mod:`benchmarks`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
