"""This process's view of the database's clock, for order pacing (`store.rate_limits`)."""

from __future__ import annotations

from collections import deque


class DatabaseClock:
    """The offset of the database's clock from this process's, bounded by reservations' round trips.

    A statement's database time falls between the moment it was sent and the moment its answer came,
    so each round trip bounds the offset from both sides. The tightest bounds among the last
    `SAMPLES` are kept: one slow answer (a busy event loop) loosens nothing, and a clock that drifts
    or steps is followed within a few dozen reservations.
    """

    SAMPLES = 64

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=self.SAMPLES)

    def observe(self, sent: float, database_now: float, answered: float) -> None:
        self._samples.append((database_now - answered, database_now - sent))

    def local_window(self, database_time: float) -> tuple[float, float]:
        """(earliest, latest) local moment that `database_time` may be."""
        low = max(low for low, _ in self._samples)
        high = min(high for _, high in self._samples)
        if low > high:  # the clock stepped between samples: trust the newest round trip alone
            low, high = self._samples[-1]
        return database_time - high, database_time - low
