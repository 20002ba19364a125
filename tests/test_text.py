"""message -> text: what it keeps, what it leaves out, and that it never raises."""

from __future__ import annotations

import base64
import email.utils
import re
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser

from milter.signals import fold_lookalikes, fold_styled, join_spaced
from milter.text import (
    _COMBINING,
    _FILLER,
    _FOOTER_RULE,
    _INVISIBLE,
    _OVERRIDDEN,
    _SIMPLE_ADDRESS,
    _WORD,
    MAX_HEAD_BYTES,
    MAX_WORDS,
    TEXT_VERSION,
    _head_end,
    _hosts,
    _link_hosts,
    _parse_address,
    _parse_head,
    _seen,
    _split_words,
    _strip_list_footer,
    _words,
    message_text,
)
from milter.visible import _BLOCK_TAGS, shown_order, visible_text


def tokens(raw: bytes) -> list[str]:
    return message_text(raw).split(" ")


def note_tokens(subject: str, body: str) -> set[str]:
    """The tokens of a plain UTF-8 note from Sam with `subject` and `body`."""
    head = f"From: Sam <sam@example.org>\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8"
    return set(tokens(f"{head}\r\n\r\n{body}\r\n".encode()))


def check_text(text: str) -> None:
    """The invariants every model text has, whatever the input."""
    assert isinstance(text, str)
    assert text, "some text out, always"
    text.encode("utf-8")  # valid UTF-8: no lone surrogates
    parts = text.split(" ")
    assert all(parts), "single spaces between tokens, none at the ends"
    assert parts == text.split(), "no other whitespace inside tokens"
    assert len(parts) == len(set(parts)), "tokens are unique"


PLAIN = (
    b"Received: from mail.relayhost.example by mx.spamassassin.taint.org; Mon, 3 Mar 2025 10:00:00 +0000\r\n"
    b'From: "Alice Example" <alice@example.co.uk>\r\n'
    b"To: Bob Recipient <bob@recipientdomain.example>\r\n"
    b"Cc: carol@ccdomain.example\r\n"
    b"Reply-To: other@elsewhere.example.com\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9_meeting?= Friday\r\n"
    b"X-Mailer: Mutt 2.2\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Hello Bob, see http://www.docs.example.org/page and jm@spamassassin.taint.org.\r\n"
    b"Costs =E2=82=AC 12345678 only!\r\n"
    b"_______________________________________________\r\n"
    b"Somelist mailing list\r\n"
    b"https://lists.example.net/mailman/listinfo/somelist\r\n"
)


def test_version_is_a_string() -> None:
    assert isinstance(TEXT_VERSION, str) and TEXT_VERSION


def test_keeps_subject_sender_mailer_urls_and_decoded_body() -> None:
    words = tokens(PLAIN)
    for expected in (
        "subj:café",
        "subj:meeting",
        "subj:friday",
        "from:alice",
        "from:example",
        "fromtld:uk",
        "replytotld:com",
        "replyto:other-domain",
        "mailer:mutt",
        "mime:text/plain",
        "charset:utf-8",
        "cte:quoted-printable",
        "url:example.org",
        "urltld:org",
        "hello",
        "€",
        "num8",
        "!",
    ):
        assert expected in words, expected


def test_leaves_out_relays_recipients_artefacts_and_list_footers() -> None:
    text = message_text(PLAIN)
    for absent in ("relayhost", "recipient", "recipientdomain", "ccdomain", "taint", "listinfo", "somelist"):
        assert absent not in text, absent
    assert "mailing" not in text.split(" ")


def test_html_is_parsed_scripts_dropped_links_kept() -> None:
    html = (
        "<html><head><style>.x{color:red}</style><title>ignored title</title></head>"
        "<body><p>Claim&nbsp;your <b>prize</b> &amp; win</p><script>var hidden = 1;</script>"
        "<a href='http://win.example.ru/x'>here</a><img src='http://img.example.cn/p.gif'></body></html>"
    )
    raw = (
        b"From: Deals <d@example.ru>\r\nSubject: hi\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(html.encode())
    )
    words = tokens(raw)
    for expected in (
        "claim",
        "prize",
        "win",
        "here",
        "url:example.ru",
        "url:example.cn",
        "html:img",
        "html:a",
    ):
        assert expected in words, expected
    for absent in ("hidden", "var", "color", "ignored"):
        assert absent not in words, absent


def html_message(html: str) -> bytes:
    return b"Subject: hi\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()


def test_html_block_tags_separate_words_inline_tags_do_not() -> None:
    words = tokens(html_message("<table><tr><td>alpha</td><td>beta</td></tr></table>V<b>ia</b>gra<br>end"))
    assert {"alpha", "beta", "viagra", "end"} <= set(words)
    assert "alphabeta" not in words and "via" not in words and "viagraend" not in words


def test_html_tag_attribute_and_link_tokens() -> None:
    html = (
        "<html><head><title>head title</title></head><body><p align='Center'>hello</p>"
        "<font color='#FF0000' face='Arial'>red</font><img src='cid:part1@example'>"
        "<form action='http://collect.example.biz/'><input type=text></form>"
        "<title>second title</title><!-- hidden comment words --></body></html>"
    )
    words = tokens(html_message(html))
    for expected in (
        "html:p",
        "html:p.align",
        "html:align=center",
        "html:font.color",
        "html:color=#ff0000",
        "html:img.src=cid",
        "html:form.action",
        "html:input",
        "url:example.biz",
        "hello",
        "red",
    ):
        assert expected in words, expected
    for absent in ("head", "title", "second", "hidden", "comment"):
        assert absent not in words, absent


def test_hostile_html_returns_text() -> None:
    for html in (
        "<div>" * 6000 + "deep",
        "<select><option>" * 500 + "<svg><template><math><mi><table><td>x",
        "<frameset><frame src='http://f.example.com/'></frameset>",
        "<plaintext><p>not a tag</p>",
        "\x00<p\x00 a\x00=\x00>\ud800 &#0; &#xD800; &#x110000; <![CDATA[ x ]]>",
        "<a href='http://[::1'><<<>><!--<![CDATA[<x y=\"",
        "<A\x0b<p>",  # not space to HTML, so part of the tag name, but whitespace to Python
        "<a \x1c=1 b\u2003c=2 d\x85\xa0=3 style='x\x0by'>",
    ):
        raw = b"Content-Type: text/html\r\n\r\n" + html.encode("utf-8", "surrogatepass")
        check_text(message_text(raw))


def test_broken_and_unknown_charsets_still_give_words() -> None:
    unknown = b"Subject: test\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\n"
    words = tokens(unknown + b"hello caf\xc3\xa9\r\n")  # valid UTF-8 is read as UTF-8
    assert "hello" in words and "café" in words
    words = tokens(unknown + b"hello w\xf6rld \xff\xfe\r\n")  # else as Latin-1
    assert "hello" in words and "wörld" in words
    raw_koi8 = "Привет мир".encode("koi8-r")
    words = tokens(b"Subject: x\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n" + raw_koi8)
    assert "привет" in words


def test_no_subject_and_empty_body_are_tokens_too() -> None:
    words = tokens(b"From: a@b.example\r\n\r\n")
    assert "subj:none" in words and "body:empty" in words


def test_body_words_are_capped() -> None:
    body = " ".join(f"w{i}" for i in range(10 * MAX_WORDS)).encode()
    words = tokens(b"Subject: long\r\n\r\n" + body)
    assert len(words) <= MAX_WORDS + 20
    assert "w0" in words


def nested(depth: int) -> bytes:
    raw = b"Content-Type: text/plain\r\n\r\ndeepest words here\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        raw = (
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
            b"--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\nlevel words\r\n"
            b"--" + boundary + b"\r\n" + raw + b"\r\n--" + boundary + b"--\r\n"
        )
    return b"Subject: nested\r\nMIME-Version: 1.0\r\n" + raw


def test_nested_multiparts_100_deep() -> None:
    text = message_text(nested(100))
    check_text(text)
    assert "level" in text.split(" ")


def test_30_mb_attachment_returns_text_from_the_first_part() -> None:
    attachment = base64.encodebytes(bytes(range(256)) * (30 * 1024 * 1024 // 256))
    raw = (
        b'Subject: report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XX"\r\n\r\n'
        b"--XX\r\nContent-Type: text/plain\r\n\r\nplease find the report attached\r\n"
        b"--XX\r\nContent-Type: application/octet-stream; name=big.bin\r\n"
        b"Content-Disposition: attachment; filename=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + attachment
        + b"\r\n--XX--\r\n"
    )
    assert len(raw) > 30 * 1024 * 1024
    words = tokens(raw)
    assert "report" in words and "attached" in words
    assert "attach:bin" in words


def test_binary_junk_and_truncated_mime() -> None:
    for raw in (
        bytes(range(256)) * 40,
        b"\x00" * 10000,
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n",
        b"Content-Type: text/plain; charset=utf-7\r\n\r\n+AGEAYgBj-+ZZZ-\r\n",
        b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64===\r\n",
        b"Subject: =?x-unknown?B?////?= =?utf-8?Q?broken\r\n\r\nbody",
        b"Content-Type: text/html\r\n\r\n<a href='http://[::1'><<<>><!--<![CDATA[<x y=\"",
        b"",
    ):
        check_text(message_text(raw))


def test_a_header_block_without_its_empty_line_ends_at_the_first_line_that_is_no_field() -> None:
    # As a generator that drops the empty line writes it (a shipping notice of the corpus): mail
    # clients and Python's email package show the body; a parser that took it all for headers
    # read none of it.
    raw = (
        b"From: FedEx <TrackingUpdates@fedex.com>\n"
        b"Subject: Your package is out for delivery\n"
        b"Content-Type: multipart/mixed;\n"
        b'\tboundary="----=_Part_1"\n'
        b"------=_Part_1\n"
        b"Content-Type: text/html; charset=UTF-8\n"
        b"\n"
        b"<html><body><p>Scheduled delivery: Tuesday afternoon</p></body></html>\n"
        b"------=_Part_1\n"
        b"A part with no header at all, its first line already text\n"
        b"------=_Part_1--\n"
    )
    words = tokens(raw)
    assert {"scheduled", "tuesday", "afternoon", "first", "already"} <= set(words)
    assert "body:empty" not in words and "mime:multipart/mixed" in words
    assert "subj:delivery" in words and "fromdom:fedex.com" in words
    # The same with CRLF line ends, and a Subject on a stray line is body text, not a header.
    crlf = raw.replace(b"\n", b"\r\n")
    assert set(tokens(crlf)) == set(words)
    stray = b"From: a@example.org\r\nSome words first\r\nSubject: not a header\r\n\r\nbody\r\n"
    assert "subj:header" not in tokens(stray) and "header" in tokens(stray)


HEADER_NAMES = st.sampled_from(
    ["Subject", "From", "Reply-To", "Content-Type", "Content-Transfer-Encoding", "X-Mailer", "To", "X-Junk"]
)
HEADER_VALUES = st.one_of(
    st.binary(max_size=80),
    st.sampled_from(
        [
            b"multipart/mixed; boundary=zz",
            b'text/html; charset="utf-16"',
            b"text/plain; charset=x-made-up",
            b"base64",
            b"quoted-printable",
            b"=?utf-8?b?w6k=?=",
            b"=?iso-8859-1?q?=E9t=E9?=",
            b'"\xff\xfe" <a@\xc3.example>',
        ]
    ),
)


@st.composite
def mime_messages(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8))
    head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    parts = draw(st.lists(st.binary(max_size=300), max_size=4))
    body = b"".join(b"--zz\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + p + b"\r\n" for p in parts)
    return head + b"\r\n" + body + draw(st.sampled_from([b"--zz--\r\n", b"", b"--zz"]))


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=127), max_size=300))
def test_ascii_words_are_the_words_the_pattern_finds(text: str) -> None:
    # ASCII text takes a faster path through string methods; it must give the same words.
    assert _split_words(text) == _WORD.findall(text)
    assert _split_words(text.lower()) == _WORD.findall(text.lower())
    # Latin-1 text and text beyond it: the pre-checks decide nothing the patterns would not.
    assert _seen(text) == slow_seen(text)


def slow_seen(text: str) -> str:
    """`_seen` without its shortcuts: every step on every text."""
    shown = _OVERRIDDEN.sub(lambda run: shown_order(run[1]), text)
    seen = _FILLER.sub(" ", _INVISIBLE.sub("", shown))
    if _COMBINING.search(seen):
        seen = _COMBINING.sub("", unicodedata.normalize("NFC", seen))
    return fold_styled(seen)


# Characters beyond ASCII that separate words (spaces, punctuation, controls, symbols) and ones that
# do not (letters, digits, fractions, currency tokens), within Latin-1 and beyond it.
MIXED_TEXT = st.text(
    st.one_of(
        st.characters(max_codepoint=127),
        st.sampled_from("\xa0\u2019\u2013\u2022\u00a9\u2122\x92\x85\u3000\ufffd\u200b\u00ad"),
        st.sampled_from("éßÿªµº¼²\xd7÷¡¿«»\xad£$!_"),
        st.sampled_from("İıſ①٣日本€\u0307\u0301\u0336\u202e\u202c\u05e9\u3164\uffa0\u2800"),
        st.characters(),
    ),
    max_size=300,
)


@settings(max_examples=1000, deadline=None)
@given(MIXED_TEXT)
def test_words_are_the_words_the_pattern_finds(text: str) -> None:
    assert _split_words(text) == _WORD.findall(text)
    assert _split_words(text.lower()) == _WORD.findall(text.lower())
    # Latin-1 text and text beyond it: the pre-checks decide nothing the patterns would not.
    assert _seen(text) == slow_seen(text)


def slow_words(text: str, prefix: str, limit: int) -> list[str]:
    words = _WORD.findall(join_spaced(fold_lookalikes(fold_styled(text[: limit * 16]))).lower())[:limit]
    plain = [w for w in words if len(w) <= 3 or (len(w) <= 24 and not w.isdigit())]
    for word in words:
        if len(word) > 3 and (len(word) > 24 or word.isdigit()):
            if word.isdigit():
                plain.append(f"num{min(len(word), 20)}")
            elif word.isascii():
                plain.append(word[:24])
            else:
                plain.extend(word[i : i + 2] for i in range(0, min(len(word), 64), 2))
    return [prefix + w for w in plain]


WORD_PIECES = st.sampled_from(
    [
        *("a", "ab", "abc", "word", "2002", "123", "1234", "12345678901234567890123", " ", ". ", "\n"),
        *(
            "x" * 24,
            "y" * 25,
            "Z" * 30,
            "²³¹²",
            "٣٣٣٣",
            "①②③④",
            "\uff11\uff12\uff13\uff14",  # fullwidth digits
            "日本語のテキスト",
            "é" * 26,
            "$",
            "!",
        ),
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(WORD_PIECES, max_size=40).map("".join), st.sampled_from(["", "subj:"]), st.integers(1, 12))
def test_word_tokens_are_the_per_word_tests(text: str, prefix: str, limit: int) -> None:
    # Numbers (of any script's digits), long words and CJK runs among the first `limit` words;
    # each token once, at its first use, as the model text keeps it.
    out: list[str] = []
    _words(text, out, prefix, limit)
    assert list(dict.fromkeys(out)) == list(dict.fromkeys(slow_words(text, prefix, limit)))


def test_words_beside_lone_surrogates() -> None:
    for text in ("a\ud800b", "caf\udce9 x", "\udfff1234\ud800"):
        assert _split_words(text) == _WORD.findall(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_never_raises_on_random_bytes(raw: bytes) -> None:
    check_text(message_text(raw))


HTML_PIECES = st.sampled_from(
    [
        *("<p>", "</p>", "<td>", "<table>", "<select>", "<option>", "<svg>", "<template>", "<math>"),
        *("<b>", "</b>", "<title>", "<a href='cid:x'>", "<img src=http://e.example.ru/>", "<frameset>"),
        *("<plaintext>", "<!--", "-->", "<![CDATA[", "&#0;", "&nbsp;", "<", ">", "\x00", "\ufeff"),
        *("word", " ", "\u65e5\u672c"),
    ]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(HTML_PIECES, st.text(max_size=20)), max_size=80))
def test_never_raises_on_random_html(pieces: list[str]) -> None:
    html = "".join(pieces).encode("utf-8", "surrogatepass")
    check_text(message_text(b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mime_messages())
def test_never_raises_on_random_mime(raw: bytes) -> None:
    check_text(message_text(raw))


# The fast paths below must give exactly what the straightforward code gives (the shipped model was
# trained on its output), so each is compared with that code on inputs made of the tricky pieces.

ADDRESS_PIECES = st.sampled_from(
    [
        *("john", "John.Doe", "a", "x-y_z+tag", "ü", "日本", "123", "..", ".", "@", "@@", "<", ">", "<>"),
        *('"', '\\"', "\\", "(", ")", "(comment)", "(nested (comment))", ",", ";", ":", "[", "]"),
        *(" ", "  ", "\t", "\r", "\n", "\r\n", "\xa0", "\x0b", "\x1c", "\u2003", "\x00"),
        *("example.com", "mail.example.co.uk", "[127.0.0.1]", "taint.org", "=?utf-8?q?x?="),
    ]
)


@st.composite
def address_values(draw: st.DrawFn) -> str:
    """Address header values near the usual shapes, so both the fast and the slow path are taken."""
    local = draw(st.lists(ADDRESS_PIECES, min_size=1, max_size=4).map("".join))
    domain = draw(st.lists(ADDRESS_PIECES, min_size=1, max_size=4).map("".join))
    name = draw(st.lists(ADDRESS_PIECES, max_size=6).map("".join))
    spaces = st.sampled_from(["", " ", "\t", "  ", " \t "])
    shape = draw(
        st.sampled_from(["{l}@{d}", "{n} <{l}@{d}>", '"{n}" <{l}@{d}>', '"{n}"<{l}@{d}>', "<{l}@{d}>"])
    )
    return draw(spaces) + shape.format(l=local, d=domain, n=name) + draw(spaces)


TRICKY_ADDRESSES = [
    "john@example.com",
    " \tjohn.doe@mail.example.co.uk \t",
    "John Doe <john@example.com>",
    "John   Q.  Doe\t<john@example.com>",
    '"Doe, John" <john@example.com>',
    '"John \\"JD\\" Doe" <john@example.com>',  # an escaped quote: the slow path
    '"" <john@example.com>',
    '"" Angles " Puglisi" <angles@example.com>',
    "<john@example.com>",
    "john@example.com (John Doe)",  # a comment
    "John (the man) Doe <john@example.com>",
    "john@example.com, jane@example.org",
    "John <john@example.com>, Jane <jane@example.org>",
    "john@example.com@evil.example",
    "john..doe@example.com",
    ".john@example.com",
    "john@example..com",
    "john@[127.0.0.1]",
    "john @ example . com",
    "John Doe <john @ example.com>",
    "John\xa0Doe <john@example.com>",  # no-break space: an atom character to parseaddr
    "John\u2003Doe <john@example.com>",
    "John\x1cDoe <john@example.com>",
    "Jöhn Dœ <jöhn@exämple.com>",
    "John <>",
    "John <john>",
    "<john@example.com",
    "John Doe",
    "@example.com",
    "john@",
    "",
    " ",
    '"unterminated <john@example.com>',
    '"carriage\rreturn" <john@example.com>',
    '"new\nline" <john@example.com>',
    "group: john@example.com, jane@example.org;",
    "=?utf-8?q?J=C3=B6hn?= <john@example.com>",
]


def test_usual_address_shapes_parse_as_parseaddr_parses_them() -> None:
    for value in TRICKY_ADDRESSES:
        assert _parse_address(value) == email.utils.parseaddr(value), value
    fast = [value for value in TRICKY_ADDRESSES if _SIMPLE_ADDRESS.fullmatch(value)]
    assert len(fast) >= 8, "the fast path is what these cases are about"


@settings(max_examples=2000, deadline=None)
@given(st.one_of(address_values(), st.lists(ADDRESS_PIECES, max_size=12).map("".join)))
def test_address_fast_path_is_parseaddr(value: str) -> None:
    assert _parse_address(value) == email.utils.parseaddr(value)


# What the header scan was before it was made faster: one multiline regex over the block.
SLOW_HEAD_END = re.compile(rb"\r?\n\r?\n")
SLOW_WANTED_HEADER = re.compile(
    rb"^(subject|from|reply-to|x-mailer|user-agent|message-id|content-type|content-transfer-encoding"
    rb"|content-disposition)[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)",
    re.IGNORECASE | re.MULTILINE,
)


def is_head_line(line: bytes) -> bool:
    return line[:1] in (b" ", b"\t") or re.match(rb"[!-9;-~]+[ \t]*:|>?From ", line) is not None


def slow_head(raw: bytes, start: int) -> tuple[dict[str, bytes], bytes]:
    if raw.startswith(b"\n", start) or raw.startswith(b"\r\n", start):
        return {}, raw[raw.index(b"\n", start) + 1 :]
    end = SLOW_HEAD_END.search(raw, start, start + MAX_HEAD_BYTES)
    head_end, body_start = (end.start(), end.end()) if end else (min(len(raw), start + MAX_HEAD_BYTES),) * 2
    # A line that is no field, continuation or mbox "From " line ends a head that lacks its empty line.
    newline = raw.find(b"\n", start, head_end)
    if (start == 0 or raw[start - 1] == 0x0A) and not is_head_line(raw[start:head_end]):
        head_end = body_start = start
        newline = -1
    while newline >= 0:
        line = raw[newline + 1 : head_end]
        if not is_head_line(line):
            head_end, body_start = newline - (raw[newline - 1] == 0x0D), newline + 1
            break
        newline = raw.find(b"\n", newline + 1, head_end)
    headers: dict[str, bytes] = {}
    for match in SLOW_WANTED_HEADER.finditer(raw, start, head_end):
        name = match.group(1).decode("ascii").lower()
        if name not in headers:
            headers[name] = re.sub(rb"[ \t]*\r?\n[ \t]*", b" ", match.group(2)).strip()
    return headers, raw[body_start:]


HEAD_PIECES = st.sampled_from(
    [
        *(b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n", b"\n\r\n", b"\r\r\n", b" ", b"\t", b":", b"a"),
        *(b"Subject: hi", b"SUBJECT:", b"subject :x", b"From: a@b", b"from:", b"Reply-To: r", b"X-Mailer: m"),
        *(
            b"User-Agent: u",
            b"Message-ID: <i@d>",
            b"Content-Type: text/plain",
            b"content-transfer-encoding: qp",
        ),
        *(
            b"Content-Disposition: attachment",
            b"X-Subject: no",
            b"Subjects: no",
            b" Subject: folded",
            b"\xff",
            b"From x",
            b">From y",
            b"--boundary",
        ),
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(HEAD_PIECES, max_size=30).map(b"".join), st.integers(0, 8))
def test_header_scan_is_the_multiline_regex_scan(raw: bytes, start: int) -> None:
    start = min(start, len(raw))
    part = _parse_head(raw, start, 0)
    assert (part.headers, part.body) == slow_head(raw, start)
    for stop in (start, start + 3, len(raw) // 2, len(raw)):
        match = SLOW_HEAD_END.search(raw, start, stop)
        assert _head_end(raw, start, stop) == (match.span() if match else None)


SLOW_URL = re.compile(r"(?:https?://|www\.)([a-z0-9](?:[a-z0-9.-]{0,252}))")
URL_PIECES = st.sampled_from(
    [
        *("http://", "https://", "httpss://", "http:/", "www.", "wwww.", "www", "h", "w", "ttp", "s"),
        *(":", "/", ".", "-", "a", "z", "0", "9", " ", "\n", "é", "example.com", "-x.org", ".."),
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(URL_PIECES, max_size=30).map("".join))
def test_link_hosts_are_the_joint_pattern_matches(text: str) -> None:
    assert _link_hosts(text) == SLOW_URL.findall(text)


def test_overlapping_links_are_found_as_the_joint_pattern_finds_them() -> None:
    for text in (
        "www.http://ahttp://b",  # the www match hides an http match that a later one overlaps
        "http://www.example.com www.example.org https://x.example",
        "wwww.a.b httpss://x http://http://y www.www.z",
        "https://" + "a" * 300 + ".example www.b.example",
    ):
        assert _link_hosts(text) == SLOW_URL.findall(text), text
    assert _hosts(["www.a.example http://a.example", "www.a.example www.b.example"]) == [
        "a.example",
        "b.example",
    ]


def slow_strip_list_footer(text: str) -> str:
    tail_start = max(0, len(text) - 2000)
    for rule in reversed(list(_FOOTER_RULE.finditer(text, tail_start))):
        tail = text[rule.end() : rule.end() + 800].lower()
        marks = ("mailing list", "listinfo", "mailman", "yahoogroups", "groups.yahoo", "list-request")
        marks += ("you are subscribed to the google groups", "groups.io")
        if any(mark in tail for mark in marks):
            return text[: rule.start()]
    return text


FOOTER_PIECES = st.sampled_from(
    [
        *("-----", "=====", "_____", "-_=-_", "--", "==", "-", "\n", "\r\n", " ", "\t", "x"),
        *("Mailing List", "listinfo", "words " * 50, "y" * 700),
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(FOOTER_PIECES, max_size=20).map("".join))
def test_list_footer_cut_is_the_rule_scan(text: str) -> None:
    assert _strip_list_footer(text) == slow_strip_list_footer(text)


def test_list_footer_at_the_edge_of_the_scanned_tail() -> None:
    cuts = 0
    for offset in range(-3, 4):
        # The rule line starts `offset` characters after the start of the 2000-character tail.
        footer = "-----\nSomelist mailing list\n"
        footer += "z" * (2000 - offset - len(footer))
        text = "a" * 3000 + "\n" + footer
        assert text.index("-----") == len(text) - 2000 + offset
        assert _strip_list_footer(text) == slow_strip_list_footer(text), offset
        cuts += _strip_list_footer(text) != text
    assert cuts == 4  # the rule is seen when it starts inside the tail


def spaced_body_text(markup: str) -> str:
    """The body text with a space inserted before and after every block element, void ones too."""
    tree = LexborHTMLParser(markup)
    assert tree.root is not None
    for node in tree.root.traverse():
        if node.tag in _BLOCK_TAGS:
            node.insert_before(" ")
            node.insert_after(" ")
    return tree.body.text() if tree.body is not None else ""  # a frameset has no body


BR_PIECES = st.sampled_from(
    [
        *(
            "<br>",
            "</br>",
            "<br/>",
            "<br>x</br>",
            "<hr>",
            "<hr>y</hr>",
            "<BR clear=all>",
            "<p>",
            "</p>",
            "<td>",
        ),
        *("<table>", "<tr>", "<select>", "<option>", "<svg>", "<math><mi>", "<template>", "<b>", "</b>"),
        *("<frameset>", "<plaintext>", "<textarea>", "<xmp>", "</xmp>", "word", " ", "\n", "日本"),
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(BR_PIECES, max_size=25).map("".join))
def test_void_block_tags_get_one_double_space(markup: str) -> None:
    # <br> and <hr> never have children, so one "  " stands for the spaces before and after.
    assert visible_text(markup).text == spaced_body_text(markup)


def list_post(fields: str, body: str = "Hello all, the patch looks fine to me.\r\n") -> bytes:
    return (fields.replace("\n", "\r\n") + "Content-Type: text/plain\r\n\r\n" + body).encode()


def test_list_wrapping_leaves_no_trace_of_the_list() -> None:
    """Subject tags naming the list, the list's address in From or Reply-To and "X via list"
    rewriting are list wrapping, on ham and spam alike: the tokens are the author's."""
    munged = list_post(
        'From: "Jane Roe via Somelist-users" <somelist-users@lists.example.net>\n'
        "Reply-To: Jane Roe <jane@author.example>\n"
        "Subject: Re: [Somelist-users] [PATCH v2] fix the build\n"
        "List-Id: Users of somelist <somelist-users.lists.example.net>\n"
    )
    words = tokens(munged)
    for expected in ("from:jane", "from:roe", "fromdom:author.example", "subj:patch", "subj:v2", "subj:fix"):
        assert expected in words, expected
    for absent in ("from:via", "from:somelist", "subj:somelist", "subj:users", "fromdom:example.net"):
        assert absent not in words, absent
    assert not any(word.startswith("replyto") for word in words)

    original = list_post(
        "From: Linux for blind users <blind-list@lists.example.com>\n"
        "X-Original-From: Jane Roe <jane@author.example>\n"
        "Reply-To: blind-list@lists.example.com\n"
        "Subject: [Blind-list] speech settings\n"
        "List-Id: Linux for blind users <blind-list.example.com>\n"
    )
    words = tokens(original)
    assert {"from:jane", "fromdom:author.example", "subj:speech"} <= set(words)
    assert not {"from:linux", "from:blind", "subj:blind", "subj:list"} & set(words)
    assert not any(word.startswith("replyto") for word in words)

    rewritten = list_post(
        "From: Linux for blind users <blind-list@example.com>\n"
        "Subject: Re: speech settings\n"
        "List-Id: Linux for blind users <blind-list.example.com>\n"
    )
    words = tokens(rewritten)
    assert "from:list" in words and "from:linux" not in words and "fromdom:example.com" not in words


def test_subject_tags_stay_without_a_list_or_when_they_name_something_else() -> None:
    for fields in (
        "From: a@b.example\nSubject: [Somelist] hello\n",
        "From: a@b.example\nSubject: [PATCH] hello\nList-Id: <somelist.example.org>\n",
    ):
        words = tokens(list_post(fields))
        assert "subj:hello" in words
        assert "subj:somelist" in words or "subj:patch" in words
    # A Reply-To of the author's own on a list post is the author's.
    words = tokens(
        list_post(
            "From: a@b.example\nReply-To: x@other.example\nSubject: hi\nList-Id: <somelist.example.org>\n"
        )
    )
    assert "replyto:other-domain" in words


def test_footers_after_a_signature_separator_are_cut() -> None:
    for footer in (
        "--\r\nLinux-audit mailing list\r\nLinux-audit@example.com\r\nhttps://example.com/mailman/listinfo/x\r\n",
        '-- \r\nYou received this message because you are subscribed to the Google Groups "x" group.\r\n',
    ):
        words = tokens(list_post("From: a@b.example\nSubject: hi\n", "See you tomorrow.\r\n" + footer))
        assert "tomorrow" in words
        assert not {"mailing", "listinfo", "subscribed", "google", "groups"} & set(words), footer


def alternative(plain: str, html: str) -> bytes:
    return (
        "From: a@b.example\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
        f"--b1\r\nContent-Type: text/plain\r\n\r\n{plain}\r\n"
        f"--b1\r\nContent-Type: text/html\r\n\r\n{html}\r\n--b1--\r\n"
    ).encode()


def test_the_plain_alternative_of_html_is_not_read_as_words() -> None:
    """A client shows the HTML part: words only in the plain part are not the reader's, and a
    plain part that says something else is flagged."""
    letter = " ".join(f"ordinary{i} letter words" for i in range(30))
    words = tokens(alternative(letter, "<p>Claim your prize now</p>"))
    assert {"claim", "prize", "alt:plain-differs", "alt:plain-differs-most"} <= set(words)
    assert "ordinary3" not in words and "letter" not in words
    same = " ".join(f"word{i}" for i in range(40))
    words = tokens(alternative(same, f"<div>{same}</div>"))
    assert "word7" in words and not any(word.startswith("alt:") for word in words)
    # Without an HTML alternative the plain part is what the reader sees.
    raw = alternative(letter, "").replace(b"text/html", b"text/plain")
    assert "ordinary3" in tokens(raw)


def plain_part(body: str) -> bytes:
    return f"From: a@b.example\r\nSubject: hi\r\nContent-Type: text/plain\r\n\r\n{body}\r\n".encode()


@pytest.mark.parametrize(
    "start",
    [
        "<!DOCTYPE html PUBLIC '-//W3C//DTD XHTML 1.0//EN'>",
        "\r\n\t<html lang='en'>",
        "<p>",
        "<TABLE border=0>",
        "<!-- x -->",
    ],
)
def test_html_sent_as_text_plain_is_read_as_html_as_a_browser_sniffs_it(start: str) -> None:
    """What WHATWG MIME sniffing reads as HTML is read as HTML: its words without the markup,
    its hidden text hidden, its links as links."""
    body = (
        f"{start}<head><style>.h{{display:none}} td {{padding: 0}}</style></head>"
        "<body><p>Your account is locked</p><span class='h'>ordinary hidden words</span>"
        "<a href='http://login.example.net/x'>login</a></body>"
    )
    words = tokens(plain_part(body))
    assert {"your", "account", "locked", "hidden:display-none", "url:example.net"} <= set(words)
    assert not {"padding", "style", "span", "ordinary", "doctype", "table"} & set(words)
    assert "mime:text/plain" in words


@pytest.mark.parametrize(
    "text", ["<pre>code</pre> and words", "hello <html> words", "<body\nonload=x> words"]
)
def test_plain_text_that_a_browser_would_not_sniff_as_html_stays_text(text: str) -> None:
    words = tokens(plain_part(text))
    assert "words" in words and not any(word.startswith("html:") for word in words)


def test_an_unshown_plain_alternative_that_is_html_gives_its_words_only() -> None:
    """Its links and hidden text are not the reader's: only the shown HTML's count."""
    plain = (
        "<html><body>"
        + " ".join(f"other{i}" for i in range(30))
        + "<a href='http://plain.example.org/'>x</a>"
    )
    plain += "<span style='display:none'>secret</span></body></html>"
    words = tokens(alternative(plain, "<p>Claim your prize now</p>"))
    assert {"claim", "alt:plain-differs-most"} <= set(words)
    assert "url:example.org" not in words and not any(word.startswith("hidden:") for word in words)


def headed(subject: str, *fields: str) -> bytes:
    head = "".join(f"{field}\r\n" for field in fields)
    return (
        f"From: a@b.example\r\nSubject: {subject}\r\n{head}Content-Type: text/plain\r\n\r\ntext\r\n".encode()
    )


@pytest.mark.parametrize(
    "subject",
    [
        "Re: your invoice",
        "RE : your invoice",
        "AW: Rechnung",
        "Re[2]: x",
        "[shop] Re: x",
        "回复\uff1a通知",
        "SV: x",
    ],
)
def test_a_reply_subject_without_a_thread_is_a_fake_reply(subject: str) -> None:
    assert "sig:fake-reply" in tokens(headed(subject))
    # A reply that names the message it answers is a reply, and no token says so.
    for field in ("In-Reply-To: <1@b.example>", "References: <0@b.example>\r\n <1@b.example>"):
        words = tokens(headed(subject, field))
        assert not any(word.startswith("sig:") for word in words)


@pytest.mark.parametrize(
    "subject", ["Regarding your invoice", "Reminder: x", "Fwd: x", "Réunion: lundi", "x Re: y"]
)
def test_a_subject_that_is_no_reply_is_no_fake_reply(subject: str) -> None:
    assert "sig:fake-reply" not in tokens(headed(subject))


@pytest.mark.parametrize(
    ("content_type", "flowed"),
    [
        ('text/plain; charset="us-ascii"; Format="flowed"', True),
        ("text/plain; format=flowed; delsp=yes", True),
        ("text/plain; format=fixed", False),
        ("text/plain", False),
        ("text/html; format=flowed", False),
    ],
)
def test_flowed_plain_text_marks_the_mail_client(content_type: str, flowed: bool) -> None:
    """RFC 3676 flowed text is what desktop mail clients write: a token says so, as `mailer:` does."""
    raw = f"From: a@b.example\r\nSubject: hi\r\nContent-Type: {content_type}\r\n\r\nsome words\r\n"
    assert ("fmt:flowed" in tokens(raw.encode())) is flowed


def test_a_flowed_plain_alternative_marks_the_client_though_not_shown() -> None:
    """In Thunderbird's multipart/alternative the plain part is not shown; it still says who wrote it."""
    raw = (
        "From: a@b.example\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\n\r\nsome words\r\n"
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>some words</p>\r\n--b--\r\n"
    )
    assert "fmt:flowed" in tokens(raw.encode())


def test_invisible_characters_are_not_word_breaks_and_a_split_word_is_a_signal() -> None:
    plain = note_tokens("your account", "Your PayPal account is locked.")
    assert "paypal" in plain and "sig:invisible-in-word" not in plain
    for char in ("\u200b", "\u00ad", "\u2060", "\ufeff", "\u034f"):
        split = note_tokens(f"your acc{char}ount", f"Your Pay{char}Pal acc{char}{char}ount is loc{char}ked.")
        assert set(split) == {*plain, "sig:invisible-in-word"}, char
    # Where they belong: Persian's zero-width non-joiner, an emoji's joiner, a preheader spacer
    # between words (\u200c and \u034f between spaces): the words are the same, no signal.
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want": mi + ZWNJ + khaham
    for body in (persian, "family 👨\u200d👩\u200d👧 photo", "Hello \u200c\u034f \u200c\u034f there"):
        found = note_tokens("hello", body)
        assert "sig:invisible-in-word" not in found, body
    assert persian.replace("\u200c", "") in note_tokens("hello", persian)
    # Version 15: a variation selector or a tag character (what follows an emoji, what spells a
    # flag's subdivision) takes no room either; inside a word it is a signal. Bidirectional
    # embeddings and isolates go too, without one: mail clients write them around names.
    for char in ("\ufe0f", "\ufe00", "\U000e0061", "\U000e0001"):
        split = note_tokens(f"your acc{char}ount", f"Your Pay{char}Pal acc{char}ount is loc{char}ked.")
        assert set(split) == {*plain, "sig:invisible-in-word"}, ascii(char)
    # (A right-to-left override is no such character: what follows it is shown reversed, and
    # read so; test_text_after_a_right_to_left_override_is_read_as_shown.)
    for char in ("\u202a", "\u202c", "\u202d", "\u2066", "\u2069", "\U0001d173", "\u17b4"):
        split = note_tokens(f"your acc{char}ount", f"Your Pay{char}Pal acc{char}ount is loc{char}ked.")
        assert set(split) == set(plain), ascii(char)
    # An emoji with its selector, and a flag of England (black flag, tag letters, cancel tag):
    # no word is split, no signal.
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    for body in ("I \u2764\ufe0f it, thanks", f"Go {england} go"):
        assert "sig:invisible-in-word" not in note_tokens("hello", body), ascii(body)


def _restyled(text: str, upper: int, lower: int, digits: int | None = None) -> str:
    """`text` with A-Z, a-z (and 0-9) moved to the blocks starting at those code points."""
    table = {ord("A") + i: chr(upper + i) for i in range(26)} | {
        ord("a") + i: chr(lower + i) for i in range(26)
    }
    if digits is not None:
        table |= {ord("0") + i: chr(digits + i) for i in range(10)}
    return text.translate(table)


# Small capitals of the letters that have one (not q, x), as they are written: U+1D00 and others.
_SMALL_CAPITALS = dict(
    zip(
        map(ord, "abcdefghijklmnoprstuvwyz"),
        "\u1d00\u0299\u1d04\u1d05\u1d07\ua730\u0262\u029c\u026a\u1d0a\u1d0b\u029f"
        "\u1d0d\u0274\u1d0f\u1d18\u0280\ua731\u1d1b\u1d1c\u1d20\u1d21\u028f\u1d22",
        strict=True,
    )
)


def _script(char: str) -> str:
    """A small letter in mathematical script: e, g and o are the letterlike symbols of before."""
    if not char.isalpha():
        return char
    try:
        return unicodedata.lookup(f"MATHEMATICAL SCRIPT SMALL {char.upper()}")
    except KeyError:
        return unicodedata.lookup(f"SCRIPT SMALL {char.upper()}")


def test_letters_in_other_styles_are_read_as_the_letters_shown_and_a_styled_word_is_a_signal() -> None:
    def text(name: str, subject: str, body: str) -> list[str]:
        head = (
            f"From: {name} <sam@example.org>\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8"
        )
        return tokens(f"{head}\r\n\r\n{body}\r\n".encode())

    name, subject, body = "PayPal", "Your account 2026", "Your PayPal account is locked. Verify it now."
    plain = text(name, subject, body)
    assert "sig:styled-letters" not in plain
    styles = {
        "mathematical bold": lambda t: _restyled(t, 0x1D400, 0x1D41A, 0x1D7CE),
        "mathematical sans-serif bold": lambda t: _restyled(t, 0x1D5D4, 0x1D5EE, 0x1D7EC),
        "mathematical script": lambda t: "".join(map(_script, t.lower())),
        "circled": lambda t: _restyled(t, 0x24B6, 0x24D0),
        "parenthesised": lambda t: _restyled(t.lower(), 0x249C, 0x249C),
        "small capitals": lambda t: t.lower().translate(_SMALL_CAPITALS),
        "negative squared": lambda t: _restyled(t.upper(), 0x1F170, 0x1F170),
    }
    for style, restyle in styles.items():
        styled = text(restyle(name), restyle(subject), restyle(body))
        expected = set(plain)
        if style == "negative squared":  # capitals only
            expected.add("subj:all-caps")
        assert set(styled) == {*expected, "sig:styled-letters"}, style
    # Fullwidth letters and digits are read so too, with no signal: Chinese and Japanese text
    # writes them in ordinary mail. A mathematical variable or a circled number is no word.
    fullwidth = [_restyled(t, 0xFF21, 0xFF41, 0xFF10) for t in (name, subject, body)]
    assert set(text(*fullwidth)) == set(plain)
    japanese = "T\u30b7\u30e3\u30c4 " + _restyled("3727", 0, 0, 0xFF10) + "\u5186 \u2460\u2461\u2462"
    variables = "where " + _restyled("f(x) = ax + b", 0x1D434, 0x1D44E)
    for body in (japanese, variables, "\u0283 \u0259 \u026a \u028a"):
        assert "sig:styled-letters" not in text("Sam", "hello", body), body
    assert "3727\u5186" in text("Sam", "hello", japanese)


# Cyrillic letters that look like Latin ones: a, c, e, i, o, p, x, y and the capitals A, B, E, H, K, M, T.
_CYRILLIC = dict(
    zip(
        map(ord, "aceiopxyABEHKMT"),
        "\u0430\u0441\u0435\u0456\u043e\u0440\u0445\u0443\u0410\u0412\u0415\u041d\u041a\u041c\u0422",
        strict=True,
    )
)


def test_look_alike_letters_inside_a_latin_word_are_read_as_latin_and_signalled_as_written() -> None:
    def text(name: str, subject: str, body: str) -> set[str]:
        head = (
            f"From: {name} <sam@example.org>\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8"
        )
        return set(tokens(f"{head}\r\n\r\n{body}\r\n".encode()))

    name, subject, body = "Sam Brown", "Your account", "Verify your account now, please."
    plain = text(name, subject, body)
    swapped = text(*(t.translate(_CYRILLIC) for t in (name, subject, body)))
    assert swapped == {*plain, "sig:mixed-script", "sig:body-mixed-script"}
    # A Russian or Greek word keeps its letters; so does a word beside a Latin one.
    russian = "\u041f\u0440\u0438\u0432\u0435\u0442 John, USB-\u043f\u043e\u0440\u0442 10\u03bcs"
    assert fold_lookalikes(russian) == russian
    assert "\u043f\u0440\u0438\u0432\u0435\u0442" in text("Sam", "hello", russian)
    # A word with a letter that looks like no Latin one (Cyrillic zhe, de) is no Latin word in
    # disguise: a Russian word with Latin letters in it stays as written.
    for word in ("p\u0430\u0436word", "a\u0434\u043c\u0438\u043d\u0438c\u0442pa\u0446\u0438\u044f"):
        assert fold_lookalikes(f"{word} now") == f"{word} now"


def test_a_word_spelled_one_letter_at_a_time_is_read_as_the_word() -> None:
    def text(name: str, subject: str, body: str) -> set[str]:
        head = (
            f"From: {name} <sam@example.org>\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8"
        )
        return set(tokens(f"{head}\r\n\r\n{body}\r\n".encode()))

    plain = text("Account Team", "Free gift", "Verify your account now.")
    spaced = text("A c c o u n t  Team", "F r e e  g i f t", "V e r i f y  y o u r  a c c o u n t  now.")
    assert spaced == {*plain, "sig:spaced-letters"}
    # Runs of two or three single letters are words people write ("a b", "x y z"): no signal,
    # and two stay apart; a run of three is one word.
    assert join_spaced("options a b or x y z.") == "options a b or xyz."
    assert "sig:spaced-letters" not in text("Sam", "hello", "options a b or x y z, I a m")
    # Letters set apart by single spaces between words too are one run: no reader reads words there.
    assert join_spaced("f r e e g i f t") == "freegift"
    # Set apart by one and the same dot, hyphen, star or underscore: the word, and no token (the
    # name of a list, B.A.T.M.A.N., is written so); a host name and runs of two stay as written.
    dotted = text("Account Team", "F*r*e*e gift", "V.e.r.i.f.y y.o.u.r a-c-c-o-u-n-t now.")
    assert dotted == plain
    kept = "see b.a.t.m.a.n.lists.open-mesh.org, e.g. v.1.2 or a.b"
    assert join_spaced(kept) == kept and join_spaced("U.S.A. and B.A.T.M.A.N.") == "USA. and BATMAN."
    # Digits written on to the first or last letter stay with the word (a price, a year, a
    # "2" for "to"); a run that goes on into a host name is still left as written.
    assert join_spaced("C.a.n.a.r.i.a.s24 and 2F*R*E*E, R e a d y2 go") == "Canarias24 and 2FREE, Ready2 go"
    assert join_spaced("see a.b.c1.example.com") == "see a.b.c1.example.com"
    assert {"sig:spaced-letters", "subj:ready2"} <= text("Sam", "R e a d y2", "hello")
    # Version 18: the separators mixed (a dot and a hyphen in turn), and middle dots and bullets.
    mixed = text(
        "A\u00b7c\u00b7c\u00b7o\u00b7u\u00b7n\u00b7t Team",
        "F.r-e.e gift",
        "V.e-r.i-f.y y\u2022o\u2022u\u2022r account now.",
    )
    assert mixed == plain
    assert join_spaced("see a.b-c1.example.com, x.y-z") == "see a.b-c1.example.com, xyz"
    # Version 20: slashes and vertical bars, alone or mixed with the others; a path that goes on
    # into a longer name, and "and/or", stay as written.
    slashed = text("A|c|c|o|u|n|t Team", "F/r/e/e gift", "V/e/r/i/f/y y|o|u|r a.c/c.o/u.n/t now.")
    assert slashed == plain
    assert join_spaced("and/or, w/o, /usr/a/b/config") == "and/or, w/o, /usr/a/b/config"
    # A date after the word, written on with a slash, does not make the run go on into it (a
    # dot and a digit still do: a version, a host name).
    assert join_spaced("R.e-a.d-y2/7/2023, R/e/a/d/y2/7/2023") == "Ready2/7/2023, Ready2/7/2023"
    assert join_spaced("a.b.c.1 and x.y.z/7") == "a.b.c.1 and xyz/7"
    # Version 21: tildes and plus signs, alone or mixed with the others; "C++", a sum of numbers
    # and a home directory's path stay as written.
    signed = text("A~c~c~o~u~n~t Team", "F+r+e+e gift", "V~e~r~i~f~y y+o+u+r a.c+c~o/u.n-t now.")
    assert signed == plain
    assert join_spaced("C++, 1+2+3, ~/a/b/config, a+b+c+1") == "C++, 1+2+3, ~/a/b/config, a+b+c+1"


def test_regional_indicators_read_as_letters_and_a_flag_as_a_flag() -> None:
    """Version 20: the boxed capitals of the flag emoji (U+1F1E6-1F1FF) spell words for the
    reader, as other styled letters do; two on their own are a flag, and stay one."""

    def boxed(text: str) -> str:
        return "".join(chr(0x1F1E6 + ord(c) - ord("a")) if "a" <= c <= "z" else c for c in text.lower())

    plain = note_tokens("Free gift", "Verify your account now.")
    spelled = note_tokens(boxed("Free gift"), boxed("Verify your account now."))
    assert spelled == {*plain, "sig:styled-letters"}
    # One letter at a time with spaces between (as spammers write them, so that no two make a
    # flag): the word again.
    assert "verify" in note_tokens("hello", " ".join(boxed("verify")) + " now")
    flags = note_tokens("hello", f"Greetings from {boxed('de')} and {boxed('fr')}!")
    assert flags == note_tokens("hello", "Greetings from and !")


def test_hangul_fillers_read_as_the_blanks_they_show() -> None:
    """Version 18: a Hangul filler is a letter to a program and a blank to the reader: words it
    sets apart are words, and a name of nothing but fillers gives no name words."""
    filled = note_tokens("Your\u3164account\u3164is\u3164locked", "Verify\uffa0your\u3164account now.")
    assert filled == note_tokens("Your account is locked", "Verify your account now.")
    raw = b"From: =?utf-8?b?44Wk?= <sam@example.org>\r\nSubject: hello\r\n\r\nhello there\r\n"
    assert not any(token.startswith("from:") for token in tokens(raw))


def test_combining_marks_do_not_split_words() -> None:
    """Version 16: accents written decomposed are the accented letters; a mark no letter takes
    (a stroke through each letter, a stress mark) does not split the word it is on."""
    composed = note_tokens("Caf\u00e9 tr\u00e8s bon", "Sch\u00f6ne Gr\u00fc\u00dfe, \u00e0 bient\u00f4t.")
    assert {"subj:caf\u00e9", "subj:tr\u00e8s", "sch\u00f6ne", "gr\u00fc\u00dfe", "bient\u00f4t"} <= composed
    decomposed = note_tokens(
        unicodedata.normalize("NFD", "Caf\u00e9 tr\u00e8s bon"),
        unicodedata.normalize("NFD", "Sch\u00f6ne Gr\u00fc\u00dfe, \u00e0 bient\u00f4t."),
    )
    assert decomposed == composed
    struck = "".join(letter + "\u0336" for letter in "Verify")
    assert note_tokens("hello", f"{struck} your account") == note_tokens("hello", "Verify your account")
    # A Russian stress mark (no precomposed form): the word, not two pieces.
    milk = "\u043c\u043e\u043b\u043e\u043a\u043e"
    assert milk in note_tokens("hello", milk + "\u0301")


def test_text_after_a_right_to_left_override_is_read_as_shown() -> None:
    """Version 17: the text between U+202E and U+202C is shown reversed, so it is read reversed;
    right-to-left scripts are stored in reading order and stay as written."""
    turned = note_tokens("\u202etnuocca ruoy\u202c", "Please \u202eyfirev\u202c now.")
    assert turned == note_tokens("your account", "Please verify now.")
    # To the end of the paragraph when nothing ends it.
    assert {"verify", "now"} <= note_tokens("hi", "\u202ewon yfirev\nbye")
    hebrew = "\u05e9\u05dc\u05d5\u05dd"
    assert hebrew in note_tokens("hi", f"\u202e{hebrew}\u202c")


def test_the_recipients_address_in_the_subject_is_a_signal_and_not_a_word() -> None:
    def text(to: str, subject: str) -> list[str]:
        head = f"From: Desk <desk@example.net>\r\nTo: {to}\r\nSubject: {subject}"
        return tokens(f"{head}\r\n\r\nYour mailbox is almost full.\r\n".encode())

    found = text("Jane <jane@example.org>", "jane@example.org: mailbox quota")
    assert "sig:recipient-in-subject" in found
    assert "sig:recipient-in-subject" not in text("Jane <jane@example.org>", "mailbox quota")
    # The To field gives no other token: recipients say which corpus a message is from.
    other = text("bob@example.com", "jane@example.org: mailbox quota")
    assert set(found) - {"sig:recipient-in-subject"} == set(other)
