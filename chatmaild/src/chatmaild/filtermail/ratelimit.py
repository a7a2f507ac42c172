"""Per-sender GCRA rate limit with bounded memory.

GCRA (generic cell rate algorithm, ITU-T I.371) keeps one number per sender: the
theoretical arrival time (TAT) of the next message. A sender whose TAT lies in the past
has a full bucket, which is exactly the state of a sender never seen, so that entry is
dropped. Entries are kept in least-recently-updated order and a couple of the oldest are
checked on every call; a hard cap bounds memory even if millions of senders are active
inside one refill window.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """``per_minute`` messages per minute, up to ``burst`` at once, per key."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1 or burst < 1 or max_entries < 1:
            raise ValueError("per_minute, burst and max_entries must be at least 1")
        self.interval = 60.0 / per_minute
        self.tolerance = self.interval * (burst - 1)
        self.max_entries = max_entries
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._last_full_sweep = float("-inf")

    def __len__(self) -> int:
        return len(self._tat)

    def allow(self, key: str) -> bool:
        """Count one message for ``key``; False if it exceeds the limit."""
        now = self._clock()
        self._sweep_oldest(now, 2)
        tat = self._tat.pop(key, None)
        if tat is None:
            if len(self._tat) >= self.max_entries:
                self._sweep_all(now)
                if len(self._tat) >= self.max_entries:
                    # Refusing (temporarily) is safer than forgetting someone's debt.
                    return False
            tat = now
        tat = max(tat, now)
        if tat - now > self.tolerance:
            self._tat[key] = tat
            return False
        self._tat[key] = tat + self.interval
        return True

    def _sweep_oldest(self, now: float, count: int) -> None:
        for key in list(_take(self._tat, count)):
            if self._tat[key] <= now:
                del self._tat[key]

    def _sweep_all(self, now: float) -> None:
        # O(n); at most once per second so a flood of new senders cannot make every
        # call walk the whole table.
        if now - self._last_full_sweep < 1.0:
            return
        self._last_full_sweep = now
        self._tat = {k: v for k, v in self._tat.items() if v > now}


def _take(d: dict, count: int):
    it = iter(d)
    for _ in range(count):
        try:
            yield next(it)
        except StopIteration:
            return
