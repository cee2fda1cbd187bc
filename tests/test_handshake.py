"""The sans-I/O authkey handshake: both roles, both digest styles, hostile input."""

from __future__ import annotations

import hmac
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpwire.exceptions import AuthenticationError
from mpwire.protocol.handshake import (
    CHALLENGE,
    EARLY_CHALLENGE,
    EXTENSIONS_MARK,
    FAILURE,
    MESSAGE_LENGTH,
    WELCOME,
    Handshake,
    Role,
    create_response,
    offered_extensions,
    verify_response,
)

# Hypothesis re-runs a failing example while shrinking it, so a hang would outlast a
# signal-based timeout; the thread method ends the run instead.
pytestmark = pytest.mark.timeout(120, method="thread")


def converse(a: Handshake, b: Handshake) -> None:
    """Exchange messages until neither side has anything more to say."""
    while True:
        moved = False
        for sender, receiver in ((a, b), (b, a)):
            for message in sender.messages_to_send():
                moved = True
                if not receiver.done and receiver.error is None:
                    receiver.receive(message)
        if not moved:
            return


@pytest.mark.parametrize("digest", ["sha256", "sha384", "md5", "sha3_256"])
def test_listener_and_client_agree(digest: str) -> None:
    listener = Handshake(b"key", Role.LISTENER, digest=digest)
    client = Handshake(b"key", Role.CLIENT, digest=digest)
    converse(listener, client)
    assert listener.done and client.done
    listener.raise_for_failure()
    client.raise_for_failure()


def test_wrong_key_fails_both_sides() -> None:
    listener = Handshake(b"key", Role.LISTENER)
    client = Handshake(b"other", Role.CLIENT)
    converse(listener, client)
    with pytest.raises(AuthenticationError, match="digest received was wrong"):
        listener.raise_for_failure()
    with pytest.raises(AuthenticationError, match="digest sent was rejected"):
        client.raise_for_failure()


@pytest.mark.parametrize(
    ("listener_offers", "client_offers", "agreed"),
    [
        ({"shm"}, {"shm"}, {"shm"}),
        ({"shm", "x"}, {"shm", "y"}, {"shm"}),
        ({"shm"}, set(), set()),
        (set(), {"shm"}, set()),
    ],
)
def test_both_ends_use_the_extensions_both_offered(
    listener_offers: set[str], client_offers: set[str], agreed: set[str]
) -> None:
    listener = Handshake(b"key", Role.LISTENER, extensions=listener_offers)
    client = Handshake(b"key", Role.CLIENT, extensions=client_offers)
    converse(listener, client)
    assert listener.done and client.done
    assert listener.agreed == client.agreed == agreed | {EARLY_CHALLENGE}


def test_an_offer_follows_the_random_bytes_and_a_stdlib_challenge_offers_nothing() -> None:
    challenge = Handshake(b"key", Role.LISTENER, extensions={"shm"}).messages_to_send()[0]
    body = challenge.removeprefix(CHALLENGE)
    assert body.startswith(b"{sha256}")
    assert body[8 + MESSAGE_LENGTH :] == EXTENSIONS_MARK + b"early-challenge,shm"
    assert offered_extensions(body) == {"shm", EARLY_CHALLENGE}
    assert offered_extensions(b"{sha256}" + os.urandom(MESSAGE_LENGTH)) == frozenset()
    assert offered_extensions(os.urandom(20)) == frozenset()  # legacy


@pytest.mark.parametrize("side", ["listener", "client"])
@pytest.mark.parametrize("change", ["add", "remove"])
def test_a_meddler_cannot_change_an_offer(side: str, change: str) -> None:
    """The offer is in the challenge, which the HMAC covers: changing it fails the handshake."""
    offers = set() if change == "add" else {"shm"}
    listener = Handshake(b"key", Role.LISTENER, extensions=offers)
    client = Handshake(b"key", Role.CLIENT, extensions=offers)
    source, target = (listener, client) if side == "listener" else (client, listener)
    if side == "client":
        challenge = converse_until_client_challenges(listener, client)
    else:
        challenge = source.messages_to_send()[0]
    assert challenge.startswith(CHALLENGE)
    if change == "add":
        challenge = challenge.replace(EARLY_CHALLENGE.encode(), EARLY_CHALLENGE.encode() + b",shm")
    else:
        challenge = challenge[: challenge.index(EXTENSIONS_MARK)]
    target.receive(challenge)
    converse(listener, client)
    assert source.error is not None
    assert not (listener.done and client.done)


def converse_until_client_challenges(listener: Handshake, client: Handshake) -> bytes:
    """Run the handshake up to the client's challenge, and return that challenge unsent."""
    client.receive(listener.messages_to_send()[0])
    answer, challenge = client.messages_to_send()
    listener.receive(answer)
    return challenge


def test_a_client_challenges_behind_its_answer_when_the_listener_offers_it() -> None:
    """Two round trips: the listener's welcome and answer go together too."""
    listener = Handshake(b"key", Role.LISTENER)
    client = Handshake(b"key", Role.CLIENT)
    client.receive(listener.messages_to_send()[0])
    answer, challenge = client.messages_to_send()
    assert challenge.startswith(CHALLENGE)
    listener.receive(answer)
    listener.receive(challenge)
    welcome, response = listener.messages_to_send()
    assert welcome == WELCOME
    assert listener.done is False
    client.receive(welcome)
    client.receive(response)
    assert client.messages_to_send() == [WELCOME] and client.done
    listener.receive(WELCOME)
    assert listener.done


def test_a_client_challenges_a_stdlib_listener_only_once_welcomed() -> None:
    """A stdlib listener's challenge offers nothing; it reads message by message."""
    message = b"{sha256}" + os.urandom(MESSAGE_LENGTH)
    client = Handshake(b"key", Role.CLIENT)
    client.receive(CHALLENGE + message)
    (answer,) = client.messages_to_send()
    verify_response(b"key", message, answer)
    client.receive(WELCOME)
    (challenge,) = client.messages_to_send()
    client.receive(create_response(b"key", challenge.removeprefix(CHALLENGE)))
    assert client.messages_to_send() == [WELCOME] and client.done
    assert client.agreed == frozenset()


def test_deliver_then_answer_challenge_take_an_early_client() -> None:
    """mpwire's lone challenger offers it: the early challenge waits for the answerer."""
    challenger = Handshake(b"key", Role.CHALLENGER)
    answerer = Handshake(b"key", Role.ANSWERER)
    client = Handshake(b"key", Role.CLIENT)
    client.receive(challenger.messages_to_send()[0])
    answer, challenge = client.messages_to_send()
    challenger.receive(answer)
    assert challenger.messages_to_send() == [WELCOME] and challenger.done
    answerer.receive(challenge)
    client.receive(WELCOME)
    client.receive(answerer.messages_to_send()[0])
    answerer.receive(client.messages_to_send()[0])
    assert answerer.done and client.done and answerer.error is None


def test_a_listener_that_rejects_an_early_client_says_so_before_its_challenge() -> None:
    listener = Handshake(b"key", Role.LISTENER)
    client = Handshake(b"other", Role.CLIENT)
    client.receive(listener.messages_to_send()[0])
    answer, _ = client.messages_to_send()
    listener.receive(answer)
    assert listener.messages_to_send() == [FAILURE]
    assert listener.error is not None
    client.receive(FAILURE)
    with pytest.raises(AuthenticationError, match="digest sent was rejected"):
        client.raise_for_failure()


def test_modern_challenge_prefixes_the_digest() -> None:
    challenger = Handshake(b"k", Role.CHALLENGER, urandom=lambda n: b"r" * n)
    (message,) = challenger.messages_to_send()
    assert message == CHALLENGE + b"{sha256}" + b"r" * 40 + EXTENSIONS_MARK + b"early-challenge"


def test_modern_challenger_accepts_a_legacy_md5_answer() -> None:
    """A CPython <= 3.11 client answers the whole prefixed message with raw HMAC-MD5."""
    challenger = Handshake(b"k", Role.CHALLENGER)
    (message,) = challenger.messages_to_send()
    challenger.receive(hmac.new(b"k", message[len(CHALLENGE) :], "md5").digest())
    assert challenger.messages_to_send() == [WELCOME]
    assert challenger.done


def test_answerer_replies_to_a_legacy_challenge_in_kind() -> None:
    nonce = os.urandom(20)
    answerer = Handshake(b"k", Role.ANSWERER)
    answerer.receive(CHALLENGE + nonce)
    assert answerer.messages_to_send() == [hmac.new(b"k", nonce, "md5").digest()]
    answerer.receive(WELCOME)
    assert answerer.done


def test_failed_check_queues_failure_for_the_peer() -> None:
    challenger = Handshake(b"k", Role.CHALLENGER)
    challenger.messages_to_send()
    challenger.receive(b"{sha256}" + b"\0" * 32)
    assert challenger.messages_to_send() == [FAILURE]
    with pytest.raises(AuthenticationError):
        challenger.raise_for_failure()
    with pytest.raises(AuthenticationError, match="already finished"):
        challenger.receive(b"more")


def test_answerer_refuses_what_is_not_a_challenge() -> None:
    answerer = Handshake(b"k", Role.ANSWERER)
    answerer.receive(b"hello")
    with pytest.raises(AuthenticationError, match="expected challenge"):
        answerer.raise_for_failure()
    short = Handshake(b"k", Role.ANSWERER)
    short.receive(CHALLENGE + b"x" * 5)
    with pytest.raises(AuthenticationError, match="too short"):
        short.raise_for_failure()


def test_response_helpers_match_the_stdlib_contract() -> None:
    for prefix in (b"", b"{md5}", b"{sha256}"):
        message = prefix + b"is-twenty-bytes-long"
        response = create_response(b"key", message)
        assert response.startswith(prefix)
        verify_response(b"key", message, response)
    with pytest.raises(AuthenticationError, match="unsupported"):
        verify_response(b"key", b"m" * 20, b"{nope}" + b"x" * 40)
    with pytest.raises(AuthenticationError, match="length"):
        verify_response(b"key", b"m" * 20, b"{sha256}short")


def test_authkey_must_be_bytes_and_digest_known() -> None:
    with pytest.raises(ValueError, match="Authkey must be bytes"):
        Handshake("key", Role.CLIENT)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported digest"):
        Handshake(b"key", Role.CLIENT, digest="crc32")


@settings(max_examples=500)
@given(st.sampled_from(list(Role)), st.lists(st.binary(max_size=300), max_size=4))
def test_arbitrary_messages_only_fail_with_authentication_error(
    role: Role, messages: list[bytes]
) -> None:
    handshake = Handshake(b"key", role)
    for message in messages:
        handshake.messages_to_send()
        try:
            handshake.receive(message)
        except AuthenticationError:
            assert handshake.done or handshake.error is not None
            return
    assert handshake.done or handshake.error is not None or len(messages) < 3
