"""Fuzzing the sans-I/O core with what a hostile or broken peer may send.

FrameDecoder gets arbitrary streams (valid frames, forged headers, garbage) cut
anywhere and delivered through all three of its inputs (``feed``,
``get_buffer``/``buffer_updated``, ``fill``), with and without ``max_size``,
``maxlength``, ``into`` and ``stream``. The handshakes get arbitrary and
plausible messages, including their own messages reflected back.
"""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mpwire.exceptions import AuthenticationError, FrameError, MessageTooLong
from mpwire.protocol.frames import (
    GROWTH_STEP,
    READ_AHEAD,
    FrameDecoder,
    LargeFrame,
    encode_header,
)
from mpwire.protocol.handshake import (
    ALLOWED_DIGESTS,
    CHALLENGE,
    FAILURE,
    WELCOME,
    FramedHandshake,
    Handshake,
    Role,
    create_response,
)

# Hypothesis re-runs a failing example while shrinking it, so a hang would outlast a
# signal-based timeout; the thread method ends the run instead.
pytestmark = pytest.mark.timeout(120, method="thread")

FUZZ = settings(
    deadline=None,
    max_examples=700,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KEY = b"the right key"
DIGESTS = sorted(name.decode() for name in ALLOWED_DIGESTS)

# -- streams ---------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return encode_header(len(payload)) + payload


small_frames = st.binary(max_size=300).map(frame)
# Larger than the read-ahead buffer: the large-frame path (cheap to generate: one byte repeated).
large_frames = st.builds(
    lambda size, byte: frame(bytes([byte]) * size),
    st.integers(READ_AHEAD - 64, READ_AHEAD + 40_000),
    st.integers(0, 255),
)
short_headers = st.integers(-(2**31), 2**31 - 1).map(lambda n: struct.pack("!i", n))
long_headers = st.one_of(
    st.integers(0, 2**64 - 1), st.integers(0, 100_000), st.sampled_from([2**31 - 1, 2**31, 2**63])
).map(lambda n: struct.pack("!iQ", -1, n))
garbage = st.binary(min_size=1, max_size=64)

segments = st.one_of(small_frames, large_frames, short_headers, long_headers, garbage)
streams = st.lists(segments, max_size=8).map(b"".join)
cuts = st.lists(st.integers(min_value=0), max_size=24)
modes = st.lists(st.sampled_from(["feed", "lease", "fill"]), min_size=1, max_size=8)
limits = st.one_of(st.none(), st.integers(0, 80_000), st.sampled_from([2**31 - 1, 2**62]))


def split(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass
class Options:
    """How the decoder is made and asked for frames."""

    read_ahead: int = READ_AHEAD
    max_size: int | None = None
    maxlength: int | None = None
    into: int | None = None  # the size of the caller's buffer
    stream: bool = False


options = st.builds(
    Options,
    read_ahead=st.sampled_from([1, 5, 64, 4096, READ_AHEAD]),
    max_size=limits,
    maxlength=limits,
    into=st.one_of(st.none(), st.integers(0, 100_000)),
    stream=st.booleans(),
)


@dataclass
class Run:
    """What a decoder made of a stream: events, and how it ended."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    ended: str = "open"  # "open", an exception's class name, or "large" (stream handed over)


def drain(
    decoder: FrameDecoder, opts: Options, target: bytearray | None, run: Run, fed: int
) -> None:
    """Take every complete frame, as the sync front end does; check what comes out."""
    into = None if target is None else memoryview(target)
    budget = 2 + fed // 4  # every frame takes a 4-byte header at least
    while run.ended == "open":
        budget -= 1
        assert budget >= 0, "next_frame() keeps returning frames it cannot have received"
        try:
            result = decoder.next_frame(opts.maxlength, into, opts.stream)
        except MessageTooLong as exc:
            limits_ = [x for x in (opts.maxlength, opts.max_size) if x is not None]
            assert exc.limit in limits_ and exc.size > exc.limit, (exc.size, exc.limit, limits_)
            run.ended = "MessageTooLong"
            return
        except FrameError as exc:
            assert "negative length" in str(exc)
            run.ended = "FrameError"
            return
        finally:
            if into is not None:
                decoder.release_target()
        if result is None:
            return
        if isinstance(result, LargeFrame):
            assert opts.stream, "a LargeFrame without stream=True"
            assert len(result.prefix) < result.size
            run.events.append(("large", result.size))
            run.ended = "large"
            return
        if isinstance(result, int):
            assert target is not None and 0 <= result <= len(target)
            run.events.append(("frame", bytes(target[:result])))
        else:
            assert isinstance(result, bytes)
            assert target is None or len(result) > len(target), "returned a frame that fits"
            run.events.append(("frame", result))


def check_memory(decoder: FrameDecoder, fed: int, initial: int) -> None:
    """The decoder holds at most about twice what it was given (and GROWTH_STEP ahead)."""
    assert len(decoder._buf) <= max(initial, 2 * fed), (len(decoder._buf), fed)
    if decoder._sink is not None:
        with decoder._sink.getbuffer() as held:
            assert held.nbytes <= 2 * fed + GROWTH_STEP, (held.nbytes, fed)


def decode(data: bytes, opts: Options, points: list[int], how: list[str]) -> Run:
    """Deliver ``data`` cut at ``points``, each piece by one of the ``how`` methods."""
    decoder = FrameDecoder(opts.max_size, read_ahead=opts.read_ahead)
    initial = len(decoder._buf)
    target = None if opts.into is None else bytearray(opts.into)
    run = Run()
    fed = 0
    for i, piece in enumerate(split(data, points)):
        rest = memoryview(piece)
        mode = how[i % len(how)]
        while rest and run.ended == "open":
            if mode == "feed":
                decoder.feed(rest)
                n = len(rest)
            elif mode == "lease":
                lease = decoder.get_buffer()
                assert len(lease) > 0
                n = min(len(lease), len(rest))
                lease[:n] = rest[:n]
                decoder.buffer_updated(n)
            else:

                def readinto(buf: memoryview, rest: memoryview = rest) -> int:
                    count = min(len(buf), len(rest))
                    buf[:count] = rest[:count]
                    return count

                n = decoder.fill(readinto)
                assert n > 0
            rest = rest[n:]
            fed += n
            check_memory(decoder, fed, initial)
            drain(decoder, opts, target, run, fed)
        if run.ended != "open":
            break
    if run.ended == "open":
        assert isinstance(decoder.eof_error(), OSError | EOFError)
    return run


def same_outcome(cut: Run, whole: Run) -> None:
    """A stream cut anywhere decodes as it does in one piece.

    With ``stream``, a large frame is handed over (LargeFrame) when it is not all
    there yet: the cut stream may do that where the whole one returns the frame.
    """
    if cut.ended == "large":
        last = len(cut.events) - 1
        assert cut.events[:last] == whole.events[:last]
        assert len(whole.events) > last, "the stream in one piece lacks that frame"
        size = cut.events[last][1]
        there = whole.events[last]
        assert there == ("large", size) or (there[0] == "frame" and len(there[1]) == size)
        return
    assert cut.events == whole.events
    assert cut.ended == whole.ended


@FUZZ
@given(streams, options, cuts, modes)
def test_any_stream_cut_anywhere_decodes_as_in_one_piece(
    data: bytes, opts: Options, points: list[int], how: list[str]
) -> None:
    """Only frames, FrameError or MessageTooLong, the same however the bytes arrive,
    with bounded buffers and no endless loop."""
    whole = decode(data, opts, [], ["feed"])
    cut = decode(data, opts, points, how)
    event(f"ended: {cut.ended}")
    event(f"frames: {min(len(cut.events), 3)}")
    same_outcome(cut, whole)


@FUZZ
@given(
    st.lists(st.binary(max_size=400), min_size=1, max_size=6),
    st.binary(max_size=200),
    cuts,
    modes,
    st.sampled_from([16, 4096, READ_AHEAD]),
    st.one_of(st.none(), st.integers(400, 10_000)),
)
def test_valid_frames_come_out_before_any_garbage_after_them(
    messages: list[bytes],
    junk: bytes,
    points: list[int],
    how: list[str],
    read_ahead: int,
    into: int | None,
) -> None:
    data = b"".join(frame(m) for m in messages) + junk
    run = decode(data, Options(read_ahead=read_ahead, into=into), points, how)
    assert [e[1] for e in run.events[: len(messages)]] == messages
    assert run.ended in ("open", "FrameError")


@settings(FUZZ, max_examples=150)
@given(streams, options)
def test_memory_stays_bounded_by_what_was_received(data: bytes, opts: Options) -> None:
    """Forged lengths reserve at most GROWTH_STEP ahead of the bytes that came."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        run = decode(data, opts, [], ["feed"])
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # Besides: the read-ahead buffer, doubled while frames up to READ_AHEAD fill it
    # (the old and the new buffer both live while it grows), and this test's own
    # record of each frame (a tuple in a list: a stream of empty frames makes many).
    records = 128 * len(run.events)
    assert peak <= 2 * GROWTH_STEP + 8 * len(data) + 4 * READ_AHEAD + records, (peak, len(data))


def test_a_zero_read_ahead_does_not_spin_forever() -> None:
    """FrameDecoder(read_ahead=0) has an empty buffer that doubling never grows: feeding it
    any byte would loop forever. It must be refused (or work)."""
    code = (
        "from mpwire.protocol.frames import FrameDecoder\n"
        "try:\n"
        "    d = FrameDecoder(read_ahead=0)\n"
        "except ValueError:\n"
        "    raise SystemExit(0)\n"
        "d.feed(b'\\0\\0\\0\\1x')\n"
        "assert d.next_frame() == b'x'\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], timeout=5, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("FrameDecoder(read_ahead=0).feed(...) never returns")
    assert done.returncode == 0, done.stderr.decode()


# -- handshakes ------------------------------------------------------------------

ECHO = b"<echo>"
"""Stands for "the last bytes the handshake sent", reflected back at it."""


def plausible_messages() -> st.SearchStrategy[bytes]:
    """What a peer without the key might send: right shapes, wrong contents."""
    prefixes = st.sampled_from([b"", *(b"{%s}" % d.encode() for d in DIGESTS), b"{nope}"])
    return st.one_of(
        st.binary(max_size=300),
        st.builds(lambda p, r: CHALLENGE + p + r, prefixes, st.binary(min_size=0, max_size=60)),
        st.sampled_from([WELCOME, FAILURE, CHALLENGE, b""]),
        st.builds(lambda p, r: p + r, prefixes, st.binary(min_size=16, max_size=64)),
        st.just(ECHO),
    )


def challenging(role: Role) -> bool:
    return role is not Role.ANSWERER


@FUZZ
@given(
    st.sampled_from(list(Role)),
    st.sampled_from(DIGESTS),
    st.lists(plausible_messages(), max_size=8),
)
def test_a_handshake_never_trusts_a_peer_without_the_key(
    role: Role, digest: str, messages: list[bytes]
) -> None:
    """Only AuthenticationError (as .error, or from receive() once it has ended); never done
    without a correct HMAC from the peer; a bounded number of messages out."""
    handshake = Handshake(KEY, role, digest=digest)
    sent: list[bytes] = handshake.messages_to_send()
    for message in messages:
        if message == ECHO:
            message = sent[-1] if sent else b""
        finished = handshake.done or handshake.error is not None
        try:
            handshake.receive(message)
        except AuthenticationError:
            assert finished, "receive() raised before the handshake ended"
        else:
            assert not finished, "receive() took a message after the handshake ended"
        sent += handshake.messages_to_send()
        if challenging(role):
            assert not handshake.done
        if handshake.error is not None:
            assert isinstance(handshake.error, AuthenticationError)
            assert not sent or sent[-1] != WELCOME
    assert len(sent) <= 3 and all(len(m) <= 256 for m in sent)
    assert sent.count(WELCOME) <= 1 and sent.count(FAILURE) <= 1


chunkings = st.lists(st.integers(1, 80), min_size=1, max_size=12)


@dataclass
class Wire:
    """Bytes in flight to one side, delivered in chunks of the sizes given, in turn."""

    sizes: list[int]
    pending: bytearray = field(default_factory=bytearray)
    turn: int = 0

    def deliver(self, side: FramedHandshake, use_fill: bool) -> bool:
        if not self.pending:
            return False
        size = self.sizes[self.turn % len(self.sizes)]
        self.turn += 1
        if use_fill:

            def readinto(buf: memoryview) -> int:
                count = min(len(buf), size, len(self.pending))
                buf[:count] = self.pending[:count]
                del self.pending[:count]
                return count

            assert side.fill(readinto) > 0
        else:
            chunk = bytes(self.pending[:size])
            del self.pending[:size]
            side.receive_data(chunk)
        return True


@FUZZ
@given(
    st.sampled_from([Role.LISTENER, Role.CLIENT, Role.CHALLENGER, Role.ANSWERER]),
    st.lists(plausible_messages(), max_size=6),
    st.binary(max_size=500),
    chunkings,
    st.booleans(),
)
def test_a_framed_handshake_fed_hostile_bytes(
    role: Role, messages: list[bytes], tail: bytes, sizes: list[int], use_fill: bool
) -> None:
    """Framed plausible messages, then raw bytes: errors only as AuthenticationError, never
    done without the key (when it challenges), a bounded reply, and no exception."""
    handshake = FramedHandshake(KEY, role)
    out = bytearray(handshake.data_to_send())
    wire = Wire(sizes)
    for message in messages:
        if message == ECHO:
            wire.pending += out  # everything it sent so far, reflected
        else:
            wire.pending += frame(message)
        while wire.deliver(handshake, use_fill):
            out += handshake.data_to_send()
    wire.pending += tail
    while wire.deliver(handshake, use_fill):
        out += handshake.data_to_send()
    error = handshake.error
    assert error is None or isinstance(error, AuthenticationError)
    if challenging(role):
        assert not handshake.done
    assert len(out) <= 200, f"{len(out)} bytes sent to a peer without the key"
    # Whatever else arrives: no exception, the same error, still not done, no flood.
    handshake.receive_data(bytes(range(256)) * 4)
    out += handshake.data_to_send()
    assert error is None or handshake.error is error
    assert isinstance(handshake.error, AuthenticationError) or not challenging(role)
    if challenging(role):
        assert not handshake.done
    assert len(out) <= 200


@FUZZ
@given(
    st.sampled_from(DIGESTS),
    st.sampled_from(DIGESTS),
    st.binary(max_size=300),
    st.binary(max_size=300),
    chunkings,
    chunkings,
    st.lists(st.booleans(), min_size=1, max_size=6),
    st.sampled_from([KEY, KEY + b"!", b""]),
)
def test_two_framed_handshakes_pumped_into_each_other(
    listener_digest: str,
    client_digest: str,
    listener_data: bytes,
    client_data: bytes,
    to_client_sizes: list[int],
    to_listener_sizes: list[int],
    fills: list[bool],
    client_key: bytes,
) -> None:
    """With the same key both complete, whatever the chunking, and what each sends right
    after the handshake is the other's leftover(); with different keys both fail."""
    listener = FramedHandshake(KEY, Role.LISTENER, digest=listener_digest)
    client = FramedHandshake(client_key, Role.CLIENT, digest=client_digest)
    to_client, to_listener = Wire(to_client_sizes), Wire(to_listener_sizes)
    extra = {id(listener): listener_data, id(client): client_data}
    for step in range(10_000):
        for side, wire in ((listener, to_client), (client, to_listener)):
            wire.pending += side.data_to_send()
            if side.done and id(side) in extra:
                wire.pending += extra.pop(id(side))  # the first messages, at once
        use_fill = fills[step % len(fills)]
        moved = to_client.deliver(client, use_fill)
        moved = to_listener.deliver(listener, not use_fill) or moved
        if not moved:
            break
    else:
        raise AssertionError("the pump never settled")
    if client_key == KEY:
        assert listener.error is None and client.error is None
        assert listener.done and client.done
        assert client.leftover() == listener_data
        assert listener.leftover() == client_data
    else:
        assert not listener.done and not client.done
        assert isinstance(listener.error, AuthenticationError)
        assert isinstance(client.error, AuthenticationError)


def test_a_peer_with_the_key_is_welcomed() -> None:
    """(The hostile-peer tests above would also pass for a handshake that never completes.)"""
    listener = FramedHandshake(KEY, Role.LISTENER)
    challenge = listener.data_to_send()
    listener.receive_data(frame(create_response(KEY, challenge[4 + len(CHALLENGE) :])))
    assert listener.data_to_send() == frame(WELCOME)
    assert not listener.done and listener.error is None
