"""Malformed milter conversations beyond the framing (test_milter_protocol.py has the framing):
each closes that connection with a warning naming what was wrong, decides no message, and
leaves the service serving; and the limits on what one message may hold."""

from __future__ import annotations

import logging
import socket
import struct
from typing import Any

import pytest
from test_milter_protocol import ALL_ACTIONS, ALL_STEPS, Client, added_headers

from milter.message import MAX_HEADER_BYTES


@pytest.fixture
def milter_config(config_for: Any) -> Any:
    return lambda **changes: config_for(protocol="milter", mode="before-queue", **changes)


def decided(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The per-message log lines: one for every message milter decided."""
    return [getattr(r, "fields", {}) for r in caplog.records if r.name == "milter.message"]


def closed_without_reply(client: Client) -> None:
    """Milter closed the connection and said nothing first (a reset: it closed with packets of
    ours still unread)."""
    client.sock.settimeout(30)
    try:
        got = client.sock.recv(100)
    except ConnectionResetError:
        got = b""
    finally:
        client.close()
    assert got == b""


def still_serving(port: int) -> None:
    good = Client(port)
    good.negotiate()
    good.message([(b"Subject", b"hi")], b"x\r\n")
    assert good.replies_until_final()[-1] == (b"c", b"")
    good.close()


@pytest.mark.parametrize(
    ("packet", "said"),
    [
        (b"O" + struct.pack("!II", 6, ALL_ACTIONS), "option negotiation of 8 bytes; expected 12"),
        (
            b"O" + struct.pack("!III", 1, ALL_ACTIONS, ALL_STEPS),
            "milter protocol version 1; expected 2 or later",
        ),
        (b"M<a@example.org>\0", "command 'M' before option negotiation"),
        (b"Lsubject\0hi\0", "command 'L' before option negotiation"),
        (b"Bbody", "command 'B' before option negotiation"),
        (b"E", "command 'E' before option negotiation"),
        (
            b"Cclient.example.org\0" + b"4" + struct.pack("!H", 25) + b"192.0.2.1\0",
            "command 'C' before option",
        ),
    ],
    ids=["short-O", "version-1", "MAIL-first", "header-first", "body-first", "end-first", "connect-first"],
)
def test_a_bad_start_closes_the_connection_and_decides_nothing(
    milter_config: Any, serve: Any, caplog: pytest.LogCaptureFixture, packet: bytes, said: str
) -> None:
    with serve(milter_config()) as running, caplog.at_level(logging.INFO):
        bad = Client(running.port)
        bad.send(packet[:1], packet[1:])
        closed_without_reply(bad)
        still_serving(running.port)
    assert said in caplog.text
    assert len(decided(caplog)) == 1  # the good connection's message alone


@pytest.mark.parametrize(
    ("commands", "said"),
    [
        ([(b"B", b"a body without a message\r\n"), (b"E", b"")], "body before MAIL"),
        ([(b"L", b"Subject\0hi\0")], "a header before MAIL"),
        ([(b"R", b"<bob@example.net>\0")], "RCPT before MAIL"),
        ([(b"N", b"")], "the end of the headers before MAIL"),
        ([(b"E", b"")], "the end of the message before MAIL"),
        # An aborted message is over: its body may not follow.
        ([(b"M", b"<a@example.org>\0"), (b"A", b""), (b"B", b"late\r\n")], "body before MAIL"),
    ],
    ids=["body", "header", "rcpt", "end-of-headers", "end-of-body", "body-after-abort"],
)
def test_a_part_of_a_message_before_its_mail_closes_the_connection(
    milter_config: Any,
    serve: Any,
    caplog: pytest.LogCaptureFixture,
    commands: list[tuple[bytes, bytes]],
    said: str,
) -> None:
    with serve(milter_config()) as running, caplog.at_level(logging.INFO):
        bad = Client(running.port)
        bad.negotiate()
        for code, data in commands:
            bad.send(code, data)
        closed_without_reply(bad)
        still_serving(running.port)
    assert said in caplog.text
    assert len(decided(caplog)) == 1


def test_a_truncated_packet_then_eof_decides_nothing_and_logs_no_error(
    milter_config: Any, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(milter_config()) as running, caplog.at_level(logging.INFO):
        bad = Client(running.port)
        bad.negotiate()
        bad.send(b"M", b"<a@example.org>\0")
        bad.send(b"L", b"Subject\0hi\0")
        bad.sock.sendall(struct.pack("!I", 100) + b"Bonly ten")  # 100 bytes announced, 10 sent
        bad.sock.shutdown(socket.SHUT_WR)  # and the MTA is gone
        closed_without_reply(bad)
        still_serving(running.port)
    assert len(decided(caplog)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_body_past_the_size_limit_is_scored_on_its_first_part_and_held_to_the_limit(
    milter_config: Any, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 20_000
    with serve(milter_config(max_message_size=limit)) as running, caplog.at_level(logging.INFO):
        client = Client(running.port)
        client.negotiate()
        chunk = b"all work and no play makes a dull message\r\n" * 1400  # ~60 KB, Postfix's chunk size
        client.send(b"M", b"<a@example.org>\0")
        client.send(b"R", b"<b@example.net>\0")
        client.send(b"L", b"Subject\0big\0")
        client.send(b"N")
        for _ in range(5):  # 300 KB in all
            client.send(b"B", chunk)
        client.send(b"E")
        replies = client.replies_until_final()
        client.close()
    assert replies[-1] == (b"c", b"") and b"X-Spam-Score" in added_headers(replies)
    [fields] = decided(caplog)
    assert fields["size"] == limit and isinstance(fields["probability"], float)


def test_headers_past_the_cap_are_not_kept_but_a_forged_one_there_is_still_removed(
    milter_config: Any, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    filler = b"x" * 90
    count = MAX_HEADER_BYTES // 100 + 500  # well past the cap on the header block milter keeps
    with serve(milter_config()) as running, caplog.at_level(logging.INFO):
        client = Client(running.port)
        client.negotiate()
        client.send(b"M", b"<a@example.org>\0")
        client.send(b"R", b"<b@example.net>\0")
        for i in range(count):
            client.send(b"L", b"X-Filler-%d\0" % i + filler + b"\0")
        client.send(b"L", b"X-Spam-Flag\0NO\0")  # forged, after the cap
        client.send(b"N")
        client.send(b"B", b"body\r\n")
        client.send(b"E")
        replies = client.replies_until_final()
        client.close()
    removed = [data for code, data in replies if code == b"m"]
    assert removed == [struct.pack("!I", 1) + b"X-Spam-Flag\0\0"]
    assert replies[-1] == (b"c", b"")
    [fields] = decided(caplog)
    size = fields["size"]
    assert isinstance(size, int) and MAX_HEADER_BYTES < size < MAX_HEADER_BYTES + 200  # held at the cap
