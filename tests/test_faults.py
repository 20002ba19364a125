"""Faults on the SMTP path that the other tests do not reach: a client gone mid-DATA or while
the next hop answers, the next hop gone after the message before its reply (the duplicate
window), LMTP's partial delivery and its retry, the quarantine failing, SMTP smuggling from the
client side, and a drain that runs out of time (in the daemon and in the supervisor).

The next hop is tests/hop.py's, written by hand on a real socket, so it can misbehave exactly
where and when a test says; the daemon is milter's own on a real port."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_port
from hop import ScriptedHop, scripted_hop, wait_for

from milter.config import NextHop

MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: faults\r\n"
    b"Message-ID: <fault-%d@example.org>\r\n\r\nHello Bob,\r\n.a dotted line\r\nbye\r\n"
)


def message(i: int) -> bytes:
    return MESSAGE % i


def hop_config(config_for: Any, hop: ScriptedHop, **changes: Any) -> Any:
    scheme = "lmtp" if hop.lmtp else "smtp"
    return config_for(next_hop=NextHop(scheme, "127.0.0.1", hop.port), **changes)


class Raw:
    """An SMTP client on a bare socket: bytes exactly as the test writes them."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 30)
        self.sock.settimeout(30)
        self.stream = self.sock.makefile("rb")
        assert self.reply().startswith(b"220 ")
        self.sock.sendall(b"EHLO client.test\r\n")
        assert self.reply().startswith(b"250 ")

    def reply(self) -> bytes:
        """One whole reply (its last line)."""
        while True:
            line = self.stream.readline()
            assert line, "the server closed the connection"
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n")

    def envelope(self, rcpts: tuple[bytes, ...] = (b"bob@example.net",)) -> None:
        self.sock.sendall(b"MAIL FROM:<alice@example.org>\r\n")
        assert self.reply().startswith(b"250 ")
        for rcpt in rcpts:
            self.sock.sendall(b"RCPT TO:<" + rcpt + b">\r\n")
            assert self.reply().startswith(b"250 ")

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def ids(hop: ScriptedHop) -> list[int]:
    return sorted(int(m) for s in hop.stored for m in re.findall(rb"<fault-(\d+)@", s.data))


# --- the client goes away -----------------------------------------------------------------------


def test_a_client_cut_mid_data_is_never_relayed_and_the_hop_transaction_is_reset(
    config_for: Any, serve: Any
) -> None:
    with scripted_hop() as hop, serve(hop_config(config_for, hop)) as running:
        client = Raw(running.port)
        client.envelope()
        client.sock.sendall(b"DATA\r\n")
        assert client.reply().startswith(b"354 ")
        client.sock.sendall(message(1)[:60])  # half a message, then the connection is gone
        client.close()
        wait_for(lambda: hop.verbs()[-1:] == [b"RSET"], "milter to end the next hop's transaction")
        assert hop.verbs() == [b"EHLO", b"MAIL", b"RCPT", b"RSET"]  # no DATA: nothing handed on
        # The reset connection serves the next message: the half one is nowhere, this one once.
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as good:
            assert good.sendmail("alice@example.org", ["bob@example.net"], message(2)) == {}
    assert ids(hop) == [2] and len(hop.connections) == 1


def test_a_client_gone_while_the_next_hop_answers_costs_no_later_message(config_for: Any, serve: Any) -> None:
    """The client leaves while milter waits for the next hop's reply to RCPT. That connection is
    in the middle of an exchange: it must be closed, not reset and reused, or the replies still
    on their way are read as the answers to the next message's commands (a 250 for a message
    the next hop never got, found by this test: the pooled connection was reset and reused)."""
    with scripted_hop(fault="hold-rcpt") as hop, serve(hop_config(config_for, hop)) as running:
        gone = Raw(running.port)
        gone.sock.sendall(b"MAIL FROM:<alice@example.org>\r\n")
        assert gone.reply().startswith(b"250 ")
        gone.sock.sendall(b"RCPT TO:<bob@example.net>\r\n")
        wait_for(lambda: hop.verbs()[-1:] == [b"RCPT"], "the RCPT at the next hop")
        gone.close()
        wait_for(lambda: not running.daemon.filter.sessions, "milter to see the client gone")
        hop.fault = None
        hop.release.set()  # the next hop answers RCPT now (and then whatever milter sent after it)
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            for i in range(3):
                assert client.sendmail("alice@example.org", ["bob@example.net"], message(i)) == {}
    assert ids(hop) == [0, 1, 2]
    first = hop.connections[0]
    assert first.ended_by_peer and first.commands[-1:] == [b"RCPT TO:<bob@example.net>"]


# --- the next hop goes away -----------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["close-after-data", "hang-after-data"])
def test_next_hop_gone_after_the_message_before_its_reply_is_451_and_the_retry_the_only_duplicate(
    config_for: Any, serve: Any, fault: str
) -> None:
    """The duplicate window: the next hop has the message, its reply never comes (connection
    closed, or no reply within next_hop_timeout). The client hears 451 and keeps the message;
    its retry is the one duplicate, and nothing else is ever doubled."""
    with (
        scripted_hop(fault=fault) as hop,
        serve(hop_config(config_for, hop, next_hop_timeout=1.0)) as running,
        smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client,
    ):
        with pytest.raises(smtplib.SMTPDataError) as e:
            client.sendmail("alice@example.org", ["bob@example.net"], message(1))
        assert e.value.smtp_code == 451 and b"4.4.2" in e.value.smtp_error
        assert ids(hop) == [1]  # the next hop holds it (whole) though the client got 451
        hop.fault = None
        assert client.sendmail("alice@example.org", ["bob@example.net"], message(1)) == {}  # retry
        assert client.sendmail("alice@example.org", ["bob@example.net"], message(2)) == {}
    assert ids(hop) == [1, 1, 2]
    first, retry = (s for s in hop.stored if b"<fault-1@" in s.data)
    assert first.data == retry.data and first.data.endswith(message(1))
    assert first.wire.endswith(b"\r\n.\r\n")  # the first copy was whole: the reply alone was lost


def test_next_hop_closing_mid_data_is_451_and_stores_nothing(config_for: Any, serve: Any) -> None:
    with (
        scripted_hop(fault="close-mid-data") as hop,
        serve(hop_config(config_for, hop)) as running,
        smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client,
    ):
        with pytest.raises(smtplib.SMTPDataError) as e:
            client.sendmail("alice@example.org", ["bob@example.net"], message(1) + b"x" * 100_000)
        assert e.value.smtp_code == 451
        hop.fault = None
        assert client.sendmail("alice@example.org", ["bob@example.net"], message(2)) == {}
    assert ids(hop) == [2]


def test_lmtp_partial_delivery_is_retried_whole_and_only_the_delivered_recipient_gets_two(
    config_for: Any, serve: Any
) -> None:
    full = b"full@example.net"
    with (
        scripted_hop(lmtp=True, lmtp_fail=frozenset({full})) as hop,
        serve(hop_config(config_for, hop)) as running,
        smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client,
    ):
        rcpts = ["bob@example.net", full.decode()]
        with pytest.raises(smtplib.SMTPDataError) as e:
            client.sendmail("alice@example.org", rcpts, message(1))
        assert e.value.smtp_code == 451  # one reply cannot say "some": all of it again, later
        hop.lmtp_fail = frozenset()  # the mailbox has room again
        assert client.sendmail("alice@example.org", rcpts, message(1)) == {}
    deliveries = [r for s in hop.stored for r in s.delivered_to]
    assert sorted(deliveries) == [b"bob@example.net", b"bob@example.net", full]  # none lost


# --- the quarantine -------------------------------------------------------------------------------


def test_quarantine_store_failing_is_451_and_nothing_relayed(
    config_for: Any, serve: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: hold-everything, action: quarantine}\n")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the quarantine's parent directory should be\n")
    with scripted_hop() as hop:
        config = hop_config(config_for, hop, rules=rules, quarantine=blocker / "quarantine")
        with serve(config) as running, smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPDataError) as e, caplog.at_level(logging.WARNING):
                client.sendmail("alice@example.org", ["bob@example.net"], message(1))
            # Its own text: the fault is the quarantine's, not the next hop's.
            assert (
                e.value.smtp_code == 451
                and e.value.smtp_error == b"4.3.0 Quarantine could not keep the message, try again later"
            )
            wait_for(lambda: hop.verbs()[-1:] == [b"RSET"], "the next hop's transaction to end")
    assert hop.stored == [] and b"DATA" not in hop.verbs()
    assert f"cannot write to Maildir {blocker / 'quarantine'}" in caplog.text


# --- smuggling from the client side ---------------------------------------------------------------

SMUGGLED = (
    b"MAIL FROM:<mallory@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nevil\r\n"
)


@pytest.mark.parametrize(
    "separator",
    [b"\n.\r\n", b"\r.\r", b"\n.\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r", b"\r.\r\n", b"\r\n.\r\r\n", b"\n..\n"],
    ids=["LF.CRLF", "CR.CR", "LF.LF", "CRLF.LF", "CRLF.CR", "LF.CR", "CR.CRLF", "CRLF.CRCRLF", "LF..LF"],
)
def test_smuggling_never_ends_a_message_early_and_the_next_hop_gets_canonical_crlf(
    config_for: Any, serve: Any, separator: bytes
) -> None:
    head = b"From: a@example.org\r\nSubject: innocent\r\nMessage-ID: <fault-7@example.org>\r\n\r\nfirst part"
    body = head + separator + SMUGGLED + b"last line\r\n"
    with scripted_hop() as hop, serve(hop_config(config_for, hop)) as running:
        client = Raw(running.port)
        client.envelope()
        client.sock.sendall(b"DATA\r\n")
        assert client.reply().startswith(b"354 ")
        client.sock.sendall(body + b".\r\nQUIT\r\n")
        replies = [client.reply(), client.reply()]
        assert client.stream.readline() == b""  # and nothing more: no reply to a smuggled command
        client.close()
    assert replies[0].startswith(b"250 ") and replies[1].startswith(b"221 ")
    [stored] = hop.stored
    assert hop.verbs().count(b"MAIL") == 1 and stored.mail_from == b"<alice@example.org>"
    # On the wire to the next hop: CRLF line ends only, every line with a leading dot doubled.
    wire = stored.wire
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
    lines = wire[:-3].split(b"\r\n")
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines)
    # What the next hop keeps: the client's dot-stuffing undone (a dot after CRLF starts a
    # line, whatever follows it: RFC 5321 4.5.2), then every CR, LF or CRLF made one CRLF.
    unstuffed = body.replace(b"\r\n.", b"\r\n")
    assert stored.data.endswith(re.sub(rb"\r\n|\r|\n", b"\r\n", unstuffed))  # all of it, in one


# --- a drain that runs out of time ----------------------------------------------------------------


def serve_process(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "milter", "serve", "--no-watch", *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )  # fmt: skip


def wait_log(log: Path, pattern: str, count: int = 1) -> list[re.Match[str]]:
    found: list[re.Match[str]] = []

    def seen() -> bool:
        found[:] = list(re.finditer(pattern, log.read_text()))
        return len(found) >= count

    wait_for(seen, f"{pattern!r} in {log}:\n{log.read_text() if log.exists() else ''}", seconds=60)
    return found


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        assert proc.poll() is None, f"milter exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
        except OSError:
            return False
        return True

    wait_for(up, f"milter on port {port}", seconds=60)


def test_drain_timeout_cuts_sessions_in_flight_before_their_250_and_nothing_is_half_relayed(
    tmp_path: Path,
) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    results: dict[int, object] = {}

    def send(i: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                results[i] = client.sendmail("alice@example.org", ["bob@example.net"], message(i))
        except (smtplib.SMTPException, OSError) as e:
            results[i] = e

    with scripted_hop(fault="hold-data") as hop:
        proc = serve_process(
            "--listen", f"127.0.0.1:{port}", "--next-hop", hop.url, "--quarantine", str(tmp_path / "q"),
            "--drain-timeout", "1", "--text-workers", "0", log=log,
        )  # fmt: skip
        try:
            wait_listening(port, proc)
            clients = [threading.Thread(target=send, args=(i,)) for i in range(3)]
            for t in clients:
                t.start()
            wait_for(lambda: hop.verbs().count(b"DATA") == 3, "three messages at the next hop's DATA")
            started = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            for t in clients:
                t.join(60)
            assert proc.wait(60) == 0
            assert time.monotonic() - started >= 1.0  # they had their drain time
        finally:
            if proc.poll() is None:
                proc.kill()
        hop.release.set()  # the next hop would go on now: what reaches it?
        wait_for(lambda: all(c.ended_by_peer for c in hop.connections), "the next hop's connections to end")
    # Every client was cut off without a reply to its message: it keeps the mail and retries.
    assert sorted(results) == [0, 1, 2]
    assert all(isinstance(r, smtplib.SMTPServerDisconnected) for r in results.values()), results
    assert hop.stored == []  # none of them half relayed (or relayed at all)
    assert "drain timeout (1 s): closing 3 sessions still in a transaction" in log.read_text()


def test_supervisor_kills_a_worker_that_outlives_the_drain_by_the_margin(tmp_path: Path) -> None:
    from milter.supervisor import STOP_MARGIN

    port, log = free_port(), tmp_path / "serve.log"
    with scripted_hop() as hop:
        proc = serve_process(
            "--workers", "2", "--listen", f"127.0.0.1:{port}", "--next-hop", hop.url,
            "--quarantine", str(tmp_path / "q"), "--drain-timeout", "1", "--text-workers", "0", log=log,
        )  # fmt: skip
        try:
            wait_log(log, r"all workers ready")
            pids = {int(m[1]): int(m[2]) for m in wait_log(log, r"worker (\d) started \(pid (\d+)\)", 2)}
            os.kill(pids[1], signal.SIGSTOP)  # worker 1 hangs: it will never drain
            started = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(120) == 0
            elapsed = time.monotonic() - started
            wait_for(lambda: not os.path.exists(f"/proc/{pids[1]}"), "the hung worker to be gone")
        finally:
            if proc.poll() is None:
                proc.kill()
            for pid in pids.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert f"worker 1 (pid {pids[1]}) did not stop; killing it" in text
    assert "worker=0 stopped" in text  # the healthy one drained and went on its own
    assert elapsed >= 1.0 + STOP_MARGIN  # not before the drain and the margin had passed
