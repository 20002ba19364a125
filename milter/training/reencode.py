"""The same message as today's mail programs would send it: the words kept, the wrapping changed.

The training corpora are from 2002 and 2007, when an HTML part, base64 text, a UTF-8 charset or
a Message-ID from another domain than the sender's were marks of spam: plain-text ASCII was what
people's mail clients sent. Today Outlook sends every message as base64 UTF-8 with a Word-made
HTML alternative, Gmail as quoted-printable with a `<div dir="ltr">` alternative, and
newsletters and receipts come as HTML alone from a mail service's servers. A model that learnt
the old wrapping sends today's ham to the spam folder: rewrapped Outlook-style, 120 of 1,091
calibration-slice ham scored p >= 0.9 with the model fitted on the original mail alone
(docs/model.md).

`reencode(raw, style)` rewraps one message in one of those styles and keeps what it says:
the header fields but the MIME ones, Message-ID and the mail-client names; the text of its
plain and HTML parts (an HTML part kept as HTML, the plain text turned into the style's HTML
when there was none); its attachments are dropped (message->text reads only their names and
types, which re-wrapping should not change and attachments rarely have in these corpora).
Training on these copies of both ham and spam next to the originals (`milter train --augment`)
teaches the model that the wrapping says nothing; scoring them (`milter evaluate --reencode`)
measures how much a model leans on it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import quopri
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from milter.message import header_fields_section

# Fields that describe the wrapping, or that are replaced by the style's own.
_DROPPED: Final = frozenset(
    {
        b"content-type",
        b"content-transfer-encoding",
        b"mime-version",
        b"message-id",
        b"x-mailer",
        b"user-agent",
    }
)
_PART_BYTES: Final = 256 * 1024  # message->text reads no more than this of a part either
_PARAGRAPHS: Final = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True, slots=True)
class Style:
    """How one family of mail programs wraps a message."""

    transfer_encoding: str  # "base64" or "quoted-printable"
    plain_part: bool  # a text/plain alternative next to the HTML
    message_id: Callable[[str], str]  # from a hex digest of the original
    html: Callable[[list[str]], str]  # HTML from the plain text's paragraphs (already escaped)
    # > 0: the message cut to its first `words` words and sent as plain text alone: a note of a
    # line or two, as people send them. The corpora have few such ham, so a model fitted on them
    # alone knows nothing of short mail and scores it by its prior (a one-line note 0.6-0.8).
    words: int = 0


def _outlook_html(paragraphs: list[str]) -> str:
    body = "".join(f'<p class="MsoNormal">{p}</p><p class="MsoNormal">&nbsp;</p>' for p in paragraphs)
    return (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
        '<style>p.MsoNormal{margin:0cm;font-size:11.0pt;font-family:"Calibri",sans-serif;}</style>'
        f'</head><body lang="EN-US"><div class="WordSection1">{body}</div></body></html>'
    )


def _gmail_html(paragraphs: list[str]) -> str:
    return '<div dir="ltr">' + "".join(f"<div>{p}</div><div><br></div>" for p in paragraphs) + "</div>"


def _service_html(paragraphs: list[str]) -> str:
    cell = 'style="padding:8px 24px;font-family:Helvetica,Arial,sans-serif;font-size:16px;color:#333333"'
    rows = "".join(f"<tr><td {cell}>{p}</td></tr>" for p in paragraphs)
    return (
        '<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width, initial-scale=1">'
        '</head><body style="margin:0;padding:0"><table role="presentation" width="100%" cellpadding="0" '
        'cellspacing="0"><tr><td align="center"><table role="presentation" width="600" cellpadding="0" '
        f'cellspacing="0">{rows}</table></td></tr></table></body></html>'
    )


STYLES: Final[dict[str, Style]] = {
    # Outlook / Exchange Online: base64 UTF-8 text and a Word-made HTML alternative.
    "outlook": Style(
        "base64",
        True,
        lambda h: (
            f"<AM9PR0{h[0]}MB{h[1:5]}{h[5:20].upper()}@AM9PR0{h[0]}MB{h[1:5]}.eurprd0{h[20]}.prod.outlook.com>"
        ),
        _outlook_html,
    ),
    # Gmail: quoted-printable UTF-8 text and a <div dir="ltr"> alternative.
    "gmail": Style("quoted-printable", True, lambda h: f"<CA+{h[:40]}@mail.gmail.com>", _gmail_html),
    # A mail service (newsletters, receipts): HTML alone, table layout, the service's Message-ID.
    "service": Style(
        "quoted-printable",
        False,
        lambda h: f"<0102019b{h[:8]}-{h[8:16]}-{h[16:20]}-{h[20:32]}-000000@eu-west-1.amazonses.com>",
        _service_html,
    ),
    # A short note: the first words of the message (quoted lines left out), plain text alone.
    "short": Style("quoted-printable", False, lambda h: f"<{h[:24]}@localhost.localdomain>", _gmail_html, 24),
}


def reencode(raw: bytes, style: str) -> bytes:
    """`raw` rewrapped in `style` (a key of STYLES). Never raises: what cannot be parsed comes
    back unchanged. Deterministic: the same bytes give the same message."""
    chosen = STYLES[style]  # a programming error, not bad input: let KeyError out
    try:
        return _rewrap(raw, chosen)
    except Exception:  # garbage in, the original out: an unchanged copy is harmless
        return raw


def _rewrap(raw: bytes, style: Style) -> bytes:
    plain, markup = _texts(raw)
    if not plain and markup:
        from selectolax.lexbor import LexborHTMLParser

        plain = LexborHTMLParser(markup).text(separator="\n") or ""
    if not markup:
        paragraphs = [html.escape(p.strip()).replace("\n", "<br>") for p in _PARAGRAPHS.split(plain)]
        markup = style.html([p for p in paragraphs if p])
    digest = hashlib.sha256(raw).hexdigest()
    boundary = f"=_{digest[:24]}"
    parts = [("plain", plain)] if style.plain_part else []
    parts.append(("html", markup))
    fields = _kept_fields(raw)
    out = [fields] if fields else []
    out += [b"MIME-Version: 1.0", f"Message-ID: {style.message_id(digest)}".encode()]
    if style.words:  # one text/plain part: the first words, quoted lines left out
        unquoted = " ".join(line for line in plain.splitlines() if not line.lstrip().startswith(">"))
        note = " ".join(unquoted.split()[: style.words]).encode("utf-8")
        out.append(b'Content-Type: text/plain; charset="utf-8"')
        out.append(f"Content-Transfer-Encoding: {style.transfer_encoding}".encode())
        return b"\n".join([*out, b"", _encoded(note, style.transfer_encoding)]) + b"\n"
    out.append(f'Content-Type: multipart/alternative; boundary="{boundary}"'.encode())
    out.append(b"")
    for subtype, text in parts:
        out.append(f"--{boundary}".encode())
        out.append(f'Content-Type: text/{subtype}; charset="utf-8"'.encode())
        out.append(f"Content-Transfer-Encoding: {style.transfer_encoding}".encode())
        out.append(b"")
        out.append(_encoded(text.encode("utf-8"), style.transfer_encoding))
    out.append(f"--{boundary}--".encode())
    return b"\n".join(out) + b"\n"


def _kept_fields(raw: bytes) -> bytes:
    kept: list[bytes] = []
    keep = False
    for line in header_fields_section(raw).split(b"\n"):
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            if keep:
                kept.append(line)
        elif line:
            keep = line.partition(b":")[0].strip().lower() not in _DROPPED
            if keep:
                kept.append(line)
    return b"\n".join(kept)


def _texts(raw: bytes) -> tuple[str, str]:
    """The decoded text of the message's plain and its HTML parts (attachments left out)."""
    # Imported here, not at the top: `milter --help` reads STYLES through the train and evaluate
    # commands and should not pay for the MIME parser and message->text (selectolax).
    import email
    import email.policy

    from milter.text import decode_bytes

    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    plain: list[str] = []
    markup: list[str] = []
    for part in message.walk():
        if part.is_multipart() or part.get_filename():
            continue
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        data = payload[:_PART_BYTES] if isinstance(payload, bytes) else b""
        (plain if kind == "text/plain" else markup).append(decode_bytes(data, part.get_content_charset()))
    return "\n".join(plain), "\n".join(markup)


def _encoded(data: bytes, transfer_encoding: str) -> bytes:
    if transfer_encoding == "base64":
        return base64.encodebytes(data).rstrip(b"\n")
    return quopri.encodestring(data).rstrip(b"\n")
