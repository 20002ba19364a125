"""SMTP and LMTP next hops, with connection reuse.

In production the next hop is Postfix's reinjection listener (127.0.0.1:10026) or Dovecot's LMTP.
The inbound transaction is mirrored command by command: MAIL when the client says MAIL, each
RCPT when it says RCPT (so a refused recipient is refused to the client with the next hop's own
code), the message once it is decided: as one `BDAT n LAST` chunk when an SMTP next hop
announces CHUNKING (Postfix does: one write and one round trip), else with DATA. Over LMTP the
next hop answers DATA once per accepted recipient, and each answer is kept.

Why not aiosmtplib here: it has no LMTP client (cole/aiosmtplib#210, open), and its reply
reader keeps one reply per command and drops data that arrives while no command is pending, so
LMTP's per-recipient replies after DATA can be lost (aiosmtplib/protocol.py, `data_received`;
the stdlib's smtplib.LMTP has the same fault, python/cpython#76984). The client needed is
small (a banner; EHLO/LHLO; commands, pipelined or one by one, and their replies; the DATA dot
rules), so it is written here on asyncio streams, where every byte of every reply is read.

Connections are reused: a transaction takes an idle connection (or opens one) and gives it back
when it ends cleanly. A connection the next hop closed while idle is noticed at MAIL, before
anything was handed over, and replaced once. Any fault after that point is a RelayError (the
client gets a 4xx and retries: a duplicate is possible if the next hop took the message and the
reply was lost, a loss is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping, Sequence

from milter.config import NextHop as NextHopSpec
from milter.delivery import HopReply, Sent
from milter.errors import RelayError
from milter.rules import Action

MAX_IDLE = 32  # idle connections kept; the inbound side allows max_sessions at most anyway
# An idle connection is closed after this long. It holds one of the next hop's server processes
# (Postfix's reinjection smtpd has maxproc of them): under load connections are reused within
# milliseconds, so a short limit keeps the reuse and gives idle processes back to Postfix
# (with --workers N, N pools would otherwise sit on them and starve each other).
IDLE_SECONDS = 5.0
_LONE_EOL = re.compile(rb"\r\n|\r|\n")
# MAIL parameters and the extension that must be announced for each to be passed on.
_MAIL_PARAM_EXTENSION = {
    "SIZE": "size",
    "BODY": "8bitmime",
    "SMTPUTF8": "smtputf8",
    "RET": "dsn",
    "ENVID": "dsn",
}
_RCPT_PARAM_EXTENSION = {"NOTIFY": "dsn", "ORCPT": "dsn"}


class _Connection:
    """One connection to the next hop: a command, then its reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.idle_since = time.monotonic()

    @property
    def alive(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    async def reply(self) -> HopReply:
        try:
            async with asyncio.timeout(self.timeout):  # no extra task per reply, unlike wait_for
                return await self._read_reply()
        except TimeoutError:
            self.close()
            raise RelayError(f"no reply within {self.timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            self.close()
            raise RelayError(f"connection lost ({_why(e)})") from None
        except BaseException:
            # Cancelled (the client went away, a drain ran out) while a reply was due: that
            # reply is still on its way, and read later it would pass for the answer to another
            # command (a 250 for a message the next hop never took). Never reuse the connection.
            self.close()
            raise

    async def _read_reply(self) -> HopReply:
        lines: list[str] = []
        while True:
            line = await self.reader.readuntil(b"\n")
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
                raise ValueError(f"malformed reply {text[:80]!r}")
            lines.append(text[4:])
            if text[3:4] != "-":
                return HopReply(int(text[:3]), "\n".join(lines))

    async def command(self, line: bytes) -> HopReply:
        return (await self.commands([line]))[0]

    async def commands(self, lines: Sequence[bytes]) -> list[HopReply]:
        """Commands in one write, then their replies in order (PIPELINING, RFC 2920)."""
        await self._write(b"".join(line + b"\r\n" for line in lines))
        return [await self.reply() for _ in lines]

    async def send_data(self, data: bytes, replies: int) -> tuple[bool, list[HopReply]]:
        """DATA, the message (dot-stuffed and terminated here), then `replies` replies.
        (False, [reply]) if DATA itself was refused."""
        start = await self.command(b"DATA")
        if start.code != 354:
            return False, [start]
        await self._write(dot_stuffed(data), during=" while sending the message")
        return True, [await self.reply() for _ in range(replies)]

    async def send_chunk(self, data: bytes) -> tuple[bool, list[HopReply]]:
        """The message as one `BDAT n LAST` chunk (CHUNKING, RFC 3030) in the same write as the
        command, and its one reply: one write and one round trip instead of DATA's two of each,
        and no dot-stuffing. (False, [reply]) if it was refused: the transaction is then failed
        and wants an RSET, like a refused DATA (RFC 3030 section 3)."""
        body = crlf_lines(data)
        await self._write(b"BDAT %d LAST\r\n" % len(body) + body, during=" while sending the message")
        reply = await self.reply()
        return reply.ok, [reply]

    async def _write(self, payload: bytes, during: str = "") -> None:
        try:
            self.writer.write(payload)
            await self.writer.drain()
        except OSError as e:
            self.close()
            raise RelayError(f"connection lost{during} ({_why(e)})") from None
        except BaseException:  # cancelled half-way through a command: see reply()
            self.close()
            raise

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class SmtpHop:
    """An SMTP or LMTP server as the next hop."""

    def __init__(
        self,
        spec: NextHopSpec,
        *,
        timeout: float = 120.0,
        local_hostname: str = "localhost",
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        if spec.scheme not in ("smtp", "lmtp"):
            raise ValueError(f"SmtpHop needs an smtp:// or lmtp: next hop, got {spec}")
        self.spec = spec
        self.lmtp = spec.scheme == "lmtp"
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.idle_seconds = idle_seconds
        self._idle: list[_Connection] = []
        self._closed = False
        self._reaper: asyncio.TimerHandle | None = None

    def __str__(self) -> str:
        return str(self.spec)

    async def begin(
        self, mail_from: str, options: Sequence[str], xforward: Mapping[str, str]
    ) -> tuple[HopReply, SmtpTransaction | None]:
        for attempt in range(2):
            conn, reused = await self._acquire()
            try:
                mail = b"MAIL FROM:" + _path(mail_from) + _params(conn, options, mail=True)
                forward = _xforward(conn, xforward) if xforward else None
                if forward is None:
                    reply = await conn.command(mail)
                elif "pipelining" in conn.extensions:
                    # XFORWARD's reply is not worth waiting for before MAIL: one round trip.
                    reply = (await conn.commands([forward, mail]))[1]
                else:
                    await conn.command(forward)
                    reply = await conn.command(mail)
            except RelayError as e:
                if reused and attempt == 0:
                    continue  # a pooled connection the next hop had closed: nothing was handed over yet
                raise RelayError(f"{self}: {e}") from None
            if reply.ok:
                return reply, SmtpTransaction(self, conn)
            self._release(conn)
            return reply, None
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        idle, self._idle = self._idle, []
        for conn in idle:
            _quit(conn)

    async def _acquire(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.alive and now - conn.idle_since < self.idle_seconds:
                return conn, True
            conn.close()
        return await self._connect(), False

    def _release(self, conn: _Connection) -> None:
        if conn.alive and not self._closed and len(self._idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            if self._reaper is None:
                self._reaper = asyncio.get_running_loop().call_later(self.idle_seconds, self._reap)
        else:
            conn.close()

    def _reap(self) -> None:
        """Close the connections idle for `idle_seconds`; come back for the rest."""
        self._reaper = None
        now = time.monotonic()
        stale = [c for c in self._idle if now - c.idle_since >= self.idle_seconds]
        self._idle = [c for c in self._idle if c not in stale]
        for conn in stale:
            _quit(conn)
        if self._idle and not self._closed:
            wait = min(c.idle_since for c in self._idle) + self.idle_seconds - now
            self._reaper = asyncio.get_running_loop().call_later(max(wait, 0.01), self._reap)

    async def _connect(self) -> _Connection:
        spec = self.spec
        try:
            if spec.path is not None:
                opening = asyncio.open_unix_connection(str(spec.path))
            else:
                opening = asyncio.open_connection(spec.host, spec.port)
            reader, writer = await asyncio.wait_for(opening, self.timeout)
        except TimeoutError:
            raise RelayError(f"{self}: no connection within {self.timeout:g} s") from None
        except OSError as e:
            raise RelayError(f"{self}: cannot connect ({_why(e)})") from None
        conn = _Connection(reader, writer, self.timeout)
        try:
            greeting = await conn.reply()
            if greeting.code != 220:
                raise RelayError(f"greeted with {greeting}")
            hello = await conn.command((b"LHLO " if self.lmtp else b"EHLO ") + self.local_hostname.encode())
            if not hello.ok and not self.lmtp:
                hello = await conn.command(b"HELO " + self.local_hostname.encode())
            if not hello.ok:
                raise RelayError(f"refused our {'LHLO' if self.lmtp else 'EHLO'}: {hello}")
        except RelayError as e:
            conn.close()
            raise RelayError(f"{self}: {e}") from None
        conn.extensions = _extensions(hello.text)
        return conn


class SmtpTransaction:
    def __init__(self, hop: SmtpHop, conn: _Connection) -> None:
        self.hop = hop
        self.conn: _Connection | None = conn
        self.accepted = 0

    async def add_recipient(self, address: str, options: Sequence[str]) -> HopReply:
        conn = self._conn()
        try:
            reply = await conn.command(b"RCPT TO:" + _path(address) + _params(conn, options, mail=False))
        except RelayError as e:
            self.conn = None
            raise RelayError(f"{self.hop}: {e}") from None
        if reply.ok:
            self.accepted += 1
        return reply

    async def send(self, data: bytes, action: Action) -> Sent:
        conn = self._conn()
        self.conn = None
        try:
            if "chunking" in conn.extensions and not self.hop.lmtp:
                sent, replies = await conn.send_chunk(data)
            else:  # LMTP answers once per recipient: DATA, whose start is answered apart
                sent, replies = await conn.send_data(data, self.accepted if self.hop.lmtp else 1)
        except RelayError as e:
            raise RelayError(f"{self.hop}: {e}") from None
        if sent:
            self.hop._release(conn)
        else:
            self.conn = conn  # DATA refused: the next hop's transaction is still open
            await self.abort()
        return Sent(tuple(replies))

    async def abort(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if not conn.alive:  # closed mid-exchange (see _Connection.reply): nothing to reset
            conn.close()
            return
        try:
            reply = await conn.command(b"RSET")
        except RelayError:
            conn.close()
            return
        if reply.ok:
            self.hop._release(conn)
        else:
            conn.close()

    def _conn(self) -> _Connection:
        if self.conn is None:
            raise RelayError(f"{self.hop}: the transaction was already ended")
        return self.conn


def _quit(conn: _Connection) -> None:
    with contextlib.suppress(OSError):
        conn.writer.write(b"QUIT\r\n")
    conn.close()


def crlf_lines(data: bytes) -> bytes:
    """`data` with CRLF line ends (a bare CR or LF would let a next hop that reads them as line
    ends see a different message: SMTP smuggling) and a line end at the end."""
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
        data = _LONE_EOL.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def dot_stuffed(data: bytes) -> bytes:
    """`data` as DATA sends it: CRLF lines (crlf_lines), leading dots doubled, and the
    terminating `.` line."""
    data = crlf_lines(data)
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def encode_xtext(value: str) -> str:
    """RFC 3461 xtext, as XFORWARD values travel: `+XX` for '+', '=' and anything not printable."""
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
        for c in value
    )


def _path(address: str) -> bytes:
    address = address.strip()
    if address in ("", "<>"):
        return b"<>"
    return b"<" + address.encode("utf-8", "surrogateescape") + b">"


def _xforward(conn: _Connection, attributes: Mapping[str, str]) -> bytes | None:
    """The XFORWARD command passing on what Postfix told us of the original client, as far as
    the next hop takes it; None if it takes none. Its refusal is not worth failing a message
    for: the attributes are informational."""
    if "xforward" not in conn.extensions:
        return None
    allowed = set(conn.extensions["xforward"].upper().split())
    words = [f"{k}={encode_xtext(v)}" for k, v in attributes.items() if k in allowed]
    return b"XFORWARD " + " ".join(words).encode("ascii", "replace") if words else None


def _params(conn: _Connection, options: Sequence[str], *, mail: bool) -> bytes:
    """The ESMTP parameters as received, but those whose extension the next hop does not
    announce (sending them would be a protocol error; SMTPUTF8 always goes: the next hop must
    refuse such mail rather than get it mangled). DSN requests to a next hop without DSN are
    dropped: the message matters more than the notice (Postfix's reinjection smtpd announces
    DSN, so in the shipped after-queue set-up nothing is dropped)."""
    kept = []
    for option in options:
        keyword = option.split("=", 1)[0].upper()
        extension = (_MAIL_PARAM_EXTENSION if mail else _RCPT_PARAM_EXTENSION).get(keyword)
        if extension is not None and keyword != "SMTPUTF8" and extension not in conn.extensions:
            continue
        kept.append(option)
    return b"".join(b" " + o.encode("ascii", "replace") for o in kept)


def _extensions(ehlo_text: str) -> dict[str, str]:
    extensions = {}
    for line in ehlo_text.split("\n")[1:]:
        keyword, _, value = line.strip().partition(" ")
        if keyword:
            extensions[keyword.lower()] = value
    return extensions


def _why(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
