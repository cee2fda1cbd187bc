"""Fixtures for the attack tests: which implementation is under attack, and where it listens.

``--victim=stdlib`` runs the same attacks against ``multiprocessing.connection``
(default ``--victim=mpwire``): the victim's Listener, Connection and Client
come from the ``attack_victim`` module. Attacks that need mpwire-only keywords
take ``attack_mpwire`` instead, which skips under the stdlib.
"""

from __future__ import annotations

import multiprocessing.connection
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import mpwire.connection

VICTIMS: dict[str, ModuleType] = {
    "mpwire": mpwire.connection,
    "stdlib": multiprocessing.connection,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--victim",
        choices=sorted(VICTIMS),
        default="mpwire",
        help="implementation the adversarial tests attack (default: mpwire)",
    )


def _victim_name(config: pytest.Config) -> str:
    # Registered late (and so absent) when this folder is not on the command line.
    return str(config.getoption("victim", default="mpwire"))


def pytest_report_header(config: pytest.Config) -> str:
    name = _victim_name(config)
    return f"attack victim: {name} ({VICTIMS[name].__name__})"


@pytest.fixture
def attack_victim(request: pytest.FixtureRequest) -> ModuleType:
    """The module under attack: ``mpwire.connection`` or ``multiprocessing.connection``."""
    return VICTIMS[_victim_name(request.config)]


@pytest.fixture
def attack_mpwire(attack_victim: ModuleType) -> ModuleType:
    """``mpwire.connection``, for attacks on mpwire-only keywords; skips under the stdlib."""
    if attack_victim is not mpwire.connection:
        pytest.skip(
            "needs mpwire-only keywords (timeout=, handshake_timeout=, max_message_size=) "
            "that multiprocessing.connection lacks"
        )
    return attack_victim


@pytest.fixture(params=["unix", "tcp4"])
def attack_address(request: pytest.FixtureRequest, socket_dir: Path) -> Any:
    """A fresh address for the victim's Listener: a Unix socket path, then TCP on 127.0.0.1."""
    if request.param == "unix":
        return str(socket_dir / f"victim-{uuid.uuid4().hex[:8]}.sock")
    return ("127.0.0.1", 0)
