"""Run CPython's own multiprocessing and concurrent.futures suites with mpwire installed.

``python tests/cpython/mp_suites.py`` runs every class of the running
Python's ``test._test_multiprocessing`` (the processes and manager flavours
and the plain classes; the threads flavour does not touch mpwire) under each
start method, and each module of ``test.test_concurrent_futures`` where this
Python ships it, each class or module in a process of its own with a time
limit, after ``mpwire.install()`` (``--stdlib``: without it, for the
baseline). It prints one line per class and the counts, and exits non-zero
if a test failed, erred or a class ran out of time, unless it is listed in
``KNOWN`` with the reason it cannot pass.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
import unittest
from typing import Any

METHOD_ENV = "MPWIRE_SUITE_METHOD"
STDLIB_ENV = "MPWIRE_SUITE_STDLIB"
RESULT_MARK = "MPWIRE-SUITE-RESULT "
START_METHODS = ("fork", "spawn", "forkserver")
FUTURES_PACKAGE = "test.test_concurrent_futures"

KNOWN: dict[str, str] = {}
"""Tests that fail on the stdlib as on mpwire here, by id: why."""


def _install_tests(namespace: dict[str, Any], method: str) -> None:
    """Put the suite's classes for ``method`` into ``namespace`` (not the threads flavour)."""
    import test._test_multiprocessing as suite

    suite.install_tests_in_module_dict(namespace, method)
    for name in [name for name in namespace if name.startswith("WithThreads")]:
        del namespace[name]


def class_names(method: str) -> list[str]:
    """The names of the suite's test classes for ``method``."""
    namespace: dict[str, Any] = {"__name__": "suite"}
    _install_tests(namespace, method)
    return sorted(
        name
        for name, value in namespace.items()
        if isinstance(value, type) and issubclass(value, unittest.TestCase)
    )


def futures_modules() -> list[str]:
    """The modules of ``test.test_concurrent_futures``, or none if this Python lacks it."""
    import importlib.util
    import pkgutil

    spec = importlib.util.find_spec(FUTURES_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(
        f"{FUTURES_PACKAGE}.{info.name}"
        for info in pkgutil.iter_modules(spec.submodule_search_locations)
        if info.name.startswith("test_")
    )


class _Result(unittest.TextTestResult):
    def summary(self) -> dict[str, Any]:
        return {
            "run": self.testsRun,
            "failed": [test.id() for test, _ in self.failures + self.errors],
            "skipped": len(self.skipped),
            "unexpected_successes": [test.id() for test in self.unexpectedSuccesses],
        }


def _run_here(target: str) -> None:
    """Run one class of this module (or one futures module) and print the result line."""
    if not os.environ.get(STDLIB_ENV):
        import multiprocessing.connection

        import mpwire

        if not mpwire.installed() or multiprocessing.connection.Pipe is not mpwire.Pipe:
            raise SystemExit("mp_suites: mpwire is not installed in the suite's process")
    if target.startswith(FUTURES_PACKAGE):
        tests = unittest.defaultTestLoader.loadTestsFromName(target)
    else:
        tests = unittest.defaultTestLoader.loadTestsFromTestCase(globals()[target])
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=_Result)
    result = runner.run(tests)
    assert isinstance(result, _Result)
    print("\n" + RESULT_MARK + json.dumps(result.summary()), flush=True)  # (tests print too)


if os.environ.get(METHOD_ENV):  # a class's process, or a child it started by spawn or forkserver
    if not os.environ.get(STDLIB_ENV):
        import mpwire

        mpwire.install()
    _install_tests(globals(), os.environ[METHOD_ENV])


def run_one(method: str, target: str, stdlib: bool, timeout: float) -> dict[str, Any]:
    """Run a class (or futures module) in a process of its own; its summary and outcome."""
    env = dict(os.environ, **{METHOD_ENV: method}, PYTHONFAULTHANDLER="1")
    if stdlib:
        env[STDLIB_ENV] = "1"
    else:
        env.pop(STDLIB_ENV, None)
    command = [sys.executable, os.path.abspath(__file__), "--one", target]
    started = time.monotonic()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        log = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode()
        return {"target": target, "outcome": "timeout", "log": log, "seconds": timeout}
    seconds = time.monotonic() - started
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            summary: dict[str, Any] = json.loads(line.removeprefix(RESULT_MARK))
            failed = [test for test in summary["failed"] if test not in KNOWN]
            outcome = "failed" if failed or summary["unexpected_successes"] else "passed"
            return {
                **summary,
                "target": target,
                "outcome": outcome,
                "log": done.stderr,
                "seconds": seconds,
            }
    return {
        "target": target,
        "outcome": f"crashed ({done.returncode})",
        "log": done.stderr,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--stdlib", action="store_true", help="run without mpwire (the baseline)")
    parser.add_argument(
        "--method", action="append", choices=START_METHODS, help="default: all three"
    )
    parser.add_argument("--only", action="append", help="run these classes or futures modules only")
    parser.add_argument("--no-futures", action="store_true", help="skip test_concurrent_futures")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds per class (default 600)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="classes run at once (default 2)")
    parser.add_argument("--json", help="write every class's outcome here")
    parser.add_argument(
        "--verbose", action="store_true", help="print the log of classes that did not pass"
    )
    args = parser.parse_args(argv)
    if args.one:
        _run_here(args.one)
        return 0
    try:
        import test._test_multiprocessing
    except ImportError:
        print("mp_suites: this Python has no test._test_multiprocessing: skipped")
        return 0
    jobs = [
        (method, name) for method in args.method or START_METHODS for name in class_names(method)
    ]
    if not args.no_futures:
        # The futures suite picks its start methods itself: run it once, under "fork"'s default.
        jobs += [("fork", module) for module in futures_modules()]
    if args.only:
        jobs = [(method, name) for method, name in jobs if name in args.only]
    flavour = "stdlib" if args.stdlib else "mpwire"
    print(
        f"mp_suites: {len(jobs)} classes on Python {sys.version.split()[0]}, {flavour}", flush=True
    )
    started = time.monotonic()
    outcomes: list[dict[str, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(run_one, method, name, args.stdlib, args.timeout): method
            for method, name in jobs
        }
        for future in concurrent.futures.as_completed(futures):
            outcome = {**future.result(), "method": futures[future]}
            outcomes.append(outcome)
            print(
                f"  {outcome['method']:10} {outcome['target']:48} {outcome['outcome']:12}"
                f" {outcome.get('run', 0):4} run {outcome.get('skipped', 0):3} skipped"
                f" {outcome['seconds']:6.1f} s",
                flush=True,
            )
            for test in outcome.get("failed", []):
                print(f"      {'known: ' + KNOWN[test] if test in KNOWN else 'FAILED'}: {test}")
            if args.verbose and outcome["outcome"] != "passed":
                print(outcome["log"][-6000:])
    _report(outcomes, time.monotonic() - started)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(outcomes, out, indent=1)
    return 0 if all(outcome["outcome"] == "passed" for outcome in outcomes) else 1


def _report(outcomes: list[dict[str, Any]], seconds: float) -> None:
    by_method: dict[str, dict[str, int]] = {}
    for outcome in outcomes:
        suite = (
            "concurrent.futures"
            if outcome["target"].startswith(FUTURES_PACKAGE)
            else outcome["method"]
        )
        counts = by_method.setdefault(
            suite, {"classes": 0, "passed": 0, "tests": 0, "failed": 0, "skipped": 0}
        )
        counts["classes"] += 1
        counts["passed"] += outcome["outcome"] == "passed"
        counts["tests"] += outcome.get("run", 0)
        counts["failed"] += len(outcome.get("failed", [])) + (
            outcome["outcome"] not in ("passed", "failed")
        )
        counts["skipped"] += outcome.get("skipped", 0)
    for suite, counts in sorted(by_method.items()):
        print(
            f"mp_suites: {suite}: {counts['passed']}/{counts['classes']} classes passed,"
            f" {counts['tests']} tests run, {counts['failed']} failed, {counts['skipped']} skipped"
        )
    print(f"mp_suites: {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
