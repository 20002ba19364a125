"""The SMTP side against real sockets: smtplib -> milter -> a real aiosmtpd (or LMTP) next hop."""

from __future__ import annotations

import dataclasses
import logging
import smtplib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RaisingRules, RaisingScorer, Sink, swap_policy

from milter.config import NextHop
from milter.rules import Action, Ruleset
from milter.smtp import DATA_START, OK_MAIL, OK_XFORWARD

PLAIN = (
    b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: notes\r\n"
    b"Message-ID: <plain-1@example.org>\r\nDate: Mon, 3 Mar 2025 10:00:00 +0000\r\n\r\n"
    b"Hi Bob,\r\n.a line that starts with a dot\r\n..two dots\r\n.\r\n"
    b"the line above is a lone dot; trailing spaces stay   \r\n\r\nAlice\r\n"
)


def split_added(data: bytes) -> tuple[list[bytes], bytes]:
    """(the X-Spam-* fields milter put on top, unfolded; the rest) of a relayed message."""
    added: list[bytes] = []
    rest = data
    while rest[:7].lower() == b"x-spam-" or (added and rest[:1] in (b"\t", b" ")):
        line, _, rest = rest.partition(b"\r\n")
        if line[:1] in (b"\t", b" "):
            added[-1] += b" " + line.lstrip()
        else:
            added.append(line)
    return added, rest


def smtp(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("client.test")
    return client


def maildir_files(root: Path) -> dict[str, list[Path]]:
    return {
        "new": sorted((root / "new").glob("*")),
        "cur": sorted((root / "cur").glob("*")),
        "junk": sorted((root / ".Junk" / "new").glob("*")),
    }


def test_relayed_byte_identical_but_for_added_headers(config_for: Any, serve: Any, sink: Sink) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        refused = client.sendmail("alice@example.org", ["bob@example.net"], PLAIN)
    assert refused == {}
    [got] = sink.received
    added, rest = split_added(got.data)
    assert rest == PLAIN
    names = [line.split(b":")[0] for line in added]
    assert names[:4] == [b"X-Spam-Flag", b"X-Spam-Status", b"X-Spam-Score", b"X-Spam-Action"]
    assert got.mail_from == "alice@example.org" and got.rcpt_tos == ["bob@example.net"]


def test_routes_by_the_real_model_into_maildir(
    config_for: Any, serve: Any, banded: Any, tmp_path: Path, model: Any
) -> None:
    config = config_for()
    with serve(config) as running, smtp(running.port) as client:
        for action in (Action.SPAM_FOLDER, Action.FLAG, Action.DELIVER):
            client.sendmail("alice@example.org", ["bob@example.net"], banded[action].raw)
    files = maildir_files(tmp_path / "Maildir")
    assert len(files["junk"]) == 1 and len(files["cur"]) == 1 and len(files["new"]) == 1
    junk, flagged, inbox = files["junk"][0].read_bytes(), files["cur"][0], files["new"][0].read_bytes()
    assert flagged.name.endswith(":2,F")
    assert b"X-Spam-Flag: YES\n" in junk and b"X-Spam-Action: spam_folder\n" in junk
    assert b"X-Spam-Flag: NO\n" in flagged.read_bytes() and b"X-Spam-Action: flag\n" in flagged.read_bytes()
    assert b"X-Spam-Action: deliver\n" in inbox
    p = banded[Action.SPAM_FOLDER].probability
    assert f"score={p:.3f} required=0.90 rule=spam model={model.id}".encode() in junk
    # Maildir files get LF line ends; otherwise the message is as sent.
    assert inbox.endswith(banded[Action.DELIVER].raw.replace(b"\r\n", b"\n"))


def test_next_hop_down_at_mail_is_451_and_nothing_accepted(config_for: Any, serve: Any) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", 1), next_hop_timeout=2.0)
    with serve(config) as running, smtp(running.port) as client:
        code, text = client.mail("alice@example.org")
        assert code == 451 and b"4.4.1" in text
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("alice@example.org", ["bob@example.net"], PLAIN)
        assert refused.value.smtp_code == 451


def test_next_hop_gone_before_data_is_451(config_for: Any, serve: Any, sink_factory: Any) -> None:
    with sink_factory() as sink:
        config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
        with serve(config) as running, smtp(running.port) as client:
            assert client.mail("alice@example.org")[0] == 250
            assert client.rcpt("bob@example.net")[0] == 250
            sink.controller.stop()  # the next hop dies with the transaction open
            code, text = client.data(PLAIN)
            assert code == 451, text
            # The session goes on: the next message meets the same (down) next hop and gets 451 too.
            assert client.mail("alice@example.org")[0] == 451
        assert sink.received == []


def test_refused_recipients_get_the_next_hops_code(config_for: Any, serve: Any, sink: Sink) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        refused = client.sendmail(
            "alice@example.org", ["bob@example.net", "refused@example.net", "busy@example.net"], PLAIN
        )
    assert refused["refused@example.net"][0] == 550 and b"no such user" in refused["refused@example.net"][1]
    assert refused["busy@example.net"][0] == 450
    [got] = sink.received
    assert got.rcpt_tos == ["bob@example.net"]


def test_sender_refused_by_next_hop_is_passed_on(config_for: Any, serve: Any, sink_factory: Any) -> None:
    with sink_factory(refuse_mail_from="spammer@example.org") as sink:
        config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
        with serve(config) as running, smtp(running.port) as client:
            code, text = client.mail("spammer@example.org")
            assert (code, text) == (553, b"5.7.1 Sender refused by the next hop")
            client.rset()
            assert client.sendmail("alice@example.org", ["bob@example.net"], PLAIN) == {}
        assert len(sink.received) == 1


def test_lmtp_per_recipient_replies(config_for: Any, serve: Any, sink_factory: Any) -> None:
    with sink_factory(lmtp=True, lmtp_fail=frozenset({"full@example.net"})) as sink:
        config = config_for(next_hop=NextHop("lmtp", "127.0.0.1", sink.port))
        with serve(config) as running, smtp(running.port) as client:
            # all recipients accepted by the LMTP server: 250
            assert client.sendmail("alice@example.org", ["a@example.net", "b@example.net"], PLAIN) == {}
            # one of two failed after DATA: one SMTP reply cannot say "some", so 451 for all
            with pytest.raises(smtplib.SMTPDataError) as partial:
                client.sendmail("alice@example.org", ["a@example.net", "full@example.net"], PLAIN)
            assert partial.value.smtp_code == 451
            # all failed: the LMTP server's own reply
            with pytest.raises(smtplib.SMTPDataError) as full:
                client.sendmail("alice@example.org", ["full@example.net"], PLAIN)
            assert full.value.smtp_code == 452 and b"Mailbox full" in full.value.smtp_error
        assert [r.rcpt_tos for r in sink.received] == [
            ["a@example.net", "b@example.net"],
            ["a@example.net", "full@example.net"],
            ["full@example.net"],
        ]


def test_8bit_and_smtputf8(config_for: Any, serve: Any, sink: Sink) -> None:
    latin1 = (
        b"From: =?iso-8859-1?q?J=F6rg?= <joerg@example.org>\r\nSubject: Gr\xfc\xdfe\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"Sch\xf6ne Gr\xfc\xdfe aus M\xfcnchen \xff\xfe\x80\r\n"
    )
    utf8 = "From: Jörg <jörg@exämple.org>\r\nSubject: Grüße 日本\r\n\r\nSchöne Grüße 🎉\r\n".encode()
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        client.sendmail("joerg@example.org", ["bob@example.net"], latin1, mail_options=["BODY=8BITMIME"])
        client.sendmail(
            "jörg@exämple.org", ["bøb@exämple.net"], utf8, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
        )
    first, second = sink.received
    assert split_added(first.data)[1] == latin1 and "BODY=8BITMIME" in first.mail_options
    assert split_added(second.data)[1] == utf8
    assert second.mail_from == "jörg@exämple.org" and second.rcpt_tos == ["bøb@exämple.net"]
    assert "SMTPUTF8" in second.mail_options


def test_pipelined_commands_are_answered_in_one_write(config_for: Any, serve: Any, sink: Sink) -> None:
    """Postfix pipelines XFORWARD, MAIL, RCPT and DATA: the replies leave together, in order,
    once the group is done (each waited for the next hop's own reply first)."""
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, socket.create_connection(("127.0.0.1", running.port), 10) as conn:
        conn.settimeout(10)
        with conn.makefile("rb") as stream:
            assert stream.readline().startswith(b"220 ")
            conn.sendall(b"EHLO client.test\r\n")
            while not stream.readline().startswith(b"250 "):
                pass
        conn.sendall(
            b"XFORWARD ADDR=192.0.2.7 HELO=far.example\r\nMAIL FROM:<alice@example.org>\r\n"
            b"RCPT TO:<bob@example.net>\r\nRCPT TO:<refused@example.net>\r\nDATA\r\n"
        )
        first = b""
        while first.count(b"\r\n") < 5:  # TCP may hand the replies over in pieces
            chunk = conn.recv(4096)
            assert chunk, "closed before the five replies"
            first += chunk
        assert first.split(b"\r\n") == [
            OK_XFORWARD.encode(), OK_MAIL.encode(), b"250 2.1.5 Recipient ok",
            b"550 5.1.1 <refused@example.net>: Recipient address rejected: no such user",
            DATA_START.encode(), b"",
        ]  # fmt: skip
        conn.sendall(b"Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        rest = conn.recv(4096)
        while not rest.endswith(b"221 Bye\r\n"):
            rest += conn.recv(4096)
        assert rest.startswith(b"250 ") and rest.count(b"\r\n") == 2
    assert [r.rcpt_tos for r in sink.received] == [["bob@example.net"]]
    assert sink.handler.xforward_seen == ["ADDR=192.0.2.7 HELO=far.example"]


def test_dsn_parameters_reach_the_next_hop_as_sent(config_for: Any, serve: Any, sink: Sink) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        assert client.has_extn("dsn")
        refused = client.sendmail(
            "alice@example.org",
            ["bob@example.net", "carol@example.net"],
            PLAIN,
            mail_options=["RET=hdrs", "ENVID=Qx+2B1.Ab"],
            rcpt_options=["NOTIFY=success,DELAY", "ORCPT=rfc822;Bob+40Example.NET"],
        )
    assert refused == {}
    assert [r.rcpt_tos for r in sink.received] == [["bob@example.net", "carol@example.net"]]
    # Keywords as RFC 3461 spells them; ENVID's and ORCPT's values exactly as the client sent them.
    assert sink.handler.dsn_seen == [
        "MAIL RET=HDRS ENVID=Qx+2B1.Ab",
        "RCPT <bob@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+40Example.NET",
        "RCPT <carol@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+40Example.NET",
    ]


def test_dsn_parameters_are_dropped_for_a_next_hop_without_dsn(
    config_for: Any, serve: Any, sink_factory: Any
) -> None:
    with (
        sink_factory(dsn=False) as sink,
        serve(config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))) as running,
        smtp(running.port) as client,
    ):
        refused = client.sendmail(
            "alice@example.org", ["bob@example.net"], PLAIN,
            mail_options=["RET=FULL", "BODY=8BITMIME"], rcpt_options=["NOTIFY=NEVER"],
        )  # fmt: skip
    assert refused == {}
    assert len(sink.received) == 1 and sink.received[0].mail_options == ["BODY=8BITMIME"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("MAIL FROM:<a@example.org> RET=MAYBE", "RET=FULL or RET=HDRS"),
        ("MAIL FROM:<a@example.org> RET=FULL RET=HDRS", "RET=FULL or RET=HDRS"),
        ("MAIL FROM:<a@example.org> ENVID=a=b", "ENVID=xtext"),
        ("RCPT TO:<b@example.net> NOTIFY=NEVER,SUCCESS", "NOTIFY=NEVER or NOTIFY= a comma list"),
        ("RCPT TO:<b@example.net> NOTIFY", "NOTIFY=NEVER or NOTIFY= a comma list"),
        ("RCPT TO:<b@example.net> ORCPT=b@example.net", "ORCPT=address-type;xtext"),
    ],
)
def test_bad_dsn_parameters_get_501_naming_the_expected_form(
    config_for: Any, serve: Any, sink: Sink, command: str, expected: str
) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        if command.startswith("RCPT"):
            assert client.mail("a@example.org")[0] == 250
        code, text = client.docmd(command)
        assert code == 501, text
        assert expected in text.decode()
        # The session goes on: the same command without the bad parameter works.
        assert client.docmd(command.rsplit(" ", 1)[0])[0] == 250


def test_over_the_size_limit_is_552(config_for: Any, serve: Any, sink: Sink) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port), max_message_size=4096)
    big = PLAIN + b"x" * 5000 + b"\r\n"
    with serve(config) as running, smtp(running.port) as client:
        assert client.esmtp_features["size"] == "4096"
        code, _ = client.mail("alice@example.org", ["SIZE=5000"])
        assert code == 552
        client.rset()
        # Without SIZE= the limit is found while reading DATA; the 552 comes after the final dot.
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt("bob@example.net")[0] == 250
        code, text = client.data(big)
        assert code == 552 and b"5.3.4" in text
        # The session is still usable, and the next hop got nothing of the big one.
        assert client.sendmail("alice@example.org", ["bob@example.net"], PLAIN) == {}
    assert [split_added(r.data)[1] for r in sink.received] == [PLAIN]


def test_forged_x_spam_headers_are_stripped(config_for: Any, serve: Any, sink: Sink) -> None:
    forged = (
        b"X-Spam-Flag: NO\r\nFrom: Mallory <m@example.org>\r\nX-Spam-Status: No, score=0.001\r\n"
        b"\tfolded=yes rule=trust-me\r\nX-Spammer-Id: kept (not an X-Spam- field)\r\n"
        b"x-spam-score: -100\r\nSubject: hi\r\nX-SPAM-Report:\r\n forged report\r\n\r\n"
        b"X-Spam-Flag: NO (in the body: not a header, kept)\r\n"
    )
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        client.sendmail("m@example.org", ["bob@example.net"], forged)
    added, rest = split_added(sink.received[0].data)
    assert rest == (
        b"From: Mallory <m@example.org>\r\nX-Spammer-Id: kept (not an X-Spam- field)\r\n"
        b"Subject: hi\r\n\r\nX-Spam-Flag: NO (in the body: not a header, kept)\r\n"
    )
    assert sum(1 for line in added if line.lower().startswith(b"x-spam-flag:")) == 1


MALFORMED = [
    # a multipart whose boundary never comes, with broken base64 and a bare LF inside
    b'From: a@example.org\r\nContent-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\n'
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64@@@\n\r\n",
    # no header block at all, binary junk with NULs
    b"\x00\x01\x02 just bytes \xff\xfe\r\n\r\n\x00\r\n",
    # a header line without a colon in the middle of the headers, undeclared charset
    b"Subject: ok\r\nthis is not a header\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nbody\r\n",
    # headers only, no body and no final line end
    b"Subject: headers only",
    # the very first byte is a dot (dot-stuffed on the wire, so it must be un-stuffed here)
    b".starts with a dot\r\n..two dots\r\n.\r\n",
]


@pytest.mark.parametrize(
    "raw", MALFORMED, ids=["broken-multipart", "binary", "bad-header", "no-body", "leading-dot"]
)
def test_malformed_mime_is_still_delivered(config_for: Any, serve: Any, sink: Sink, raw: bytes) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        assert client.sendmail("a@example.org", ["bob@example.net"], raw) == {}
    _, rest = split_added(sink.received[0].data)
    # What DATA can carry: CRLF line ends (a bare LF becomes CRLF) and a final line end.
    expected = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    expected += b"" if expected.endswith(b"\r\n") else b"\r\n"
    assert rest == expected


def test_null_sender_is_relayed(config_for: Any, serve: Any, sink: Sink) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        assert client.sendmail("<>", ["bob@example.net"], PLAIN) == {}
    assert sink.received[0].mail_from == "<>"


def test_xforward_reaches_rules_logs_and_next_hop(
    config_for: Any, serve: Any, sink: Sink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: lab-network\n    if: {client: 192.0.2.0/24}\n    action: quarantine\n"
        "  - name: default\n    action: deliver\n"
    )
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port), rules=rules)
    with serve(config) as running, smtp(running.port) as client, caplog.at_level(logging.INFO):
        assert client.has_extn("xforward")
        assert client.docmd("XFORWARD", "NAME=mx.example.com ADDR=192.0.2.7 PROTO=ESMTP")[0] == 250
        assert client.docmd("XFORWARD", "HELO=[UNAVAILABLE] IDENT=4XyzQ1")[0] == 250
        client.sendmail("alice@example.org", ["bob@example.net"], PLAIN)
        assert client.docmd("XFORWARD", "ADDR=IPV6:2001:db8::5 NAME=mx6.example.com")[0] == 250
        client.sendmail("alice@example.org", ["bob@example.net"], PLAIN)
        assert client.docmd("XFORWARD", "COLOR=blue")[0] == 501
        client.mail("alice@example.org")
        assert client.docmd("XFORWARD", "NAME=late.example.com")[0] == 503
    quarantined = sorted((tmp_path / "quarantine" / "new").glob("*"))
    assert len(quarantined) == 1 and b"X-Spam-Action: quarantine" in quarantined[0].read_bytes()
    assert [split_added(r.data)[1] for r in sink.received] == [PLAIN]  # only the IPv6 one
    assert sink.received[0].xforward[-1] == "ADDR=2001:db8::5 NAME=mx6.example.com"
    lines = [r.getMessage() for r in caplog.records if r.name == "milter.message"]
    fields = [getattr(r, "fields", {}) for r in caplog.records if r.name == "milter.message"]
    assert fields[0]["client"] == "mx.example.com[192.0.2.7]" and fields[0]["queue_id"] == "4XyzQ1"
    assert fields[0]["action"] == "quarantine" and fields[0]["rule"] == "lab-network"
    assert fields[1]["client"] == "mx6.example.com[2001:db8::5]" and fields[1]["action"] == "deliver"
    assert len(lines) == 2


def test_policy_actions(config_for: Any, serve: Any, sink: Sink, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {name: hold, if: {header: {Subject: '^hold'}}, action: tempfail}\n"
        "  - {name: drop, if: {header: {Subject: '^drop'}}, action: discard}\n"
        "  - {name: refuse, if: {header: {Subject: '^refuse'}}, action: reject}\n"
        "  - {name: default, action: deliver}\n"
    )
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port), rules=rules, mode="before-queue")
    with serve(config) as running, smtp(running.port) as client:
        for subject, code in ((b"hold", 451), (b"refuse", 550)):
            with pytest.raises(smtplib.SMTPDataError) as e:
                client.sendmail("a@example.org", ["b@example.net"], b"Subject: " + subject + b"\r\n\r\nx\r\n")
            assert e.value.smtp_code == code
        assert client.sendmail("a@example.org", ["b@example.net"], b"Subject: drop\r\n\r\nx\r\n") == {}
        assert client.sendmail("a@example.org", ["b@example.net"], b"Subject: keep\r\n\r\nx\r\n") == {}
    assert [r.data.endswith(b"Subject: keep\r\n\r\nx\r\n") for r in sink.received] == [True]


def test_scoring_fault_delivers_unscored_or_tempfails(config_for: Any, serve: Any, sink: Sink) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        swap_policy(running, model=RaisingScorer())
        assert client.sendmail("a@example.org", ["b@example.net"], PLAIN) == {}
        swap_policy(running, config=dataclasses.replace(config, on_error="tempfail"))
        with pytest.raises(smtplib.SMTPDataError) as e:
            client.sendmail("a@example.org", ["b@example.net"], PLAIN)
        assert e.value.smtp_code == 451
    [got] = sink.received
    added, _ = split_added(got.data)
    assert b"X-Spam-Status: No, unscored rule=default model=broken-model error=RuntimeError" in added


def test_unexpected_exception_is_451_and_other_sessions_go_on(
    config_for: Any, serve: Any, sink: Sink, caplog: pytest.LogCaptureFixture, rules: Ruleset
) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as other, smtp(running.port) as client:
        swap_policy(running, rules=RaisingRules())
        with pytest.raises(smtplib.SMTPDataError) as e, caplog.at_level(logging.ERROR):
            client.sendmail("a@example.org", ["b@example.net"], PLAIN)
        assert e.value.smtp_code == 451 and b"4.3.0" in e.value.smtp_error
        assert any("KeyError" in (r.exc_text or "") for r in caplog.records)
        swap_policy(running, rules=rules)
        assert other.sendmail("a@example.org", ["b@example.net"], PLAIN) == {}
        assert client.sendmail("a@example.org", ["b@example.net"], PLAIN) == {}  # same session, usable
    assert len(sink.received) == 2


def test_a_message_keeps_the_policy_it_started_with(
    config_for: Any, serve: Any, sink: Sink, tmp_path: Path
) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text("rules:\n  - {name: everything, action: tempfail}\n")
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    with serve(config) as running, smtp(running.port) as client:
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt("b@example.net")[0] == 250
        swap_policy(running, rules=Ruleset.load(strict))  # a reload lands mid-transaction
        assert client.data(PLAIN)[0] == 250  # decided by the policy of its MAIL
        with pytest.raises(smtplib.SMTPDataError):  # the next message gets the new one
            client.sendmail("a@example.org", ["b@example.net"], PLAIN)
    assert len(sink.received) == 1


def test_session_cap_says_421(config_for: Any, serve: Any) -> None:
    config = config_for(max_sessions=2)
    with serve(config) as running, smtp(running.port) as first, smtp(running.port) as second:
        third = socket.create_connection(("127.0.0.1", running.port), 10)
        with third:
            third.settimeout(10)
            assert third.recv(200).startswith(b"421 4.3.2")
            assert third.recv(200) == b""  # and closed
        assert first.noop()[0] == 250 and second.noop()[0] == 250  # the two in the cap are served


def test_idle_client_is_disconnected(config_for: Any, serve: Any) -> None:
    config = config_for(timeout=0.5)
    with serve(config) as running:
        started = time.monotonic()  # before the connection: the server's idle clock starts later
        conn = socket.create_connection(("127.0.0.1", running.port), 10)
        with conn:
            conn.settimeout(60)
            assert conn.recv(200).startswith(b"220 ")
            assert conn.recv(200) == b""  # closed by the server (the client never stops waiting)
            assert time.monotonic() - started >= 0.5  # and not before the idle timeout


def test_slow_data_is_not_cut_off_while_it_flows(config_for: Any, serve: Any, sink: Sink) -> None:
    timeout = 1.5
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port), timeout=timeout)
    with serve(config) as running, smtp(running.port) as client:
        client.mail("a@example.org")
        client.rcpt("b@example.net")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        # A line every 50 ms until the message has taken twice the idle timeout: only a client
        # stalled for the whole timeout between two lines would be cut off (and rightly so).
        started = last = time.monotonic()
        client.send(b"Subject: slow\r\n\r\n")
        lines = 0
        while last - started < 2 * timeout:
            time.sleep(0.05)
            client.send(b"line %d\r\n" % lines)
            lines += 1
            now = time.monotonic()
            assert now - last < timeout, "the test itself stalled longer than the idle timeout"
            last = now
        client.send(b".\r\n")
        assert client.getreply()[0] == 250
    [got] = sink.received
    assert got.data.endswith(b"line %d\r\n" % (lines - 1))


def test_many_concurrent_sessions(config_for: Any, serve: Any, sink: Sink) -> None:
    config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port))
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            with smtp(running.port) as client:
                for j in range(3):
                    body = PLAIN.replace(b"plain-1", b"c-%d-%d" % (i, j))
                    client.sendmail("a@example.org", ["b@example.net"], body)
        except BaseException as e:  # reported below
            errors.append(e)

    with serve(config) as running:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    ids = sorted(r.data.split(b"Message-ID: <")[1].split(b"@")[0] for r in sink.received)
    assert ids == sorted(b"c-%d-%d" % (i, j) for i in range(20) for j in range(3))


def test_silent_next_hop_times_out_to_451(config_for: Any, serve: Any) -> None:
    """A next hop that accepts the connection and never says a word."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = config_for(
            next_hop=NextHop("smtp", "127.0.0.1", silent.getsockname()[1]), next_hop_timeout=0.5
        )
        with serve(config) as running, smtp(running.port) as client:
            started = time.monotonic()
            code, text = client.mail("a@example.org")
            assert code == 451 and b"4.4.1" in text
            assert time.monotonic() - started < 5


def test_slow_next_hop_at_data_is_451(config_for: Any, serve: Any, sink_factory: Any) -> None:
    with sink_factory(data_delay=10.0) as sink:
        config = config_for(next_hop=NextHop("smtp", "127.0.0.1", sink.port), next_hop_timeout=0.5)
        with serve(config) as running, smtp(running.port) as client:
            with pytest.raises(smtplib.SMTPDataError) as e:
                client.sendmail("a@example.org", ["b@example.net"], PLAIN)
            assert e.value.smtp_code == 451 and b"4.4.2" in e.value.smtp_error
            # The timed-out connection is not reused: the next message goes through a new one.
            sink.handler.data_delay = 0.0
            assert client.sendmail("a@example.org", ["b@example.net"], PLAIN) == {}
