"""A message as the filter sees it: the raw bytes and the SMTP envelope they came with."""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass, field
from email.message import Message as EmailMessage
from functools import cached_property

# A header block longer than this is hostile or broken; the rules see its first part.
MAX_HEADER_BYTES = 256 * 1024


def header_block(raw: bytes) -> bytes:
    """The header section of `raw`, up to and including the blank line that ends it."""
    head = raw[:MAX_HEADER_BYTES]
    ends = [i for i in (head.find(b"\n\n"), head.find(b"\n\r\n")) if i >= 0]
    if not ends:
        return head
    end = min(ends)
    return head[: end + (2 if head[end + 1 : end + 2] == b"\n" else 3)]


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope; client fields come from XFORWARD when Postfix sends it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    client_address: str | None = None
    client_name: str | None = None
    helo: str | None = None
    queue_id: str | None = None
    mail_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Message:
    """Raw bytes plus envelope. Headers are parsed on first use, never the body."""

    raw: bytes
    envelope: Envelope = field(default_factory=lambda: Envelope("", ()))

    @cached_property
    def headers(self) -> EmailMessage:
        # compat32 never raises on broken headers; it keeps what it can and records defects.
        # Only the header block is handed to the parser: it decodes all it is given, and the
        # body (up to the size limit) is none of the rules' business.
        parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
        return parser.parsebytes(header_block(self.raw))

    @property
    def size(self) -> int:
        return len(self.raw)

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name`, unfolded, as text (undecodable bytes replaced)."""
        values = self.headers.get_all(name) or []
        return [" ".join(str(v).split()) for v in values]

    @property
    def message_id(self) -> str | None:
        ids = self.header_values("Message-ID")
        return ids[0] if ids else None
