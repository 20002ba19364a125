"""Message -> model text: the one function that training and the daemon both use.

The model sees a message as a line of lowercased, space-separated tokens: header-derived tokens
with a prefix (``from:john``, ``fromtld:ru``, ``url:example.com``, ``mime:text/html``,
``subj:free``), then the words of the decoded text parts. The ONNX graph only splits on spaces
and looks tokens up, so all string work happens here, once, in Python, with capped cost.

What is deliberately left out, because it leaks the label inside the training corpora and means
nothing on other mail: Received headers (relay hosts), recipients (To/Cc; TREC has one recipient
domain), the obfuscated ``spamassassin.taint.org`` domain, and mailing-list footers (they mark ham
in the public corpora and nowhere else).

Bump TEXT_VERSION whenever the tokens produced for a message change: a model records the version
it was trained on and the loader refuses a model whose version this code does not produce.
"""

from __future__ import annotations

import codecs
import contextlib
import email.header
import email.parser
import email.policy
import email.utils
import re
from collections.abc import Iterator
from email.message import Message as EmailMessage
from html.parser import HTMLParser
from typing import Final

TEXT_VERSION: Final[str] = "1"

# Caps: a 30 MB message costs what its first MAX_RAW_BYTES cost.
MAX_RAW_BYTES: Final = 256 * 1024  # bytes of the raw message that are parsed at all
MAX_PART_BYTES: Final = 64 * 1024  # decoded bytes kept per text part
MAX_HTML_CHARS: Final = 48 * 1024  # HTML characters fed to the HTML parser per part
MAX_TEXT_CHARS: Final = 96 * 1024  # text characters tokenised over all parts
MAX_PARTS: Final = 64  # MIME parts looked at
MAX_DEPTH: Final = 16  # multipart nesting followed
MAX_WORDS: Final = 2000  # body word tokens emitted
MAX_TOKEN_CHARS: Final = 24

# Corpus artefacts: obfuscated or single-recipient domains that leak the label.
_ARTEFACTS: Final = re.compile(r"spamassassin\.taint\.org|speedy\.uwaterloo\.ca|taint\.org", re.IGNORECASE)
_WORD: Final = re.compile(r"[^\W_]+|[$€£!]")
_URL: Final = re.compile(r"(?:https?://|www\.)([a-z0-9](?:[a-z0-9.-]{0,252}))", re.IGNORECASE)
_FOOTER_RULE: Final = re.compile(r"^[ \t]*[_=-]{5,}[ \t]*$", re.MULTILINE)
_FOOTER_MARKS: Final = ("mailing list", "listinfo", "mailman", "yahoogroups", "groups.yahoo", "list-request")
_SECOND_LEVEL: Final = frozenset({"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or"})
_SKIP_TAGS: Final = frozenset({"script", "style", "head", "title"})
_COUNTED_TAGS: Final = frozenset({"img", "a", "table", "font", "form", "input", "iframe", "map", "area", "b"})


class _HtmlText(HTMLParser):
    """Collects visible text, link targets and a few telling tag names from HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _COUNTED_TAGS:
            self.tags.add(tag)
        for name, value in attrs:
            if value and name in ("href", "src", "action"):
                self.urls.append(value)
        if tag in ("br", "p", "div", "td", "tr", "li"):
            self.text.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self._skip > 0:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset; unknown or broken charsets fall back to UTF-8, then Latin-1."""
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


def _header_text(value: object) -> str:
    """A header value as readable text: RFC 2047 words decoded, raw 8-bit bytes read as UTF-8."""
    text = str(value)
    if "=?" in text:
        try:
            pieces = email.header.decode_header(text)
            text = "".join(
                _decode_bytes(piece, charset) if isinstance(piece, bytes) else piece
                for piece, charset in pieces
            )
        except Exception:  # broken encoded words: keep the raw text
            pass
    # compat32 keeps undecodable header bytes as surrogate escapes.
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _token(text: str) -> str:
    """`text` as one token: no whitespace (the graph splits on it), valid UTF-8, bounded."""
    return "".join(text.split())[:40].encode("utf-8", "replace").decode("utf-8")


def _registrable(host: str) -> str:
    """The registrable part of a host name: example.com, example.co.uk; "ip" for addresses."""
    host = host.strip(".").lower()
    labels = [label for label in host.split(".") if label]
    if not labels:
        return ""
    if all(label.isdigit() for label in labels):
        return "ip"
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _long_word(word: str) -> list[str]:
    if word.isdigit():
        return [f"num{min(len(word), 20)}"]
    if word.isascii():
        return [word[:MAX_TOKEN_CHARS]]
    # Scripts without spaces (CJK): pairs of characters, as a cheap stand-in for words.
    return [word[i : i + 2] for i in range(0, min(len(word), 64), 2)]


def _words(text: str, out: list[str], prefix: str, limit: int) -> None:
    """Append about `limit` normalised word tokens of `text` (lowercased) to `out`."""
    # Words average under 8 characters; scanning a bounded prefix keeps the cost bounded.
    words = _WORD.findall(text[: limit * 16].lower())[:limit]
    for word in words:
        if len(word) <= 3 or (len(word) <= MAX_TOKEN_CHARS and not word.isdigit()):
            out.append(prefix + word)
        else:
            out.extend(prefix + piece for piece in _long_word(word))


def _strip_list_footer(text: str) -> str:
    """Cut a trailing mailing-list footer (a rule line followed by list boilerplate)."""
    tail_start = max(0, len(text) - 2000)
    for rule in reversed(list(_FOOTER_RULE.finditer(text, tail_start))):
        tail = text[rule.end() : rule.end() + 800].lower()
        if any(mark in tail for mark in _FOOTER_MARKS):
            return text[: rule.start()]
    return text


def _walk(message: EmailMessage) -> Iterator[tuple[int, EmailMessage]]:
    """MIME parts depth-first, iteratively, at most MAX_PARTS of them and MAX_DEPTH deep."""
    stack: list[tuple[int, EmailMessage]] = [(0, message)]
    seen = 0
    while stack and seen < MAX_PARTS:
        depth, part = stack.pop()
        seen += 1
        yield depth, part
        payload = part.get_payload()
        if isinstance(payload, list) and depth < MAX_DEPTH:
            stack.extend((depth + 1, child) for child in reversed(payload) if isinstance(child, EmailMessage))


def _address_tokens(prefix: str, value: str, out: list[str]) -> str:
    """Tokens for a From/Reply-To address: display-name words and the TLD. Returns the domain."""
    name, address = email.utils.parseaddr(value)
    domain = address.rpartition("@")[2].lower().strip(".>")
    domain = _ARTEFACTS.sub("", domain)
    if name:
        _words(_ARTEFACTS.sub(" ", name), out, prefix + ":", 8)
        if "@" in name:
            out.append(prefix + ":name-has-address")
    else:
        out.append(prefix + ":no-name")
    if domain:
        out.append(prefix + "tld:" + _token(domain.rpartition(".")[2][:MAX_TOKEN_CHARS]))
    local = address.partition("@")[0]
    if local and sum(c.isdigit() for c in local) >= 3:
        out.append(prefix + ":digits-in-local")
    return _registrable(domain) if domain else ""


def _url_tokens(urls: Iterator[str], out: list[str], seen: set[str]) -> None:
    for host in urls:
        reg = _registrable(_ARTEFACTS.sub("", host))
        if not reg or reg in seen:
            continue
        seen.add(reg)
        if len(seen) > 50:
            return
        out.append("url:" + _token(reg))
        out.append("urltld:" + _token(reg.rpartition(".")[2][:MAX_TOKEN_CHARS]))


def _hosts(texts: list[str]) -> Iterator[str]:
    for text in texts:
        for match in _URL.finditer(text):
            yield match.group(1)


def _extract(raw: bytes) -> str:
    head: list[str] = []
    parser = email.parser.BytesParser(policy=email.policy.compat32)
    message = parser.parsebytes(raw[:MAX_RAW_BYTES])

    subject = _header_text(message.get("Subject", ""))
    if subject.strip():
        _words(_ARTEFACTS.sub(" ", subject), head, "subj:", 40)
        letters = [c for c in subject if c.isalpha()]
        if len(letters) >= 6 and sum(c.isupper() for c in letters) > 0.7 * len(letters):
            head.append("subj:all-caps")
    else:
        head.append("subj:none")

    from_domain = _address_tokens("from", _header_text(message.get("From", "")), head)
    reply_to = message.get("Reply-To")
    if reply_to is not None:
        reply_domain = _address_tokens("replyto", _header_text(reply_to), head)
        head.append("replyto:same-domain" if reply_domain == from_domain else "replyto:other-domain")
    mailer = message.get("X-Mailer") or message.get("User-Agent")
    if mailer is not None:
        _words(_header_text(mailer), head, "mailer:", 2)
    else:
        head.append("mailer:none")
    if message.get("Message-ID") is None:
        head.append("msgid:none")

    texts: list[str] = []
    html_urls: list[str] = []
    kinds: set[str] = set()
    budget = MAX_TEXT_CHARS
    for depth, part in _walk(message):
        ctype = part.get_content_type()
        kinds.add("mime:" + _token(ctype))
        if depth == 0 and part.is_multipart():
            continue
        charset = part.get_content_charset()
        if charset:
            kinds.add("charset:" + _token(charset))
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte and cte not in ("7bit", "8bit"):
            kinds.add("cte:" + _token(cte))
        filename = part.get_filename()
        if filename:
            kinds.add("attach:" + _token(str(filename).rpartition(".")[2].lower()[:10]))
        if part.is_multipart() or budget <= 0 or not ctype.startswith("text/"):
            continue
        if filename and ctype not in ("text/plain", "text/html"):
            continue
        try:
            data = part.get_payload(decode=True)
        except Exception:  # a payload the library cannot decode: skip the part, keep the rest
            continue
        if not isinstance(data, bytes):
            continue
        text = _decode_bytes(data[:MAX_PART_BYTES], charset)
        if ctype == "text/html" or (ctype == "text/plain" and text.lstrip()[:6].lower() == "<html>"):
            html = _HtmlText()
            try:
                html.feed(text[:MAX_HTML_CHARS])
                html.close()
            except Exception:  # a parser assertion on hostile markup: keep what was collected
                pass
            text = "".join(html.text)
            html_urls.extend(html.urls)
            kinds.update("html:" + tag for tag in html.tags)
        text = _strip_list_footer(text[:budget])
        budget -= len(text)
        texts.append(text)

    head.extend(sorted(kinds))
    urls: list[str] = []
    seen: set[str] = set()
    _url_tokens(_hosts([*html_urls, *texts]), urls, seen)
    if len(seen) > 50:
        urls.append("url:many")
    head.extend(urls)
    body: list[str] = []
    body_text = _ARTEFACTS.sub(" ", " ".join(texts))
    _words(body_text, body, "", MAX_WORDS)
    if not body:
        head.append("body:empty")
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
