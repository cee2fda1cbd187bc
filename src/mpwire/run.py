"""``mpwire run``: run a program with all of multiprocessing on mpwire.

``mpwire run script.py [args]`` and ``mpwire run -m module [args]`` run the
program as ``python script.py`` and ``python -m module`` would (the same
``sys.argv``, ``sys.path[0]`` and ``__main__``), in this process, after
:func:`mpwire.install`; so its exit status, its exceptions and the signals it
gets are its own, and the children it starts run on mpwire too.
"""

from __future__ import annotations

import os
import runpy
import sys

from .mp import install

USAGE = "usage: mpwire run SCRIPT [ARGS ...] | mpwire run -m MODULE [ARGS ...]"


def main(argv: list[str]) -> int:
    """Run the program ``argv`` names; returns only on a usage error (or if it returns)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        print(__doc__.split("\n\n", 1)[1].rstrip(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "-m":
        if len(argv) < 2:
            print(f"mpwire run: -m needs a module name\n{USAGE}", file=sys.stderr)
            return 2
        install()
        sys.argv = argv[1:]  # runpy puts the module's path in sys.argv[0]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    if not os.path.exists(script):
        print(f"mpwire run: can't open file {script!r}: no such file", file=sys.stderr)
        return 2
    install()
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    runpy.run_path(script, run_name="__main__")
    return 0
