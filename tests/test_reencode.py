"""Rewrapping a message as today's mail programs send it: the words stay, the wrapping changes."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milter.text import message_text
from milter.training.reencode import STYLES, reencode
from milter.training.synthetic import make_message

PLAIN = b"""\
From: "Ann Example" <ann@example.org>
To: bob@example.net
Subject: Minutes of the budget meeting
Date: Tue, 3 Sep 2002 10:00:00 +0100
Message-ID: <123@example.org>
X-Mailer: Mutt 1.4
Content-Type: text/plain

Hello Bob,

the minutes of yesterday's budget meeting are below.
Caf\xe9 orders go through the office.
"""


def _parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


WRAPPINGS = sorted(name for name, style in STYLES.items() if not style.words)


@pytest.mark.parametrize("style", WRAPPINGS)
def test_the_words_and_header_fields_stay_and_the_wrapping_changes(style: str) -> None:
    rewrapped = reencode(PLAIN, style)
    message = _parsed(rewrapped)
    assert message["From"].addresses[0].display_name == "Ann Example"
    assert message["Subject"] == "Minutes of the budget meeting"
    assert message["X-Mailer"] is None  # a mail-client name belongs to the wrapping
    assert message["Message-ID"] != "<123@example.org>"
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    kinds = [part.get_content_type() for part in parts]
    assert kinds == (["text/html"] if style == "service" else ["text/plain", "text/html"])
    assert all(part.get_content_charset() == "utf-8" for part in parts)
    assert {part["Content-Transfer-Encoding"] for part in parts} == {STYLES[style].transfer_encoding}
    html = parts[-1].get_content()
    assert (
        "budget meeting are below" in html and "Caf\xe9 orders" in html
    )  # no charset, not UTF-8: Latin-1, as message->text reads it
    before, after = set(message_text(PLAIN).split()), set(message_text(rewrapped).split())
    words = {"minutes", "budget", "meeting", "office", "subj:minutes", "from:ann", "fromdom:example.org"}
    assert words <= before and words <= after
    assert "cte:" + STYLES[style].transfer_encoding in after and "charset:utf-8" in after
    assert "msgid:other-domain" in after and "msgid:same-domain" in before


def test_an_html_part_is_kept_as_html_and_the_plain_text_comes_from_it() -> None:
    raw = b"""\
From: shop@example.com
Subject: Your order
Content-Type: text/html; charset=utf-8

<html><body><p>Thank you for your order</p><a href="https://shop.example.com/o/1">track it</a></body></html>
"""
    plain, html = (part.get_content() for part in _parsed(reencode(raw, "outlook")).iter_parts())
    assert '<a href="https://shop.example.com/o/1">track it</a>' in html
    assert "Thank you for your order" in plain and "<p>" not in plain
    assert "url:example.com" in message_text(reencode(raw, "gmail")).split()


def test_attachments_are_left_out() -> None:
    raw = b"""\
From: ann@example.org
Subject: report
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

see the attachment
--b
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--b--
"""
    rewrapped = reencode(raw, "gmail")
    assert b"report.pdf" not in rewrapped
    assert "attachment" in message_text(rewrapped).split()


def test_the_same_message_gives_the_same_bytes_and_styles_differ() -> None:
    raw = make_message(7, spam=True)
    assert reencode(raw, "outlook") == reencode(raw, "outlook")
    assert len({reencode(raw, style) for style in STYLES}) == len(STYLES)


def test_an_unknown_style_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        reencode(PLAIN, "lotus-notes")


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=2000), style=st.sampled_from(sorted(STYLES)))
def test_never_raises_on_any_bytes(raw: bytes, style: str) -> None:
    out = reencode(raw, style)
    assert isinstance(out, bytes)
    message_text(out)  # and message->text takes whatever comes out


def test_broken_mime_gives_a_message_anyway() -> None:
    raw = (
        b"Subject: =?bogus?Q?x?=\nContent-Type: multipart/mixed; boundary=\n"
        b"Content-Transfer-Encoding: base64\n\n\xff\xfe not base64 at all ==="
    )
    for style in STYLES:
        assert _parsed(reencode(raw, style))["MIME-Version"] == "1.0"


def test_the_short_style_is_the_first_words_as_a_plain_note() -> None:
    raw = (
        b"From: Ann Example <ann@example.org>\nSubject: Re: lunch\nMessage-ID: <1@example.org>\n"
        b"Content-Type: text/plain\n\n> what about friday?\n"
        + b" ".join(b"w%d" % i for i in range(60))
        + b"\n"
    )
    message = _parsed(reencode(raw, "short"))
    assert message.get_content_type() == "text/plain" and message["Subject"] == "Re: lunch"
    assert message.get_content().split() == [f"w{i}" for i in range(STYLES["short"].words)]
    assert "friday" not in message_text(reencode(raw, "short")).split()  # quoted lines left out
