"""A lock whose uncontended take and give cost no method call, and no signal can split.

A Connection takes a lock on every send and receive. ``with lock:`` costs
about 150 ns in CPython 3.11 to 3.13 (it binds two methods and calls
``__exit__`` with three arguments), which is a tenth of a small message's
round trip on one CPU. ``lock.acquire()`` then ``try`` costs half that, but
an exception from a signal handler can land between the two and leave the
lock held for good: the interpreter runs handlers after a call returns.

A :class:`Gate`'s token is the one item of a list. ``del gate.token[0]``
takes it (IndexError: another holder has it) in one bytecode that runs no
handler, and nor do the jump and the ``try`` that follow it; giving it back
is ``gate.token.append(True)``, after which a handler may run. Takers that
find the token gone wait in :meth:`Gate.acquire`. So a caller writes::

    try:
        del gate.token[0]
    except IndexError:
        gate.acquire()
    try:
        ...
    finally:
        gate.token.append(True)
        if gate.waiting:
            gate.wake()

The release stays in the caller's own code: a Python method would give a
signal handler its chance before its first line.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Gate"]

_RECHECK = 1.0
"""Seconds a waiter sleeps before it looks at the token again, woken or not.

A signal handler's exception can land between a release's append and its
wake(); the waiter then finds the token at its next look.
"""


class Gate:
    """Mutual exclusion for one holder at a time; see the module's docstring for its use."""

    __slots__ = ("_changed", "token", "waiting")

    def __init__(self) -> None:
        self.token: list[bool] = [True]
        """Holds one item while the gate is free."""
        self.waiting = 0
        """Takers waiting in acquire(): a release wakes one if any."""
        self._changed = threading.Condition(threading.Lock())

    def locked(self) -> bool:
        """Whether a holder has the token."""
        return not self.token

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the token, waiting ``timeout`` seconds at most (None: no limit).

        Returns False if it did not come in time. The token is taken last,
        with nothing after it that runs a signal handler.
        """
        token = self.token
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            try:
                del token[0]
                return True
            except IndexError:
                pass
            if not self._wait(deadline):
                return False

    def _wait(self, deadline: float | None) -> bool:
        """Wait until the token is back (it may be gone again by the time the caller looks)."""
        with self._changed:
            self.waiting += 1
            try:
                while not self.token:
                    wait = _RECHECK
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                        if wait <= 0:
                            return False
                    self._changed.wait(wait)
            finally:
                self.waiting -= 1
        return True

    def wake(self) -> None:
        """Wake a waiter (the token was just given back)."""
        with self._changed:
            self._changed.notify()
