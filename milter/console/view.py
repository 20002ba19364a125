"""A message as the console shows it: text only, never rendered.

The header fields are decoded (RFC 2047 where it decodes) into text; text/plain parts are
decoded with their charset (undecodable bytes replaced); an HTML part is shown as the text a
reader would see of it (milter.visible, hidden text taken out), never as HTML; other parts are
named with their type and size. Everything is cut at generous lengths (a hostile message may be
megabytes of one header) and handed to the templates as plain strings, which Jinja2 escapes:
no markup, link or remote resource from a message reaches the browser as anything but text.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message as EmailMessage

from milter.message import parse_header_fields

MAX_HEADER_CHARS = 4_000  # per field, as shown
MAX_FIELDS = 200
MAX_PART_CHARS = 100_000
MAX_PARTS = 50


@dataclass(frozen=True, slots=True)
class Part:
    content_type: str
    filename: str
    size: int
    text: str | None  # None: not a text part (an attachment)
    note: str  # how the text was made (e.g. "HTML shown as text"), or why it is cut


@dataclass(frozen=True, slots=True)
class View:
    headers: tuple[tuple[str, str], ...]
    parts: tuple[Part, ...]
    cut: bool  # more fields or parts than shown


def decoded(value: str, limit: int = MAX_HEADER_CHARS) -> str:
    """A header value as text: encoded words decoded where they decode, cut at `limit`."""
    value = value[: limit * 4]
    if "=?" in value:
        with contextlib.suppress(Exception):  # broken or hostile encodings stay as sent
            value = str(make_header(decode_header(value)))
    if len(value) > limit:
        value = value[:limit] + " [...]"
    return value


def _charset(part: EmailMessage) -> str:
    charset = part.get_content_charset() or "utf-8"
    try:
        "".encode(charset)
    except (LookupError, ValueError):
        return "utf-8"
    return charset


def _part(part: EmailMessage) -> Part:
    content_type = str(part.get_content_type())[:200]
    filename = ""
    with contextlib.suppress(Exception):
        filename = decoded(str(part.get_filename() or ""), 200)
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    data = payload if isinstance(payload, bytes) else b""
    if content_type not in ("text/plain", "text/html") or (
        filename and part.get_content_disposition() == "attachment"
    ):
        return Part(content_type, filename, len(data), None, "")
    text = data.decode(_charset(part), "replace")
    note = ""
    if content_type == "text/html":
        from milter.visible import visible_text

        text = visible_text(text).text
        note = "HTML part, shown as the text a reader sees (no HTML is rendered)"
    if len(text) > MAX_PART_CHARS:
        text = text[:MAX_PART_CHARS]
        note = (note + "; " if note else "") + f"cut at {MAX_PART_CHARS} characters"
    return Part(content_type, filename, len(data), text, note)


def view(raw: bytes) -> View:
    """The console's view of `raw`; never raises."""
    fields = parse_header_fields(raw)
    headers = tuple((name[:200], decoded(value)) for name, value in fields[:MAX_FIELDS])
    parts: list[Part] = []
    cut = len(fields) > MAX_FIELDS
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        for part in message.walk():
            if part.is_multipart():
                continue
            if len(parts) >= MAX_PARTS:
                cut = True
                break
            parts.append(_part(part))
    except Exception as e:  # the stdlib parser gave up: show the body bytes as text
        body = raw.split(b"\n\n", 1)[-1][:MAX_PART_CHARS]
        parts = [
            Part("text/plain", "", len(body), body.decode("utf-8", "replace"), f"unparsable ({e!r:.80})")
        ]
    return View(headers, tuple(parts), cut)
