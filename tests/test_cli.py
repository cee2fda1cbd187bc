"""The command line, driven as a user would: in a subprocess."""

from __future__ import annotations

import contextlib
import json
import multiprocessing.connection as stdlib
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mpwire


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpwire", *args], capture_output=True, text=True, timeout=60
    )


def test_demo_prints_what_each_side_prints() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "[client] [2.25, None, 'junk', <class 'float'>]" in lines
    assert "[client] b'hello'" in lines
    assert "[client] 8" in lines
    assert "[client] array('i', [42, 1729, 0, 0, 0])" in lines
    assert any(line.startswith("[listener] connection accepted from :") for line in lines)
    from_children = [line for line in lines if line.startswith("[parent] (")]
    assert len(from_children) == 40


def test_help_and_missing_command() -> None:
    assert "demo" in run("--help").stdout
    result = run()
    assert result.returncode == 2
    assert "usage: mpwire" in result.stdout


# -- ping, listen, send ------------------------------------------------------------

KEY = "cli key"
KEY_ENV = ("--authkey-env", "MPWIRE_TEST_KEY")


def run_with_key(*args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpwire", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MPWIRE_TEST_KEY": key},
    )


@pytest.fixture
def stdlib_listener() -> Iterator[str]:
    """A stdlib Listener with an authkey, accepting in a thread; its address for the CLI."""
    listener = stdlib.Listener(("127.0.0.1", 0), authkey=KEY.encode())
    address = listener.address
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(stdlib.AuthenticationError, EOFError, OSError):
                listener.accept().close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield "{}:{}".format(*address)
    finally:
        done.set()
        with contextlib.suppress(OSError), socket.create_connection(address, 1):
            pass  # wakes accept(); without a key the handshake fails at once
        server.join(10)
        listener.close()


def test_ping_a_stdlib_listener_with_the_right_key(stdlib_listener: str) -> None:
    result = run_with_key("ping", stdlib_listener, "--authkey-env", "MPWIRE_TEST_KEY")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"connected to {stdlib_listener} in ")
    digest = "md5 (the legacy form" if sys.version_info < (3, 12) else "sha256"
    assert lines[1].startswith("authenticated in ") and f"challenged with {digest}" in lines[1]
    assert lines[2] == "mpwire extensions: none offered (a stdlib listener)"


def test_ping_an_mpwire_listener_reports_its_offer(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with mpwire.Listener(path, authkey=KEY.encode()) as listener:

        def serve() -> None:
            with contextlib.suppress(OSError, mpwire.AuthenticationError, EOFError):
                listener.accept(timeout=30).close()

        server = threading.Thread(target=serve)
        server.start()
        result = run_with_key("ping", path, "--authkey-env", "MPWIRE_TEST_KEY")
        server.join(30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2] == (
        "mpwire extensions: offered early-challenge (a handshake in two round trips), "
        "shm (shared memory for large arrays)"
    )


def test_ping_a_stdlib_listener_with_a_wrong_key(stdlib_listener: str, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("not the key\n")
    result = run_with_key("ping", stdlib_listener, "--authkey-file", str(key_file))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "mpwire ping: authentication failed: digest sent was rejected"
    ]


def test_ping_without_a_key_says_the_listener_wants_one(stdlib_listener: str) -> None:
    result = run_with_key("ping", stdlib_listener)
    assert result.returncode == 0, result.stderr
    assert "the listener wants an authkey" in result.stdout


def test_ping_a_listener_without_a_key() -> None:
    with mpwire.Listener(("127.0.0.1", 0)) as listener:
        accepting = threading.Thread(target=lambda: listener.accept(timeout=30).close())
        accepting.start()
        result = run("ping", "{}:{}".format(*listener.address), "--timeout", "0.5")
        accepting.join(30)
    assert result.returncode == 0, result.stderr
    assert "the listener asked for no authkey" in result.stdout


def test_listen_and_send(tmp_path: Path) -> None:
    address = f"@mpwire-cli-{os.getpid()}"
    listen = subprocess.Popen(
        [sys.executable, "-m", "mpwire", "listen", address, "--count", "4", *KEY_ENV],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MPWIRE_TEST_KEY": KEY},
    )
    try:
        assert listen.stderr is not None
        assert listen.stderr.readline().startswith(f"listening on {address}")
        sent = run_with_key("send", address, "hello", "wörld", "--authkey-env", "MPWIRE_TEST_KEY")
        assert sent.returncode == 0, sent.stderr
        assert sent.stderr.strip() == "sent 2 messages"
        raw = subprocess.run(
            [sys.executable, "-m", "mpwire", "send", address, "--bytes", *KEY_ENV],
            input="line one\nline two\n",
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "MPWIRE_TEST_KEY": KEY},
        )
        assert raw.returncode == 0, raw.stderr
        out, _ = listen.communicate(timeout=60)
    finally:
        listen.kill()
    assert listen.returncode == 0
    messages = [line.split("] ", 1)[1] for line in out.splitlines()]
    assert messages == ["'hello'", "'wörld'", "b'line one'", "b'line two'"]


def test_listen_shows_a_hostile_pickle_without_running_it(tmp_path: Path) -> None:
    address = f"@mpwire-cli-evil-{os.getpid()}"
    marker = tmp_path / "pwned"
    listen = subprocess.Popen(
        [sys.executable, "-m", "mpwire", "listen", address, "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listen.stderr is not None
        listen.stderr.readline()
        with mpwire.Client("\0" + address[1:]) as conn:
            conn.send_bytes(pickle.dumps(_Evil(str(marker))))
        out, _ = listen.communicate(timeout=60)
    finally:
        listen.kill()
    assert "a pickle, not decoded: refused to unpickle posix.system" in out
    assert not marker.exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ping", "localhost:notaport"], "mpwire ping: bad address 'localhost:notaport'"),
        (["ping", "[::1]80"], "mpwire ping: bad address '[::1]80'"),
        (["send", "127.0.0.1:99999", "x"], "mpwire send: bad address"),
        (["ping", "127.0.0.1:1", "--authkey-env", "MPWIRE_NO_SUCH_VAR"], "is not set"),
        (["ping", "127.0.0.1:1", "--authkey-file", "/nonexistent/key"], "cannot read"),
        (["send", "/nonexistent/dir/sock", "x"], "No such file or directory"),
        (["ping", "127.0.0.1:1"], "Connection refused"),
    ],
)
def test_user_mistakes_are_one_line(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode in (1, 2)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- bench -------------------------------------------------------------------------


@pytest.mark.timeout(420)
def test_bench_quick_writes_json_for_every_scenario_and_a_png(tmp_path: Path) -> None:
    from mpwire.bench.scenarios import PINNED_ROUNDS, SCENARIOS

    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    outputs = ["--json", str(json_path), "--plot", str(png_path)]
    result = subprocess.run(
        [sys.executable, "-m", "mpwire", "bench", "--quick", "-q", *outputs],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(json_path.read_text())
    assert [entry["name"] for entry in results["scenarios"]] == [s.name for s in SCENARIOS]
    rounds = results["meta"]["rounds"]
    for entry in results["scenarios"]:
        assert "skipped" not in entry, entry["skipped"]  # the test extra installs them all
        assert not entry["errors"], entry["errors"]
        runs = rounds * (PINNED_ROUNDS if entry["pinned"] else 1)
        assert [len(samples) for samples in entry["raw"].values()] == [runs, runs], entry["name"]
        for metric in entry["metrics"]:
            assert all(value is not None for value in metric["median"].values()), entry["name"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ratio" in result.stdout


def test_bench_skips_a_scenario_whose_modules_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from mpwire import bench

    real_find_spec = importlib.util.find_spec

    def without_zmq(name: str, package: str | None = None) -> Any:
        return None if name == "zmq" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_zmq)
    lines: list[str] = []
    results = bench.run(["vs-pyzmq"], quick=True, progress=lines.append)
    entries = results["scenarios"]
    assert entries and all(e["skipped"] == "needs zmq: not installed" for e in entries)
    assert all("metrics" not in e and not e["errors"] for e in entries)
    assert len(lines) == len(entries) and all("skipped" in line for line in lines)
    table = bench.format_table(results)
    assert "Skipped:\n  pingpong-64B-bytes-vs-pyzmq/unix: needs zmq: not installed" in table


def test_bench_usage_errors_are_one_line() -> None:
    result = run("bench", "--only", "no-such-scenario")
    assert result.returncode == 2
    assert "no scenario matches" in result.stderr
    assert "Traceback" not in result.stderr
