import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatmaild.dictproxy import (
    MAX_LINE,
    DictHandler,
    tabescape,
    tabunescape,
)


def test_hello_gets_no_reply_and_lookup_answers(served):
    _, connect = served
    c = connect()
    c.send("H3\t2\t0\t\tauth")
    c.expect_silence()
    assert c.request("Lshared/answer\tuser@x") == "O42"
    assert c.request("Lshared/missing") == "N"
    assert c.request("Lshared/fail") == "Fbroken"
    assert c.request("Lshared/crash") == "F"


def test_values_and_keys_are_tab_escaped(served):
    _, connect = served
    c = connect()
    assert c.request("Lshared/tab\x01tkey") == "Oa\x01tb\x01nc"


def test_iterate_is_terminated_by_an_empty_line(served):
    _, connect = served
    c = connect()
    c.send("I0\t0\tshared/")
    rows = []
    while (line := c.readline()) != "":
        rows.append(line)
    assert rows == ["Oshared/answer\t42", "Oshared/tab\x01tkey\ta\x01tb\x01nc"]
    c.send("I0\t1\tshared/")
    assert c.readline() == "Oshared/answer\t42"
    assert c.readline() == ""
    assert c.request("I0\t0\tnothing/") == ""


def test_transactions_commit_and_rollback(served):
    handler, connect = served
    c = connect()
    c.send("B1\tuser@x")
    c.send("S1\tshared/k\tv")
    c.send("U1\tshared/answer")
    c.expect_silence()
    assert handler.sets == []  # nothing happens before the commit
    assert c.request("C1") == "O1"
    assert handler.sets == [("user@x", "shared/k", "v"), ("user@x", "shared/answer", None)]
    assert c.request("Lshared/k") == "Ov"
    c.send("B2\tuser@x")
    c.send("S2\tshared/never\tv")
    c.send("R2")
    assert c.request("Lshared/never") == "N"
    c.send("B3\tuser@x")
    c.send("S3\tshared/readonly\tv")
    assert c.request("D3") == "F3"


def test_transactions_are_per_connection(served):
    handler, connect = served
    a, b = connect(), connect()
    a.send("B1\talice@x")
    b.send("B1\tbob@x")
    a.send("S1\tshared/a\t1")
    b.send("S1\tshared/b\t2")
    assert b.request("C1") == "O1"
    assert a.request("C1") == "O1"
    assert sorted(handler.sets) == [("alice@x", "shared/a", "1"), ("bob@x", "shared/b", "2")]


def test_commit_of_unknown_transaction_fails(served):
    _, connect = served
    assert connect().request("C77") == "F77"


def test_pipelined_replies_keep_request_order(served):
    _, connect = served
    c = connect()
    c.sock.sendall(b"Lshared/slow1\nLshared/answer\nLshared/missing\n")
    assert [c.readline() for _ in range(3)] == ["Oslow", "O42", "N"]


def test_lookups_on_one_connection_run_concurrently(served):
    _, connect = served
    c = connect()
    start = time.monotonic()
    c.sock.sendall(b"".join(b"Lshared/slow%d\n" % i for i in range(8)))
    assert [c.readline() for _ in range(8)] == ["Oslow"] * 8
    # Sequential handling would take 8 * 0.3 s.
    assert time.monotonic() - start < 2.0


def test_lookup_after_commit_sees_the_write(served):
    _, connect = served
    c = connect()
    c.sock.sendall(b"Lshared/slow\nB1\tu\nS1\tshared/new\tyes\nC1\nLshared/new\n")
    assert [c.readline() for _ in range(3)] == ["Oslow", "O1", "Oyes"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"Xunknown\tcommand",
        b"S99\tno-transaction\tv",
        b"Lshared/\xff\xfe",
        b"I0",
        b"B",
        b"S1",
        b"\x00\x01\x02",
    ],
)
def test_malformed_input_keeps_the_connection_usable(served, garbage):
    _, connect = served
    c = connect()
    c.send(garbage)
    if garbage.startswith((b"L", b"I")):
        c.readline()  # a failure reply, so a waiting client is not left hanging
    assert c.request("Lshared/answer") == "O42"


def test_invalid_utf8_lookup_answers_failure(served):
    _, connect = served
    c = connect()
    assert c.request(b"Lshared/\xff") == "F"


def test_over_long_line_closes_only_that_connection(served):
    _, connect = served
    bad, good = connect(), connect()
    bad.sock.sendall(b"L" + b"x" * (MAX_LINE + 10) + b"\n")
    with pytest.raises(ConnectionError):
        bad.readline()
    assert good.request("Lshared/answer") == "O42"
    assert connect().request("Lshared/answer") == "O42"


def test_abrupt_disconnects_do_not_affect_others(served):
    _, connect = served
    good = connect()
    for _ in range(20):
        c = connect()
        c.sock.sendall(b"Lshared/slow\nB1\tu\nS1\tshared/half")  # no newline, then gone
        c.close()
    assert good.request("Lshared/answer") == "O42"


def test_many_concurrent_connections(served):
    _, connect = served
    clients = [connect() for _ in range(200)]
    for c in clients:
        c.send("Lshared/answer")
    assert {c.readline() for c in clients} == {"O42"}


@given(st.text())
def test_tabescape_roundtrip(text):
    escaped = tabescape(text)
    assert "\t" not in escaped and "\n" not in escaped
    assert tabunescape(escaped) == text


# One server on purpose: it must survive all the inputs in a row.
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_random_bytes_never_break_the_server(served, data):
    _, connect = served
    c = connect()
    c.sock.sendall(data.replace(b"\n", b"") + b"\n")
    c.close()
    assert connect().request("Lshared/answer") == "O42"


# --- the shared command line of the dict services ---


def test_service_main_without_two_arguments_prints_its_usage():
    from chatmaild import dictproxy

    with pytest.raises(SystemExit) as exc:
        dictproxy.main("lastlogin", lambda config: DictHandler(), ["only-a-socket"])
    assert exc.value.code == "usage: lastlogin SOCKET CHATMAIL_INI"


def test_service_main_closes_the_handler_when_the_server_cannot_start(tmp_path):
    from chatmaild import dictproxy

    ini = tmp_path / "chatmail.ini"
    ini.write_text("[params]\nmail_domain = example.org\n")
    made = []

    class Closing(DictHandler):
        def __init__(self, config):
            self.config = config
            self.closed = False
            made.append(self)

        def close(self):
            self.closed = True

    # The socket's directory does not exist, so listening fails after the handler started.
    with pytest.raises(OSError):
        dictproxy.main("x", Closing, [str(tmp_path / "missing" / "s"), str(ini)])
    assert [h.config.mail_domain for h in made] == ["example.org"]
    assert made[0].closed
