"""A message as the filter sees it: the raw bytes and the SMTP envelope they came with."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

# A header block longer than this is hostile or broken; the rules see its first part.
MAX_HEADER_BYTES = 256 * 1024
# A header field line: a name of printable ASCII but ':' and space, then ':'. Any other line at
# the top level ends the header block, as a mail reader (and the stdlib parser) would see it.
FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
# Header lines, one regex pass in C (a loop over lines in Python cost more): a field line or a
# continuation line, each up to its LF or the end.
_HEADER_LINES = re.compile(rb"(?:(?:" + FIELD.pattern + rb"|[ \t])[^\n]*(?:\n|\Z))*")


# The Message-ID field and its continuation lines; names are case-insensitive.
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.IGNORECASE | re.MULTILINE)


def header_block(raw: bytes) -> bytes:
    """The header section of `raw`, up to and including the blank line that ends it."""
    head = raw[:MAX_HEADER_BYTES]
    ends = [i for i in (head.find(b"\n\n"), head.find(b"\n\r\n")) if i >= 0]
    if not ends:
        return head
    end = min(ends)
    return head[: end + (2 if head[end + 1 : end + 2] == b"\n" else 3)]


def header_end(raw: bytes) -> int:
    """Offset where the header fields of `raw` end: the longest run of lines from the start that
    are fields or their continuations. A blank line, or any other line (malformed, but how a
    reader sees it), starts the body. The one definition of the header section: the rules read
    the fields before it, marking strips forged ones before it."""
    match = _HEADER_LINES.match(raw)
    return match.end() if match else 0


def header_fields_section(raw: bytes) -> bytes:
    """The lines of `raw` that are header fields (see header_end), an mbox From_ line left out."""
    head = header_block(raw)
    if head.startswith(b"From "):
        head = head.partition(b"\n")[2]  # an mbox From_ line is not a header field
    return head[: header_end(head)]


def parse_header_fields(raw: bytes) -> tuple[tuple[str, str], ...]:
    """(name, value) of each header field of `raw`, in order, values unfolded and whitespace
    collapsed, bytes read as UTF-8 (undecodable ones replaced). Never raises.

    Done on bytes rather than with the stdlib parser, which cost more than the model per
    message; encoded words (RFC 2047) stay as sent, as header rules expect to match them.
    """
    fields: list[list[bytes]] = []
    for line in header_fields_section(raw).split(b"\n"):
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1].append(line)
        elif line:  # a field line (header_end let no other through); "" after the last LF
            name, _, value = line.partition(b":")
            fields.append([name.rstrip(b" \t"), value])
    return tuple(
        (
            name.decode("ascii"),
            " ".join(b" ".join(parts).decode("utf-8", "replace").split()),
        )
        for name, *parts in fields
    )


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
    def headers(self) -> tuple[tuple[str, str], ...]:
        """(name, value) of each header field, in order; see parse_header_fields."""
        return parse_header_fields(self.raw)

    @property
    def size(self) -> int:
        return len(self.raw)

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (any case), unfolded, as text."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    @property
    def message_id(self) -> str | None:
        """The first Message-ID, as `header_values` gives it.

        Every message's log line wants it, while most rulesets never look at a header: one
        regex over the header section costs a tenth of parsing every field for it.
        """
        if "headers" in self.__dict__:  # parsed already (a header rule ran): use that
            ids = self.header_values("Message-ID")
            return ids[0] if ids else None
        found = _MESSAGE_ID.search(header_fields_section(self.raw))
        if found is None:
            return None
        # Unfolded and whitespace collapsed (CR and LF are whitespace), as parse_header_fields does.
        return " ".join(found.group(1).decode("utf-8", "replace").split())
