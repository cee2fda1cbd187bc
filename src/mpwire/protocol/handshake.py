"""The authkey handshake as a state machine, in both roles and both digest styles.

Each half is a challenge and its answer. The challenger sends ``#CHALLENGE#``
and a random message, the other side replies with an HMAC of it under the
shared key, and the challenger replies ``#WELCOME#`` or ``#FAILURE#``. A
listener challenges first and then answers; a client answers first and then
challenges. Two digest styles exist on the wire:

* legacy (CPython before 3.12): a 20-byte message, an unprefixed HMAC-MD5;
* modern (3.12 and later): a ``{digest}`` prefix naming the HMAC's hash, over
  a 40-byte message; the MAC covers the prefix, so it cannot be downgraded.

Modern challengers accept legacy answers (that is how older clients get in),
and modern answerers reply to legacy challenges in kind.

Capability negotiation rides on the challenges. An mpwire challenger may
append :data:`EXTENSIONS_MARK` and the names of the extensions it offers
after its 40 random bytes. Every CPython answers such a challenge as it
answers any other: with an HMAC of the whole message. So stdlib peers ignore
the offer, and neither offer can be altered without failing the check: the
listener's offer is in the message the client answers, the client's in the
message the listener answers. Both ends use the extensions both offered.

mpwire's challenges always offer :data:`EARLY_CHALLENGE`: a client that sees
it in the listener's challenge sends its own challenge right behind its
answer, and a listener sends its welcome and its answer together. The
handshake then takes two round trips instead of three. A stdlib listener
never offers it. A lone challenger (``deliver_challenge()``) offers it too:
the early challenge waits in the stream for the ``answer_challenge()`` that
follows it on the listener's side (the stdlib's order, and the only one in
which a client that challenges back gets its answer).
"""

from __future__ import annotations

import enum
import errno
import functools
import hmac
import os
import struct
from collections.abc import Callable, Iterable
from typing import Final

from ..exceptions import AuthenticationError
from .frames import ReadInto, encode_short_header

__all__ = [
    "CHALLENGE",
    "EARLY_CHALLENGE",
    "EXTENSIONS_MARK",
    "FAILURE",
    "MAX_HANDSHAKE_MESSAGE",
    "WELCOME",
    "FramedHandshake",
    "Handshake",
    "Role",
    "create_response",
    "offered_extensions",
    "verify_response",
]

CHALLENGE: Final = b"#CHALLENGE#"
WELCOME: Final = b"#WELCOME#"
FAILURE: Final = b"#FAILURE#"

MESSAGE_LENGTH: Final = 40
"""Random bytes in a modern challenge."""

LEGACY_MESSAGE_LENGTH: Final = 20
"""Random bytes in a legacy challenge; also the shortest challenge answered."""

MAX_HANDSHAKE_MESSAGE: Final = 256
"""No handshake message may be longer (the stdlib's limit too)."""

_HEADER_SIZE: Final = 4
_unpack_size = struct.Struct("!i").unpack_from
_FRAME_ROOM: Final = _HEADER_SIZE + MAX_HANDSHAKE_MESSAGE
_BUFFER_SIZE: Final = 1024
"""A framed handshake's receive buffer: a few frames, and what follows them."""

_MD5_DIGEST_LENGTH: Final = 16
_LEGACY_LENGTHS: Final = (LEGACY_MESSAGE_LENGTH, _MD5_DIGEST_LENGTH)
ALLOWED_DIGESTS: Final = frozenset(
    {b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384", b"sha512", b"blake2b"}
)
"""CPython's set, plus sha512 and blake2b (which only mpwire peers answer)."""
_LEGACY_DIGESTS: Final = ("", "md5")
_MAX_DIGEST_NAME: Final = max(len(name) for name in ALLOWED_DIGESTS)

EXTENSIONS_MARK: Final = b"\0mpwire-extensions:"
"""Follows the random bytes of a challenge that offers extensions (never in a stdlib one)."""

EARLY_CHALLENGE: Final = "early-challenge"
"""The extension by which a listener takes the client's challenge behind its answer."""


def split_digest(message: bytes) -> tuple[str, bytes]:
    """Split a challenge or response into its digest name and payload.

    The name is empty for the legacy form (16 or 20 bytes, no prefix).
    """
    if len(message) in _LEGACY_LENGTHS:
        return "", message
    if message.startswith(b"{"):
        close = message.find(b"}", 1, _MAX_DIGEST_NAME + 2)
        if close > 0 and message[1:close] in ALLOWED_DIGESTS:
            return message[1:close].decode("ascii"), message[close + 1 :]
    raise AuthenticationError(
        "unsupported message length, missing digest prefix, "
        f"or unsupported digest: message={message!r}"
    )


@functools.cache
def offer(extensions: frozenset[str]) -> bytes:
    """What follows a challenge's random bytes to offer ``extensions`` (nothing for none)."""
    if not extensions:
        return b""
    return EXTENSIONS_MARK + ",".join(sorted(extensions)).encode("ascii")


def offered_extensions(message: bytes) -> frozenset[str]:
    """The extensions a challenge message (after ``#CHALLENGE#``) offers: none from the stdlib."""
    return _offered_in(split_digest(message)[1])


def _offered_in(payload: bytes) -> frozenset[str]:
    tail = payload[MESSAGE_LENGTH:]
    if not tail.startswith(EXTENSIONS_MARK):
        return frozenset()
    return _names(tail[len(EXTENSIONS_MARK) :])


@functools.lru_cache(maxsize=64)
def _names(offer: bytes) -> frozenset[str]:
    return frozenset(name for name in offer.decode("ascii", "replace").split(",") if name)


def create_response(authkey: bytes, message: bytes) -> bytes:
    """The answer to a challenge ``message``: its HMAC in the style it asks for."""
    return _respond(authkey, message, split_digest(message)[0])


def _respond(authkey: bytes, message: bytes, digest: str) -> bytes:
    if not digest:
        return hmac.digest(authkey, message, "md5")
    mac = hmac.digest(authkey, message, digest)
    return b"{%s}%s" % (digest.encode("ascii"), mac)


def verify_response(
    authkey: bytes, message: bytes, response: bytes, *, allow_legacy: bool = True
) -> None:
    """Check an answer to our challenge ``message``, in constant time.

    The answerer may pick any allowed digest; an unprefixed answer is legacy
    HMAC-MD5 (refused unless ``allow_legacy``). Raises AuthenticationError
    when the answer is wrong.
    """
    digest, mac = split_digest(response)
    if not allow_legacy and digest in _LEGACY_DIGESTS:
        raise AuthenticationError("legacy HMAC-MD5 answer refused (allow_legacy_auth=False)")
    digest = digest or "md5"
    try:
        expected = hmac.digest(authkey, message, digest)
    except ValueError:
        raise AuthenticationError(f"digest {digest!r} unsupported") from None
    if len(expected) != len(mac):
        raise AuthenticationError(f"expected {digest!r} of length {len(expected)} got {len(mac)}")
    if not hmac.compare_digest(expected, mac):
        raise AuthenticationError("digest received was wrong")


class Role(enum.Enum):
    """Which side of a connection runs the handshake, and so in which order."""

    LISTENER = "listener"
    """Challenges the peer first, then answers its challenge."""
    CLIENT = "client"
    """Answers the peer's challenge first, then challenges it."""
    CHALLENGER = "challenger"
    """Only challenges (``deliver_challenge``)."""
    ANSWERER = "answerer"
    """Only answers (``answer_challenge``)."""


class Handshake:
    """One side's handshake: feed it the peer's messages, send what it queues.

    Drive it like this (every message is one frame, at most
    ``MAX_HANDSHAKE_MESSAGE`` bytes)::

        while True:
            for message in handshake.messages_to_send():
                send(message)
            handshake.raise_for_failure()
            if handshake.done:
                break
            handshake.receive(recv())

    A failed check queues ``#FAILURE#`` for the peer before it fails, so the
    driver sends it and then raises, as the stdlib does. ``digest`` names the
    HMAC our challenges ask for; without ``allow_legacy``, unprefixed
    (HMAC-MD5) challenges and answers are refused, so a peer or a meddler
    cannot downgrade a modern pair. Our challenge offers ``extensions``
    (and :data:`EARLY_CHALLENGE`); once done, :attr:`agreed` holds those the
    peer's challenge offered too.
    """

    def __init__(
        self,
        authkey: bytes,
        role: Role,
        *,
        digest: str = "sha256",
        allow_legacy: bool = True,
        extensions: Iterable[str] = (),
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not isinstance(authkey, bytes):
            raise ValueError(f"Authkey must be bytes, not {type(authkey)!s}")
        if digest.encode("ascii") not in ALLOWED_DIGESTS:
            raise ValueError(f"unsupported digest {digest!r}")
        self._authkey = authkey
        self._digest = digest
        self._allow_legacy = allow_legacy
        self._urandom = urandom
        self._client = role is _CLIENT
        early = role is not _ANSWERER
        self.extensions = frozenset(extensions) | _EARLY if early else frozenset(extensions)
        """What our challenge offers."""
        self.peer_extensions: frozenset[str] = _NONE
        """What the peer's challenge offered."""
        self._outgoing: list[bytes] = []
        self.error: AuthenticationError | None = None
        self.done = False
        self._challenge: bytes | None = None
        """Our challenge's message (what its answer must cover), once sent."""
        self._steps = _STEPS[role.value]
        """What takes each of the peer's messages, in order."""
        self._next = 0
        if role is _LISTENER or role is _CHALLENGER:
            self._send_challenge()

    @property
    def agreed(self) -> frozenset[str]:
        """The extensions both challenges offered: what both ends may use once done."""
        return self.extensions & self.peer_extensions

    def messages_to_send(self) -> list[bytes]:
        """The messages to send now, in order (each call returns them once)."""
        out, self._outgoing = self._outgoing, []
        return out

    def receive(self, message: bytes) -> None:
        """Take the peer's next message."""
        if self.done or self.error is not None:
            raise AuthenticationError("handshake already finished")
        self._take(message)

    def raise_for_failure(self) -> None:
        """Raise the handshake's AuthenticationError, if it failed."""
        if self.error is not None:
            raise self.error

    def _take(self, message: bytes) -> None:
        step = self._next
        self._next = step + 1
        try:
            self._steps[step](self, message)
        except AuthenticationError as exc:
            self.error = exc
            return
        if step + 1 == len(self._steps):
            self.done = True

    def _send_challenge(self) -> None:
        random = self._urandom(MESSAGE_LENGTH)
        message = b"{%s}%s%s" % (self._digest.encode("ascii"), random, offer(self.extensions))
        self._outgoing.append(CHALLENGE + message)
        self._challenge = message

    def _check_answer(self, response: bytes) -> None:
        assert self._challenge is not None
        try:
            verify_response(
                self._authkey, self._challenge, response, allow_legacy=self._allow_legacy
            )
        except AuthenticationError:
            self._outgoing.append(FAILURE)
            raise
        self._outgoing.append(WELCOME)

    def _answer(self, message: bytes) -> None:
        if not message.startswith(CHALLENGE):
            raise AuthenticationError(f"Protocol error, expected challenge: message={message!r}")
        message = message[len(CHALLENGE) :]
        if len(message) < LEGACY_MESSAGE_LENGTH:
            raise AuthenticationError(f"challenge too short: {len(message)} bytes")
        digest, payload = split_digest(message)
        if not self._allow_legacy and digest in _LEGACY_DIGESTS:
            raise AuthenticationError("legacy challenge refused (allow_legacy_auth=False)")
        self.peer_extensions = _offered_in(payload)
        self._outgoing.append(_respond(self._authkey, message, digest))
        if self._client and EARLY_CHALLENGE in self.peer_extensions:
            self._send_challenge()

    def _await_welcome(self, message: bytes) -> None:
        if message != WELCOME:
            raise AuthenticationError("digest sent was rejected")
        if self._client and self._challenge is None:
            self._send_challenge()


_LISTENER: Final = Role.LISTENER
_CLIENT: Final = Role.CLIENT
_CHALLENGER: Final = Role.CHALLENGER
_ANSWERER: Final = Role.ANSWERER
_EARLY: Final = frozenset({EARLY_CHALLENGE})
_NONE: Final[frozenset[str]] = frozenset()
_STEPS: Final[dict[str, tuple[Callable[[Handshake, bytes], None], ...]]] = {
    Role.LISTENER.value: (Handshake._check_answer, Handshake._answer, Handshake._await_welcome),
    Role.CHALLENGER.value: (Handshake._check_answer,),
    Role.CLIENT.value: (Handshake._answer, Handshake._await_welcome, Handshake._check_answer),
    Role.ANSWERER.value: (Handshake._answer, Handshake._await_welcome),
}
"""Per role, what takes each of the peer's messages, in order."""


class FramedHandshake(Handshake):
    """A Handshake over a byte stream: received bytes in, bytes to send out.

    For front ends that multiplex many handshakes on non-blocking sockets,
    and for a client's handshake before its Connection exists. The frames
    are capped at ``MAX_HANDSHAKE_MESSAGE`` bytes whatever the connection's
    own limit, and a malformed or oversized one fails the handshake. Bytes
    the peer sent after it (its first messages) are kept in :meth:`leftover`
    for the connection's own decoder. The frames are so short that a small
    buffer of its own serves, not a connection's decoder.
    """

    def __init__(
        self,
        authkey: bytes,
        role: Role,
        *,
        digest: str = "sha256",
        allow_legacy: bool = True,
        extensions: Iterable[str] = (),
    ) -> None:
        super().__init__(
            authkey, role, digest=digest, allow_legacy=allow_legacy, extensions=extensions
        )
        self._incoming = bytearray(_BUFFER_SIZE)
        self._start = 0
        self._end = 0

    @property
    def offered(self) -> frozenset[str]:
        """The extensions our challenge offers."""
        return self.extensions

    def data_to_send(self) -> bytes:
        """The frames to send now (each call returns them once)."""
        return b"".join([encode_short_header(len(m)) + m for m in self.messages_to_send()])

    def fill(self, readinto: ReadInto) -> int:
        """Receive with ``readinto`` once and take the frames; the count (0 at EOF).

        ``readinto`` returning None (a non-blocking file) raises BlockingIOError.
        """
        received = readinto(self._space())
        if received is None:
            raise BlockingIOError(errno.EAGAIN, "nothing to read yet")
        if received:
            self.buffer_updated(received)
        return received

    def receive_data(self, data: bytes) -> None:
        """Take bytes received by other means."""
        self._space()
        end = self._end
        self._incoming[end : end + len(data)] = data
        self.buffer_updated(len(data))

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Memory for the next received bytes (asyncio's BufferedProtocol contract)."""
        return self._space()

    def buffer_updated(self, nbytes: int) -> None:
        """Take the ``nbytes`` bytes written at the start of the last buffer."""
        self._end += nbytes
        incoming = self._incoming
        while not self.done and self.error is None:
            start = self._start
            if self._end - start < _HEADER_SIZE:
                return
            size = _unpack_size(incoming, start)[0]
            if not 0 <= size <= MAX_HANDSHAKE_MESSAGE:
                self.error = AuthenticationError(
                    f"bad handshake message: bad message length: {size} bytes declared, "
                    f"limit is {MAX_HANDSHAKE_MESSAGE}"
                )
                return
            stop = start + _HEADER_SIZE + size
            if stop > self._end:
                return
            self._start = stop
            self._take(bytes(incoming[start + _HEADER_SIZE : stop]))

    def leftover(self) -> bytes:
        """What the peer sent after the handshake, once it is done."""
        data = bytes(self._incoming[self._start : self._end])
        self._start = self._end = 0
        return data

    def _space(self) -> memoryview:
        """The free end of the buffer, with room for a whole frame at least."""
        start, end = self._start, self._end
        incoming = self._incoming
        if start == end:
            self._start = self._end = end = 0
        elif len(incoming) - end < _FRAME_ROOM:
            incoming[: end - start] = incoming[start:end]
            end -= start
            self._start, self._end = 0, end
            if len(incoming) - end < _FRAME_ROOM:
                incoming.extend(bytes(_BUFFER_SIZE))
        return memoryview(incoming)[end:]
