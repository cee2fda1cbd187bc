"""Safe deserialization (serializer=) and strict authentication."""

from __future__ import annotations

import builtins
import importlib
import json
import multiprocessing
import multiprocessing.connection as stdlib
import os
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mpwire
from mpwire.protocol.handshake import Handshake, Role, create_response
from mpwire.serialize import RestrictedPickle

pytestmark = pytest.mark.timeout(60)

KEY = b"security key"


class Evil:
    """Pickles as a call of ``func(*args)``: what an attacker sends."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, Any]:
    touch = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Evil(os.system, touch),
        "subprocess.Popen": Evil(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": Evil(builtins.eval, code),
        "builtins.exec": Evil(builtins.exec, code),
        "importlib": Evil(importlib.import_module, "os"),
        "nested": [1, {"deep": (2, Evil(os.system, touch))}],
        "pickle-in-pickle": Evil(pickle.loads, pickle.dumps(Evil(os.system, touch))),
    }


PAYLOAD_NAMES = sorted(_payloads(Path("x")))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_restricted_pickle_refuses_the_classic_payloads(
    tmp_path: Path, name: str, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(_payloads(marker)[name], protocol)
    a, b = mpwire.Pipe(serializer="restricted-pickle")
    with a, b:
        a.send_bytes(data)  # as a hostile peer would frame it
        with pytest.raises(pickle.UnpicklingError, match="refused to unpickle") as caught:
            b.recv()
        assert "not an allowed type" in str(caught.value)
        a.send("still in step")
        assert b.recv() == "still in step"
    assert not marker.exists()


def test_a_hand_written_protocol_0_global_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = b"cposix\nsystem\n(S'touch %s'\ntR." % str(marker).encode()
    with pytest.raises(pickle.UnpicklingError, match=r"posix\.system"):
        RestrictedPickle().loads(data)
    assert not marker.exists()


def test_a_large_hostile_pickle_is_refused_and_skipped(tmp_path: Path, background: Any) -> None:
    marker = tmp_path / "pwned"
    hostile = [b"x" * 1_000_000, Evil(os.system, f"touch {marker}")]
    a, b = mpwire.Pipe(serializer="restricted-pickle")
    with a, b:
        # Large, so unpickled as it arrives.
        sending = background(a.send_bytes, pickle.dumps(hostile, 5))
        with pytest.raises(pickle.UnpicklingError, match=r"posix\.system"):
            b.recv()
        sending.result()
        a.send("next")
        assert b.recv() == "next"
    assert not marker.exists()


@dataclass
class Point:
    x: int
    y: int


ALLOWED: list[Any] = [
    None,
    True,
    12345678901234567890,
    1.5,
    complex(1, 2),
    "text",
    b"bytes",
    bytearray(b"mutable"),
    [1, [2, [3]]],
    (1, (2,)),
    {"a": {1: 2}},
    {1, 2},
    frozenset({3}),
    range(3, 9),
    slice(1, 2, 3),
]


@pytest.mark.parametrize("obj", ALLOWED, ids=lambda obj: type(obj).__name__)
def test_restricted_pickle_round_trips_allowed_types(obj: Any) -> None:
    a, b = mpwire.Pipe(serializer="restricted-pickle")
    with a, b:
        a.send(obj)
        assert b.recv() == obj


@pytest.mark.parametrize(
    "array",
    [np.arange(10.0), np.arange(2_000_000, dtype=np.int32), np.zeros((3, 4)).T, np.float32(2)],
    ids=["small", "large", "fortran", "scalar"],
)
def test_restricted_pickle_allows_numpy(array: Any, background: Any) -> None:
    a, b = mpwire.Pipe(serializer="restricted-pickle")
    with a, b:
        sending = background(a.send, array)
        np.testing.assert_array_equal(b.recv(), array)
        sending.result()


def test_restricted_pickle_extended_with_own_classes() -> None:
    for allow in ([Point], [f"{__name__}.Point"]):
        a, b = mpwire.Pipe(serializer=RestrictedPickle(allow=allow))
        with a, b:
            a.send([Point(1, 2)])
            assert b.recv() == [Point(1, 2)]
    a, b = mpwire.Pipe(serializer="restricted-pickle")
    with a, b:
        a.send(Point(1, 2))
        with pytest.raises(pickle.UnpicklingError, match=r"\.Point"):
            b.recv()
    a, b = mpwire.Pipe(serializer=RestrictedPickle(numpy=False))
    with a, b:
        a.send(np.arange(3))
        with pytest.raises(pickle.UnpicklingError, match="numpy"):
            b.recv()


def test_restricted_pickle_on_listener_and_client(address: Any, background: Any) -> None:
    with mpwire.Listener(address, authkey=KEY, serializer="restricted-pickle") as listener:
        connecting = background(mpwire.Client, listener.address, authkey=KEY)  # plain pickle
        with listener.accept() as server, connecting.result() as client:
            client.send({"fine": [1, 2]})
            assert server.recv() == {"fine": [1, 2]}
            client.send(Evil(os.getcwd))
            with pytest.raises(pickle.UnpicklingError):
                server.recv()


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_plain_data_serializers_round_trip(serializer: str) -> None:
    if serializer == "msgpack":
        pytest.importorskip("msgpack", reason="the msgpack extra is not installed")
    message = {"list": [1, 2.5, "three", None, True], "nested": {"k": []}}
    a, b = mpwire.Pipe(serializer=serializer)
    with a, b:
        a.send(message)
        assert b.recv() == message
        if serializer == "msgpack":
            a.send({"raw": b"\x00\xff"})
            assert b.recv() == {"raw": b"\x00\xff"}


def test_json_with_a_stdlib_peer() -> None:
    ours, theirs = mpwire.Pipe(serializer="json")
    with ours:
        peer = stdlib.Connection(os.dup(theirs.fileno()))
        theirs.close()
        with peer:
            peer.send_bytes(json.dumps({"from": "stdlib"}).encode())
            assert ours.recv() == {"from": "stdlib"}
            ours.send(["from", "mpwire"])
            assert json.loads(peer.recv_bytes()) == ["from", "mpwire"]


def test_msgpack_with_a_stdlib_peer() -> None:
    msgpack = pytest.importorskip("msgpack", reason="the msgpack extra is not installed")
    ours, theirs = mpwire.Pipe(serializer="msgpack")
    with ours:
        peer = stdlib.Connection(os.dup(theirs.fileno()))
        theirs.close()
        with peer:
            peer.send_bytes(msgpack.packb({"n": 1}))
            assert ours.recv() == {"n": 1}
            ours.send([1, "two"])
            assert msgpack.unpackb(peer.recv_bytes()) == [1, "two"]


def test_a_custom_serializer_object() -> None:
    class Upper:
        def dumps(self, obj: Any) -> bytes:
            return str(obj).upper().encode()

        def loads(self, data: bytes) -> Any:
            return data.decode()

    a, b = mpwire.Pipe(serializer=Upper())
    with a, b:
        a.send("shout")
        assert b.recv() == "SHOUT"


def test_unknown_serializer_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown serializer"):
        mpwire.Pipe(serializer="yaml")


def _child_recv(conn: mpwire.Connection) -> None:
    try:
        conn.recv()
    except pickle.UnpicklingError:
        conn.send("refused in the child")


def test_the_serializer_travels_with_the_connection() -> None:
    a, b = mpwire.Pipe(serializer="restricted-pickle")
    with a, b:
        child = multiprocessing.get_context("spawn").Process(target=_child_recv, args=(b,))
        child.start()
        a.send(Evil(os.getcwd))
        assert a.recv() == "refused in the child"
        child.join(30)


# -- strict authentication ---------------------------------------------------------


def _legacy_answerer(conn: Any) -> None:
    """Answers the challenge as CPython before 3.12 does: an unprefixed HMAC-MD5."""
    message = conn.recv_bytes(256)[len(b"#CHALLENGE#") :]
    import hmac

    conn.send_bytes(hmac.digest(KEY, message, "md5"))
    conn.recv_bytes(256)


@pytest.mark.parametrize("allow", [True, False])
def test_allow_legacy_auth_refuses_an_md5_answer(allow: bool, background: Any) -> None:
    a, b = mpwire.Pipe()
    with a, b:
        answerer = background(_legacy_answerer, b)
        if allow:
            mpwire.sync.auth.run_handshake(a, KEY, Role.CHALLENGER)
        else:
            with pytest.raises(multiprocessing.AuthenticationError, match="legacy"):
                mpwire.sync.auth.run_handshake(a, KEY, Role.CHALLENGER, allow_legacy=False)
        answerer.result()


def test_allow_legacy_auth_refuses_to_answer_a_legacy_challenge() -> None:
    handshake = Handshake(KEY, Role.ANSWERER, allow_legacy=False)
    handshake.receive(b"#CHALLENGE#" + os.urandom(20))
    assert handshake.messages_to_send() == []
    with pytest.raises(multiprocessing.AuthenticationError, match="legacy challenge refused"):
        handshake.raise_for_failure()


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512", "blake2b", "sha3_256"])
def test_strict_pair_with_each_digest(address: Any, digest: str, background: Any) -> None:
    options = {"authkey": KEY, "digest": digest, "allow_legacy_auth": False}
    with mpwire.Listener(address, **options) as listener:
        client = background(mpwire.Client, listener.address, **options)
        with listener.accept() as server, client.result() as conn:
            conn.send("strict")
            assert server.recv() == "strict"


def test_the_answer_uses_the_challenges_digest() -> None:
    message = b"{sha512}" + bytes(40)
    assert create_response(KEY, message).startswith(b"{sha512}")


@pytest.mark.skipif(sys.version_info < (3, 12), reason="legacy stdlib peers are in tests/interop")
def test_strict_listener_accepts_a_modern_stdlib_client(address: Any, background: Any) -> None:
    if isinstance(address, tuple) and ":" in address[0]:
        pytest.skip("the stdlib's Client cannot connect over IPv6")
    with mpwire.Listener(address, authkey=KEY, allow_legacy_auth=False) as listener:
        client = background(stdlib.Client, listener.address, authkey=KEY)
        with listener.accept(timeout=10) as server, client.result() as conn:
            conn.send("modern")
            assert server.recv() == "modern"


def test_exposed_listener_without_authkey_warns() -> None:
    with pytest.warns(mpwire.InsecureListenerWarning, match="no authkey"):
        mpwire.Listener(("0.0.0.0", 0)).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mpwire.Listener(("0.0.0.0", 0), authkey=KEY).close()
        mpwire.Listener(("127.0.0.1", 0)).close()
        mpwire.Listener().close()
