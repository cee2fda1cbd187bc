"""``mpwire.install()``/``uninstall()`` and ``mpwire run``: all of multiprocessing on mpwire.

install() must reach every place the stdlib's names are bound (including a
module that imported them before the call), reach children under every
start method, be idempotent and thread-safe, and uninstall() must put back
exactly what was there. ``mpwire run`` runs a program as Python would, with
mpwire installed.
"""

from __future__ import annotations

import concurrent.futures.process
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.managers
import multiprocessing.pool
import multiprocessing.queues
import multiprocessing.spawn
import os
import signal
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mpwire
from mpwire.mp import installer as install_module
from mpwire.mp import queues as mp_queues

pytestmark = [
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
    pytest.mark.timeout(120),
]

TIMEOUT = 30.0


def _watched(value: object) -> bool:
    try:
        return str(getattr(value, "__module__", "") or "").startswith("mpwire")
    except Exception:
        return False


def _snapshot() -> dict[str, dict[str, int]]:
    """The identity of every binding install() could touch: its originals and mpwire's objects.

    (Other modules' globals change on their own: hypothesis keeps counters in its.)
    """
    originals = {id(original) for original, _ in install_module._replacements().values()}
    seen = {
        name: {
            key: id(value)
            for key, value in list(vars(module).items())
            if id(value) in originals or _watched(value)
        }
        for name, module in list(sys.modules.items())
        if isinstance(getattr(module, "__dict__", None), dict)
    }
    listener_client = multiprocessing.managers.listener_client
    seen["<listener_client>"] = {key: id(value) for key, value in listener_client.items()}
    base_context = vars(multiprocessing.context.BaseContext)
    seen["<BaseContext>"] = {key: id(value) for key, value in base_context.items()}
    return seen


@pytest.fixture
def installed() -> Iterator[None]:
    mpwire.install()
    try:
        yield
    finally:
        mpwire.uninstall()


def test_install_points_multiprocessing_at_mpwire(installed: None) -> None:
    connection = multiprocessing.connection
    assert mpwire.installed()
    assert connection.Pipe is mpwire.Pipe
    assert connection.Listener is mpwire.Listener
    assert connection.Client is mpwire.Client
    assert connection.wait is mpwire.wait
    assert connection.deliver_challenge is mpwire.deliver_challenge
    assert connection.answer_challenge is mpwire.answer_challenge
    assert connection.XmlListener is mpwire.connection.XmlListener
    assert connection.XmlClient is mpwire.connection.XmlClient
    assert multiprocessing.pool.wait is mpwire.wait
    assert multiprocessing.managers.listener_client["pickle"] == (mpwire.Listener, mpwire.Client)
    assert multiprocessing.managers.listener_client["xmlrpclib"] == (
        mpwire.connection.XmlListener,
        mpwire.connection.XmlClient,
    )
    assert issubclass(concurrent.futures.process._SafeQueue, mp_queues.QueueOnMpwire)  # type: ignore[attr-defined]
    reader, writer = multiprocessing.Pipe(duplex=False)
    with reader, writer:
        assert type(reader) is mpwire.Connection
    for make, kind in [
        (multiprocessing.Queue, mp_queues.Queue),
        (multiprocessing.JoinableQueue, mp_queues.JoinableQueue),
        (multiprocessing.SimpleQueue, mp_queues.SimpleQueue),
    ]:
        queue = make()
        assert type(queue) is kind
        queue.close()
    # The stdlib's own queue classes stay: their code and subclasses name them.
    assert multiprocessing.queues.Queue.__module__ == "multiprocessing.queues"


def test_install_reaches_names_imported_before(installed: None) -> None:
    mpwire.uninstall()
    module = types.ModuleType("imported_before_install")
    exec("from multiprocessing.connection import wait, Pipe, Client as MyClient", vars(module))
    sys.modules[module.__name__] = module
    try:
        mpwire.install()
        assert module.wait is mpwire.wait
        assert module.Pipe is mpwire.Pipe
        assert module.MyClient is mpwire.Client
        mpwire.uninstall()
        assert module.wait is multiprocessing.connection.wait is not mpwire.wait
        assert module.MyClient is multiprocessing.connection.Client
    finally:
        del sys.modules[module.__name__]


def test_uninstall_restores_exactly_what_was_there() -> None:
    before = _snapshot()
    mpwire.install()
    mpwire.install()  # idempotent
    assert _snapshot() != before
    mpwire.uninstall()
    mpwire.uninstall()
    assert not mpwire.installed()
    assert _snapshot() == before


def test_uninstall_keeps_what_others_changed_since() -> None:
    original = multiprocessing.connection.wait
    mpwire.install()
    try:
        multiprocessing.connection.wait = len  # type: ignore[assignment]
        mpwire.uninstall()
        assert multiprocessing.connection.wait is len  # type: ignore[comparison-overlap]
        assert multiprocessing.connection.Pipe is not mpwire.Pipe
    finally:
        mpwire.uninstall()
        multiprocessing.connection.wait = original


def test_install_and_uninstall_from_many_threads() -> None:
    before = _snapshot()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def churn(n: int) -> None:
        try:
            barrier.wait(TIMEOUT)
            for i in range(50):
                (mpwire.install if (i + n) % 2 else mpwire.uninstall)()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors
    mpwire.install()
    assert multiprocessing.connection.Pipe is mpwire.Pipe
    mpwire.uninstall()
    assert _snapshot() == before


def report_child(results: Any) -> None:
    reader, writer = multiprocessing.Pipe()
    with reader, writer:
        results.put(
            (
                mpwire.installed(),
                type(reader).__module__,
                multiprocessing.connection.wait is mpwire.wait,
                type(multiprocessing.SimpleQueue()).__module__,
            )
        )


def test_children_run_on_mpwire(installed: None, start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    results = ctx.Queue()
    assert type(results) is mp_queues.Queue
    child = ctx.Process(target=report_child, args=(results,))
    child.start()
    report = results.get(timeout=TIMEOUT)
    child.join(TIMEOUT)
    assert child.exitcode == 0
    assert report == (True, "mpwire.sync.connection", True, "mpwire.mp.queues")


def test_children_of_a_context_are_not_installed() -> None:
    ctx = mpwire.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=report_child, args=(results,))
    child.start()
    report = results.get(timeout=TIMEOUT)
    child.join(TIMEOUT)
    assert report[0] is False
    assert report[1] == "multiprocessing.connection"


# -- mpwire run ---------------------------------------------------------------

PROGRAM = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys
    import multiprocessing.connection

    def kind(_):
        return type(multiprocessing.connection.Pipe()[0]).__module__

    if __name__ == "__main__":
        print("argv", sys.argv[1:])
        print("path0", sys.path[0])
        print("main", __file__)
        with multiprocessing.get_context(sys.argv[1]).Pool(2) as pool:
            print("children", sorted(set(pool.map(kind, range(4)))))
        if sys.argv[2] == "raise":
            raise RuntimeError("the program's own error")
        if sys.argv[2] == "signal":
            os.kill(os.getpid(), signal.SIGTERM)
        sys.exit(int(sys.argv[2]))
    """
)


def _mpwire_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpwire", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )


def test_run_script(tmp_path: Path, start_method: str) -> None:
    (tmp_path / "program.py").write_text(PROGRAM)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _mpwire_run(str(tmp_path / "program.py"), start_method, "3", cwd=elsewhere)
    assert done.returncode == 3, done.stderr
    assert f"argv ['{start_method}', '3']" in done.stdout
    assert f"path0 {tmp_path}" in done.stdout
    assert "children ['mpwire.sync.connection']" in done.stdout


def test_run_passes_errors_and_signals_through(tmp_path: Path) -> None:
    (tmp_path / "program.py").write_text(PROGRAM)
    done = _mpwire_run("program.py", "fork", "raise", cwd=tmp_path)
    assert done.returncode == 1
    assert "RuntimeError: the program's own error" in done.stderr
    done = _mpwire_run("program.py", "fork", "signal", cwd=tmp_path)
    assert done.returncode == -signal.SIGTERM


def test_run_module(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "program.py").write_text(PROGRAM)
    done = _mpwire_run("-m", "pkg.program", "spawn", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "argv ['spawn', '0']" in done.stdout
    assert f"main {package / 'program.py'}" in done.stdout
    assert "children ['mpwire.sync.connection']" in done.stdout


def test_run_usage_errors(tmp_path: Path) -> None:
    assert _mpwire_run(cwd=tmp_path).returncode == 2
    assert _mpwire_run("-m", cwd=tmp_path).returncode == 2
    done = _mpwire_run("missing.py", cwd=tmp_path)
    assert done.returncode == 2
    assert "can't open file" in done.stderr
    done = _mpwire_run("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "mpwire run SCRIPT" in done.stdout
    assert os.path.exists(tmp_path)
