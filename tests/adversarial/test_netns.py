"""Across hosts: a Listener and a Client in two network namespaces joined by a veth pair.

Each namespace has its own address (10.199.<n>.1 and .2), so the traffic
crosses a real network interface instead of the loopback device. Each side is
a separate Python process started with ``ip netns exec``; it reports what it
does as JSON lines on stdout, and the test reads those lines (with a bound) to
know when it is listening, connected or has received data: no sleeps.

* A 100 MiB transfer arrives intact (as one message, and as 1 MiB messages
  received into one buffer), checked by SHA-256 on both sides.
* Taking the link away in the middle of a stream of 1 MiB messages (one end
  set down, or the veth pair deleted) makes both sides fail with TimeoutError
  (or another OSError) within their timeouts instead of hanging.

Root only (creating namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN); skipped
with the reason elsewhere. The namespaces and the veth pair are created for
each test and removed after it; the veth ends are created directly inside the
namespaces, so nothing is ever attached to (or sent on) the host's network.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

import mpwire

pytestmark = [pytest.mark.timeout(120)]

AUTHKEY = b"netns-test-key"
PAYLOAD_SIZE = 100 * 1024 * 1024
CHUNK = 1024 * 1024
SEED = 0x6D707769
IO_TIMEOUT = 3.0
"""The timeout of every send and receive in the link-failure tests."""
FAIL_SLACK = 4.0
"""Each side must have failed within IO_TIMEOUT + FAIL_SLACK seconds of the link going away."""
EXIT_BOUND = 10.0
"""... and its process must have exited within this many seconds of it."""
STARTUP = 30.0
"""Bound on a child's start-up (interpreter, import, listen, connect, handshake)."""
TRANSFER_BOUND = 60.0
"""Bound on a 100 MiB transfer (well under a second over a veth pair)."""
PROGRESS_BYTES = 8 * CHUNK
"""The stream's receiver reports progress once it has this much; then the link goes."""

_counter = itertools.count()


# -- can this run here? ------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip *args`` (bounded); with ``check``, a failure raises CalledProcessError."""
    return subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
        stdin=subprocess.DEVNULL,
    )


def _why_not() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux-only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root to create network namespaces and veth pairs"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


_REASON = _why_not()
if _REASON is not None:
    pytestmark.append(pytest.mark.skip(reason=_REASON))


# -- the namespaces ----------------------------------------------------------------


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces joined by a veth pair: the listener's end (.1) and the client's (.2)."""

    listener_ns: str
    client_ns: str
    listener_if: str
    client_if: str
    listener_ip: str
    client_ip: str


def _leftovers(pair: NetnsPair) -> list[str]:
    """Namespaces of ``pair`` still listed, and veth ends of it visible in this namespace."""
    listed = _ip("netns", "list", check=False).stdout.split()
    left = [ns for ns in (pair.listener_ns, pair.client_ns) if ns in listed]
    for name in (pair.listener_if, pair.client_if):
        if _ip("link", "show", "dev", name, check=False).returncode == 0:
            left.append(f"link {name}")
    return left


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    """Fresh namespaces and veth pair for one test; removed (and checked gone) afterwards."""
    pid, n = os.getpid(), next(_counter)
    subnet = f"10.199.{(pid + n) % 200 + 20}"
    pair = NetnsPair(
        listener_ns=f"mpw-{pid}-{n}-l",
        client_ns=f"mpw-{pid}-{n}-c",
        listener_if=f"mpw{pid}x{n}l"[-15:],
        client_if=f"mpw{pid}x{n}c"[-15:],
        listener_ip=f"{subnet}.1",
        client_ip=f"{subnet}.2",
    )
    created: list[str] = []
    try:
        for ns in (pair.listener_ns, pair.client_ns):
            result = _ip("netns", "add", ns, check=False)
            if result.returncode != 0:
                pytest.skip(f"cannot create a network namespace here: {result.stderr.strip()}")
            created.append(ns)
        # Both ends are born inside their namespaces: the host never sees them.
        result = _ip(
            "link", "add", pair.listener_if, "netns", pair.listener_ns, "type", "veth",
            "peer", "name", pair.client_if, "netns", pair.client_ns,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"cannot create a veth pair here: {result.stderr.strip()}")
        for ns, dev, ip in (
            (pair.listener_ns, pair.listener_if, pair.listener_ip),
            (pair.client_ns, pair.client_if, pair.client_ip),
        ):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        yield pair
    finally:
        errors = [
            f"ip netns del {ns}: {r.stderr.strip()}"
            for ns in created
            if (r := _ip("netns", "del", ns, check=False)).returncode != 0
        ]
        left = _leftovers(pair) if created else []
        assert not errors and not left, f"teardown left {left} ({errors})"


# -- the child processes -----------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import faulthandler, hashlib, json, os, random, sys, time

    faulthandler.enable()  # SIGABRT from the test shows where a hung child is
    config = json.loads(sys.argv[1])
    if config["path"] not in sys.path:
        sys.path.insert(0, config["path"])
    import mpwire

    if os.path.realpath(mpwire.__file__) != config["mpwire"]:
        sys.exit(f"imported {mpwire.__file__}, expected {config['mpwire']}")

    def emit(event, **fields):
        print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)

    def payload():
        return random.Random(config["seed"]).randbytes(config["size"])

    def open_connection():
        key = bytes.fromhex(config["authkey"])
        if config["role"] == "listener":
            with mpwire.Listener((config["host"], 0), authkey=key) as listener:
                emit("listening", port=listener.address[1])
                conn = listener.accept(timeout=config["startup"])
                emit("accepted", peer=list(listener.last_accepted))
            return conn
        conn = mpwire.Client(
            (config["host"], config["port"]), authkey=key, timeout=config["startup"]
        )
        emit("connected")
        return conn

    def transfer(conn):
        # The client sends the payload, the listener hashes it and answers with the hash.
        size, chunk, bound = config["size"], config["chunk"], config["bound"]
        start = time.monotonic()
        if config["role"] == "client":
            data = payload()
            digest = hashlib.sha256(data).hexdigest()
            if config["mode"] == "one-message":
                conn.send_bytes(data, timeout=bound)
            else:
                with memoryview(data) as view:
                    for offset in range(0, size, chunk):
                        conn.send_bytes(view, offset, chunk, timeout=bound)
            reply = conn.recv(timeout=bound)
            emit("sent", sha256=digest, reply=reply, seconds=time.monotonic() - start)
            return 0 if reply == {"sha256": digest, "size": size} else 1
        if config["mode"] == "one-message":
            data = conn.recv_bytes(timeout=bound)
        else:
            data = bytearray(size)
            for offset in range(0, size, chunk):
                n = conn.recv_bytes_into(data, offset, timeout=bound)
                if n != chunk:
                    sys.exit(f"message of {n} bytes at offset {offset}, expected {chunk}")
        digest = hashlib.sha256(data).hexdigest()
        conn.send({"sha256": digest, "size": len(data)}, timeout=bound)
        emit("received", sha256=digest, size=len(data), seconds=time.monotonic() - start)
        return 0

    def stream(conn):
        # The sender sends 1 MiB messages until something fails; the receiver takes them.
        timeout, total, reported = config["io_timeout"], 0, False
        chunk = os.urandom(config["chunk"])
        last_ok = time.monotonic()
        give_up = last_ok + config["give_up"]
        try:
            while time.monotonic() < give_up:
                if config["role"] == config["sender"]:
                    conn.send_bytes(chunk, timeout=timeout)
                    total += len(chunk)
                else:
                    total += len(conn.recv_bytes(timeout=timeout))
                    if not reported and total >= config["progress"]:
                        emit("progress", bytes=total)
                        reported = True
                last_ok = time.monotonic()
        except BaseException as exc:
            emit(
                "failed",
                exc=type(exc).__name__,
                msg=str(exc),
                oserror=isinstance(exc, OSError),
                bytes=total,
                last_ok=last_ok,
            )
            conn.close()
            return 0
        emit("no-failure", bytes=total)
        return 2

    conn = open_connection()
    try:
        code = transfer(conn) if config["scenario"] == "transfer" else stream(conn)
    finally:
        conn.close()
    sys.exit(code)
    """
)


class Child:
    """A helper process inside a namespace, its stdout read line by line in a thread."""

    def __init__(self, name: str, ns: str, script: Path, config: dict[str, Any]) -> None:
        self.name = name
        self._stderr_path = script.parent / f"{name}.stderr"
        self._stderr: IO[bytes] = self._stderr_path.open("wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(script), json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"read-{name}")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line}
            self._queue.put(event)
        self._queue.put(None)

    def describe(self) -> str:
        """What the child said so far, and its stderr, for assertion messages."""
        stderr = self._stderr_path.read_text(errors="replace").strip()
        return f"{self.name}: events {self.events}, exit {self.proc.poll()}, stderr: {stderr!r}"

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next ``event`` the child reports; fails if it exits or takes over ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(0.0, left))
            except queue.Empty:
                self.abort()
                raise AssertionError(f"no {event!r} in {timeout} s; {self.describe()}") from None
            if item is None:
                self.proc.wait(timeout=10)
                raise AssertionError(f"exited before {event!r}; {self.describe()}")
            self.events.append(item)
            if item["event"] == event:
                return item

    def finish(self, deadline: float) -> int:
        """The exit code, once the child has exited by ``deadline`` (monotonic); else fail."""
        try:
            code = self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.abort()
            raise AssertionError(f"still running at its deadline; {self.describe()}") from None
        self._reader.join(10)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return code
            if item is not None:
                self.events.append(item)

    def abort(self) -> None:
        """Make a hung child dump its stack (faulthandler), then kill it if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


Spawn = Callable[[str, str, dict[str, Any]], Child]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(name, ns, config)`` starts a Child; all are killed (if need be) at the end."""
    script = tmp_path / "netns_child.py"
    script.write_text(CHILD)
    module = Path(mpwire.__file__).resolve()
    base = {
        "path": str(module.parent.parent),  # where the mpwire under test lives
        "mpwire": str(module),
        "authkey": AUTHKEY.hex(),
        "seed": SEED,
        "size": PAYLOAD_SIZE,
        "chunk": CHUNK,
        "startup": STARTUP,
    }
    children: list[Child] = []

    def start(name: str, ns: str, config: dict[str, Any]) -> Child:
        child = Child(name, ns, script, {**base, **config})
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            with contextlib.suppress(Exception):
                child.close()


def _start_pair(spawn: Spawn, netns: NetnsPair, config: dict[str, Any]) -> tuple[Child, Child]:
    """A listener in one namespace and a client in the other, connected (authkey checked)."""
    listener = spawn(
        "listener", netns.listener_ns, {**config, "role": "listener", "host": netns.listener_ip}
    )
    port = listener.expect("listening", STARTUP)["port"]
    client = spawn(
        "client",
        netns.client_ns,
        {**config, "role": "client", "host": netns.listener_ip, "port": port},
    )
    accepted = listener.expect("accepted", STARTUP)
    client.expect("connected", STARTUP)
    assert accepted["peer"][0] == netns.client_ip, (
        f"the connection did not come over the veth pair: {accepted}"
    )
    return listener, client


# -- the tests ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["one-message", "chunked"])
def test_100mb_transfer_arrives_intact(netns: NetnsPair, spawn: Spawn, mode: str) -> None:
    """100 MiB, client to listener across the veth pair: the same SHA-256 on both sides."""
    expected = hashlib.sha256(random.Random(SEED).randbytes(PAYLOAD_SIZE)).hexdigest()
    config = {"scenario": "transfer", "mode": mode, "bound": TRANSFER_BOUND}
    listener, client = _start_pair(spawn, netns, config)

    received = listener.expect("received", TRANSFER_BOUND + STARTUP)
    sent = client.expect("sent", TRANSFER_BOUND)
    deadline = time.monotonic() + 30
    codes = listener.finish(deadline), client.finish(deadline)
    print(
        f"\n{mode}: {received['size']} bytes {netns.client_ip} -> {netns.listener_ip} "
        f"received in {received['seconds']:.2f} s (client: {sent['seconds']:.2f} s incl. reply)"
    )
    assert received["size"] == PAYLOAD_SIZE, listener.describe()
    assert received["sha256"] == expected, f"corrupted: {listener.describe()}"
    assert sent["sha256"] == expected, client.describe()
    assert sent["reply"] == {"sha256": expected, "size": PAYLOAD_SIZE}, client.describe()
    assert codes == (0, 0), f"{listener.describe()}\n{client.describe()}"


@pytest.mark.parametrize("sender", ["client", "listener"], ids=lambda s: f"{s}-sends")
@pytest.mark.parametrize("cut", ["listener-end-down", "client-end-down", "veth-deleted"])
def test_link_lost_mid_transfer_fails_both_sides_in_time(
    netns: NetnsPair, spawn: Spawn, sender: str, cut: str
) -> None:
    """The link goes away while 1 MiB messages stream: both sides time out, neither hangs."""
    config = {
        "scenario": "stream",
        "sender": sender,
        "io_timeout": IO_TIMEOUT,
        "progress": PROGRESS_BYTES,
        "give_up": 60.0,
    }
    listener, client = _start_pair(spawn, netns, config)
    receiver = client if sender == "listener" else listener
    progress = receiver.expect("progress", STARTUP)

    cut_at = time.monotonic()
    if cut == "veth-deleted":
        _ip("-n", netns.listener_ns, "link", "del", netns.listener_if)
    else:
        ns, dev = (
            (netns.listener_ns, netns.listener_if)
            if cut == "listener-end-down"
            else (netns.client_ns, netns.client_if)
        )
        _ip("-n", ns, "link", "set", dev, "down")

    print(f"\n{cut}, {sender} sends: link cut after {progress['bytes']} bytes received")
    for child in (listener, client):
        failed = child.expect("failed", IO_TIMEOUT + FAIL_SLACK + 5)
        code = child.finish(cut_at + EXIT_BOUND)
        exited = time.monotonic() - cut_at
        after = failed["t"] - cut_at
        print(
            f"  {child.name}: {failed['exc']}({failed['msg']!r}) {after:.2f} s after the cut "
            f"(last success {failed['last_ok'] - cut_at:+.2f} s, {failed['bytes']} bytes), "
            f"exit {code} by {exited:.2f} s"
        )
        assert failed["oserror"], f"not a TimeoutError/OSError; {child.describe()}"
        assert 0 < after <= IO_TIMEOUT + FAIL_SLACK, f"failed at {after:+.2f} s; {child.describe()}"
        assert code == 0, child.describe()
