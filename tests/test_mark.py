"""Marking works on bytes: the message is untouched but for the X-Spam-* fields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from milter.mark import mark
from milter.message import FIELD
from milter.message import header_end as _header_end
from milter.model import Score
from milter.policy import Verdict
from milter.rules import Action, Decision

SPAM = Verdict(
    Decision(Action.SPAM_FOLDER, "spam", 0.9),
    Score(0.9344, "spam-abc", (("subj:viagra", 2.5), ("url:example.ru", 1.25), ("fromtld:org", -0.5))),
    "spam-abc",
)
HAM = Verdict(Decision(Action.DELIVER, "default"), Score(0.0123, "spam-abc", ()), "spam-abc")
FLAGGED = Verdict(Decision(Action.FLAG, "suspicious", 0.5), Score(0.61, "spam-abc", ()), "spam-abc")
UNSCORED = Verdict(Decision(Action.DELIVER, "default"), None, "spam-abc", "RuntimeError: exploded")


def test_crlf_message_gets_crlf_headers_and_is_otherwise_byte_identical() -> None:
    raw = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody \xff\xfe 8-bit, not UTF-8\r\n"
    out = mark(raw, SPAM)
    assert out.endswith(raw)
    head = out[: -len(raw)]
    assert head == (
        b"X-Spam-Flag: YES\r\n"
        b"X-Spam-Status: Yes, score=0.934 required=0.90 rule=spam model=spam-abc\r\n"
        b"X-Spam-Score: 0.934\r\n"
        b"X-Spam-Action: spam_folder\r\n"
        b"X-Spam-Report: subj:viagra=+2.500 url:example.ru=+1.250 fromtld:org=-0.500\r\n"
    )


def test_lf_message_keeps_lf() -> None:
    raw = b"Subject: hi\n\nbody\n"
    out = mark(raw, HAM)
    assert out.endswith(raw) and b"\r" not in out
    assert out.startswith(b"X-Spam-Flag: NO\nX-Spam-Status: No, score=0.012 rule=default model=spam-abc\n")


def test_flag_is_not_spam_to_spamassassin_readers() -> None:
    out = mark(b"Subject: x\r\n\r\n", FLAGGED)
    assert b"X-Spam-Flag: NO\r\n" in out and b"X-Spam-Action: flag\r\n" in out
    assert b"X-Spam-Status: No, score=0.610 required=0.50 rule=suspicious" in out


def test_unscored() -> None:
    out = mark(b"Subject: x\r\n\r\n", UNSCORED)
    assert b"X-Spam-Status: No, unscored rule=default model=spam-abc error=RuntimeError\r\n" in out
    assert b"X-Spam-Score: unscored\r\n" in out and b"X-Spam-Report" not in out


def test_inbound_x_spam_fields_are_removed_with_their_folds() -> None:
    raw = (
        b"X-Spam-Flag: YES\r\nReceived: from x\r\n\tby y\r\nX-Spam-Status: No,\r\n"
        b"  score=0.0 required=5.0\r\n\ttests=NONE\r\nX-SPAM-LEVEL: *****\r\nx-spam-checker-version: 3\r\n"
        b"X-Spammer: not ours, kept\r\nSubject: X-Spam-Flag: in a value, kept\r\n\r\n"
        b"X-Spam-Flag: YES\r\n"
    )
    out = mark(raw, HAM)
    kept = out.split(b"X-Spam-Action: deliver\r\n", 1)[1]
    assert kept == (
        b"Received: from x\r\n\tby y\r\nX-Spammer: not ours, kept\r\n"
        b"Subject: X-Spam-Flag: in a value, kept\r\n\r\nX-Spam-Flag: YES\r\n"
    )


def test_forged_fields_after_an_mbox_from_line_are_removed_and_the_line_stays_first() -> None:
    raw = b"From spammer@example.ru Mon Apr  9 12:00:00 2007\nX-Spam-Flag: NO\nSubject: hi\n\nbody\n"
    out = mark(raw, SPAM)
    assert out.startswith(b"From spammer@example.ru Mon Apr  9 12:00:00 2007\nX-Spam-Flag: YES\n")
    assert out.count(b"X-Spam-Flag") == 1
    assert out.endswith(b"Subject: hi\n\nbody\n")


def test_stray_cr_inside_a_field_is_not_a_line_break() -> None:
    raw = b"Subject: a\rX-Spam-Flag: YES\r\nX-Spam-Score: 99\r\n\r\n"
    out = mark(raw, HAM)
    assert out.endswith(b"Subject: a\rX-Spam-Flag: YES\r\n\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"no header block at all\r\njust text\r\n",
        b"Subject: headers only, no line end",
        b"\r\nbody after an empty header block\r\n",
        b"\x00\x01binary\xff\r\n\r\n\x00",
        b"X-Spam-Flag: YES",
    ],
)
def test_odd_messages(raw: bytes) -> None:
    out = mark(raw, SPAM)
    assert out.count(b"X-Spam-Flag:") == 1  # ours; an inbound one is gone
    if not raw.lower().startswith(b"x-spam-"):
        assert out.endswith(raw)


def test_subject_tag_only_on_spam_and_only_once() -> None:
    raw = b"From: a\r\nSubject: cheap pills\r\n\r\nSubject: body line\r\n"
    tagged = mark(raw, SPAM, subject_tag="[SPAM]")
    assert b"\r\nSubject: [SPAM] cheap pills\r\n" in tagged and tagged.endswith(b"\r\nSubject: body line\r\n")
    assert mark(b"Subject: [SPAM] cheap\r\n\r\n", SPAM, "[SPAM]").count(b"[SPAM]") == 1
    assert mark(raw, HAM, subject_tag="[SPAM]").endswith(raw)


def test_features_are_escaped_into_one_ascii_word_and_folded() -> None:
    features = tuple((f"wörd {i}\r\nX-Injected: yes", 1.0 / (i + 1)) for i in range(8))
    verdict = Verdict(SPAM.decision, Score(0.99, "m", features), "m")
    out = mark(b"Subject: x\r\n\r\n", verdict)
    head = out.split(b"\r\n\r\n", 1)[0]
    assert b"X-Injected" not in head.replace(b"_X-Injected", b"")  # never a field of its own
    lines = head.split(b"\r\n")
    assert all(len(line) <= 78 for line in lines)
    assert all(line.isascii() for line in lines)
    assert b"w\\xf6rd_0__X-Injected:_yes=+1.000" in head
    report = [line for line in lines if line.startswith((b"X-Spam-Report:", b"\t"))]
    assert len(report) > 1  # folded


def header_end_by_lines(raw: bytes) -> int:
    """The header block's end, line by line: the reference the one-regex version must match."""
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        stripped = (raw[pos:] if end < 0 else raw[pos:end]).rstrip(b"\r")
        if not stripped or (stripped[:1] not in (b" ", b"\t") and not FIELD.match(stripped)):
            return pos
        if end < 0:
            return len(raw)
        pos = end + 1
    return len(raw)


LINE_PIECES = st.sampled_from(
    [b"Subject: x", b"X-Spam-Flag: YES", b" cont", b"\tcont", b"no colon", b"", b"\r", b"a :b", b":", b" "]
)


@given(st.lists(st.tuples(LINE_PIECES, st.sampled_from([b"\r\n", b"\n", b"\r", b""])), max_size=8))
def test_header_end_is_the_line_by_line_end(parts: list[tuple[bytes, bytes]]) -> None:
    raw = b"".join(line + end for line, end in parts)
    assert _header_end(raw) == header_end_by_lines(raw)


@given(st.binary(max_size=200))
def test_header_end_on_any_bytes(raw: bytes) -> None:
    assert _header_end(raw) == header_end_by_lines(raw)
