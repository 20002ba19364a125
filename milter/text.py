"""Message -> model text: the one function that training and the daemon both use.

The model sees a message as a line of lowercased, space-separated tokens: header-derived tokens
with a prefix (``from:john``, ``fromtld:ru``, ``url:example.com``, ``mime:text/html``,
``subj:free``, ``fmt:flowed`` for the flowed plain text desktop mail clients write), then the
words of the decoded text parts (an HTML part, or a plain one that a browser would sniff as
HTML, by what its reader sees: milter/visible.py). The ONNX graph only splits on spaces
and looks tokens up, so all string work happens here, once, in Python, with capped cost.

What is deliberately left out, because it leaks the label inside the training corpora and means
nothing on other mail: Received headers (relay hosts), recipients (To/Cc; TREC has one recipient
domain: only whether the subject holds a To address is a token), the obfuscated
``spamassassin.taint.org`` domain, and mailing-list footers (they mark ham in the public corpora
and nowhere else).

Bump TEXT_VERSION whenever the tokens produced for a message change: a model records the version
it was trained on and the loader refuses a model whose version this code does not produce. A
reading that changes no token of the corpora the model is fitted on that is in its vocabulary
(a trick no message of them uses) keeps the version: the fit on the same features is the same
model (docs/model.md says so for each such round).
"""

from __future__ import annotations

import binascii
import codecs
import contextlib
import email.header
import email.utils
import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Final

from milter import signals
from milter.signals import registrable
from milter.visible import INVISIBLE_CLASS, MAX_HTML_CHARS, shown_order, visible_text

TEXT_VERSION: Final[str] = "24"

# Caps: a 30 MB message costs what its first MAX_RAW_BYTES cost.
MAX_RAW_BYTES: Final = 256 * 1024  # bytes of the raw message that are parsed at all
MAX_PART_BYTES: Final = 64 * 1024  # decoded bytes kept per text part
MAX_TEXT_CHARS: Final = 96 * 1024  # text characters tokenised over all parts
MAX_HEAD_BYTES: Final = 64 * 1024  # bytes of one header block
MAX_PARTS: Final = 64  # MIME parts looked at
MAX_DEPTH: Final = 16  # multipart nesting followed
MAX_WORDS: Final = 2000  # body word tokens emitted
MAX_TOKEN_CHARS: Final = 24

# Corpus artefacts: obfuscated or single-recipient domains that leak the label.
_ARTEFACTS: Final = re.compile(r"spamassassin\.taint\.org|speedy\.uwaterloo\.ca|taint\.org", re.IGNORECASE)
_WORD: Final = re.compile(r"[^\W_]+|[$€£!]")
# The same words for Latin-1 text: characters that cannot be part of a word become spaces
# ([^\W_] is what str.isalnum accepts; "!", "$" and "£" are spaced apart as words of their own).
_LATIN1_WORD_BYTES: Final = bytes(c if chr(c).isalnum() or chr(c) in "!$£" else 32 for c in range(256))
# Characters no reader sees (zero-width spaces and joiners, soft hyphen, BOM, ...): they go before
# words are split, or "Pay<U+200B>Pal" would be two words a filter does not know and a reader reads
# as one (milter.signals.invisible_tokens says they were there).
_INVISIBLE: Final = re.compile(f"[{INVISIBLE_CLASS}]+")
# Combining marks of the blocks used with Latin, Greek and Cyrillic letters. A mark is no word
# character: a decomposed "tre\u0300s" would be two words, and a letter struck through with a
# combining stroke (U+0336) after each letter a word of single letters. Where there is one, the
# text is composed (NFC) and the marks no letter takes are dropped (message->text version 16).
_COMBINING: Final = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
# Text between a right-to-left override (U+202E) and the end of its embedding (U+202C), a
# paragraph's end or another bidirectional control: shown reversed, letter by letter.
_OVERRIDDEN: Final = re.compile("\u202e([^\u202a-\u202e\u2066-\u2069\n]*)")
# The Hangul fillers: letters to a program, a blank to the reader (a name of nothing but one, the
# spaces between words written as them). They are read as spaces (message->text version 18).
_FILLER: Final = re.compile("[\u115f\u1160\u3164\uffa0]")
# A character beyond Latin-1 that can be (part of) a word.
_WIDE_WORD_CHAR: Final = re.compile(r"[^\W\x00-\xff]")
_ARTEFACTS_LOWER: Final = re.compile(r"spamassassin\.taint\.org|speedy\.uwaterloo\.ca|taint\.org")
# Link hosts in lowercased text: what (?:https?://|www\.)(host) finds, as two patterns that each
# start with a literal, so the regex engine skips ahead in C (the joint pattern stops at every h and w).
_URL_HTTP: Final = re.compile(r"https?://([a-z0-9][a-z0-9.-]{0,252})")
_URL_WWW: Final = re.compile(r"www\.([a-z0-9][a-z0-9.-]{0,252})")
_WANTED_FIELD: Final = (
    rb"(subject|from|to|reply-to|x-mailer|user-agent|message-id|content-type|content-transfer-encoding"
    rb"|content-disposition|list-id|x-original-from|in-reply-to|references)[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)"
)
# The fields after the first start after a newline: a pattern that begins with a literal lets the
# regex engine jump from line to line in C instead of trying a match at every byte.
_FIRST_WANTED_HEADER: Final = re.compile(_WANTED_FIELD, re.IGNORECASE)
_NEXT_WANTED_HEADER: Final = re.compile(rb"\n" + _WANTED_FIELD, re.IGNORECASE)
# A line that is neither a header field ("Name:"), nor a continuation, nor an mbox "From " line:
# where a header block lacks its empty line, the body starts there, as mail clients and Python's
# email package read it (a generator that drops the empty line would otherwise hide the body).
_NOT_A_FIELD: Final = rb"(?![ \t]|[!-9;-~]+[ \t]*:|>?From )"
_NOT_HEADER_LINE: Final = re.compile(rb"\n" + _NOT_A_FIELD)
_NOT_HEADER_START: Final = re.compile(_NOT_A_FIELD)
_FOLD: Final = re.compile(rb"[ \t]*\r?\n[ \t]*")
_PARAM: Final = re.compile(r'([\w.*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')
_FILENAME: Final = re.compile(r'filename\*?\s*=\s*(?:"([^"]*)"|([^;\s]*))', re.IGNORECASE)
_AFTER_DELIMITER: Final = (b"", b"-", b"\r", b"\n", b" ", b"\t")
_NOT_BASE64: Final = re.compile(rb"[^A-Za-z0-9+/]")
# A footer starts at a rule line, or at a signature separator ("--", "-- ") as Red Hat's and
# Google's lists put before theirs.
_FOOTER_RULE: Final = re.compile(r"^[ \t]*(?:[_=-]{5,}|--)[ \t\r]*$", re.MULTILINE)
# What every rule line holds: two of its characters in a row, each pair sought by a substring
# search in C (a ^ pattern is tried at every character, a class at every character too).
_RULE_PAIRS: Final = tuple(first + second for first in "_=-" for second in "_=-")
_FOOTER_MARKS: Final = (
    *("mailing list", "listinfo", "mailman", "yahoogroups", "groups.yahoo", "list-request"),
    *("you are subscribed to the google groups", "groups.io"),
)
# The usual shapes of an address header, whose parse by email.utils.parseaddr is known without
# running its character-by-character Python parser: `local@domain`, `Some Name <local@domain>`,
# `"Some Name" <local@domain>`. An atom here is a stretch of what parseaddr reads as atom
# characters (no whitespace of any kind, for a simple split); phrase words may hold dots.
_ATOM: Final = r'[^()<>@,:;."\[\]\s]+'
_ADDR_SPEC: Final = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
_PHRASE_WORD: Final = r'[^()<>@,:;"\[\]\s]+'
_SIMPLE_ADDRESS: Final = re.compile(
    rf"[ \t]*(?:(?P<bare>{_ADDR_SPEC})"
    rf'|(?:"(?P<quoted>[^"\\\r]*)"|(?P<phrase>{_PHRASE_WORD}(?:[ \t]+{_PHRASE_WORD})*))?'
    rf"[ \t]*<(?P<angled>{_ADDR_SPEC})>)[ \t]*"
)


# A text/plain part that begins as an HTML document is read as one: what a browser sniffs as
# HTML (WHATWG MIME Sniffing, 7.1: whitespace, then one of these, then a space or ">"). Senders
# that send HTML as text/plain would otherwise give tag names and CSS as the message's words.
_SNIFFED_HTML: Final = re.compile(
    r"[\t\n\x0c\r ]*<(?:!doctype html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p"
    r"|!--)[ >]",
    re.IGNORECASE,
)

# A subject tag such as "[Osst-users]"; it is dropped when it names the message's list (List-Id).
_SUBJECT_TAG: Final = re.compile(r"\[([^\[\]]{1,60})\][ \t]*")
# Mailman's and Google Groups' From when the author's domain forbids relaying: "Jane via Somelist".
_VIA_LIST: Final = re.compile(r"(.*?)[ \t]+via[ \t]+\S.*", re.IGNORECASE)


def _alnum(text: str) -> str:
    return "".join(filter(str.isalnum, text)).lower()


def _without_list_tag(subject: str, list_id: str) -> str:
    """The subject without tags that name the list: list wrapping, on ham and spam alike."""
    if "[" not in subject:
        return subject
    key = _alnum(list_id)

    def drop(tag: re.Match[str]) -> str:
        name = _alnum(tag[1])
        return "" if len(name) >= 2 and name in key else tag[0]

    return _SUBJECT_TAG.sub(drop, subject)


def _is_list_address(address: str, list_id: str | None) -> bool:
    """Whether `address` is the list's own (List-Id: "Name <somelist.example.org>" is the list
    somelist@example.org, or somelist@lists.example.org)."""
    if list_id is None or "@" not in address:
        return False
    local, _, domain = address.lower().partition("@")
    key = _alnum(list_id)
    return len(local) > 1 and _alnum(local) in key and _alnum(domain.removeprefix("lists.")) in key


def _author(
    from_value: str, reply_to: str | None, original: str | None, list_id: str | None
) -> tuple[tuple[str, str] | None, str | None]:
    """((name, address) of From, Reply-To) as the author sent them, before a list rewrote From;
    From is None when the list put its own address there and kept no trace of the author.

    A list that rewrites From (DMARC munging: "Jane via Somelist" <list@host>, or the list's own
    name and address) puts the author in X-Original-From or, failing that, in Reply-To; the
    rewritten From is list wrapping, the same for ham and spam, not the sender.
    """
    name, address = _parse_address(from_value)
    if reply_to is not None and _is_list_address(_parse_address(reply_to)[1], list_id):
        reply_to = None  # "reply to the list": wrapping too
    if original is not None:
        return _parse_address(original), reply_to
    if " via " in name.lower() and (via := _VIA_LIST.fullmatch(name)) is not None:
        if reply_to is not None:
            return _parse_address(reply_to), None
        return (via[1], address), None
    if _is_list_address(address, list_id):
        return None, reply_to  # the list's own address: the author is not known
    return (name, address), reply_to


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset; unknown or broken charsets fall back to UTF-8, then Latin-1.
    (Also how milter.training.reencode reads a part, so a rewrapped copy keeps the same words.)"""
    if charset:
        try:
            codecs.lookup(charset)
        except (LookupError, ValueError):
            charset = None
    if charset:
        try:
            return data.decode(charset, "replace")
        except Exception:  # codecs can raise odd errors on odd input (e.g. utf-7)
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _header_text(value: bytes) -> str:
    """A header value as readable text: RFC 2047 words decoded, raw 8-bit bytes read as UTF-8."""
    text = decode_bytes(value, None)
    if "=?" in text:
        try:
            pieces = email.header.decode_header(text)
            # Unencoded stretches come back as raw-unicode-escape bytes with no charset.
            text = "".join(
                piece
                if isinstance(piece, str)
                else decode_bytes(piece, charset)
                if charset
                else piece.decode("raw-unicode-escape")
                for piece, charset in pieces
            )
        except Exception:  # broken encoded words: keep the raw text
            pass
    return text


def _token(text: str) -> str:
    """`text` as one token: no whitespace (the graph splits on it), valid UTF-8, bounded."""
    token = "".join(text.split())[:40]
    return token if token.isascii() else token.encode("utf-8", "replace").decode("utf-8")


def _long_word(word: str) -> list[str]:
    if word.isdigit():
        return [f"num{min(len(word), 20)}"]
    if word.isascii():
        return [word[:MAX_TOKEN_CHARS]]
    # Scripts without spaces (CJK): pairs of characters, as a cheap stand-in for words.
    return [word[i : i + 2] for i in range(0, min(len(word), 64), 2)]


def _split_words(text: str) -> list[str]:
    """`_WORD.findall(text)`, by C string methods in a fraction of the time when every character
    beyond Latin-1 separates words, as in most mail (ASCII or Western European text, with dashes,
    curly quotes, bullets): those become "?", which separates words as well.
    """
    if not text.isascii() and ("€" in text or (not signals.is_latin1(text) and _WIDE_WORD_CHAR.search(text))):
        return _WORD.findall(text)
    spaced = text.replace("!", " ! ").replace("$", " $ ").replace("£", " £ ").encode("latin-1", "replace")
    return spaced.translate(_LATIN1_WORD_BYTES).decode("latin-1").split()


def _seen(text: str) -> str:
    """`text` as the reader reads it: without the characters no reader sees (_INVISIBLE; of them
    only the soft hyphen is Latin-1), with the Hangul fillers as the blanks they show, with
    accents composed and the combining marks no letter takes dropped (_COMBINING), and with
    letters of other styles (mathematical bold, circled, fullwidth, small capitals: none is
    Latin-1) as the plain letters they show."""
    if text.isascii() or ("\xad" not in text and signals.is_latin1(text)):
        return text
    if "\u202e" in text:  # read what the override shows: the text it holds, reversed
        text = _OVERRIDDEN.sub(lambda run: shown_order(run[1]), text)
    text = _INVISIBLE.sub("", text)
    if _FILLER.search(text) is not None:
        text = _FILLER.sub(" ", text)
    if _COMBINING.search(text) is not None:
        text = _COMBINING.sub("", unicodedata.normalize("NFC", text))
    return signals.fold_styled(text)


def _words(text: str, out: list[str], prefix: str, limit: int) -> None:
    """Append about `limit` normalised word tokens of `text` (lowercased) to `out`."""
    # Words average under 8 characters; scanning a bounded prefix keeps the cost bounded.
    # Look-alike letters inside a Latin word are read as Latin in the words alone: the signals
    # (sig:mixed-script, sig:confusable-brand) read the display name and subject as written.
    # A word spelled one letter at a time (``V e r i f y``) is read as the word.
    seen = signals.join_spaced(signals.fold_lookalikes(_seen(text[: limit * 16])))
    # Each word once, in the order first written: the model text keeps a token's first use
    # only (message_text), so the passes below need not see a word again.
    words = list(dict.fromkeys(_split_words(seen.lower())[:limit]))
    # Numbers of 4+ digits, long words and scripts without spaces become other tokens, at the end.
    # One pass finds them; the others are then told apart by set lookups, not by the test again.
    odd = [w for w in words if len(w) > 3 and (len(w) > MAX_TOKEN_CHARS or w.isdigit())]
    if odd:
        known = set(odd)
        words = [w for w in words if w not in known]
        for word in odd:
            words.extend(_long_word(word))
    out.extend([prefix + w for w in words] if prefix else words)


def _strip_list_footer(text: str) -> str:
    """Cut a trailing mailing-list footer (a rule line followed by list boilerplate)."""
    tail_start = max(0, len(text) - 2000)
    last = text[tail_start:]
    if not any(pair in last for pair in _RULE_PAIRS):
        return text
    for rule in reversed(list(_FOOTER_RULE.finditer(text, tail_start))):
        tail = text[rule.end() : rule.end() + 800].lower()
        if any(mark in tail for mark in _FOOTER_MARKS):
            return text[: rule.start()]
    return text


class _Part:
    """One MIME entity: its headers (first value of each, lowercased names) and its raw body."""

    __slots__ = ("_content_type", "body", "depth", "headers", "shown")

    def __init__(self, headers: dict[str, bytes], body: bytes, depth: int) -> None:
        self.headers = headers
        self.body = body
        self.depth = depth
        self._content_type: tuple[str, dict[str, str]] | None = None
        # False for the plain text of a multipart/alternative that has HTML: a mail client
        # shows the HTML, so what the plain part alone says is not what the reader reads.
        self.shown = True

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else _header_text(value)

    def content_type(self) -> tuple[str, dict[str, str]]:
        """(type/subtype, parameters); a missing or malformed type is text/plain, as RFC 2045 says."""
        if self._content_type is None:
            self._content_type = self._parse_content_type()
        return self._content_type

    def _parse_content_type(self) -> tuple[str, dict[str, str]]:
        value = self.header("content-type") or ""
        main, _, rest = value.partition(";")
        words = main.split()
        ctype = words[0].lower() if words else ""
        if ctype.count("/") != 1:
            ctype = "text/plain"
        rest = " ".join(words[1:]) + ";" + rest  # "text/plain charset=x": a missing semicolon
        params: dict[str, str] = {}
        for match in _PARAM.finditer(rest):
            params.setdefault(match.group(1).lower().rstrip("*"), match.group(2) or match.group(3) or "")
        return ctype, params


def _head_end(raw: bytes, start: int, stop: int) -> tuple[int, int] | None:
    """The span of the first empty line in raw[start:stop] (what ``\\r?\\n\\r?\\n`` would match).

    Two substring searches in C: a regex for this pattern has no literal to skip ahead to.
    """
    lf = raw.find(b"\n\n", start, stop)
    crlf = raw.find(b"\n\r\n", start, stop if lf < 0 else lf + 2)  # only an earlier one matters
    newline, end = (crlf, crlf + 3) if crlf >= 0 else (lf, lf + 2)
    if newline < 0:
        return None
    return (newline - 1 if newline > start and raw[newline - 1] == 0x0D else newline), end


def _parse_head(raw: bytes, start: int, depth: int) -> _Part:
    """The headers this module reads, from `start` to the first empty line; the rest is body.

    One regex scan in C instead of a Python loop over header lines: only the few headers that
    give tokens are kept (first occurrence, continuation lines unfolded).
    """
    if raw.startswith(b"\n", start) or raw.startswith(b"\r\n", start):
        return _Part({}, raw[raw.index(b"\n", start) + 1 :], depth)
    stop = start + MAX_HEAD_BYTES
    head_end, body_start = _head_end(raw, start, stop) or (min(len(raw), stop),) * 2
    at_line_start = start == 0 or raw[start - 1] == 0x0A
    if at_line_start and _NOT_HEADER_START.match(raw, start, head_end):  # no header at all
        head_end = body_start = start
    else:
        stray = _NOT_HEADER_LINE.search(raw, start, head_end)
        if stray is not None:
            newline = stray.start()
            head_end, body_start = (newline - 1 if raw[newline - 1] == 0x0D else newline), newline + 1
    first = _FIRST_WANTED_HEADER.match(raw, start, head_end) if at_line_start else None
    later = _NEXT_WANTED_HEADER.finditer(raw, start, head_end)
    headers: dict[str, bytes] = {}
    for match in itertools.chain((first,) if first else (), later):
        name = match.group(1).decode("ascii").lower()
        if name not in headers:
            value = match.group(2)
            headers[name] = (_FOLD.sub(b" ", value) if b"\n" in value else value).strip()
    return _Part(headers, raw[body_start:], depth)


def _subparts(body: bytes, boundary: bytes) -> list[bytes]:
    """The bodies between `--boundary` lines; an unterminated last part runs to the end."""
    delimiter = b"--" + boundary
    parts: list[bytes] = []
    start = -1
    pos = 0
    size = len(body)
    while len(parts) < MAX_PARTS:
        at = body.find(delimiter, pos)
        if at < 0:
            break
        after = at + len(delimiter)
        pos = after
        if (at > 0 and body[at - 1] != 0x0A) or body[after : after + 1] not in _AFTER_DELIMITER:
            continue  # not a delimiter line (mid-line, or a longer boundary that starts alike)
        if start >= 0:
            end = at - 1 if at > 0 else 0
            if end > start and body[end - 1] == 0x0D:
                end -= 1
            parts.append(body[start : max(start, end)])
        if body.startswith(b"--", after):
            return parts
        newline = body.find(b"\n", after)
        start = pos = size if newline < 0 else newline + 1
    if start >= 0 and len(parts) < MAX_PARTS:
        parts.append(body[start:])
    return parts


def _walk(raw: bytes) -> Iterator[_Part]:
    """MIME parts depth-first, at most MAX_PARTS of them and MAX_DEPTH deep; never recursive."""
    stack = [_parse_head(raw, 0, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        if part.depth >= MAX_DEPTH:
            continue
        ctype, params = part.content_type()
        if ctype.startswith("multipart/") and params.get("boundary"):
            boundary = params["boundary"].encode("utf-8", "surrogateescape")
            children = [_parse_head(child, 0, part.depth + 1) for child in _subparts(part.body, boundary)]
            if ctype == "multipart/alternative" and any(c.content_type()[0] == "text/html" for c in children):
                for child in children:
                    child.shown = child.content_type()[0] != "text/plain"
            stack.extend(reversed(children))
        elif ctype == "message/rfc822":
            stack.append(_parse_head(part.body, 0, part.depth + 1))


def _payload(part: _Part, cte: str) -> bytes:
    """The decoded body of a part (base64 and quoted-printable undone, leniently), capped."""
    body = part.body
    if cte == "base64":
        data = body[: MAX_PART_BYTES * 4 // 3 + 4096]
        try:
            return binascii.a2b_base64(data)[:MAX_PART_BYTES]
        except (binascii.Error, ValueError):
            # Broken padding or a truncated line: decode what whole 4-character groups there are.
            clean = _NOT_BASE64.sub(b"", data)
            try:
                return binascii.a2b_base64(clean[: len(clean) // 4 * 4])[:MAX_PART_BYTES]
            except (binascii.Error, ValueError):
                return b""
    if cte == "quoted-printable":
        return binascii.a2b_qp(body[: MAX_PART_BYTES * 2])[:MAX_PART_BYTES]
    return body[:MAX_PART_BYTES]


def _parse_address(value: str) -> tuple[str, str]:
    """`email.utils.parseaddr(value)`; the usual shapes by one regex match instead of its parser."""
    match = _SIMPLE_ADDRESS.fullmatch(value)
    if match is None:
        return email.utils.parseaddr(value)
    if match["bare"] is not None:
        return "", match["bare"]
    # parseaddr joins the words of an unquoted name with single spaces; a quoted one is kept as is.
    name = match["quoted"] if match["quoted"] is not None else " ".join((match["phrase"] or "").split())
    return name, match["angled"]


def _address_tokens(prefix: str, name: str, address: str, out: list[str]) -> str:
    """Tokens for a From/Reply-To address: display-name words and the TLD. Returns the domain.

    No token says a display name is missing: sendmail, cron and scripts send none, and in the
    corpora of 2002 and 2007 that marked spam (from:no-name added +1.3 to +3.0 to local mail)."""
    domain = address.rpartition("@")[2].lower().strip(".>")
    domain = _ARTEFACTS.sub("", domain)
    if name:
        _words(_ARTEFACTS.sub(" ", name), out, prefix + ":", 8)
        if "@" in name:
            out.append(prefix + ":name-has-address")
    reg = registrable(domain) if domain else ""
    if domain:
        out.append(prefix + "tld:" + _token(domain.rpartition(".")[2][:MAX_TOKEN_CHARS]))
        out.append(prefix + "dom:" + _token(reg))
    local = address.partition("@")[0]
    if local and sum(map(str.isdigit, local)) >= 3:
        out.append(prefix + ":digits-in-local")
    return reg


def _url_tokens(urls: Iterable[str], out: list[str], seen: set[str]) -> None:
    for host in urls:
        reg = registrable(_ARTEFACTS.sub("", host))
        if not reg or reg in seen:
            continue
        seen.add(reg)
        if len(seen) > 50:
            return
        out.append("url:" + _token(reg))
        out.append("urltld:" + _token(reg.rpartition(".")[2][:MAX_TOKEN_CHARS]))


def _link_hosts(text: str) -> list[str]:
    """The hosts of the links in lowercased `text`, in order.

    One left-to-right scan of ``(?:https?://|www\\.)(host)``: the earlier of the two patterns'
    next matches is taken, and a match that overlaps it is looked for again after it.
    """
    hosts: list[str] = []
    http, www = _URL_HTTP.search(text), _URL_WWW.search(text)
    while True:
        if http is not None and (www is None or http.start() < www.start()):
            match = http
        elif www is not None:
            match = www
        else:
            return hosts
        hosts.append(match[1])
        end = match.end()
        if http is not None and http.start() < end:
            http = _URL_HTTP.search(text, end)
        if www is not None and www.start() < end:
            www = _URL_WWW.search(text, end)


def _hosts(texts: list[str]) -> list[str]:
    """Link hosts in `texts`, each once, in order of first appearance (a repeat adds no token)."""
    return list(dict.fromkeys(itertools.chain.from_iterable(map(_link_hosts, texts))))


def _unseen_tokens(unseen: str, shown: list[str]) -> list[str]:
    """What the plain alternative says that the shown HTML does not: its words are left out
    (the reader never sees them), and a token says how much of it differs: spam puts a letter's
    worth of ordinary words there for word-counting filters."""
    words: list[str] = []
    _words(unseen, words, "", MAX_WORDS)
    distinct = set(words)
    if len(distinct) < 20:
        return []
    only = len(distinct - set(shown))
    if only >= 0.6 * len(distinct):
        return ["alt:plain-differs", "alt:plain-differs-most"]
    return ["alt:plain-differs"] if only >= 0.2 * len(distinct) else []


def _extract(raw: bytes) -> str:
    head: list[str] = []
    parts = _walk(raw[:MAX_RAW_BYTES])
    message = next(parts)

    raw_subject = message.header("subject") or ""
    subject = _seen(raw_subject)
    list_id = message.header("list-id")
    if list_id is not None:
        subject = _without_list_tag(subject, list_id)
    if subject.strip():
        _words(_ARTEFACTS.sub(" ", subject), head, "subj:", 40)
        letters = "".join(filter(str.isalpha, subject))
        if len(letters) >= 6 and sum(map(str.isupper, letters)) > 0.7 * len(letters):
            head.append("subj:all-caps")
    else:
        head.append("subj:none")
    head.extend(signals.recipient_tokens(message.header("to") or "", subject))
    threaded = message.header("in-reply-to") is not None or message.header("references") is not None
    head.extend(signals.reply_tokens(subject, threaded))

    sender, reply_to = _author(
        message.header("from") or "", message.header("reply-to"), message.header("x-original-from"), list_id
    )
    raw_name = "" if sender is None else sender[0]
    if sender is None:
        head.append("from:list")
        from_domain = ""
    else:
        name, address = _seen(sender[0]), sender[1]
        from_domain = _address_tokens("from", name, address, head)
        head.extend(signals.sender_tokens(name, address, subject))
    if reply_to is not None:
        reply_domain = _address_tokens("replyto", *_parse_address(reply_to), head)
        head.append("replyto:same-domain" if reply_domain == from_domain else "replyto:other-domain")
    mailer = message.header("x-mailer") or message.header("user-agent")
    if mailer is not None:
        _words(mailer, head, "mailer:", 2)
    else:
        head.append("mailer:none")
    message_id = message.header("message-id")
    if message_id is None:
        head.append("msgid:none")
    elif from_domain:
        id_domain = registrable(message_id.rpartition("@")[2].strip(" <>"))
        head.append("msgid:same-domain" if id_domain == from_domain else "msgid:other-domain")

    texts: list[str] = []
    unseen: list[str] = []  # plain alternatives of HTML parts
    html_urls: list[str] = []
    anchors: list[tuple[str, str]] = []  # (href, text shown) of HTML links
    kinds: set[str] = set()
    budget = MAX_TEXT_CHARS
    for part in itertools.chain((message,), parts):
        ctype, params = part.content_type()
        kinds.add("mime:" + _token(ctype))
        if ctype.startswith("multipart/") or ctype == "message/rfc822":
            continue
        charset = params.get("charset", "").strip().lower()
        if charset:
            kinds.add("charset:" + _token(charset))
        cte = "".join((part.header("content-transfer-encoding") or "").split()).lower()
        if cte and cte not in ("7bit", "8bit"):
            kinds.add("cte:" + _token(cte))
        if ctype == "text/plain" and params.get("format", "").strip().lower() == "flowed":
            # RFC 3676 flowed text: what desktop mail clients (Thunderbird, Apple Mail) write and
            # bulk mailers almost never do, a mark of a person's mail client as `mailer:` is.
            kinds.add("fmt:flowed")
        disposition = part.header("content-disposition") or ""
        filename = params.get("name") or _FILENAME.search(disposition)
        if filename:
            name = filename if isinstance(filename, str) else filename.group(1) or filename.group(2) or ""
            kinds.add("attach:" + _token(name.rpartition(".")[2].strip("\"' ").lower()[:10]))
        if budget <= 0 or ctype not in ("text/plain", "text/html"):
            continue
        text = decode_bytes(_payload(part, cte), charset or None)
        if ctype == "text/html" or _SNIFFED_HTML.match(text):
            # What the reader sees: text that CSS or HTML hides is not the message's words
            # (spam hides a letter's worth of ordinary words there); tokens say it was there.
            shown = visible_text(text[: MAX_HTML_CHARS * 4])
            text = shown.text
            if part.shown:  # a plain alternative the client does not show gives its words only
                html_urls.extend(shown.urls)
                anchors.extend(shown.links)
                kinds.update("html:" + tag for tag in shown.tags)
                kinds.update(shown.hidden)
        text = _strip_list_footer(text[:budget])
        budget -= len(text)
        (texts if part.shown else unseen).append(text)

    head.extend(sorted(kinds))
    urls: list[str] = []
    seen: set[str] = set()
    # Lowercased once: the URL and artefact patterns then need no case folding.
    body_text = " ".join(texts).lower()
    if "taint.org" in body_text or "speedy.uwaterloo.ca" in body_text:  # what the pattern needs, sought in C
        body_text = _ARTEFACTS_LOWER.sub(" ", body_text)
    text_hosts = _hosts([" ".join(html_urls).lower(), body_text])
    _url_tokens(text_hosts, urls, seen)
    head.extend(signals.link_tokens([*anchors, *((host, "") for host in text_hosts)], from_domain))
    head.extend(signals.body_tokens(body_text))
    head.extend(signals.invisible_tokens(raw_subject, body_text))
    head.extend(signals.styled_tokens(raw_subject, raw_name, body_text))
    head.extend(signals.spaced_tokens(raw_subject, raw_name, body_text))
    if len(seen) > 50:
        urls.append("url:many")
    if seen and from_domain:
        head.append("url:from-domain" if from_domain in seen else "url:not-from-domain")
    head.extend(urls)
    body: list[str] = []
    _words(body_text, body, "", MAX_WORDS)
    if not body:
        head.append("body:empty")
    if unseen:
        head.extend(_unseen_tokens(" ".join(unseen).lower(), body))
    head.extend(body)
    # Unique tokens: the model looks at presence, and the graph sums over the tokens it gets.
    return " ".join(dict.fromkeys(head))


def message_text(raw: bytes) -> str:
    """The model text of a raw RFC 822 message. Never raises: garbage in, some text out."""
    try:
        return _extract(raw)
    except Exception:  # the library gave up on this message: fall back to its words
        fallback: list[str] = ["parse:failed"]
        # Cannot fail for Latin-1, but this function must not raise whatever happens.
        with contextlib.suppress(Exception):
            _words(raw[:MAX_PART_BYTES].decode("latin-1"), fallback, "", MAX_WORDS)
        return " ".join(dict.fromkeys(fallback))
