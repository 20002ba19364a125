"""Message: headers come from the header block only, whatever the line endings or the body."""

from __future__ import annotations

from milter.message import MAX_HEADER_BYTES, Envelope, Message, header_block


def test_header_block_ends_at_the_first_blank_line_crlf() -> None:
    raw = b"Subject: a\r\nFrom: b@example.org\r\n\r\nSubject: not a header\r\n"
    assert header_block(raw) == b"Subject: a\r\nFrom: b@example.org\r\n\r\n"


def test_header_block_ends_at_the_first_blank_line_lf() -> None:
    raw = b"Subject: a\nX-Long: one\n two\n\nbody\n\nmore\n"
    assert header_block(raw) == b"Subject: a\nX-Long: one\n two\n\n"


def test_headers_ignore_header_like_lines_in_the_body() -> None:
    message = Message(b"Subject: real\r\n\r\nSubject: forged in body\r\nX-Spam-Flag: YES\r\n")
    assert message.header_values("Subject") == ["real"]
    assert message.header_values("X-Spam-Flag") == []


def test_folded_and_undecodable_headers_are_unfolded_text() -> None:
    raw = b"Subject: caf\xe9\r\n  au lait\r\nMessage-ID: <x@example.org>\r\n\r\nbody"
    message = Message(raw, Envelope("a@example.org", ("b@example.com",)))
    assert message.header_values("Subject") == ["caf\ufffd au lait"]
    assert message.message_id == "<x@example.org>"
    assert message.size == len(raw)


def test_a_message_without_body_is_all_headers() -> None:
    assert Message(b"Subject: only\r\n").header_values("Subject") == ["only"]


def test_an_endless_header_block_is_cut() -> None:
    raw = b"Subject: s\r\n" + b"X-Junk: " + b"a" * (2 * MAX_HEADER_BYTES)
    assert len(header_block(raw)) == MAX_HEADER_BYTES
    assert Message(raw).header_values("Subject") == ["s"]
