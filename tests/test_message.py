"""Message: headers come from the header block only, whatever the line endings or the body."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_fields_in_order_with_names_as_sent_and_values_unfolded() -> None:
    raw = (
        b"Received: from a\r\n\tby b\r\nSubject : spaced name\r\nX-Empty:\r\n"
        b"To: x@example.com,\r\n   y@example.com\r\n\r\nBody: not a header\r\n"
    )
    assert Message(raw).headers == (
        ("Received", "from a by b"),
        ("Subject", "spaced name"),
        ("X-Empty", ""),
        ("To", "x@example.com, y@example.com"),
    )


def test_utf8_values_are_text_and_a_from_line_is_no_field() -> None:
    raw = "From someone Mon Apr  9 12:00:00 2007\nSubject: Grüße\n\n".encode()
    assert Message(raw).headers == (("Subject", "Grüße"),)


def test_a_line_that_is_no_field_ends_the_headers() -> None:
    raw = b"Subject: s\r\nthis is body text without a blank line\r\nX-Spam-Flag: YES\r\n"
    assert Message(raw).headers == (("Subject", "s"),)


def test_agrees_with_the_stdlib_parser_on_corpus_mail() -> None:
    import email.parser
    import email.policy

    root = Path(os.environ.get("MILTER_CORPUS", "/work/corpus"))
    files = sorted((root / "spamassassin" / "ham").iterdir())[:150]
    files += sorted((root / "trec07p-early" / "spam").iterdir())[:150]
    assert len(files) == 300, f"no corpus at {root} (set MILTER_CORPUS)"
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    compared = 0
    for path in files:
        raw = path.read_bytes()
        if not header_block(raw).isascii():
            continue  # the stdlib gives undecodable bytes back as surrogates; we decode UTF-8
        ours = Message(raw).headers
        theirs = tuple((k, " ".join(str(v).split())) for k, v in parser.parsebytes(raw).items())
        assert ours == theirs, path.name
        compared += 1
    assert compared > 250


def test_message_id_without_parsing_every_field_is_what_the_parse_gives() -> None:
    """The log line's fast Message-ID agrees with header_values over corpus mail and odd cases."""
    root = Path(os.environ.get("MILTER_CORPUS", "/work/corpus"))
    files = sorted((root / "spamassassin" / "ham").iterdir())[:200]
    files += sorted((root / "trec07p-early" / "spam").iterdir())[:200]
    odd = [
        b"Subject: x\r\nmessage-id  \t:  <a@b>\r\n  folded\r\n\r\nbody",
        b"From someone Mon Jan  1 00:00:00 2001\nMessage-ID: <mbox@x>\n\nb",
        b"Subject: x\n\nMessage-ID: <in-body@x>\n",  # in the body: none
        b"Subject: x\nnot a field\nMessage-ID: <after-garbage@x>\n\n",  # the body starts early
        b"X-Message-ID: <other@x>\nMessage-Id: <second@x>\nMessage-ID: <third@x>\n\n",
        b"Message-ID: <caf\xc3\xa9\xff@x>\r\n\r\n",
        b"Message-ID:\r\n\r\n",
        b"",
    ]
    raws = [p.read_bytes() for p in files] + odd
    for raw in raws:
        fast = Message(raw).message_id
        parsed = Message(raw)
        ids = parsed.header_values("Message-ID")
        assert fast == (ids[0] if ids else None), raw[:80]
        assert parsed.message_id == fast  # and through the parsed fields once they exist
    assert Message(odd[0]).message_id == "<a@b> folded"
    assert Message(odd[2]).message_id is None
    assert Message(odd[3]).message_id is None
    assert Message(odd[4]).message_id == "<second@x>"
