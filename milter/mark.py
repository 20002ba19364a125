"""Marking: the verdict written into the message as SpamAssassin-compatible X-Spam-* headers.

Works on bytes, not through `email.generator`: the message leaves byte-identical but for the
headers added at the top and the inbound X-Spam-* fields removed (a sender must not be able to
forge a verdict; folded continuation lines go with their field). Line endings follow the
message's own (CRLF from SMTP; LF if that is what the bytes use); 8-bit and non-UTF-8 bytes are
never decoded. The added headers are ASCII only, folded under 78 characters.
"""

from __future__ import annotations

import re

from milter.message import header_end
from milter.policy import Verdict

PREFIX = b"x-spam-"
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")  # spaces and controls: not inside a header word
_REPORT_FEATURES = 8
_FOLD_AT = 76


def mark(raw: bytes, verdict: Verdict, subject_tag: str | None = None) -> bytes:
    """`raw` with inbound X-Spam-* fields removed and the verdict's headers prepended.

    `subject_tag` (off by default: it breaks DKIM signatures) is put before the Subject of
    messages the verdict calls spam.
    """
    eol = _line_ending(raw)
    unixfrom, head, body = _split(raw)
    if PREFIX in head.lower() or (subject_tag and verdict.is_spam):
        head = _rewrite_fields(head, subject_tag.encode() if subject_tag and verdict.is_spam else None)
    return unixfrom + b"".join(line + eol for line in headers(verdict, eol)) + head + body


def unmark(raw: bytes, subject_tag: str | None = None) -> bytes:
    """`raw` without milter's marks: every X-Spam-* field, and `subject_tag` where mark() put it
    before the Subject (pass the tag the daemon was configured with). What a user files as spam
    or ham still carries milter's verdict; learning from it would teach the model its own opinion.
    """
    unixfrom, head, body = _split(raw)
    tag = subject_tag.encode() if subject_tag else None
    if PREFIX in head.lower() or tag is not None:
        head = _rewrite_fields(head, None, untag=tag)
    return unixfrom + head + body


def _split(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(mbox From_ line or b"", header fields, the rest: the blank line and the body)."""
    # An mbox "From " line (some clients send stored mail as is) is not a header field; the
    # fields follow it, and so must the stripping of forged ones. It stays first.
    unixfrom = raw[: raw.find(b"\n") + 1] if raw.startswith(b"From ") and b"\n" in raw else b""
    rest = raw[len(unixfrom) :]
    head_end = header_end(rest)  # the blank line and the body stay with the body
    return unixfrom, rest[:head_end], rest[head_end:]


def headers(verdict: Verdict, eol: bytes = b"\r\n") -> list[bytes]:
    """The X-Spam-* header fields, without their final line end (folds use `eol`)."""
    spam = verdict.is_spam
    decision = verdict.decision
    parts = ["Yes," if spam else "No,"]
    probability = verdict.probability
    parts.append(f"score={probability:.3f}" if probability is not None else "unscored")
    if decision.required is not None:
        parts.append(f"required={decision.required:.2f}")
    parts.append(f"rule={_token(decision.rule)}")
    parts.append(f"model={_token(verdict.model_id)}")
    if verdict.error is not None and probability is None:
        parts.append(f"error={_token(verdict.error.split(':', 1)[0])}")
    lines = [
        b"X-Spam-Flag: " + (b"YES" if spam else b"NO"),
        _fold("X-Spam-Status:", parts, eol),
        b"X-Spam-Score: " + (f"{probability:.3f}".encode() if probability is not None else b"unscored"),
        b"X-Spam-Action: " + decision.action.value.encode(),
    ]
    if verdict.score is not None and verdict.score.features:
        report = [f"{_token(name)}={value:+.3f}" for name, value in verdict.score.features[:_REPORT_FEATURES]]
        lines.append(_fold("X-Spam-Report:", report, eol))
    return lines


def _fold(name: str, words: list[str], eol: bytes) -> bytes:
    """`name word word ...` folded (RFC 5322 2.2.3) so no line passes _FOLD_AT characters."""
    out: list[str] = []
    line = name
    for word in words:
        if len(line) + 1 + len(word) > _FOLD_AT and line.strip():
            out.append(line)
            line = "\t" + word
        else:
            line += " " + word
    out.append(line)
    return eol.join(part.encode("ascii") for part in out)


def _token(text: str) -> str:
    """`text` as one ASCII header word: no spaces, no controls, non-ASCII escaped."""
    cleaned = (
        _UNSAFE.sub("_", text[:80]) if not text.isascii() or not text.isprintable() or " " in text else text
    )
    return cleaned.encode("ascii", "backslashreplace").decode("ascii")[:80] or "-"


def _line_ending(raw: bytes) -> bytes:
    newline = raw.find(b"\n")
    if newline > 0 and raw[newline - 1 : newline] == b"\r":
        return b"\r\n"
    return b"\n" if newline >= 0 else b"\r\n"


def _lines(block: bytes) -> list[bytes]:
    parts = block.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _rewrite_fields(head: bytes, subject_tag: bytes | None, untag: bytes | None = None) -> bytes:
    """The header block without X-Spam-* fields (continuations included), Subject tagged with
    `subject_tag`, or with the tag `untag` taken off where mark() put it."""
    out: list[bytes] = []
    dropping = False
    # Split on LF only: a stray CR inside a field is part of that field, not a line break.
    for line in _lines(head):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        lowered = line.lower()
        dropping = lowered.startswith(PREFIX)
        if dropping:
            continue
        if subject_tag is not None and lowered.startswith(b"subject:"):
            value = line[len(b"subject:") :]
            if not value.lstrip().startswith(subject_tag):
                line = line[: len(b"subject:")] + b" " + subject_tag + value
        elif untag is not None and lowered.startswith(b"subject:"):
            value = line[len(b"subject:") :]
            if value.startswith(b" " + untag):  # mark() wrote "Subject:" + " " + tag + value
                line = line[: len(b"subject:")] + value[1 + len(untag) :]
        out.append(line)
    return b"".join(out)
