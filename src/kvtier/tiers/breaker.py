"""A circuit breaker: stop calling a failing server, try again after a growing backoff."""

from __future__ import annotations

import threading
import time
from typing import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Closed: every call goes through. ``failures`` consecutive failures open it: calls are
    refused at no cost for ``backoff_s``. Then it half-opens: exactly one trial call goes
    through; success closes it, failure opens it again for twice as long (up to
    ``max_backoff_s``). Thread-safe.

    Callers ask ``allow()`` before a call and report ``succeeded()`` or ``failed()`` after
    every call that ``allow()`` let through.
    """

    def __init__(self, failures: int, backoff_s: float, max_backoff_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.backoff_s, self.max_backoff_s = failures, backoff_s, max_backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._consecutive = 0
        self._wait_s = backoff_s
        self._reopen_at = 0.0
        self._trial_running = False
        self.opened = 0     # times it opened
        self.refused = 0    # calls refused while open

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() >= self._reopen_at:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """Whether a call may go to the server now."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN and self._clock() >= self._reopen_at:
                self._state = HALF_OPEN
            if self._state == HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            self.refused += 1
            return False

    def succeeded(self) -> None:
        with self._lock:
            self._state, self._consecutive = CLOSED, 0
            self._wait_s, self._trial_running = self.backoff_s, False

    def failed(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._state == HALF_OPEN:
                self._wait_s = min(self._wait_s * 2, self.max_backoff_s)
                self._open()
            elif self._state == CLOSED and self._consecutive >= self.failures:
                self._open()

    def _open(self) -> None:
        self._state, self._trial_running = OPEN, False
        self._reopen_at = self._clock() + self._wait_s
        self.opened += 1

    def stats(self) -> dict[str, object]:
        return {"breaker": self.state, "breaker_opened": self.opened,
                "breaker_refused": self.refused}
