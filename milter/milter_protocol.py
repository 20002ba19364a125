"""The Sendmail milter protocol (version 6), as Postfix's `smtpd_milters` speaks it.

A third way to put milter in front of Postfix, beside the after-queue content filter and the
before-queue proxy: Postfix's own smtpd hands every message to milter while the client waits,
applies the verdict itself (headers added, forged ones removed, 550/451, hold queue) and queues
the message once. No reinjection listener, no second queue pass, no next hop: Postfix answers
the client only after it has queued the message, so "250 only once the next hop has it" holds
by construction, and when milter is down or breaks off, Postfix's `milter_default_action =
tempfail` (postfix/milter.main.cf) gives the client a 4xx and the client keeps the mail.

Three parts, kept apart:
- the wire: `PacketReader` / `encode` (4-byte length, one command byte, data);
- `MilterSession`: the state of one Postfix connection, fed one command at a time; it asks
  Postfix for no reply to any step but the end of the message (the protocol's NR_* flags), so a
  message costs Postfix one round trip;
- `verdict_replies(verdict, headers, subject_tag)`: the one place where a `Verdict` becomes
  milter replies (as milter.smtp is for SMTP replies; the reply texts are shared with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from milter.config import Config
from milter.logs import log_message
from milter.mark import PREFIX, headers
from milter.message import MAX_HEADER_BYTES, Envelope, Message
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
from milter.rules import Action
from milter.scan import scan
from milter.workers import TextWorkers

log = logging.getLogger("milter.milter_protocol")

VERSION: Final = 6
# Postfix sends body chunks of at most 65,535 bytes and headers up to header_size_limit
# (102,400); anything longer is not Postfix.
MAX_PACKET: Final = 1 << 20
READ_SIZE: Final = 1 << 16
QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class Command:
    """The commands (MTA -> filter): one byte each."""

    ABORT, BODY, CONNECT, MACRO, END_OF_BODY = b"A", b"B", b"C", b"D", b"E"
    HELO, QUIT_NEW_CONNECTION, HEADER, MAIL, END_OF_HEADERS = b"H", b"K", b"L", b"M", b"N"
    OPTION_NEGOTIATION, QUIT, RCPT, DATA, UNKNOWN = b"O", b"Q", b"R", b"T", b"U"


# --- replies (filter -> MTA) -----------------------------------------------------------------
ADD_HEADER, CHANGE_HEADER, QUARANTINE, REPLY_CODE = b"h", b"m", b"q", b"y"
CONTINUE, DISCARD, TEMPFAIL = b"c", b"d", b"t"

# --- what milter may do to a message (SMFIF_*) ---------------------------------------------------
ACTION_ADD_HEADERS: Final = 0x01
ACTION_CHANGE_HEADERS: Final = 0x10
ACTION_QUARANTINE: Final = 0x20
WANTED_ACTIONS: Final = ACTION_ADD_HEADERS | ACTION_CHANGE_HEADERS | ACTION_QUARANTINE

# --- protocol steps (SMFIP_*) ----------------------------------------------------------------------
NO_UNKNOWN: Final = 0x100
NO_DATA: Final = 0x200
NO_REPLY: Final = {  # the step's command -> "send no reply" flag
    Command.HEADER: 0x80,
    Command.CONNECT: 0x1000,
    Command.HELO: 0x2000,
    Command.MAIL: 0x4000,
    Command.RCPT: 0x8000,
    Command.DATA: 0x10000,
    Command.UNKNOWN: 0x20000,
    Command.END_OF_HEADERS: 0x40000,
    Command.BODY: 0x80000,
}
# Not asked for: header values with their leading space as sent. With it, the MTA also expects
# the space in every header milter adds; without it (libmilter's default) the MTA strips one
# leading space from values it sends and puts one before values it gets.
HEADER_LEADING_SPACE: Final = 0x100000
WANTED_STEPS: Final = NO_UNKNOWN | NO_DATA | sum(NO_REPLY.values())


# The commands that belong to a message, which only MAIL starts.
_MESSAGE_PARTS: Final = {
    Command.RCPT: "RCPT",
    Command.DATA: "DATA",
    Command.HEADER: "a header",
    Command.END_OF_HEADERS: "the end of the headers",
    Command.BODY: "body",
    Command.END_OF_BODY: "the end of the message",
}


class ProtocolError(Exception):
    """The peer does not speak the milter protocol as expected: the connection is closed."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply packet: its command byte and data."""

    code: bytes
    data: bytes = b""


def encode(reply: Reply) -> bytes:
    return struct.pack("!I", len(reply.data) + 1) + reply.code + reply.data


class PacketReader:
    """Bytes from the socket in, whole (command, data) packets out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while len(buffer) - start >= 4:
                (length,) = struct.unpack_from("!I", buffer, start)
                if not 0 < length <= MAX_PACKET:
                    raise ProtocolError(f"packet length {length}; expected 1 to {MAX_PACKET}")
                if len(buffer) - start - 4 < length:
                    break
                body = bytes(buffer[start + 4 : start + 4 + length])
                start += 4 + length
                yield body[:1], body[1:]
        finally:
            del buffer[:start]


# --- the one place where a verdict becomes milter replies ---------------------------------------


def verdict_replies(
    verdict: Verdict, inbound: list[tuple[bytes, bytes]], subject_tag: str | None = None
) -> list[Reply]:
    """What milter tells Postfix at the end of a message, for `verdict`. `inbound`: the
    message's header fields (name, value) in order, for removing forged X-Spam-* fields by
    their index among the fields of the same name."""
    action, rule = verdict.action, verdict.decision.rule
    if action is Action.TEMPFAIL:
        return [_reply_code(POLICY_TEMPFAIL.format(rule=rule))]
    if action is Action.REJECT:
        return [_reply_code(POLICY_REJECT.format(rule=rule))]
    if action is Action.DISCARD:
        return [Reply(DISCARD)]
    replies = _remove_forged(inbound)
    if subject_tag and verdict.is_spam:
        replies += _tag_subject(inbound, subject_tag)
    for line in headers(verdict, b"\n"):
        name, _, value = line.partition(b": ")
        replies.append(Reply(ADD_HEADER, name + b"\0" + value + b"\0"))
    if action is Action.QUARANTINE:
        # Postfix's hold queue: `postqueue -p` lists it, `postsuper -H` releases it.
        replies.append(Reply(QUARANTINE, _c_string(f"milter rule {rule}")))
    replies.append(Reply(CONTINUE))
    return replies


def _remove_forged(inbound: list[tuple[bytes, bytes]]) -> list[Reply]:
    """Delete every inbound X-Spam-* field: by name and index (1-based among fields of that
    name), last first so the indexes of the ones still to go do not move."""
    seen: dict[bytes, int] = {}
    doomed: list[tuple[bytes, int]] = []
    for name, _ in inbound:
        lowered = name.lower()
        seen[lowered] = seen.get(lowered, 0) + 1
        if lowered.startswith(PREFIX):
            doomed.append((name, seen[lowered]))
    return [
        Reply(CHANGE_HEADER, struct.pack("!I", index) + name + b"\0\0") for name, index in reversed(doomed)
    ]


def _tag_subject(inbound: list[tuple[bytes, bytes]], tag: str) -> list[Reply]:
    for name, value in inbound:
        if name.lower() == b"subject":
            stripped = value.lstrip(b" \t")
            if stripped.startswith(tag.encode()):
                return []
            return [
                Reply(
                    CHANGE_HEADER,
                    struct.pack("!I", 1) + name + b"\0" + tag.encode() + b" " + stripped + b"\0",
                )
            ]
    return []


def _reply_code(text: str) -> Reply:
    # libmilter's rule: '%' would be read as a format character.
    return Reply(REPLY_CODE, _c_string(text.replace("%", "%%")))


def _c_string(text: str) -> bytes:
    return (
        text.encode("utf-8", "replace").replace(b"\0", b"").replace(b"\r", b"").replace(b"\n", b" ") + b"\0"
    )


# --- one Postfix connection ------------------------------------------------------------------------


@dataclass
class MilterSession:
    """The state of one milter connection: connection facts, then one message at a time."""

    service: MilterService
    steps: int = 0  # the protocol flags agreed at option negotiation
    negotiated: bool = False
    macros: dict[str, str] = field(default_factory=dict)
    client_name: str | None = None
    client_address: str | None = None
    helo: str | None = None
    # The message in progress (reset at MAIL, ABORT and end of message):
    in_message: bool = False  # from MAIL to the end of the message (or ABORT)
    policy: Policy | None = None  # the policy of the message, taken at its MAIL
    started: float = 0.0
    mail_from: str = ""
    mail_options: tuple[str, ...] = ()
    rcpts: list[str] = field(default_factory=list)
    inbound: list[tuple[bytes, bytes]] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)

    def handle(self, command: bytes, data: bytes) -> list[Reply] | None:
        """Replies to one command (none for most), or None when Postfix said goodbye.
        END_OF_BODY is not handled here: see `end_of_message`."""
        self._in_order(command)
        match command:
            case Command.OPTION_NEGOTIATION:
                return [self._negotiate(data)]
            case Command.MACRO:
                self._define_macros(data)
                return []
            case Command.CONNECT:
                self._connect(data)
            case Command.HELO:
                self.helo = _strings(data)[0] or None
            case Command.MAIL:
                self._mail(data)
            case Command.RCPT:
                args = _strings(data)
                if args:
                    self.rcpts.append(_address(args[0]))
            case Command.HEADER:
                self._header(data)
            case Command.END_OF_HEADERS:
                self.raw += b"\r\n"
            case Command.BODY:
                self._body(data)
            case Command.ABORT:
                self._reset_message()
                return []
            case Command.QUIT_NEW_CONNECTION:  # this connection serves a new SMTP session
                self.macros.clear()
                self.client_name = self.client_address = self.helo = None
                self._reset_message()
                return []
            case Command.QUIT:
                return None
            case Command.DATA | Command.UNKNOWN:
                pass
            case _:
                raise ProtocolError(f"unknown milter command {command!r}")
        return [] if self.steps & NO_REPLY.get(command, 0) else [Reply(CONTINUE)]

    def _in_order(self, command: bytes) -> None:
        """ProtocolError for a command out of the protocol's order: before option negotiation
        (the MTA would not know what milter answers), or a part of a message before its MAIL
        (there is no message it could belong to). The connection is closed; Postfix applies
        milter_default_action (tempfail) to the message it was on."""
        if not self.negotiated and command not in (Command.OPTION_NEGOTIATION, Command.QUIT):
            raise ProtocolError(f"command {command.decode('ascii', 'replace')!r} before option negotiation")
        if command in _MESSAGE_PARTS and not self.in_message:
            raise ProtocolError(f"{_MESSAGE_PARTS[command]} before MAIL")

    def _negotiate(self, data: bytes) -> Reply:
        if len(data) < 12:
            raise ProtocolError(f"option negotiation of {len(data)} bytes; expected 12")
        version, offered_actions, offered_steps = struct.unpack_from("!III", data)
        if version < 2:
            raise ProtocolError(f"milter protocol version {version}; expected 2 or later (Postfix: 6)")
        self.steps = WANTED_STEPS & offered_steps
        self.negotiated = True
        if not offered_actions & ACTION_CHANGE_HEADERS:
            log.warning("the MTA does not let milter remove headers: forged X-Spam-* fields stay")
        agreed = struct.pack("!III", VERSION, WANTED_ACTIONS & offered_actions, self.steps)
        return Reply(Command.OPTION_NEGOTIATION, agreed)

    def _define_macros(self, data: bytes) -> None:
        parts = data[1:].split(b"\0")
        for name, value in zip(parts[0::2], parts[1::2], strict=False):
            if name:
                self.macros[name.decode("utf-8", "replace").strip("{}")] = value.decode("utf-8", "replace")

    def _connect(self, data: bytes) -> None:
        host, _, rest = data.partition(b"\0")
        name = host.decode("utf-8", "replace")
        self.client_name = None if not name or name == "unknown" or name.startswith("[") else name
        family = rest[:1]
        if family in (b"4", b"6") and len(rest) >= 3:
            self.client_address = rest[3:].split(b"\0", 1)[0].decode("ascii", "replace") or None
        else:
            self.client_address = None

    def _mail(self, data: bytes) -> None:
        self._reset_message()
        args = _strings(data)
        self.policy = self.service.policy  # kept for the whole message, whatever reloads meanwhile
        self.in_message = True
        self.started = time.perf_counter()
        self.mail_from = _address(args[0]) if args else ""
        self.mail_options = tuple(args[1:])

    def _header(self, data: bytes) -> None:
        name, _, rest = data.partition(b"\0")
        value = rest.removesuffix(b"\0")
        self.inbound.append((name, value))
        if len(self.raw) > MAX_HEADER_BYTES:  # raw holds header lines alone until END_OF_HEADERS
            return  # the rules and the model see a header block's first part only
        if not self.steps & HEADER_LEADING_SPACE:
            value = b" " + value
        # Folded fields come with bare LF line breaks: the message is CRLF throughout.
        self.raw += name + b":" + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"

    def _body(self, data: bytes) -> None:
        room = self.service.config.max_message_size - len(self.raw)
        if room > 0:  # past Postfix's size limit nothing changes a verdict: keep the start
            self.raw += data[:room]

    def _reset_message(self) -> None:
        self.in_message = False
        self.policy = None
        self.mail_from, self.mail_options = "", ()
        self.rcpts = []
        self.inbound = []
        self.raw = bytearray()

    async def end_of_message(self, data: bytes) -> list[Reply]:
        """Decide the message and say so; TEMPFAIL for any fault of milter's own."""
        self._in_order(Command.END_OF_BODY)
        self._body(data)
        service = self.service
        policy = self.policy or service.policy
        raw = bytes(self.raw)
        envelope = Envelope(
            mail_from=self.mail_from,
            rcpt_tos=tuple(self.rcpts),
            client_address=self.client_address or self.macros.get("client_addr"),
            client_name=self.client_name,
            helo=self.helo,
            queue_id=self.macros.get("i"),
            mail_options=self.mail_options,
        )
        fields: dict[str, object] = {}
        message = Message(raw, envelope)
        verdict: Verdict | None = None
        try:
            fields = log_fields(message)
            verdict = await scan(policy, message, service.texts, service.metrics)
            fields.update(verdict_fields(verdict))
            replies = verdict_replies(verdict, self.inbound, service.config.subject_tag)
            fields["reply"] = _describe(replies[-1])
        except Exception:  # a fault of ours: Postfix answers 4xx, the client keeps the mail
            log.exception("internal error at end of message; Postfix tempfails it")
            replies = [Reply(TEMPFAIL)]
            fields["reply"] = INTERNAL_ERROR
        if self.started:
            fields["ms"] = round((time.perf_counter() - self.started) * 1000, 1)
        log_message(fields)
        if service.recorder is not None:
            held = envelope.queue_id if verdict is not None and verdict.action is Action.QUARANTINE else None
            service.recorder.record(decided(message, verdict, fields, "milter", held))
        self._reset_message()
        return replies


def _describe(reply: Reply) -> str:
    if reply.code == REPLY_CODE:
        return reply.data.rstrip(b"\0").decode("utf-8", "replace")
    return {CONTINUE: "accept", DISCARD: "discard", TEMPFAIL: "tempfail"}.get(reply.code, reply.code.decode())


def _strings(data: bytes) -> list[str]:
    """NUL-terminated strings -> text (addresses and parameters may be UTF-8)."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [part.decode("utf-8", "surrogateescape") for part in parts] or [""]


def _address(arg: str) -> str:
    arg = arg.strip()
    if arg.startswith("<") and arg.endswith(">"):
        arg = arg[1:-1]
    return arg


# --- the service: every connection -----------------------------------------------------------------


@dataclass
class MilterService:
    """Serves the milter protocol: one `MilterSession` per connection Postfix opens."""

    config: Config
    policy: Policy  # swapped whole on reload; each message keeps the one it started with
    metrics: Metrics | None = None
    texts: TextWorkers | None = None
    sessions: set[MilterConnection] = field(default_factory=set)
    recorder: Recorder | None = None  # the history (milter.history), when the console is on
    draining: bool = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The asyncio.start_server callback."""
        connection = MilterConnection(self, reader, writer)
        if self.draining:
            writer.close()
            return
        self.sessions.add(connection)
        if self.metrics is not None:
            self.metrics.session_opened()
        try:
            await connection.run()
        finally:
            self.sessions.discard(connection)
            if self.metrics is not None:
                self.metrics.session_closed()


class MilterConnection:
    """One connection from Postfix: packets in, replies out, until QUIT or EOF."""

    def __init__(
        self, service: MilterService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.service = service
        self.reader = reader
        self.writer = writer
        self.session = MilterSession(service)

    async def run(self) -> None:
        packets = PacketReader()
        # Postfix's smtpd keeps this connection for its client's whole session and writes to it
        # only when the client does: allow the client's own idle time (smtpd_timeout, which
        # `timeout` mirrors) twice over, so a slow but legal client does not lose its filter.
        idle = 2 * self.service.config.timeout
        peer = self.writer.get_extra_info("peername")
        # Postfix asks for no reply to most steps, so between messages milter sends nothing and
        # the kernel holds its ACKs back (delayed ACK, up to 40 ms); Postfix's socket, under
        # Nagle's rule, then holds its next small write until that ACK comes: 40+ ms per message
        # (measured: 48 ms per message for one client, 5 ms with this). Acknowledge at once.
        sock = self.writer.get_extra_info("socket") if QUICKACK is not None else None
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        data = await self.reader.read(READ_SIZE)
                except TimeoutError:
                    log.info("milter connection from %s idle for %g s: closed", peer, idle)
                    return
                if not data:
                    return
                if sock is not None:  # quick-ACK mode lapses on its own: set it after each read
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
                out: list[bytes] = []
                for command, payload in packets.feed(data):
                    if command == Command.END_OF_BODY:
                        replies: list[Reply] | None = await self.session.end_of_message(payload)
                    else:
                        replies = self.session.handle(command, payload)
                    if replies is None:  # QUIT
                        self._write(out)
                        return
                    out += [encode(reply) for reply in replies]
                if out:
                    self._write(out)
                    await self.writer.drain()
                if self.service.draining and not self.session.in_message:
                    return
        except ProtocolError as e:
            log.warning("milter connection from %s: %s; closing it", peer, e)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # Postfix went away: it decides what happens to its message
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def _write(self, out: list[bytes]) -> None:
        if out and not self.writer.is_closing():
            self.writer.write(b"".join(out))

    def close_if_idle(self) -> bool:
        """Shutdown: close a connection between messages (Postfix opens a new one, or
        applies milter_default_action); True if closed."""
        if self.session.in_message:
            return False
        self.writer.close()
        return True

    def _close(self) -> None:
        self.writer.close()
