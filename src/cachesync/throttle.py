"""A tiny rate limiter for log lines that must be said, but not ten thousand times a second.

When Redis is down every batch hands its actions to the retry path; logging
each hand-off would drown the log, logging none would make the outage silent.
:class:`Throttle` lets one line through per interval and counts what it held
back, so the next line can say "and 4,211 more since".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle:
    """At most one pass per *interval* seconds; counts the events in between.

    Thread-safe (the fast path runs in the application's threads). The clock
    is injected so tests need no sleeps.
    """

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if interval < 0:
            raise ValueError("interval must be >= 0 seconds")
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._held = 0

    def passes(self, count: int = 1) -> int | None:
        """Record *count* events. When a line may be logged now, the number of events since
        the previous line (these included); else ``None`` (they are added to the next one)."""
        with self._lock:
            now = self._clock()
            self._held += count
            if self._last is not None and now - self._last < self.interval:
                return None
            self._last = now
            total, self._held = self._held, 0
            return total
