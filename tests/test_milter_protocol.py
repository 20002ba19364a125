"""The milter protocol front-end on a real socket: packets in, the exact reply packets out.

The client here speaks the protocol as Postfix's milter8 client does (version 6, all steps
offered); tests/e2e/test_milter_protocol.py runs the real Postfix against it.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Banded, RaisingRules, RaisingScorer, swap_policy

from milter import milter_protocol as mp
from milter.config import load_config
from milter.model import Model
from milter.rules import Action

ALL_ACTIONS = 0x1FF
ALL_STEPS = 0x1FFFFF  # what Postfix 3.7 offers: every step, every no-reply flag


class Client:
    """The MTA side of the protocol, on a real socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, code: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!I", len(data) + 1) + code + data)

    def recv(self) -> tuple[bytes, bytes]:
        while len(self.buffer) < 4 or len(self.buffer) < 4 + struct.unpack("!I", self.buffer[:4])[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        (length,) = struct.unpack("!I", self.buffer[:4])
        body, self.buffer = self.buffer[4 : 4 + length], self.buffer[4 + length :]
        return body[:1], body[1:]

    def replies_until_final(self) -> list[tuple[bytes, bytes]]:
        """Reply packets up to the final one of a message (continue, accept, reject, ...)."""
        out = []
        while True:
            out.append(self.recv())
            if out[-1][0] in b"cadrty":
                return out

    def negotiate(self, steps: int = ALL_STEPS) -> tuple[int, int, int]:
        self.send(b"O", struct.pack("!III", 6, ALL_ACTIONS, steps))
        code, data = self.recv()
        assert code == b"O"
        version, actions, agreed = struct.unpack("!III", data)
        return version, actions, agreed

    def message(
        self,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        leading_space: bool = False,
        queue_id: str = "4ABC123",
    ) -> None:
        """One message, as Postfix sends it (no replies expected before the end of the body)."""
        self.send(b"D", b"C" + b"j\0mx.example.net\0{daemon_name}\0smtpd\0")
        self.send(b"C", b"client.example.org\0" + b"4" + struct.pack("!H", 40000) + b"192.0.2.7\0")
        self.send(b"H", b"client.example.org\0")
        self.send(b"D", b"M" + b"i\0" + queue_id.encode() + b"\0")
        self.send(b"M", b"<alice@example.org>\0SIZE=100\0")
        self.send(b"R", b"<bob@example.net>\0")
        for name, value in headers:
            self.send(b"L", name + b"\0" + (b" " if leading_space else b"") + value + b"\0")
        self.send(b"N")
        self.send(b"B", body)
        self.send(b"E")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def milter_config(config_for: Any) -> Any:
    return lambda **changes: config_for(protocol="milter", mode="before-queue", **changes)


@pytest.fixture
def client_of() -> Iterator[Any]:
    clients: list[Client] = []

    def connect(port: int) -> Client:
        clients.append(Client(port))
        return clients[-1]

    yield connect
    for c in clients:
        c.close()


def split(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    fields = []
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        fields.append((name, value))
    return fields, body


def added_headers(replies: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    out = {}
    for code, data in replies:
        if code == b"h":
            name, value, _ = data.split(b"\0")
            out[name] = value
    return out


def test_protocol_name_is_a_config_setting() -> None:
    assert load_config(None, {"protocol": "milter"}).protocol == "milter"
    assert load_config(None, {"protocol": "milter"}).mode == "before-queue"  # a milter can reject
    with pytest.raises(Exception, match="expected smtp or milter"):
        load_config(None, {"protocol": "lmtp"})


# libmilter's published values (include/libmilter/mfdef.h), written out here so that the test
# checks the wire against the protocol, not the implementation against its own constants.
SMFIF_ADDHDRS, SMFIF_CHGHDRS, SMFIF_QUARANTINE = 0x01, 0x10, 0x20
SMFIP_NR_HDR, SMFIP_NOUNKNOWN, SMFIP_NODATA = 0x80, 0x100, 0x200
SMFIP_NR_CONN, SMFIP_NR_HELO, SMFIP_NR_MAIL, SMFIP_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
SMFIP_NR_DATA, SMFIP_NR_UNKN, SMFIP_NR_EOH, SMFIP_NR_BODY = 0x10000, 0x20000, 0x40000, 0x80000
SMFIP_HDR_LEADSPC = 0x100000


def test_negotiation_asks_for_no_reply_but_at_the_end(milter_config: Any, serve: Any, client_of: Any) -> None:
    with serve(milter_config()) as running:
        version, actions, steps = client_of(running.port).negotiate()
    assert version == 6
    # Add headers, change (remove) headers, quarantine: nothing else (no body or envelope changes).
    assert actions == SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE
    # No reply to any step but the end of the message; no DATA or unknown commands; header
    # values without their leading space (libmilter's default).
    no_reply = (
        SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_HDR | SMFIP_NR_EOH
        | SMFIP_NR_BODY | SMFIP_NR_DATA | SMFIP_NR_UNKN
    )  # fmt: skip
    assert steps == no_reply | SMFIP_NODATA | SMFIP_NOUNKNOWN
    assert not steps & SMFIP_HDR_LEADSPC


def test_each_band_is_marked_and_forged_headers_removed(
    milter_config: Any, serve: Any, client_of: Any, banded: dict[Action, Banded], model: Model
) -> None:
    forged = [(b"X-Spam-Flag", b"YES"), (b"x-spam-status", b"Yes, score=1.0"), (b"X-Spam-Flag", b"YES")]
    with serve(milter_config()) as running:
        client = client_of(running.port)
        client.negotiate()
        for action, band in banded.items():
            fields, body = split(band.raw)
            client.message(fields[:2] + forged + fields[2:], body)
            replies = client.replies_until_final()
            # The forged fields go, last first (indexes among fields of the same name).
            assert replies[:3] == [
                (b"m", struct.pack("!I", 2) + b"X-Spam-Flag\0\0"),
                (b"m", struct.pack("!I", 1) + b"x-spam-status\0\0"),
                (b"m", struct.pack("!I", 1) + b"X-Spam-Flag\0\0"),
            ]
            added = added_headers(replies)
            assert added[b"X-Spam-Action"] == action.value.encode()
            assert added[b"X-Spam-Flag"] == (b"YES" if action is Action.SPAM_FOLDER else b"NO")
            # The message Postfix sent, put back together, scores as the original bytes do.
            assert added[b"X-Spam-Score"] == f"{model.score_message(band.raw).probability:.3f}".encode()
            assert replies[-1] == (b"c", b"")
            assert [code for code, _ in replies] == [b"m"] * 3 + [b"h"] * len(added) + [b"c"]


def test_policy_actions_become_postfix_replies(
    milter_config: Any, serve: Any, client_of: Any, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {name: hold, if: {header: {Subject: '^hold'}}, action: tempfail}\n"
        "  - {name: drop, if: {header: {Subject: '^drop'}}, action: discard}\n"
        "  - {name: refuse, if: {header: {Subject: '^refuse'}}, action: reject}\n"
        "  - {name: review, if: {header: {Subject: '^review'}}, action: quarantine}\n"
        "  - {name: default, action: deliver}\n"
    )
    with serve(milter_config(rules=rules)) as running:
        client = client_of(running.port)
        client.negotiate()
        got = {}
        for subject in (b"hold", b"drop", b"refuse", b"review"):
            client.message([(b"Subject", subject)], b"x\r\n")
            got[subject] = client.replies_until_final()
    assert got[b"hold"] == [(b"y", b"451 4.7.1 Message deferred by rule hold; try again later\0")]
    assert got[b"refuse"] == [(b"y", b"550 5.7.1 Message rejected as spam by rule refuse\0")]
    assert got[b"drop"] == [(b"d", b"")]
    review = got[b"review"]
    assert (b"q", b"milter rule review\0") in review and review[-1] == (b"c", b"")
    assert added_headers(review)[b"X-Spam-Action"] == b"quarantine"


def test_an_mta_without_no_reply_steps_gets_a_reply_to_each(
    milter_config: Any, serve: Any, client_of: Any, banded: dict[Action, Banded]
) -> None:
    with serve(milter_config()) as running:
        client = client_of(running.port)
        _, _, steps = client.negotiate(steps=0)  # protocol 2-5 MTAs: a reply to every step
        assert steps == 0
        fields, body = split(banded[Action.DELIVER].raw)
        client.message(fields, body)
        # connect, helo, mail, rcpt, each header, end of headers, body: one "continue" each
        continues = [client.recv() for _ in range(4 + len(fields) + 2)]
        assert set(continues) == {(b"c", b"")}
        replies = client.replies_until_final()
    assert added_headers(replies)[b"X-Spam-Action"] == b"deliver"


def test_log_line_names_client_and_queue_id(
    milter_config: Any,
    serve: Any,
    client_of: Any,
    banded: dict[Action, Banded],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with serve(milter_config()) as running, caplog.at_level(logging.INFO, logger="milter.message"):
        client = client_of(running.port)
        client.negotiate()
        fields, body = split(banded[Action.DELIVER].raw)
        client.message(fields, body, queue_id="4QUEUE1")
        client.replies_until_final()
    [fields] = [getattr(r, "fields", {}) for r in caplog.records if r.name == "milter.message"]
    assert fields["queue_id"] == "4QUEUE1" and fields["client"] == "client.example.org[192.0.2.7]"
    assert fields["from"] == "<alice@example.org>" and fields["action"] == "deliver"
    assert fields["reply"] == "accept"


def test_scoring_fault_delivers_unscored_and_a_bug_tempfails(
    milter_config: Any, serve: Any, client_of: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = milter_config()
    with serve(config) as running:
        client = client_of(running.port)
        client.negotiate()
        original = running.daemon.policy
        swap_policy(running, model=RaisingScorer())
        client.message([(b"Subject", b"hi")], b"x\r\n")
        unscored = client.replies_until_final()
        assert added_headers(unscored)[b"X-Spam-Score"] == b"unscored"
        swap_policy(running, config=dataclasses.replace(config, on_error="tempfail"))
        client.message([(b"Subject", b"hi")], b"x\r\n")
        assert client.replies_until_final() == [
            (b"y", b"451 4.7.1 Message deferred by rule on_error; try again later\0")
        ]
        # An unexpected bug: tempfail, and the session goes on.
        swap_policy(running, rules=RaisingRules(), model=original.model, config=config)
        with caplog.at_level(logging.ERROR):
            client.message([(b"Subject", b"hi")], b"x\r\n")
            assert client.replies_until_final() == [(b"t", b"")]
        assert any("KeyError" in (r.exc_text or "") for r in caplog.records)
        swap_policy(running, rules=original.rules)
        client.message([(b"Subject", b"hi")], b"x\r\n")
        assert client.replies_until_final()[-1] == (b"c", b"")


@pytest.mark.parametrize(
    "garbage",
    [struct.pack("!I", 0), struct.pack("!I", mp.MAX_PACKET + 1) + b"L", struct.pack("!I", 1) + b"Z"],
    ids=["empty packet", "oversized packet", "unknown command"],
)
def test_protocol_abuse_closes_that_connection_only(
    milter_config: Any, serve: Any, client_of: Any, garbage: bytes
) -> None:
    with serve(milter_config()) as running:
        bad = client_of(running.port)
        bad.negotiate()
        bad.sock.sendall(garbage)
        assert bad.sock.recv(100) == b""  # closed
        good = client_of(running.port)
        good.negotiate()
        good.message([(b"Subject", b"hi")], b"x\r\n")
        assert good.replies_until_final()[-1] == (b"c", b"")


def test_abort_and_new_connection_start_the_message_afresh(
    milter_config: Any, serve: Any, client_of: Any
) -> None:
    with serve(milter_config()) as running:
        client = client_of(running.port)
        client.negotiate()
        client.send(b"M", b"<x@example.org>\0")
        client.send(b"L", b"X-Spam-Flag\0 YES\0")
        client.send(b"A")  # the SMTP client sent RSET: nothing of that message remains
        client.send(b"K")  # and a new SMTP session reuses this connection
        client.message([(b"Subject", b"hi")], b"x\r\n")
        replies = client.replies_until_final()
    assert [code for code, _ in replies if code == b"m"] == []  # no forged header to remove
    assert replies[-1] == (b"c", b"")


def test_session_rebuilds_the_message_with_crlf_and_folds() -> None:
    service = mp.MilterService(load_config(None, {"protocol": "milter"}), policy=None)  # type: ignore[arg-type]
    session = mp.MilterSession(service)
    session.handle(b"O", struct.pack("!III", 6, ALL_ACTIONS, ALL_STEPS))
    session.handle(b"M", b"<a@example.org>\0")
    session.handle(b"L", b"Subject\0a long\n\tfolded subject\0")
    session.handle(b"L", b"To\0b@example.net\0")
    session.handle(b"N", b"")
    session.handle(b"B", b"line one\r\nline two\r\n")
    assert bytes(session.raw) == (
        b"Subject: a long\r\n\tfolded subject\r\nTo: b@example.net\r\n\r\nline one\r\nline two\r\n"
    )
    assert session.mail_from == "a@example.org"


def test_packet_reader_splits_and_joins_packets() -> None:
    reader = mp.PacketReader()
    wire = mp.encode(mp.Reply(b"L", b"A\0b\0")) + mp.encode(mp.Reply(b"N"))
    assert list(reader.feed(wire[:3])) == []
    assert list(reader.feed(wire[3:8])) == []  # one byte short of the first packet
    assert list(reader.feed(wire[8:])) == [(b"L", b"A\0b\0"), (b"N", b"")]


def test_subject_tag_on_spam_only(
    milter_config: Any, serve: Any, client_of: Any, banded: dict[Action, Banded]
) -> None:
    with serve(milter_config(subject_tag="[SPAM]")) as running:
        client = client_of(running.port)
        client.negotiate()
        tagged = {}
        for action in (Action.DELIVER, Action.SPAM_FOLDER):
            fields, body = split(banded[action].raw)
            client.message(fields, body)
            tagged[action] = [data for code, data in client.replies_until_final() if code == b"m"]
    assert tagged[Action.DELIVER] == []
    assert tagged[Action.SPAM_FOLDER] == [struct.pack("!I", 1) + b"Subject\0[SPAM] lunch on friday?\0"]


def test_an_idle_connection_is_closed_after_twice_the_timeout(
    milter_config: Any, serve: Any, client_of: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(milter_config(timeout=0.3)) as running, caplog.at_level(logging.INFO):
        client = client_of(running.port)
        # Taken before the last packet is sent: milter's idle clock starts after it reads it, so
        # the bound below holds however slowly either side runs.
        started = time.monotonic()
        client.negotiate()
        client.sock.settimeout(30)
        assert client.sock.recv(100) == b""  # closed by milter, not by the client
        assert time.monotonic() - started >= 0.6  # the client's own idle time, twice over
    assert "idle for 0.6 s: closed" in caplog.text
