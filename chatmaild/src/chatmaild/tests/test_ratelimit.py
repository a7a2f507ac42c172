"""GCRA per-sender rate limit: burst, refill, and memory that stays bounded."""

from __future__ import annotations

import pytest

from chatmaild.filtermail.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_burst_is_allowed_then_the_next_message_is_refused(clock):
    limiter = RateLimiter(60, 10, clock=clock)
    assert all(limiter.allow("a@x") for _ in range(10))
    assert not limiter.allow("a@x")


def test_one_message_per_interval_after_the_burst(clock):
    limiter = RateLimiter(60, 10, clock=clock)
    for _ in range(10):
        limiter.allow("a@x")
    clock.now += 1.0
    assert limiter.allow("a@x")
    assert not limiter.allow("a@x")
    clock.now += 0.5
    assert not limiter.allow("a@x")
    clock.now += 0.5
    assert limiter.allow("a@x")


def test_refused_attempts_do_not_extend_the_wait(clock):
    limiter = RateLimiter(60, 1, clock=clock)
    assert limiter.allow("a@x")
    for _ in range(100):
        assert not limiter.allow("a@x")
    clock.now += 1.0
    assert limiter.allow("a@x")


def test_senders_are_limited_independently(clock):
    limiter = RateLimiter(1, 2, clock=clock)
    assert limiter.allow("a@x") and limiter.allow("a@x")
    assert not limiter.allow("a@x")
    assert limiter.allow("b@x")


def test_full_bucket_state_is_forgotten(clock):
    limiter = RateLimiter(60, 10, clock=clock)
    for i in range(1000):
        limiter.allow(f"user{i}@x")
    assert len(limiter) == 1000
    clock.now += 10
    for _ in range(1000):
        limiter.allow("steady@x")
        clock.now += 1.0
    assert len(limiter) <= 2


def test_millions_of_distinct_senders_keep_the_table_bounded(clock):
    limiter = RateLimiter(60, 10, max_entries=5000, clock=clock)
    for i in range(1_000_000):
        limiter.allow(f"u{i}@x")
        clock.now += 0.0001  # 10,000 new senders per second
    assert len(limiter) <= 5000


def test_when_the_table_is_full_new_senders_wait_but_known_ones_continue(clock):
    limiter = RateLimiter(60, 10, max_entries=100, clock=clock)
    for i in range(100):
        assert limiter.allow(f"u{i}@x")
    assert not limiter.allow("newcomer@x")
    assert limiter.allow("u5@x")
    clock.now += 60
    assert limiter.allow("newcomer@x")
