"""The Pythons the interop tests run ``peer.py`` under, found once per session.

Always the running interpreter; besides it, every CPython >= 3.8 that pyenv
knows (``pyenv versions --bare``), each checked by running it once. Tests that
take a ``peer_python`` argument are run once per interpreter found, and the
report header lists them (or says why there are no others).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

MIN_VERSION = (3, 8)
PROBE_TIMEOUT = 30.0
_PROBE = (
    "import sys, multiprocessing.connection; print(sys.implementation.name, *sys.version_info[:3])"
)
_VERSION_NAME = re.compile(r"(\d+)\.(\d+)")
_header_shown = pytest.StashKey[bool]()


@dataclass(frozen=True)
class PeerPython:
    """An interpreter to run peer.py with."""

    version: tuple[int, int, int]
    executable: str
    running: bool = False
    id: str = ""

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def legacy_auth(self) -> bool:
        """Whether its multiprocessing speaks the pre-3.12 handshake (HMAC-MD5, no prefix)."""
        return self.version < (3, 12)


@dataclass(frozen=True)
class Discovery:
    pythons: tuple[PeerPython, ...]
    skipped: tuple[str, ...]
    """``"name (reason)"`` for each pyenv version left out."""
    missing_reason: str | None
    """Why there is nothing but the running Python, if so."""


def _run(argv: list[str], env: dict[str, str] | None = None) -> str | None:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _probe(executable: str) -> tuple[int, int, int] | str:
    """The CPython version of ``executable``, or why it cannot be a peer."""
    out = _run([executable, "-I", "-c", _PROBE])
    if out is None:
        return "does not run or lacks multiprocessing.connection"
    name, *numbers = out.split()
    if name != "cpython":
        return f"{name}, not CPython"
    major, minor, micro = map(int, numbers)
    return major, minor, micro


def _pyenv_pythons(pyenv: str) -> tuple[list[PeerPython], list[str]]:
    names = (_run([pyenv, "versions", "--bare"]) or "").split()
    found: list[PeerPython] = []
    skipped: list[str] = []
    for name in names:
        match = _VERSION_NAME.match(name)
        if "/" in name:  # a virtualenv of a version listed on its own
            continue
        if match is None:
            skipped.append(f"{name} (not a CPython version)")
            continue
        if (int(match[1]), int(match[2])) < MIN_VERSION:
            skipped.append(f"{name} (< {'.'.join(map(str, MIN_VERSION))})")
            continue
        executable = _run([pyenv, "which", "python"], env={**os.environ, "PYENV_VERSION": name})
        if not executable:
            skipped.append(f"{name} (pyenv which python failed)")
            continue
        probed = _probe(executable)
        if isinstance(probed, str):
            skipped.append(f"{name} ({probed})")
        elif probed[:2] < MIN_VERSION:
            skipped.append(f"{name} (< {'.'.join(map(str, MIN_VERSION))})")
        else:
            found.append(PeerPython(probed, executable))
    return found, skipped


@functools.cache
def discover() -> Discovery:
    """The running Python plus pyenv's CPythons >= 3.8, one per version, oldest first."""
    running = PeerPython(tuple(sys.version_info[:3]), sys.executable, running=True)
    by_version = {running.version: running}
    skipped: list[str] = []
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        missing_reason: str | None = "pyenv is not on PATH"
    else:
        found, skipped = _pyenv_pythons(pyenv)
        for python in found:
            by_version.setdefault(python.version, python)
        missing_reason = None if len(by_version) > 1 else "pyenv lists no other CPython >= 3.8"
    pythons = sorted(by_version.values(), key=lambda python: python.version)
    minors = [python.version[:2] for python in pythons]
    labelled = []
    for python in pythons:
        digits = python.version if minors.count(python.version[:2]) > 1 else python.version[:2]
        label = "py" + ".".join(map(str, digits))
        labelled.append(PeerPython(python.version, python.executable, python.running, label))
    return Discovery(tuple(labelled), tuple(skipped), missing_reason)


def _report_lines() -> list[str]:
    found = discover()
    peers = ", ".join(
        f"{p.version_string} ({p.executable}{', running' if p.running else ''})"
        for p in found.pythons
    )
    lines = [f"interop peers: {peers}"]
    if found.missing_reason:
        lines.append(f"interop peers: other Python versions not found: {found.missing_reason}")
    if found.skipped:
        lines.append(f"interop peers skipped: {', '.join(found.skipped)}")
    return lines


def pytest_report_header(config: pytest.Config) -> list[str]:
    config.stash[_header_shown] = True
    return _report_lines()


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    # The header only comes from conftests pytest loads before collecting
    # (``pytest tests/interop``), and not at all with -q or --no-header.
    if config.stash.get(_header_shown, False):
        return []
    if not any("peer_python" in getattr(item, "fixturenames", ()) for item in items):
        return []
    return _report_lines()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "peer_python" in metafunc.fixturenames:
        pythons = discover().pythons
        metafunc.parametrize("peer_python", pythons, ids=[p.id for p in pythons])
