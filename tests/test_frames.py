"""The sans-I/O frame encoder and incremental decoder."""

from __future__ import annotations

import itertools
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpwire.exceptions import FrameError, MessageTooLong
from mpwire.protocol.frames import (
    DESCRIPTORS_FOLLOW,
    LARGEST_SHORT,
    SPLIT_COUNT,
    FrameDecoder,
    LargeFrame,
    PayloadReader,
    SharedEntry,
    encode_header,
    encode_shared_header,
)

# Hypothesis re-runs a failing example while shrinking it, so a hang would outlast a
# signal-based timeout; the thread method ends the run instead.
pytestmark = pytest.mark.timeout(120, method="thread")


payloads = st.lists(st.binary(max_size=300), max_size=12)


def encode(messages: list[bytes]) -> bytes:
    return b"".join(encode_header(len(m)) + m for m in messages)


def drain(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300)
@given(payloads, st.lists(st.integers(min_value=0), max_size=20), st.sampled_from([16, 64, 4096]))
def test_any_split_of_any_stream_decodes_to_the_same_messages(
    messages: list[bytes], cuts: list[int], read_ahead: int
) -> None:
    # A small read-ahead buffer sends many of these payloads down the large-frame path.
    decoder = FrameDecoder(read_ahead=read_ahead)
    received = []
    for chunk in split(encode(messages), cuts):
        decoder.feed(chunk)
        received += drain(decoder)
    assert received == messages
    assert not decoder.pending
    assert decoder.received == len(encode(messages))
    assert isinstance(decoder.eof_error(), EOFError)


def shared_memory_message(payload: bytes, count: int) -> bytes:
    return encode_shared_header([SharedEntry(0, 0, 1)] * count) + encode([payload])


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.binary(max_size=600), st.sampled_from(["plain", "long", "shared", "mark"])),
        max_size=10,
    ),
    st.lists(st.integers(min_value=1, max_value=700), min_size=1),
    st.sampled_from([16, 64, 4096]),
    st.booleans(),
)
def test_exact_reads_never_pass_the_end_of_a_message(
    messages: list[tuple[bytes, str]], sizes: list[int], read_ahead: int, stream: bool
) -> None:
    """An exact decoder, read by a kernel that gives at most what it is asked, takes
    no byte of the next message before it has returned the one before."""
    chunks = []
    for payload, form in messages:
        if form == "long":
            chunks.append(struct.pack("!iQ", -1, len(payload)) + payload)
        elif form == "shared":
            chunks.append(shared_memory_message(payload, 1 + len(payload) % 3))
        elif form == "mark":
            chunks.append(DESCRIPTORS_FOLLOW + encode([payload]))
        else:
            chunks.append(encode([payload]))
    ends = list(itertools.accumulate(map(len, chunks)))
    data = memoryview(b"".join(chunks))
    decoder = FrameDecoder(read_ahead=read_ahead)
    decoder.exact = decoder.accept_shared = True
    got: list[bytes] = []
    reads = itertools.cycle(sizes)

    def readinto(buf: memoryview) -> int:
        n = min(len(buf), next(reads), len(data) - decoder.received)
        buf[:n] = data[decoder.received : decoder.received + n]
        return n

    while len(got) < len(messages):
        frame = decoder.next_frame(None, None, stream)
        if frame is None:
            assert decoder.fill(readinto), "asked for bytes past the end of the stream"
        else:
            if isinstance(frame, LargeFrame):
                reader = PayloadReader(frame, readinto, decoder)
                frame = reader.read()
            got.append(bytes(frame))
            decoder.shared = None
            assert decoder.received == ends[len(got) - 1], "read into the next message"
            assert not decoder.pending
    assert got == [payload for payload, _ in messages]


@settings(max_examples=100)
@given(payloads, st.lists(st.integers(min_value=1, max_value=50), min_size=1))
def test_exact_leases_end_where_the_message_ends(messages: list[bytes], sizes: list[int]) -> None:
    """get_buffer() of an exact decoder (asyncio's way in) stops at the message's end."""
    data = memoryview(encode(messages))
    ends = list(itertools.accumulate(len(encode([m])) for m in messages))
    decoder = FrameDecoder(read_ahead=32)
    decoder.exact = True
    got: list[bytes] = []
    while len(got) < len(messages):
        buf = decoder.get_buffer()
        n = min(len(buf), sizes[len(got) % len(sizes)])
        buf[:n] = data[decoder.received : decoder.received + n]
        decoder.buffer_updated(n)
        for frame in drain(decoder):
            got.append(frame)
            assert decoder.received == ends[len(got) - 1]
    assert got == messages


@settings(max_examples=200)
@given(payloads, st.lists(st.integers(min_value=1, max_value=50), min_size=1))
def test_partial_reads_into_the_leased_buffer(messages: list[bytes], sizes: list[int]) -> None:
    """Drive the decoder as the sync layer does: read n bytes into get_buffer()."""
    data = memoryview(encode(messages))
    decoder = FrameDecoder(read_ahead=32)
    received: list[bytes] = []
    i = 0
    while data:
        buf = decoder.get_buffer()
        n = min(len(buf), len(data), sizes[i % len(sizes)])
        buf[:n] = data[:n]
        decoder.buffer_updated(n)
        data = data[n:]
        i += 1
        received += drain(decoder)
    assert received == messages
    assert decoder.received == len(encode(messages))


@settings(max_examples=200)
@given(
    payloads,
    st.lists(st.integers(min_value=1, max_value=70), min_size=1),
    st.sampled_from([16, 4096]),
)
def test_next_payload_reads_as_the_receive_fast_path_does(
    messages: list[bytes], sizes: list[int], read_ahead: int
) -> None:
    """next_payload(readinto) first, next_frame() and fill() when it gives None."""
    data = memoryview(encode(messages))
    reads = itertools.cycle(sizes)

    def readinto(buf: memoryview) -> int:
        nonlocal data
        n = min(len(buf), len(data), next(reads))
        buf[:n] = data[:n]
        data = data[n:]
        return n

    decoder = FrameDecoder(read_ahead=read_ahead)
    received: list[bytes] = []
    while len(received) < len(messages):
        payload = decoder.next_payload(readinto)
        if payload is None:
            payload = decoder.next_frame()
        if payload is None:
            decoder.fill(readinto)
        else:
            received.append(payload)
    assert received == messages
    assert not decoder.pending
    assert decoder.received == len(encode(messages))


def test_reads_that_fill_the_buffer_grow_it_on_the_fast_path() -> None:
    """A stream of 1 KiB frames: each read fills what it is given, until the read-ahead size."""
    frame = encode([b"x" * 1020])
    stream = memoryview(frame * 1024)
    offered: list[int] = []

    def readinto(buf: memoryview) -> int:
        nonlocal stream
        offered.append(len(buf))
        n = min(len(buf), len(stream))
        buf[:n] = stream[:n]
        stream = stream[n:]
        return n

    decoder = FrameDecoder(read_ahead=64 * 1024)
    while stream or decoder.pending:
        assert decoder.next_payload(readinto) == b"x" * 1020
    assert offered[0] == 4096 and max(offered) == 64 * 1024
    assert decoder.received == len(frame) * 1024


@pytest.mark.parametrize("limit", [0, 63])
def test_next_payload_leaves_a_frame_over_the_limit_to_next_frame(limit: int) -> None:
    decoder = FrameDecoder(max_size=limit)
    decoder.feed(encode([b"x" * 64]))
    assert decoder.next_payload() is None
    with pytest.raises(MessageTooLong):
        decoder.next_frame()


def test_next_payload_splits_the_small_payloads_behind_it_off_to_ready() -> None:
    decoder = FrameDecoder(max_size=100)
    messages = [b"one", b"two", b"x" * 100, b"y" * 101, b"after"]
    decoder.feed(encode(messages))
    assert decoder.next_payload() == b"one"
    # A payload over the limit stops the split: next_frame() refuses it in turn.
    assert list(decoder.ready) == [b"two", b"x" * 100]
    assert decoder.next_payload() == b"two"
    with pytest.raises(MessageTooLong):
        decoder.next_frame(99)


def test_a_split_takes_at_most_split_count_payloads() -> None:
    decoder = FrameDecoder()
    messages = [b"%d" % n for n in range(SPLIT_COUNT + 50)]
    decoder.feed(encode(messages))
    received = [decoder.next_payload()]
    assert len(decoder.ready) == SPLIT_COUNT
    while (payload := decoder.next_payload()) is not None:
        received.append(payload)
    assert received == messages


def test_next_frame_takes_ready_payloads_first() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode([b"one", b"two", b"three"]))
    decoder.next_payload()
    target = bytearray(3)
    assert decoder.next_frame(None, memoryview(target)) == 3
    assert target == b"two"
    assert decoder.next_frame(None, memoryview(target)) == b"three"  # too long for it
    assert not decoder.pending
    assert isinstance(decoder.eof_error(), EOFError)


@settings(max_examples=200)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=220), st.sampled_from([8, 512]))
def test_next_frame_into_fills_the_target_or_returns_the_message(
    message: bytes, room: int, read_ahead: int
) -> None:
    decoder = FrameDecoder(read_ahead=read_ahead)
    target = bytearray(room)
    decoder.feed(encode([message, b"after"]))
    result = decoder.next_frame(None, memoryview(target))
    if len(message) <= room:
        assert result == len(message)
        assert target[: len(message)] == message
    else:
        assert result == message
    assert decoder.next_frame() == b"after"


def test_header_forms() -> None:
    assert encode_header(0) == b"\0\0\0\0"
    assert encode_header(LARGEST_SHORT) == struct.pack("!i", LARGEST_SHORT)
    assert encode_header(LARGEST_SHORT + 1) == struct.pack("!iQ", -1, LARGEST_SHORT + 1)
    assert encode_header(2**62) == struct.pack("!iQ", -1, 2**62)


def test_long_form_header_with_a_small_payload_is_accepted() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!iQ", -1, 3) + b"abc")
    assert decoder.next_frame() == b"abc"


@pytest.mark.parametrize("size", [LARGEST_SHORT, 2**62])
def test_forged_length_reserves_little_memory(size: int) -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.feed(encode_header(size) + b"x" * 100_000)
        assert decoder.next_frame() is None
        decoder.get_buffer()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.pending
    assert peak < 4 * 2**20
    assert isinstance(decoder.eof_error(), OSError)


@pytest.mark.parametrize("size", [LARGEST_SHORT, 2**62])
def test_limits_refuse_a_forged_length_before_any_payload(size: int) -> None:
    decoder = FrameDecoder(max_size=1024)
    decoder.feed(encode_header(size))
    with pytest.raises(MessageTooLong) as info:
        decoder.next_frame()
    assert (info.value.size, info.value.limit) == (size, 1024)
    decoder = FrameDecoder()
    decoder.feed(encode_header(size))
    with pytest.raises(MessageTooLong, match="limit is 256"):
        decoder.next_frame(maxlength=256)


def test_the_descriptors_mark_is_told_before_the_next_frame() -> None:
    told: list[bool] = []
    decoder = FrameDecoder()
    decoder.accept_shared = True
    decoder.on_descriptors = lambda: told.append(decoder.pending)
    decoder.feed(DESCRIPTORS_FOLLOW + encode([b"after"]) + DESCRIPTORS_FOLLOW)
    assert decoder.next_frame() == b"after"
    assert told == [True]  # before the frame was taken
    assert decoder.next_frame() is None
    assert told == [True, False] and not decoder.pending


def test_the_descriptors_mark_is_a_frame_error_unless_shared_memory_was_agreed() -> None:
    decoder = FrameDecoder()
    decoder.feed(DESCRIPTORS_FOLLOW)
    with pytest.raises(FrameError, match="negative length -3"):
        decoder.next_frame()


def test_negative_length_is_a_frame_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!i", -2))
    with pytest.raises(FrameError, match="negative length"):
        decoder.next_frame()


def test_large_payload_grows_with_what_arrives() -> None:
    payload = bytes(range(256)) * 20_000
    decoder = FrameDecoder(read_ahead=1024)
    decoder.feed(encode_header(len(payload)) + payload[:100])
    assert decoder.next_frame() is None
    first = decoder.get_buffer()
    assert len(first) < 2**21
    decoder.buffer_updated(0)
    decoder.feed(payload[100:])
    assert decoder.next_frame() == payload


def test_feed_past_a_complete_large_frame() -> None:
    """Bytes after a large frame that has not been taken yet wait in the read-ahead."""
    decoder = FrameDecoder(read_ahead=16)
    decoder.feed(encode([b"L" * 100, b"small", b"M" * 50]))
    assert drain(decoder) == [b"L" * 100, b"small", b"M" * 50]


def test_take_pending_hands_over_the_stream() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode([b"one", b"two"]) + b"\0\0")
    assert decoder.next_frame() == b"one"
    other = FrameDecoder(initial=decoder.take_pending())
    assert not decoder.pending
    other.feed(b"\0\1z")
    assert drain(other) == [b"two", b"z"]


def test_take_pending_hands_over_a_large_payload_in_progress() -> None:
    payload = bytes(range(256)) * 100
    decoder = FrameDecoder(read_ahead=1024)
    decoder.feed(encode([b"ready"]) + encode_header(len(payload)) + payload[:3000])
    assert decoder.next_frame() == b"ready"
    assert decoder.next_frame() is None  # the large payload has begun
    other = FrameDecoder(initial=decoder.take_pending())
    assert not decoder.pending
    other.feed(payload[3000:])
    assert drain(other) == [payload]


def test_buffer_updated_needs_a_lease() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ValueError):
        decoder.buffer_updated(1)
    buf = decoder.get_buffer()
    with pytest.raises(ValueError):
        decoder.buffer_updated(len(buf) + 1)


@settings(max_examples=500)
@given(st.binary(max_size=400), st.one_of(st.none(), st.integers(min_value=0, max_value=64)))
def test_arbitrary_bytes_give_frames_or_documented_errors(data: bytes, limit: int | None) -> None:
    decoder = FrameDecoder(max_size=limit, read_ahead=64)
    try:
        decoder.feed(data)
        drain(decoder)
    except FrameError:
        pass
