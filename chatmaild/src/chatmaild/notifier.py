"""Push notifications: a persistent queue of (address, device token) POSTs with retries.

On new mail for an address, one queue file per device token is written to
``<mailboxes_dir>/pending_notifications/`` (``addr``, start time and token on three lines,
written to a temporary file and renamed, see ``fsutil``), so a restart loses nothing:
:meth:`Notifier.start` re-queues every file with its original start time.

Each attempt POSTs the raw token to the notification URL. 200 ends the item, 410 (the
push service says the token is gone) removes the token from the account and ends the
item, anything else moves the item to the next retry level (delays 0, 8, 64, 512 and 4096
seconds). An item is dropped when it runs out of levels or would be tried more than five
hours after the mail arrived. Worker threads per level are fixed, so a slow or dead push
server costs at most that many blocked threads and never slows down the caller.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from .fsutil import is_temporary, write_atomic

log = logging.getLogger("notifier")

QUEUE_DIRNAME = "pending_notifications"
RETRY_DELAYS: tuple[float, ...] = (0, 8, 64, 512, 4096)
DROP_DEADLINE = 5 * 3600
HTTP_TIMEOUT = 60
# Level 0 carries every first attempt, so it gets the most threads.
WORKERS_PER_LEVEL: tuple[int, ...] = (4, 2, 2, 2, 2)


@dataclass(frozen=True)
class PendingNotification:
    """One queue file: a token of ``addr`` to notify, first queued at ``start_ts``."""

    path: Path
    addr: str
    start_ts: float
    token: str

    def serialize(self) -> str:
        return f"{self.addr}\n{self.start_ts}\n{self.token}"

    @classmethod
    def parse(cls, path: Path, text: str) -> PendingNotification:
        """ValueError for anything that is not a queue file we wrote."""
        # The token may contain newlines; addr and start time cannot.
        addr, start_ts, token = text.split("\n", 2)
        if "@" not in addr or not token:
            raise ValueError("missing address or token")
        return cls(path, addr, float(start_ts), token)


class _RetryLevel:
    """Items due at a time; ``take`` blocks until the earliest one is due."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.heap: list[tuple[float, int, PendingNotification]] = []
        self.cond = threading.Condition()
        self.seq = itertools.count()
        self.stopped = False

    def put(self, when: float, item: PendingNotification) -> None:
        with self.cond:
            heapq.heappush(self.heap, (when, next(self.seq), item))
            self.cond.notify()

    def take(self) -> PendingNotification | None:
        """The next due item, or None once stopped."""
        with self.cond:
            while not self.stopped:
                if not self.heap:
                    self.cond.wait()
                    continue
                wait = self.heap[0][0] - self.clock()
                if wait <= 0:
                    return heapq.heappop(self.heap)[2]
                # A newer item may be due earlier (e.g. after a restart), so wake on put.
                self.cond.wait(wait)
            return None

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def __len__(self) -> int:
        with self.cond:
            return len(self.heap)


class Notifier:
    """Delivers queued notifications in background threads."""

    def __init__(
        self,
        queue_dir: Path,
        url: str,
        remove_token: Callable[[str, str], None],
        *,
        delays: Sequence[float] = RETRY_DELAYS,
        deadline: float = DROP_DEADLINE,
        timeout: float = HTTP_TIMEOUT,
        workers: Sequence[int] = WORKERS_PER_LEVEL,
        clock: Callable[[], float] = time.time,
    ):
        if len(workers) != len(delays):
            raise ValueError("need a worker count for every retry level")
        self.queue_dir = Path(queue_dir)
        self.url = url
        self.remove_token = remove_token
        self.delays = tuple(delays)
        self.deadline = deadline
        self.timeout = timeout
        self.workers = tuple(workers)
        self.clock = clock
        self.levels = [_RetryLevel(clock) for _ in self.delays]
        self.threads: list[threading.Thread] = []

    def start(self) -> Notifier:
        """Re-queue what a previous run left on disk, then start the worker threads."""
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        for item in self._load_pending():
            self._schedule(item, 0)
        for level, count in enumerate(self.workers):
            for i in range(count):
                t = threading.Thread(
                    target=self._work, args=(level,), name=f"notify-{level}-{i}", daemon=True
                )
                t.start()
                self.threads.append(t)
        return self

    def stop(self, timeout: float = 10) -> None:
        """Stop the workers; queue files stay on disk for the next start."""
        for level in self.levels:
            level.stop()
        for t in self.threads:
            t.join(timeout)
        self.threads.clear()

    def notify(self, addr: str, tokens: Iterable[str]) -> None:
        """Queue one notification per token; returns once they are on disk."""
        now = self.clock()
        for token in tokens:
            path = self.queue_dir / uuid.uuid4().hex
            item = PendingNotification(path, addr, now, token)
            # No fsync: a restart keeps the page cache; losing a push to a power cut is
            # acceptable, an fsync per delivered message is not. A full disk raises here
            # and leaves no temporary file.
            write_atomic(path, item.serialize(), durable=False)
            self._schedule(item, 0)

    def pending_count(self) -> int:
        return sum(len(level) for level in self.levels)

    def _load_pending(self) -> list[PendingNotification]:
        items = []
        for path in sorted(self.queue_dir.iterdir()):
            # Left by a crash in the middle of a write (".tmp": older versions).
            if is_temporary(path.name) or path.name.endswith(".tmp"):
                log.warning("removing spurious queue item %s", path.name)
                path.unlink(missing_ok=True)
                continue
            try:
                items.append(PendingNotification.parse(path, path.read_text("utf-8")))
            except (ValueError, UnicodeDecodeError):
                log.warning("removing unreadable queue item %s", path.name)
                path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("cannot read queue item %s: %s", path.name, e)
        return items

    def _schedule(self, item: PendingNotification, level: int) -> None:
        if level >= len(self.delays):
            self._drop(item)
            return
        when = self.clock() + self.delays[level]
        if when > item.start_ts + self.deadline:
            self._drop(item)
            return
        self.levels[level].put(when, item)

    def _drop(self, item: PendingNotification) -> None:
        # Only a token prefix: enough to correlate, not enough to reuse.
        log.error("notification exceeded deadline: %r", item.token[:12] + "...")
        item.path.unlink(missing_ok=True)

    def _work(self, level: int) -> None:
        session = requests.Session()
        try:
            while True:
                item = self.levels[level].take()
                if item is None:
                    return
                try:
                    self._attempt(session, item, level)
                except Exception:
                    # A bug must not silently kill a worker and shrink the pool.
                    log.exception("notification attempt failed unexpectedly")
                    self._schedule(item, level + 1)
        finally:
            session.close()

    def _attempt(self, session: requests.Session, item: PendingNotification, level: int) -> None:
        try:
            response = session.post(self.url, data=item.token.encode("utf-8"), timeout=self.timeout)
        except requests.RequestException as e:
            log.warning("Notification request failed: %s", e)
            self._schedule(item, level + 1)
            return
        if response.status_code == 200:
            item.path.unlink(missing_ok=True)
        elif response.status_code == 410:
            log.info("push service reports a gone token, removing it for %s", item.addr)
            self.remove_token(item.addr, item.token)
            item.path.unlink(missing_ok=True)
        else:
            log.warning("Notification request failed: HTTP %d", response.status_code)
            self._schedule(item, level + 1)
