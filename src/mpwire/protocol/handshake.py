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
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Callable, Generator, Iterable
from typing import Final

from ..exceptions import AuthenticationError, FrameError
from .frames import FrameDecoder, ReadInto, encode_short_header

__all__ = [
    "CHALLENGE",
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


def offer(extensions: frozenset[str]) -> bytes:
    """What follows a challenge's random bytes to offer ``extensions`` (nothing for none)."""
    if not extensions:
        return b""
    return EXTENSIONS_MARK + ",".join(sorted(extensions)).encode("ascii")


def offered_extensions(message: bytes) -> frozenset[str]:
    """The extensions a challenge message (after ``#CHALLENGE#``) offers: none from the stdlib."""
    payload = split_digest(message)[1]
    tail = payload[MESSAGE_LENGTH:]
    if not tail.startswith(EXTENSIONS_MARK):
        return frozenset()
    names = tail[len(EXTENSIONS_MARK) :].decode("ascii", "replace").split(",")
    return frozenset(name for name in names if name)


def create_response(authkey: bytes, message: bytes) -> bytes:
    """The answer to a challenge ``message``: its HMAC in the style it asks for."""
    digest = split_digest(message)[0]
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


_Steps = Generator[None, bytes, None]


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
    cannot downgrade a modern pair. Our challenge offers ``extensions``;
    once done, :attr:`agreed` holds those the peer's challenge offered too.
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
        self.extensions = frozenset(extensions)
        """What our challenge offers."""
        self.peer_extensions: frozenset[str] = frozenset()
        """What the peer's challenge offered."""
        self._outgoing: list[bytes] = []
        self.error: AuthenticationError | None = None
        self.done = False
        self._steps = self._run(role)
        self._advance(None)

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
        self._advance(message)

    def raise_for_failure(self) -> None:
        """Raise the handshake's AuthenticationError, if it failed."""
        if self.error is not None:
            raise self.error

    def _advance(self, message: bytes | None) -> None:
        try:
            if message is None:
                next(self._steps)
            else:
                self._steps.send(message)
        except StopIteration:
            self.done = True
        except AuthenticationError as exc:
            self.error = exc

    def _run(self, role: Role) -> _Steps:
        if role in (Role.LISTENER, Role.CHALLENGER):
            yield from self._challenge()
        if role in (Role.LISTENER, Role.CLIENT, Role.ANSWERER):
            yield from self._answer()
        if role is Role.CLIENT:
            yield from self._challenge()

    def _challenge(self) -> _Steps:
        random = self._urandom(MESSAGE_LENGTH)
        message = b"{%s}%s%s" % (self._digest.encode("ascii"), random, offer(self.extensions))
        self._outgoing.append(CHALLENGE + message)
        response = yield
        try:
            verify_response(self._authkey, message, response, allow_legacy=self._allow_legacy)
        except AuthenticationError:
            self._outgoing.append(FAILURE)
            raise
        self._outgoing.append(WELCOME)

    def _answer(self) -> _Steps:
        message = yield
        if not message.startswith(CHALLENGE):
            raise AuthenticationError(f"Protocol error, expected challenge: message={message!r}")
        message = message[len(CHALLENGE) :]
        if len(message) < LEGACY_MESSAGE_LENGTH:
            raise AuthenticationError(f"challenge too short: {len(message)} bytes")
        if not self._allow_legacy and split_digest(message)[0] in _LEGACY_DIGESTS:
            raise AuthenticationError("legacy challenge refused (allow_legacy_auth=False)")
        self.peer_extensions = offered_extensions(message)
        self._outgoing.append(create_response(self._authkey, message))
        if (yield) != WELCOME:
            raise AuthenticationError("digest sent was rejected")


class FramedHandshake:
    """A Handshake over a byte stream: received bytes in, bytes to send out.

    For front ends that multiplex many handshakes on non-blocking sockets. The
    frames are capped at ``MAX_HANDSHAKE_MESSAGE`` bytes whatever the
    connection's own limit, and a malformed or oversized one fails the
    handshake. Bytes the peer sent after it (its first messages) are kept in
    :meth:`leftover` for the connection's own decoder.
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
        self._handshake = Handshake(
            authkey, role, digest=digest, allow_legacy=allow_legacy, extensions=extensions
        )
        self._decoder = FrameDecoder(MAX_HANDSHAKE_MESSAGE)
        self._framing_error: AuthenticationError | None = None

    @property
    def done(self) -> bool:
        """Whether both sides have proved they hold the key."""
        return self._handshake.done

    @property
    def offered(self) -> frozenset[str]:
        """The extensions our challenge offers."""
        return self._handshake.extensions

    @property
    def agreed(self) -> frozenset[str]:
        """The extensions both ends offered (see :attr:`Handshake.agreed`)."""
        return self._handshake.agreed

    @property
    def error(self) -> AuthenticationError | None:
        """Why the handshake failed, or None."""
        return self._framing_error or self._handshake.error

    def data_to_send(self) -> bytes:
        """The frames to send now (each call returns them once)."""
        return b"".join(encode_short_header(len(m)) + m for m in self._handshake.messages_to_send())

    def fill(self, readinto: ReadInto) -> int:
        """Receive with ``readinto`` once (see FrameDecoder.fill) and take the frames."""
        received = self._decoder.fill(readinto)
        if received:
            self._take_frames()
        return received

    def receive_data(self, data: bytes) -> None:
        """Take bytes received by other means."""
        self._decoder.feed(data)
        self._take_frames()

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Memory for the next received bytes (asyncio's BufferedProtocol contract)."""
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """Take the ``nbytes`` bytes written at the start of the last buffer."""
        self._decoder.buffer_updated(nbytes)
        self._take_frames()

    def _take_frames(self) -> None:
        while not self.done and self.error is None:
            try:
                message = self._decoder.next_frame()
            except FrameError as exc:
                self._framing_error = AuthenticationError(f"bad handshake message: {exc}")
                return
            if message is None:
                return
            self._handshake.receive(message)

    def leftover(self) -> bytes:
        """What the peer sent after the handshake, once it is done."""
        return self._decoder.take_pending()
