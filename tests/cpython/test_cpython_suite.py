"""CPython's own multiprocessing.connection tests, run against mpwire.

The test classes come from the running Python's ``test._test_multiprocessing``
(nothing is copied). They reach the module under test through
``ProcessesMixin.connection``/``Pipe`` and the module global
``multiprocessing`` (``multiprocessing.connection.X``, ``multiprocessing.Pipe``);
both are pointed at mpwire here, at import time, so that child processes
started by spawn or forkserver, which import this module again, see the same.
``from multiprocessing.connection import wait`` inside TestWait is served by
patching that one attribute for the duration of the module.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import types
import unittest
from collections.abc import Iterator
from typing import Any

import pytest

import mpwire
import mpwire.connection

try:
    import test._test_multiprocessing as cpython_tests
except ImportError:  # pragma: no cover - depends on how Python was installed
    pytest.skip("this Python was installed without its test package", allow_module_level=True)

START_METHODS = ("fork", "spawn", "forkserver")

MIXED_CLASSES = (  # BaseTestCase classes, combined with ProcessesMixin
    "_TestConnection",
    "_TestListener",
    "_TestListenerClient",
    "_TestPoll",
    "_TestPicklingConnections",
)
PLAIN_CLASSES = (  # unittest.TestCase classes using multiprocessing.connection directly
    "TestWait",
    "TestInvalidHandle",
    "OtherTest",
    "ChallengeResponseTest",
    "TestInvalidFamily",
    "TestTimeouts",
    "TestIgnoreEINTR",
)


class _MultiprocessingWithMpwire(types.ModuleType):
    """``multiprocessing`` as the tests see it: mpwire's connection and Pipe."""

    connection = mpwire.connection
    Pipe = staticmethod(mpwire.Pipe)

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


cpython_tests.multiprocessing = _MultiprocessingWithMpwire("multiprocessing")  # type: ignore[attr-defined]
cpython_tests.ProcessesMixin.connection = mpwire.connection
cpython_tests.ProcessesMixin.Pipe = staticmethod(mpwire.Pipe)
cpython_tests.wait = mpwire.wait  # type: ignore[attr-defined]


def _with_start_method(base: type, method: str) -> type:
    class StartMethod:
        @classmethod
        def setUpClass(cls) -> None:
            cls._previous_method = multiprocessing.get_start_method(allow_none=True)
            multiprocessing.set_start_method(method, force=True)
            super().setUpClass()  # type: ignore[misc]

        @classmethod
        def tearDownClass(cls) -> None:
            try:
                super().tearDownClass()  # type: ignore[misc]
            finally:
                multiprocessing.set_start_method(cls._previous_method, force=True)

    bases: tuple[type, ...] = (StartMethod, base)
    if issubclass(base, cpython_tests.BaseTestCase):
        bases += (cpython_tests.ProcessesMixin, unittest.TestCase)
    name = f"{method.capitalize()}_{base.__name__.lstrip('_')}"
    cls = type(name, bases, {"__module__": __name__, "__qualname__": name})
    return cls


for _method in START_METHODS:
    for _name in MIXED_CLASSES + PLAIN_CLASSES:
        _base = getattr(cpython_tests, _name, None)
        if _base is not None:
            _cls = _with_start_method(_base, _method)
            globals()[_cls.__name__] = _cls


@pytest.fixture(autouse=True, scope="module")
def _mpwire_wait() -> Iterator[None]:
    """Serve ``from multiprocessing.connection import wait`` with mpwire's wait."""
    original = multiprocessing.connection.wait
    multiprocessing.connection.wait = mpwire.wait  # type: ignore[assignment]
    try:
        yield
    finally:
        multiprocessing.connection.wait = original


def test_suite_is_pointed_at_mpwire() -> None:
    assert cpython_tests.ProcessesMixin.connection is mpwire.connection
    assert cpython_tests.multiprocessing.connection is mpwire.connection
    assert multiprocessing.connection.wait is mpwire.wait
    a, b = cpython_tests.multiprocessing.Pipe()
    with a, b:
        assert type(a) is mpwire.Connection


def test_suite_really_sends_through_mpwire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run one CPython test and count the messages mpwire Connections carried."""
    calls: list[int] = []
    original = mpwire.Connection.send_bytes

    def counting_send_bytes(self: mpwire.Connection, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(mpwire.Connection, "send_bytes", counting_send_bytes)
    suite = unittest.defaultTestLoader.loadTestsFromName("test_sendbytes", Fork_TestConnection)  # type: ignore[name-defined]  # noqa: F821
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    assert result.wasSuccessful()
    assert len(calls) >= 5
