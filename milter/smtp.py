"""The SMTP side: the only place where outcomes become SMTP replies.

aiosmtpd parses the protocol; this module decides every answer. Where aiosmtpd's defaults would
break the promise "250 only after the next hop accepted, 4xx for every fault", they are replaced:

- an unexpected exception answers 451 (aiosmtpd says 500) and is logged with its traceback;
- DATA is read here: no 5xx for long lines (Postfix passes them; a 500 would bounce the mail),
  552 for a message over the size limit, the idle timer restarted while data flows, and SMTP's
  end-of-data only as CRLF.CRLF;
- the command size limits are per session (aiosmtpd keeps them in a class attribute shared by
  all sessions and cleared whenever a session starts);
- XFORWARD (which aiosmtpd lacks) is implemented, so the client Postfix saw reaches the rules
  and the logs.

Recipients. For an after-queue content filter Postfix has already queued the message and sends
MAIL, RCPT... DATA; once it has a 250 for a recipient it will consider that recipient done when
DATA gets 250. So the next hop's opinion of each recipient must be known before answering RCPT:
the next-hop transaction is opened at MAIL and each RCPT is relayed as it comes, and the client
gets the next hop's own reply (a refused recipient is refused with the next hop's code, and
Postfix bounces or retries that recipient alone). After DATA, an SMTP next hop answers once for
all accepted recipients, which is the one reply the client gets. An LMTP next hop answers per
recipient: all accepted -> 250; none -> its first failure (4xx preferred, so nothing is bounced
that could still be delivered); some but not all -> 451 for the message, because one SMTP
reply cannot say "some": Postfix retries it, the recipients that already have it may get it
twice, and none loses it (a duplicate is the safe error; set Dovecot's lmtp_rcpt_check_quota so
quota refusals come at RCPT time, where they are exact).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiosmtpd.smtp import SMTP, Envelope, Session

from milter.config import Config
from milter.delivery import HopReply, NextHop, Sent, Transaction
from milter.errors import RelayError
from milter.logs import log_message
from milter.mark import mark
from milter.message import Envelope as MessageEnvelope
from milter.message import Message
from milter.metrics import Metrics
from milter.outcome import (
    INTERNAL_ERROR,
    POLICY_REJECT,
    POLICY_TEMPFAIL,
    Recorder,
    decided,
    log_fields,
    verdict_fields,
)
from milter.policy import Policy, Verdict
from milter.quarantine import Quarantine, held_envelope
from milter.rules import Action
from milter.scan import scan
from milter.workers import TextWorkers

log = logging.getLogger("milter.smtp")

# --- every reply milter makes up itself ----------------------------------------------------------
TOO_BUSY = "421 4.3.2 Too many connections; try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down; try again later"
DATA_START = "354 End data with <CR><LF>.<CR><LF>"
OK_XFORWARD = "250 2.0.0 Ok"
OK_MAIL = "250 2.1.0 Ok"
OK_DISCARDED = "250 2.0.0 Ok: discarded by rule {rule}"
OK_QUARANTINED = "250 2.0.0 Ok: quarantined by rule {rule}"
NEXT_HOP_DOWN = "451 4.4.1 Next hop unavailable, try again later"
NEXT_HOP_FAILED = "451 4.4.2 Next hop failed while taking the message, try again later"
# The quarantine (a local Maildir) refused the message: a local fault, not the next hop's.
QUARANTINE_FAILED = "451 4.3.0 Quarantine could not keep the message, try again later"
PARTIAL_DELIVERY = "451 4.3.0 Next hop took the message for some recipients only; try again later"
TOO_BIG = "552 5.3.4 Message too big for system (limit {limit} bytes)"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
XFORWARD_SYNTAX = "501 5.5.4 Syntax: XFORWARD attribute=value ..."
XFORWARD_BAD_NAME = "501 5.5.4 Bad XFORWARD attribute name {name}; expected one of: {names}"
XFORWARD_IN_MAIL = "503 5.5.1 Error: XFORWARD is not allowed inside a mail transaction"
DSN_SYNTAX = "501 5.5.4 Bad DSN parameter {word}; expected {expected}"

# An address the fast path takes: no quoting, comments, routes, spaces or controls.
_PLAIN_ADDRESS = re.compile(r"(?:[^\x00-\x20<>()\[\]\\\",;:@]+@[^\x00-\x20<>()\\\",;:@]+)?")
XFORWARD_NAMES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
UNAVAILABLE = frozenset({"[UNAVAILABLE]", "[TEMPUNAVAIL]"})
# Read DATA in pieces up to this size; the reader's buffer limit (commands are held to 512..).
READ_LIMIT = 1 << 16
COMMAND_LIMIT = 2048  # MAIL with SIZE, BODY, SMTPUTF8 and a long address; XFORWARD lines

# DSN (RFC 3461) parameters, passed to the next hop as sent: aiosmtpd knows none of them (it
# answers 555) and upper-cases every parameter, which would change ENVID's and ORCPT's values.
_XTEXT = r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})+"
_DSN_MAIL: Final = {
    "RET": (re.compile(r"FULL|HDRS", re.IGNORECASE), "RET=FULL or RET=HDRS"),
    "ENVID": (re.compile(_XTEXT), "ENVID=xtext of up to 100 characters"),
}
_DSN_RCPT: Final = {
    "NOTIFY": (
        re.compile(r"NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*", re.IGNORECASE),
        "NOTIFY=NEVER or NOTIFY= a comma list of SUCCESS, FAILURE, DELAY",
    ),
    "ORCPT": (
        re.compile(r"[A-Za-z0-9-]+;" + _XTEXT),
        "ORCPT=address-type;xtext (e.g. rfc822;user+40example.org)",
    ),
}


def split_dsn(arg: str, known: dict[str, tuple[re.Pattern[str], str]]) -> tuple[str, list[str], str | None]:
    """MAIL/RCPT argument -> (it without DSN parameters, those parameters as sent, error reply).

    Only the words after the address are looked at (an address may hold "=" and spaces)."""
    close = arg.find(">")
    if close < 0:  # a bare address: its first word
        address_end = len(arg) - len(arg.lstrip())
        address_end = arg.find(" ", address_end)
        close = len(arg) if address_end < 0 else address_end - 1
    head, rest = arg[: close + 1], arg[close + 1 :]
    kept: list[str] = []
    dsn: list[str] = []
    seen: set[str] = set()
    for word in rest.split():
        keyword, eq, value = word.partition("=")
        keyword = keyword.upper()
        if keyword not in known:
            kept.append(word)
            continue
        pattern, expected = known[keyword]
        if not eq or keyword in seen or len(value) > 100 or not pattern.fullmatch(value):
            return arg, [], DSN_SYNTAX.format(word=word[:120], expected=expected)
        seen.add(keyword)
        # RET and NOTIFY are keywords (any case); ENVID and ORCPT go on exactly as given.
        dsn.append(f"{keyword}={value.upper() if keyword in ('RET', 'NOTIFY') else value}")
    return " ".join([head, *kept]), dsn, None


def reply_text(code: int, text: str) -> str:
    """A next hop's reply, relayed: every line with the code (multi-line replies stay whole)."""
    lines = text.split("\n") or [""]
    return "\r\n".join(f"{code}{'-' if i < len(lines) - 1 else ' '}{line}" for i, line in enumerate(lines))


def relayed(reply: HopReply) -> str:
    return reply_text(reply.code, reply.text)


class QuarantineFailed(Exception):
    """The quarantine could not keep a message (its Maildir refused it)."""


class FilterSession(Session):
    """aiosmtpd's session plus what milter keeps per client connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.xforward: dict[str, str] = {}
        self.transaction: Transaction | None = None
        self.policy: Policy | None = None
        self.started = 0.0
        self.dsn: list[str] = []  # the DSN parameters of the MAIL or RCPT being handled
        # What the next hop was given at MAIL and RCPT: kept with a quarantined message, for its release.
        self.mail_params: list[str] = []
        self.rcpt_params: list[tuple[str, list[str]]] = []


@dataclass
class Filter:
    """The aiosmtpd handler: shared by all sessions; the decisions behind every reply."""

    config: Config
    policy: Policy  # swapped whole on reload; each transaction keeps the one it started with
    hop: NextHop
    quarantine: Quarantine
    metrics: Metrics | None = None
    texts: TextWorkers | None = None  # message->text in other processes (None: in the daemon)
    recorder: Recorder | None = None  # the history (milter.history), when the console is on
    sessions: set[FilterSMTP] = field(default_factory=set)
    draining: bool = False
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    # -- aiosmtpd hooks --------------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: FilterSMTP,
        session: FilterSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # PIPELINING: commands are read in order from one stream and answered in order.
        extra = ["250-PIPELINING", "250-DSN", "250-XFORWARD " + " ".join(XFORWARD_NAMES)]
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(
        self, server: FilterSMTP, session: FilterSession, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        session.policy = self.policy
        session.started = time.perf_counter()
        mail_from = "" if address == "<>" else address
        try:
            reply, transaction = await self.hop.begin(mail_from, [*options, *session.dsn], session.xforward)
        except RelayError as e:
            log.warning("next hop down at MAIL from <%s>: %s", mail_from, e)
            return NEXT_HOP_DOWN
        if transaction is None:
            return relayed(reply)
        session.transaction = transaction
        session.mail_params, session.rcpt_params = [*options, *session.dsn], []
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return OK_MAIL

    async def handle_RCPT(
        self, server: FilterSMTP, session: FilterSession, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        transaction = session.transaction
        if transaction is None:  # the next hop went away earlier in this transaction
            return NEXT_HOP_DOWN
        try:
            reply = await transaction.add_recipient(address, [*options, *session.dsn])
        except RelayError as e:
            log.warning("next hop failed at RCPT <%s>: %s", address, e)
            session.transaction = None
            return NEXT_HOP_DOWN
        if reply.ok:
            session.rcpt_params.append((address, [*options, *session.dsn]))
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return relayed(reply)

    # -- the message -----------------------------------------------------------------------------

    async def handle_message(self, server: FilterSMTP, session: FilterSession, envelope: Envelope) -> str:
        """Decide, mark and hand on one message; the reply for the client's DATA."""
        transaction, session.transaction = session.transaction, None
        policy = session.policy or self.policy
        raw: bytes = envelope.original_content or b""
        message = Message(raw, message_envelope(server, session, envelope))
        fields: dict[str, object] = log_fields(message)
        verdict: Verdict | None = None
        held: str | None = None
        if transaction is None:
            fields.update(reply=NEXT_HOP_DOWN, error="next hop lost before DATA")
            finish_log(fields, session)
            self._record(message, None, fields)
            return NEXT_HOP_DOWN
        try:
            verdict = await scan(policy, message, self.texts, self.metrics)
            fields.update(verdict_fields(verdict))
            relay_started = time.perf_counter()
            reply, hop_reply, held = await self._route(transaction, message, verdict, session)
            if self.metrics is not None:
                self.metrics.message_relayed(time.perf_counter() - relay_started)
        except QuarantineFailed as e:
            log.warning("quarantine failed: %s", e)
            reply, hop_reply = QUARANTINE_FAILED, None
        except RelayError as e:
            log.warning("next hop failed: %s", e)
            reply, hop_reply = NEXT_HOP_FAILED, str(e)
        finally:
            await transaction.abort()  # a no-op once the message was sent
        reply_line = reply.split("\r\n")[-1]
        fields.update(reply=reply_line, next_hop=hop_reply if hop_reply != reply_line else None)
        if held is not None:
            fields["quarantine"] = held
        finish_log(fields, session)
        self._record(message, verdict, fields, held)
        return reply

    def _record(
        self, message: Message, verdict: Verdict | None, fields: dict[str, object], held: str | None = None
    ) -> None:
        if self.recorder is not None:
            self.recorder.record(decided(message, verdict, fields, "smtp", held))

    async def _route(
        self, transaction: Transaction, message: Message, verdict: Verdict, session: FilterSession
    ) -> tuple[str, str | None, str | None]:
        """The reply to the client for `verdict`, the next hop's reply (for the log), and the
        quarantine id of a quarantined message."""
        action, rule = verdict.action, verdict.decision.rule
        if action is Action.TEMPFAIL:
            return POLICY_TEMPFAIL.format(rule=rule), None, None
        if action is Action.REJECT:
            # Only a before-queue ruleset can hold `reject` (Ruleset.load checks the mode).
            return POLICY_REJECT.format(rule=rule), None, None
        if action is Action.DISCARD:
            return OK_DISCARDED.format(rule=rule), None, None
        marked = mark(message.raw, verdict, self.config.subject_tag)
        if action is Action.QUARANTINE:
            envelope = held_envelope(
                message.envelope.mail_from,
                session.mail_params,
                session.rcpt_params,
                session.xforward,
                verdict,
            )
            try:
                held = await self.quarantine.store(marked, envelope)
            except RelayError as e:
                raise QuarantineFailed(str(e)) from e
            return OK_QUARANTINED.format(rule=rule), f"quarantined as {held}", held
        sent = await transaction.send(marked, action)
        return data_reply(sent), "; ".join(str(r) for r in sent.replies), None

    # -- faults and lifecycle ----------------------------------------------------------------------

    def abort_later(self, transaction: Transaction) -> None:
        """End a transaction from sync code (RSET, EHLO, a client gone); kept until done."""
        task = asyncio.ensure_future(transaction.abort())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def wait_pending(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def data_reply(sent: Sent) -> str:
    """The one reply to DATA from the next hop's reply (SMTP) or replies (LMTP, per recipient)."""
    replies = sent.replies
    if sent.all_ok:
        return relayed(replies[0])
    if sent.none_ok:
        temporary = [r for r in replies if r.temporary]
        return relayed(temporary[0] if temporary else replies[0])
    return PARTIAL_DELIVERY


def message_envelope(server: FilterSMTP, session: FilterSession, envelope: Envelope) -> MessageEnvelope:
    xf = session.xforward
    peer = session.peer
    address = xf.get("ADDR")
    if address is None and isinstance(peer, tuple) and peer:
        address = str(peer[0])
    mail_from = envelope.mail_from or ""
    return MessageEnvelope(
        mail_from="" if mail_from == "<>" else mail_from,
        rcpt_tos=tuple(envelope.rcpt_tos),
        client_address=address,
        client_name=xf.get("NAME"),
        helo=xf.get("HELO") or session.host_name,
        queue_id=xf.get("IDENT"),
        mail_options=tuple(envelope.mail_options),
    )


def finish_log(fields: dict[str, object], session: FilterSession) -> None:
    if session.started:
        fields["ms"] = round((time.perf_counter() - session.started) * 1000, 1)
    log_message(fields)


def decode_xtext(value: str) -> str:
    """RFC 3461 xtext (`+XX` hex escapes), as XFORWARD values are sent."""
    if "+" not in value:
        return value
    out = bytearray()
    i = 0
    raw = value.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i : i + 1] == b"+" and _is_hex(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


class FilterSMTP(SMTP):
    """aiosmtpd's SMTP with milter's protocol rules (see the module docstring)."""

    line_length_limit = READ_LIMIT

    def __init__(self, handler: Filter, **kwargs: Any) -> None:
        # Per session, not aiosmtpd's class-wide dict (which every new session clears).
        self.command_size_limits = _Limits(COMMAND_LIMIT)
        super().__init__(handler, **kwargs)
        self.filter = handler
        self.busy = False  # inside a mail transaction (MAIL..end of DATA)
        self.receiving = False  # reading a message after 354
        self.lost = False  # the connection is gone
        self._replies: list[bytes] = []  # answers held back while pipelined commands wait
        self._deadline = 0.0  # idle deadline (loop time); see _reset_timeout

    def _create_session(self) -> FilterSession:
        return FilterSession(self.loop)

    # -- replies -----------------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        """Send a reply; with more commands of a pipelined group already read, hold it so the
        group's replies leave in one write (RFC 2920 lets a server do this; it must not wait
        for input with replies unsent). Postfix pipelines XFORWARD, MAIL, RCPT and DATA: one
        write and one wake-up of its client per message instead of four."""
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        self._replies.append(status + b"\r\n")
        # StreamReader has no public peek; without its buffer, every reply goes at once (safe).
        pending = getattr(self._reader, "_buffer", b"")
        if b"\n" in pending and not status.startswith((b"221", b"421")):
            return  # the next command is here already: its reply will take this one along
        self._flush_replies()
        await self._writer.drain()

    def _flush_replies(self) -> None:
        if self._replies and self.transport is not None:
            self._writer.write(b"".join(self._replies))
        self._replies.clear()

    # -- sessions: limit and drain -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.filter.sessions.add(self)
            if self.filter.metrics is not None:
                self.filter.metrics.session_opened()

    def connection_lost(self, error: Exception | None) -> None:
        self.lost = True
        if self in self.filter.sessions:
            self.filter.sessions.discard(self)
            if self.filter.metrics is not None:
                self.filter.metrics.session_closed()
        session = self.session
        if isinstance(session, FilterSession):
            if session.transaction is not None:
                self.filter.abort_later(session.transaction)
                session.transaction = None
            session.policy = None
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.filter.draining:
            await self.push(SHUTTING_DOWN)
            self._close()
            return
        if len(self.filter.sessions) > self.filter.config.max_sessions:
            peer = self.session.peer if self.session is not None else None
            log.warning("refusing %r: %d sessions open", peer, len(self.filter.sessions) - 1)
            await self.push(TOO_BUSY)
            self._close()
            return
        await super()._handle_client()

    def close_if_idle(self) -> bool:
        """Shutdown: say 421 to a session between transactions and close it. True if closed."""
        if self.busy or self.transport is None:
            return False
        self._replies.append(SHUTTING_DOWN.encode() + b"\r\n")  # after any reply still held
        self._close()
        return True

    def _close(self) -> None:
        self._flush_replies()
        if self.transport is not None:
            self.transport.close()

    def _set_rset_state(self) -> None:
        # RSET, HELO/EHLO: the transaction ends here and at the next hop.
        session = self.session
        if isinstance(session, FilterSession):
            if session.transaction is not None:
                self.filter.abort_later(session.transaction)
                session.transaction = None
            session.xforward = {}
            session.policy = None
        self.busy = False
        super()._set_rset_state()  # type: ignore[no-untyped-call]

    # -- commands ------------------------------------------------------------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.filter.draining:
            await self.push(SHUTTING_DOWN)
            self._close()
            return
        arg, ok = await self._take_dsn(arg, _DSN_MAIL)
        if not ok:
            return
        self.busy = True
        await super().smtp_MAIL(arg)
        if not (self.envelope is not None and self.envelope.mail_from):
            self.busy = False

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, ok = await self._take_dsn(arg, _DSN_RCPT)
        if ok:
            await super().smtp_RCPT(arg)

    async def _take_dsn(
        self, arg: str | None, known: dict[str, tuple[re.Pattern[str], str]]
    ) -> tuple[str | None, bool]:
        """Set aside the DSN parameters of MAIL or RCPT for the next hop: (the rest, False if
        refused). Without EHLO there are no parameters: aiosmtpd refuses them as usual."""
        session = self.session
        assert isinstance(session, FilterSession)
        session.dsn = []
        if not arg or not session.extended_smtp:
            return arg, True
        rest, session.dsn, error = split_dsn(arg, known)
        if error is not None:
            await self.push(error)
            return arg, False
        return rest, True

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """`<address> params` -> (address, params): the plain forms directly; anything else
        (quoted local parts, source routes, bare addresses) through aiosmtpd's full parser.
        The full parser costs a third of a millisecond per address, per MAIL and RCPT."""
        text = arg.lstrip()
        if text.startswith("<"):
            end = text.find(">")
            address = text[1:end]
            if end > 0 and _PLAIN_ADDRESS.fullmatch(address):
                return (address or "<>"), text[end + 1 :]
        result: tuple[str | None, str | None] = super()._getaddr(arg)
        return result

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """XFORWARD NAME=... ADDR=... (Postfix's XFORWARD_README): the original client's data."""
        if self.envelope is not None and self.envelope.mail_from:
            await self.push(XFORWARD_IN_MAIL)
            return
        if not arg:
            await self.push(XFORWARD_SYNTAX)
            return
        attributes: dict[str, str] = {}
        for word in arg.split():
            name, eq, value = word.partition("=")
            name = name.upper()
            if not eq:
                await self.push(XFORWARD_SYNTAX)
                return
            if name not in XFORWARD_NAMES:
                await self.push(XFORWARD_BAD_NAME.format(name=name, names=", ".join(XFORWARD_NAMES)))
                return
            attributes[name] = value
        session = self.session
        assert isinstance(session, FilterSession)
        for name, value in attributes.items():
            decoded = decode_xtext(value)
            if decoded in UNAVAILABLE:
                session.xforward.pop(name, None)
                continue
            if name == "ADDR" and decoded.upper().startswith("IPV6:"):
                decoded = decoded[5:]
            session.xforward[name] = decoded
        await self.push(OK_XFORWARD)

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and isinstance(self.session, FilterSession)
        if not self.envelope.rcpt_tos:
            await self.push(NEED_RCPT)
            return
        if arg:
            await self.push(DATA_SYNTAX)
            return
        await self.push(DATA_START)
        session = self.session
        try:
            content = await self._read_data()
            if content is None:
                status = TOO_BIG.format(limit=self.data_size_limit)
            else:
                self.envelope.content = self.envelope.original_content = content
                # The next hop may take its time (its own timeouts bound it): don't cut the client off.
                self._reset_timeout(self.filter.config.next_hop_timeout * 4 + 30)
                status = await self.filter.handle_message(self, session, self.envelope)
        finally:
            # Whatever happened, this transaction is over (here and at the next hop).
            if session.transaction is not None:
                self.filter.abort_later(session.transaction)
                session.transaction = None
            session.xforward = {}
            session.policy = None  # an idle session must not keep an old model alive after a reload
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            self.busy = False
            self._reset_timeout()
        await self.push(status)
        if self.filter.draining:
            await self.push(SHUTTING_DOWN)
            self._close()

    async def _read_data(self) -> bytes | None:
        """The message after `354`, un-dot-stuffed; None if it passed the size limit (the rest
        is read and dropped, so the client hears the 552 at the end of DATA, RFC 5321 4.2.5)."""
        self.receiving = True
        try:
            return await self._read_data_until_dot()
        finally:
            self.receiving = False

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Push the idle deadline back. aiosmtpd cancels and re-creates a timer each time (per
        command and, here, per piece of a message: about ten a message); moving a deadline
        that one timer checks when it fires costs a float store."""
        if self.lost:  # never arm the idle timer of a closed session (its callback needs one)
            return
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or self._deadline < handle.when():
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        if self.lost or self.transport is None:
            return
        if self._deadline - self.loop.time() > 0.01:  # activity since the timer was set: wait on
            self._timeout_handle = self.loop.call_at(self._deadline, self._check_deadline)
            return
        self._timeout_cb()  # type: ignore[no-untyped-call]

    def data_received(self, data: bytes) -> None:
        # aiosmtpd restarts the idle timer per command only; while a message arrives, every
        # piece of it counts as activity, so a big message on a slow link is not cut off.
        super().data_received(data)
        if self.receiving:
            self._reset_timeout()

    async def _read_data_until_dot(self) -> bytes | None:
        reader = self._reader
        limit = self.data_size_limit or 0
        data = bytearray()
        size = 0
        last5 = b""
        too_big = False
        while True:
            try:
                chunk = await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as e:
                chunk = await reader.readexactly(e.consumed)
            size += len(chunk)
            last5 = chunk[-5:] if len(chunk) >= 5 else (last5 + chunk)[-5:]
            if not too_big:
                data += chunk
                if limit and size > limit + 3:
                    too_big = True
                    data = bytearray()
            if last5 == b"\r\n.\r\n" or (size == 3 and last5 == b".\r\n"):
                break
        if too_big:
            return None
        # Un-stuff in place where possible: a 10 MB message should cost 20 MB at the peak, not 40.
        del data[-3:]
        if data.startswith(b"."):
            del data[:1]
        content = bytes(data)
        del data
        return content.replace(b"\r\n.", b"\r\n") if b"\r\n." in content else content

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default answers 500: Postfix would bounce a message over our own bug.
        peer = self.session.peer if self.session is not None else None
        log.error("session %r: unexpected error; answered 451", peer, exc_info=error)
        return INTERNAL_ERROR


class _Limits(dict[str, int]):
    """Command size limits that stay put (aiosmtpd adds to MAIL's on every EHLO)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, key: str) -> int:
        return self.limit

    def __setitem__(self, key: str, value: int) -> None:
        return None


def smtp_factory(
    handler: Filter, config: Config, loop: asyncio.AbstractEventLoop
) -> Callable[[], FilterSMTP]:
    """The protocol factory for loop.create_server."""

    def make() -> FilterSMTP:
        return FilterSMTP(
            handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.hostname,
            ident="milter",
            timeout=config.timeout,
            loop=loop,
        )

    return make
