"""Helpers for real Delta Chat clients in the online suite and the benchmarks."""

from __future__ import annotations

import queue
import time

from deltachat_rpc_client._utils import AttrDict
from deltachat_rpc_client.const import EventType


def addr_of(account) -> str:
    return account.self_contact.get_snapshot().address


def online_account(dc, addr: str, password: str, domain: str):
    """A Delta Chat account logged in with explicit servers, I/O running."""
    account = dc.add_account()
    account.add_or_update_transport({"addr": addr, "password": password,
                                     "imapServer": domain, "smtpServer": domain})  # fmt: skip
    account.bring_online()
    account.test_password = password
    return account


def next_event(account, deadline: float) -> AttrDict:
    """The account's next event; TimeoutError at ``deadline`` (account.wait_for_event()
    would block for ever when nothing happens)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    try:
        return AttrDict(account._rpc.get_queue(account.id).get(timeout=left))
    except queue.Empty:
        raise TimeoutError from None


def wait_for(account, kind, timeout: float = 60, match=lambda event: True) -> AttrDict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = next_event(account, deadline)
        except TimeoutError:
            raise TimeoutError(f"no {kind} event within {timeout}s") from None
        if event.kind == kind and match(event):
            return event


def wait_text(account, text: str, timeout: float = 60):
    """The snapshot of the incoming message with ``text``."""
    found = {}

    def is_it(event):
        snap = account.get_message_by_id(event.msg_id).get_snapshot()
        found["msg"] = snap
        return snap.text == text

    try:
        wait_for(account, EventType.INCOMING_MSG, timeout, is_it)
    except TimeoutError:
        raise TimeoutError(f"{text!r} did not arrive within {timeout}s") from None
    return found["msg"]
