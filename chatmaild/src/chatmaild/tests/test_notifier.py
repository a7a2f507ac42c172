import os

import pytest

from chatmaild.metadata import MetadataStore
from chatmaild.notifier import Notifier, PendingNotification
from chatmaild.testkit.pushserver import HANG, PushServer
from chatmaild.testkit.waiting import wait_until

ADDR = "abcdefghi@chat.example.org"
# Short stand-ins for 0, 8, 64, 512, 4096 seconds.
FAST = (0, 0.02, 0.04, 0.06, 0.08)


pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def store(config):
    """The metadata of ADDR's account, in the test kit's ``config``."""
    (config.mailboxes_dir / ADDR).mkdir()
    return MetadataStore(config)


@pytest.fixture
def notifiers():
    started = []

    def make(config, store, url, **kw):
        kw.setdefault("delays", FAST)
        n = Notifier(config.mailboxes_dir / "pending_notifications", url, store.remove_token, **kw)
        started.append(n)
        return n.start()

    yield make
    for n in started:
        n.stop()


def queue_files(config):
    return sorted(os.listdir(config.mailboxes_dir / "pending_notifications"))


def test_token_is_posted_and_queue_item_removed_on_200(config, store, notifiers):
    with PushServer() as server:
        notifier = notifiers(config, store, server.url)
        notifier.notify(ADDR, ["tok-1"])
        wait_until(lambda: not queue_files(config), "queue to drain")
        assert server.received() == ["tok-1"]


def test_failures_are_retried_on_the_next_levels(config, store, notifiers):
    with PushServer(lambda n, body: [500, 503, 200][n]) as server:
        notifier = notifiers(config, store, server.url)
        notifier.notify(ADDR, ["tok-1"])
        wait_until(lambda: not queue_files(config), "queue to drain")
        assert server.received() == ["tok-1"] * 3


def test_410_removes_the_token_from_the_account(config, store, notifiers):
    store.add_token(ADDR, "gone")
    store.add_token(ADDR, "alive")
    with PushServer(lambda n, body: 410 if body == "gone" else 200) as server:
        notifier = notifiers(config, store, server.url)
        notifier.notify(ADDR, store.get_tokens(ADDR))
        wait_until(lambda: not queue_files(config), "queue to drain")
        assert sorted(server.received()) == ["alive", "gone"]
    assert store.get_tokens(ADDR) == ["alive"]


def test_hanging_server_times_out_and_is_retried(config, store, notifiers):
    with PushServer(lambda n, body: HANG if n == 0 else 200) as server:
        notifier = notifiers(config, store, server.url, timeout=1)
        notifier.notify(ADDR, ["tok-1"])
        wait_until(lambda: not queue_files(config), "queue to drain")
        # Held first request, then at least one retry that got its 200.
        received = server.received()
        assert len(received) >= 2 and set(received) == {"tok-1"}
        assert server.hanging == 1


def test_item_is_dropped_after_the_last_retry_level(config, store, notifiers, caplog):
    with PushServer(lambda n, body: 500) as server:
        notifier = notifiers(config, store, server.url, delays=(0, 0.01, 0.01), workers=(1, 1, 1))
        notifier.notify(ADDR, ["tok-1"])
        wait_until(lambda: not queue_files(config), "item to be dropped")
        # The file goes only after the third failure, and with it the last retry.
        assert server.received() == ["tok-1"] * 3
    assert "notification exceeded deadline" in caplog.text


def test_item_is_dropped_when_a_retry_would_pass_the_deadline(config, store, notifiers):
    with PushServer(lambda n, body: 500) as server:
        notifier = notifiers(
            config, store, server.url, delays=(0, 3600, 3600), workers=(1, 1, 1), deadline=60
        )
        notifier.notify(ADDR, ["tok-1"])
        wait_until(lambda: not queue_files(config), "item to be dropped")
        assert server.received() == ["tok-1"]
        assert notifier.pending_count() == 0


def test_old_queue_item_found_at_start_is_dropped_without_posting(config, store, notifiers):
    queue = config.mailboxes_dir / "pending_notifications"
    queue.mkdir()
    (queue / "old").write_text(f"{ADDR}\n1000.0\ntok-1")
    with PushServer() as server:
        notifiers(config, store, server.url)
        assert not queue_files(config)
        assert server.received() == []


def test_restart_mid_queue_loses_nothing(config, store, notifiers):
    answers = {"now": 500}
    with PushServer(lambda n, body: answers["now"]) as server:
        # Level 1 waits an hour: the items sit in the queue when the service stops.
        first = notifiers(config, store, server.url, delays=(0, 3600, 3600, 3600, 3600))
        first.notify(ADDR, ["tok-1", "tok-2", "tok-3"])
        wait_until(lambda: len(server.received()) == 3, "first attempts")
        first.stop()
        assert len(queue_files(config)) == 3
        queue = config.mailboxes_dir / "pending_notifications"
        (queue / "half-written.tmp").write_text("x")
        (queue / "garbage").write_text("no newline here")

        answers["now"] = 200
        notifiers(config, store, server.url)
        wait_until(lambda: not queue_files(config), "queue to drain after restart")
        assert sorted(server.received()[3:]) == ["tok-1", "tok-2", "tok-3"]


def test_concurrency_is_bounded_by_the_worker_count(config, store, notifiers):
    with PushServer(lambda n, body: HANG) as server:
        notifier = notifiers(config, store, server.url, workers=(2, 1, 1, 1, 1))
        notifier.notify(ADDR, [f"tok-{i}" for i in range(5)])
        wait_until(lambda: server.hanging == 2, "two requests in flight")
        # Both level-0 workers are stuck in HTTP; the rest wait in the queue.
        assert notifier.pending_count() == 3
        assert len(server.received()) == 2


def test_queue_item_round_trips_a_token_with_newlines(tmp_path):
    item = PendingNotification(tmp_path / "x", ADDR, 12.5, "line1\nline2")
    parsed = PendingNotification.parse(item.path, item.serialize())
    assert parsed == item
