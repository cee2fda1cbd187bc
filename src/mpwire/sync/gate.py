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
find the token gone wait in :meth:`Gate.acquire`, and a give-back wakes
one. So a caller writes::

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

import contextlib
import threading
import time

__all__ = ["Gate"]

_RECHECK = 1.0
"""Seconds a waiter sleeps before it looks at the token again, woken or not.

A signal handler's exception can land between a give-back's append and its
wake(), or in a waiter that was rung; the others then find the token at
their next look.
"""


class Gate:
    """Mutual exclusion for one holder at a time; see the module's docstring for its use.

    Waiters sleep on a doorbell, a plain lock that a give-back releases
    (rings) when someone waits. Every step of it is a single C call, so a
    signal's exception can at worst use up a ring, which the other waiters
    make up for at their next look. The guarantee assumes no Python-level
    tracer (pdb, a pure-Python coverage tracer): one runs its own code
    between the take and the ``try``, and a signal can land there.
    """

    __slots__ = ("_doorbell", "token", "waiting")

    def __init__(self) -> None:
        self.token: list[bool] = [True]
        """Holds one item while the gate is free."""
        self.waiting: list[None] = []
        """One item per taker waiting in acquire(): a give-back then calls wake()."""
        self._doorbell = threading.Lock()
        self._doorbell.acquire()  # held: nobody rang

    def locked(self) -> bool:
        """Whether a holder has the token."""
        return not self.token

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the token, waiting ``timeout`` seconds at most.

        None waits as long as it takes; zero, less, or NaN does not wait.
        Returns False if the token did not come in time. It is taken last,
        with nothing after it that runs a signal handler.
        """
        token = self.token
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                del token[0]
                return True
            except IndexError:
                pass
            wait = _RECHECK
            if deadline is not None:
                left = deadline - time.monotonic()
                if not left > 0:
                    return False
                wait = min(wait, left)
            try:
                self._wait(wait)
            except BaseException as exc:
                # Not "during handling of IndexError": that only said the token was gone.
                exc.__suppress_context__ = True
                raise

    def _wait(self, seconds: float) -> None:
        """Wait once, for a ring or ``seconds``; the caller looks at the token again."""
        waiting = self.waiting
        try:
            waiting.append(None)
            if not self.token:  # (given back before we were counted: no ring comes)
                self._doorbell.acquire(True, seconds)
        finally:
            waiting.pop()

    def wake(self) -> None:
        """Ring the doorbell (the token was just given back): a waiter looks again."""
        with contextlib.suppress(RuntimeError):  # rung already
            self._doorbell.release()
