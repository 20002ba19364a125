"""Next hops on their own: Maildir++ layout and atomicity, the SMTP/LMTP client and its pool."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import UnixSocketController
from aiosmtpd.lmtp import LMTP
from conftest import SinkHandler

from milter.config import NextHop
from milter.delivery import HopReply, Sent, next_hop_from_url
from milter.delivery.maildir import MaildirHop
from milter.delivery.smtp import SmtpHop, dot_stuffed, encode_xtext
from milter.errors import RelayError
from milter.rules import Action
from milter.smtp import data_reply, decode_xtext

RAW = b"Subject: hi\r\n\r\nline\r\n.dot\r\n"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_maildir_layout_and_flags(tmp_path: Path) -> None:
    hop = MaildirHop(tmp_path / "Maildir")

    async def deliver_all() -> list[Sent]:
        sent = []
        for action in (Action.DELIVER, Action.FLAG, Action.SPAM_FOLDER):
            _, tx = await hop.begin("a@example.org", [], {})
            assert (await tx.add_recipient("b@example.net", [])).ok
            sent.append(await tx.send(RAW, action))
        return sent

    replies = run(deliver_all())
    root = tmp_path / "Maildir"
    [new] = (root / "new").iterdir()
    [flagged] = (root / "cur").iterdir()
    [junk] = (root / ".Junk" / "new").iterdir()
    assert new.read_bytes() == RAW.replace(b"\r\n", b"\n")  # Maildir files use LF
    assert flagged.name.endswith(":2,F") and ":" not in new.name and ":" not in junk.name
    assert (root / ".Junk" / "maildirfolder").exists()
    assert not any((root / "tmp").iterdir()) and not any((root / ".Junk" / "tmp").iterdir())
    lf = RAW.replace(b"\r\n", b"\n")
    assert new.name.endswith(f",S={len(lf)}")
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert [s.replies[0].code for s in replies] == [250, 250, 250]
    assert (
        "delivered to .Junk" in replies[2].replies[0].text
        and "delivered to INBOX" in replies[0].replies[0].text
    )


def test_maildir_that_cannot_be_written_is_a_relay_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    hop = MaildirHop(blocker / "Maildir")
    with pytest.raises(RelayError, match="cannot write to Maildir"):
        run(hop.store(RAW, Action.DELIVER))


def test_next_hop_from_url(tmp_path: Path) -> None:
    assert isinstance(next_hop_from_url(f"maildir:{tmp_path}"), MaildirHop)
    hop = next_hop_from_url("lmtp://127.0.0.1:24")
    assert isinstance(hop, SmtpHop) and hop.lmtp and str(hop) == "lmtp://127.0.0.1:24"
    assert isinstance(next_hop_from_url(NextHop("smtp", "::1", 25)), SmtpHop)


def test_dot_stuffing_and_line_ends() -> None:
    assert dot_stuffed(b".a\r\n..b\r\nc.\r\n") == b"..a\r\n...b\r\nc.\r\n.\r\n"
    assert dot_stuffed(b"no end") == b"no end\r\n.\r\n"
    # Bare CR or LF never reaches the next hop: "\n.\r\n" would end DATA early at some servers.
    assert dot_stuffed(b"a\n.\r\nMAIL FROM:<x>\r") == b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"
    assert dot_stuffed(b"") == b".\r\n"


def test_xtext_round_trip() -> None:
    for value in ("mx.example.com", "a b+c=d", "日本", "[UNAVAILABLE]"):
        assert decode_xtext(encode_xtext(value)) == value
    assert encode_xtext("a b") == "a+20b"


def test_data_reply_for_lmtp_replies() -> None:
    ok, full, gone = HopReply(250, "2.0.0 ok"), HopReply(452, "4.2.2 full"), HopReply(550, "5.1.1 gone")
    assert data_reply(Sent((ok, ok))) == "250 2.0.0 ok"
    assert data_reply(Sent((full, gone))) == "452 4.2.2 full"  # a temporary failure first: retried
    assert data_reply(Sent((gone,))) == "550 5.1.1 gone"
    assert data_reply(Sent((ok, gone))).startswith("451 4.3.0")
    assert data_reply(Sent((HopReply(250, "first\nsecond"),))) == "250-first\r\n250 second"


def test_connections_are_reused_and_a_stale_one_is_replaced(sink_factory: Any) -> None:
    with sink_factory() as sink:
        hop = SmtpHop(NextHop("smtp", "127.0.0.1", sink.port), timeout=5)

        async def two_messages() -> tuple[int, int]:
            for _ in range(2):
                reply, tx = await hop.begin("a@example.org", ["BODY=8BITMIME"], {"ADDR": "192.0.2.1"})
                assert reply.ok and tx is not None
                assert (await tx.add_recipient("b@example.net", [])).ok
                assert (await tx.send(RAW, Action.DELIVER)).all_ok
            first = len(hop._idle)
            hop._idle[0].writer.close()  # the connection is gone while idle (is_closing at once)
            reply, tx = await hop.begin("a@example.org", [], {})
            assert reply.ok and tx is not None
            await tx.abort()
            await hop.close()
            return first, len(hop._idle)

        first, after_close = run(two_messages())
    assert first == 1 and after_close == 0  # one connection served both messages
    assert [r.rcpt_tos for r in sink.received] == [["b@example.net"], ["b@example.net"]]
    assert sink.received[0].xforward == ["ADDR=192.0.2.1"]
    assert sink.received[0].data == RAW


def test_idle_connections_are_closed_and_given_back_to_the_next_hop(sink_factory: Any) -> None:
    with sink_factory() as sink:
        hop = SmtpHop(NextHop("smtp", "127.0.0.1", sink.port), timeout=5, idle_seconds=0.2)

        async def send_one() -> None:
            reply, tx = await hop.begin("a@example.org", [], {})
            assert reply.ok and tx is not None
            assert (await tx.add_recipient("b@example.net", [])).ok
            assert (await tx.send(RAW, Action.DELIVER)).all_ok

        async def scenario() -> tuple[bool, bool, int, bool]:
            await send_one()
            (conn,) = hop._idle
            kept_while_fresh = not conn.writer.is_closing()
            deadline = time.monotonic() + 30
            while not conn.writer.is_closing() and time.monotonic() < deadline:  # the reaper's work
                await asyncio.sleep(0.02)
            closed_when_idle = conn.writer.is_closing()
            left = len(hop._idle)
            await send_one()  # a new connection serves the next message
            fresh = hop._idle[0] is not conn
            await hop.close()
            return kept_while_fresh, closed_when_idle, left, fresh

        assert run(scenario()) == (True, True, 0, True)
    assert len(sink.received) == 2


def test_unreachable_next_hop_is_a_relay_error() -> None:
    hop = SmtpHop(NextHop("smtp", "127.0.0.1", 1), timeout=2)
    with pytest.raises(RelayError, match="cannot connect"):
        run(hop.begin("a@example.org", [], {}))


def test_lmtp_over_a_unix_socket(tmp_path: Path) -> None:
    handler = SinkHandler(lmtp=True, lmtp_fail=frozenset({"full@example.net"}))
    path = tmp_path / "lmtp.sock"

    class Controller(UnixSocketController):
        def factory(self) -> LMTP:
            return LMTP(self.handler, data_size_limit=0, hostname="lmtp-sink")

    controller = Controller(handler, unix_socket=str(path))
    controller.start()
    try:
        hop = next_hop_from_url(f"lmtp:{path}", timeout=5)

        async def deliver() -> Sent:
            _, tx = await hop.begin("a@example.org", [], {})
            assert tx is not None
            for rcpt in ("a@example.net", "full@example.net", "refuse@example.net"):
                await tx.add_recipient(rcpt, [])
            sent = await tx.send(RAW, Action.DELIVER)
            await hop.close()
            return sent

        sent = run(deliver())
    finally:
        controller.stop()
    assert [r.code for r in sent.replies] == [250, 452]  # one per recipient accepted at RCPT


class ChunkingServer:
    """A next hop that announces CHUNKING and records each BDAT chunk (aiosmtpd has no BDAT)."""

    def __init__(self, bdat_reply: bytes = b"250 2.0.0 Ok: queued") -> None:
        self.bdat_reply = bdat_reply
        self.commands: list[bytes] = []
        self.chunks: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop ESMTP\r\n")
        while line := await reader.readline():
            command = line.rstrip(b"\r\n")
            self.commands.append(command)
            verb = command.split(b" ")[0].upper()
            if verb == b"EHLO":
                writer.write(b"250-hop\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 CHUNKING\r\n")
            elif verb == b"BDAT":
                size = int(command.split(b" ")[1])
                self.chunks.append(await reader.readexactly(size))
                writer.write(self.bdat_reply + b"\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@pytest.mark.parametrize("refused", [False, True])
def test_a_next_hop_with_chunking_gets_the_message_as_one_bdat_chunk(refused: bool) -> None:
    server = ChunkingServer(b"554 5.7.1 no thanks" if refused else b"250 2.0.0 Ok: queued")
    data = b"Subject: hi\n\n.leading dot stays single\r\nbare\rend"

    async def deliver() -> Sent:
        listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        hop = SmtpHop(NextHop("smtp", "127.0.0.1", port))
        try:
            _, tx = await hop.begin("a@example.org", [], {})
            assert tx is not None and (await tx.add_recipient("b@example.net", [])).ok
            sent = await tx.send(data, Action.DELIVER)
            await hop.close()
            deadline = time.monotonic() + 30
            while server.commands[-1:] != [b"QUIT"] and time.monotonic() < deadline:  # read by the server
                await asyncio.sleep(0.02)
            return sent
        finally:
            listener.close()

    sent = run(deliver())
    # CRLF line ends (no bare CR or LF reaches the next hop), no dot-stuffing, no "." line.
    body = b"Subject: hi\r\n\r\n.leading dot stays single\r\nbare\r\nend\r\n"
    assert server.chunks == [body]
    assert f"BDAT {len(body)} LAST".encode() in server.commands and b"DATA" not in server.commands
    assert [r.code for r in sent.replies] == [554 if refused else 250]
    # A refused chunk fails the transaction: it is reset, and the connection is reused.
    assert (b"RSET" in server.commands) is refused
    assert server.commands[-1] == b"QUIT"
