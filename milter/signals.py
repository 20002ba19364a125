"""Signals that outlive an era: sender and link tricks as ``sig:`` tokens for message->text.

Words and domains change with every wave of spam; the tricks that make a phishing message work
do not: a display name that names a brand the From domain does not belong to, a look-alike
letter in that name, a link whose text shows one domain while it goes to another. Each is a
token here; the model weighs them like any other.

Everything is a pure function of its arguments: the tables (Public Suffix List, Unicode's
confusables, the brand list in milter/data/brands.txt) load once, on first use, from files that
ship with the package; nothing here touches the network. None of the functions raises on
garbage, and their cost is bounded by the caps below.

Tokens:

- ``sig:name-brand-mismatch``: the display name names a brand the From domain does not belong
  to ("PayPal Service" <info@secure-mail-xy.ru>);
- ``sig:name-address-mismatch``: the display name holds an address or domain of another
  registrable domain than the From address ("support@paypal.com" <x@evil.ru>);
- ``sig:subject-brand-mismatch``: the subject names a brand (not one marked as an everyday
  word) the From domain does not belong to;
- ``sig:confusable-brand``: a display-name or subject word reads as a brand but is spelled
  otherwise: its TR39 skeleton, or its letters once accents and compatibility forms are
  dropped, equal the brand's (Paypal with a Cyrillic a, ``WaImart`` with a capital I, PayPal
  in mathematical bold letters, ``amaz0n``);
- ``sig:mixed-script``: a display-name or subject word mixes Latin letters with Cyrillic,
  Greek, Armenian or Cherokee ones; ``sig:body-mixed-script`` the same in the body text;
- ``sig:link-text-domain-mismatch``: a link whose text shows a domain or URL of another
  registrable domain than its target (targets on the From domain, click trackers, link
  rewriters and shorteners excepted);
- ``sig:link-ip``, ``sig:link-punycode``, ``sig:link-shortener``, ``sig:link-userinfo``,
  ``sig:link-port``: a link to an IP address, an IDN host, a URL shortener, with a user part
  (``http://paypal.com@evil.ru/``), to a port other than 80 and 443;
- ``sig:link-brand-host``: a link host whose subdomain labels name a brand the registrable
  domain does not belong to (``paypal.com.secure-login.ru``);
- ``sig:link-javascript``, ``sig:link-data-uri``: ``javascript:`` and non-image ``data:`` links;
- ``sig:link-ipfs``: a link to an IPFS gateway (an ``ipfs`` or ``ipns`` label or hyphen-part in
  the host, or a path that starts ``/ipfs/`` or ``/ipns/``): a page no one can take down;
- ``sig:link-free-host``: a link to a free static host, site builder, tunnel or page proxy where
  anyone publishes under the service's own domain (``*.web.app``, ``*.pages.dev``,
  ``translate.goog``); the ones list talk links to every day (github.io, wordpress.com, S3) and
  office file shares are not among them;
- ``sig:link-open-redirect``: a link through a big site's open redirect (Google's ``/url?q=``
  and ``/amp/s/``, Bing's ``/ck/a``, ``l.facebook.com``); its target is read as a link too;
- ``sig:recipient-in-subject``: the subject holds one of the To addresses ("jane@example.org,
  your mailbox is full": Rspamd's TO_IN_SUBJECT). People do not write their correspondent's
  address into a subject; phishing puts the victim's there to look addressed to them.
- ``sig:fake-reply``: the subject says the message answers another ("Re:", "AW:", "回复:") and
  no In-Reply-To or References field says which (SpamAssassin's and Rspamd's FAKE_REPLY).
- (no token) words that mix Latin letters with look-alike letters of another script are read
  with the Latin letters they look like (`fold_lookalikes`; message->text's words only, the
  tokens above still read the letters as written);
- ``sig:spaced-letters``: a word of four or more letters written with a space between each
  (``V e r i f y``), which message->text reads as the word (`join_spaced`);
- ``sig:styled-letters``: a word of three or more letters in the subject, display name or text
  written in letters of another Unicode block that mail clients show as ordinary letters in
  another font: mathematical bold, italic, script or sans-serif (FREE in U+1D405...), circled,
  parenthesised, squared, small capitals (``ꜰʀᴇᴇ``). message->text reads their words as the
  plain letters (`fold_styled`); fullwidth forms are folded too but give no token, since
  Chinese and Japanese text writes Latin letters and digits so.

Choices:

- Registrable domains come from the Public Suffix List's ICANN section, as the publicsuffixlist
  package ships it (it fetches nothing unless asked to: no source is given here). Without the
  private section, blogspot.com, github.io or r2.dev stay one domain each: free hosting is a
  token that means something, one site of it is not.
- Skeletons are Unicode's (UTS #39), computed here from confusables.txt, vendored compact in
  milter/data/confusables.txt: neither package on PyPI computes one (confusable-homoglyphs
  answers "is this character confusable", confusables lists every normalisation it can think
  of and adds its own pairs). Beyond TR39, a word that mixes letters and digits is also read
  with the digits as letters (0 o, 1 l or i, 3 e, 4 a, 5 s, 7 t), and a brand's spellings are
  compared in their usual cases (paypal, Paypal, PayPal, PAYPAL), since a skeleton keeps case.
- A display name "X via List" (mailing lists, Google Groups, DocuSign, LinkedIn send on behalf
  of a person X) is judged by List alone for brands; a look-alike spelling counts anywhere.
- Mixed script is a Latin letter next to a look-alike script's one (Cyrillic, Greek, Armenian,
  Cherokee), so Greek or Russian names, Japanese with Latin (Tシャツ) and Greek units (10μs)
  are not mixed; "Reading" typed with a Ukrainian i (U+0456) is.

Cost, measured on the corpora (2 shared cores): all three functions together, median 30 µs a
message, 90th percentile 70 µs; the links are the bulk, about 1 µs each, MAX_LINKS at most.
The tables load on first use (about 90 ms); load_tables() loads them ahead, at a worker's start.
"""

from __future__ import annotations

import base64
import functools
import itertools
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Final, NamedTuple

from publicsuffixlist import PublicSuffixList

MAX_INPUT_CHARS: Final = 2048  # of a host, URL, display name or subject looked at
MAX_RECIPIENTS: Final = 16  # addresses of a To field looked at
MAX_LINKS: Final = 100  # links looked at per message
MAX_WORDS: Final = 40  # display-name and subject words looked at
MAX_BODY_CHARS: Final = 96 * 1024
MAX_MIXED_WORDS: Final = 512  # words of mixed scripts folded per text


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Hosts whose whole business is redirecting: their links show other domains by design.
SHORTENERS: Final = _names(
    "bit.ly bitly.com tinyurl.com t.co goo.gl ow.ly is.gd v.gd buff.ly rebrand.ly cutt.ly shorturl.at"
    " tiny.cc rb.gy s.id t.ly lnkd.in bit.do shorte.st adf.ly ouo.io bc.vc soo.gd clck.ru u.to x.co"
    " qrco.de tr.im urlz.fr short.gy bl.ink shrtco.de tiny.one 2u.pw"
    ""
)
# Click trackers of mail senders and the link rewriters of mail security gateways (Microsoft's
# Safe Links, Proofpoint, Mimecast, Barracuda), by registrable domain: a newsletter's link
# text shows the shop while the link goes through these.
_REDIRECTORS: Final = _names(
    "outlook.com proofpoint.com urldefense.com mimecast.com mimecastprotect.com cudasvc.com"
    " sendgrid.net list-manage.com mailchimp.com mandrillapp.com rs6.net exacttarget.com sailthru.com"
    " hubspotlinks.com hubspot.com aweber.com createsend1.com cmail19.com cmail20.com klclick.com"
    " klclick1.com klaviyo.com awstrack.me mjt.lu mailjet.com sparkpostmail.com mlsend.com"
    " google.com linkedin.com facebook.com substack.com mailgun.org emltrk.com"
    ""
)
# Free static hosts, site builders, tunnels and page proxies, by registrable domain (ICANN
# section) or, for parts of a bigger domain, by host suffix: anyone publishes a page there in a
# minute, under a name no filter can block. Left out for what list ham links to every day:
# github.io, gitlab.io, wordpress.com, blogspot.com, S3 and storage.googleapis.com, and office
# file shares (Dropbox, SharePoint, OneDrive), which are in every business mailbox.
_FREE_HOSTS: Final = _names(
    "web.app firebaseapp.com pages.dev workers.dev r2.dev netlify.app vercel.app herokuapp.com"
    " onrender.com glitch.me repl.co replit.app replit.dev surge.sh 000webhostapp.com weebly.com"
    " weeblysite.com wixsite.com godaddysites.com square.site webflow.io framer.app framer.website"
    " carrd.co ngrok.io ngrok.app ngrok-free.app trycloudflare.com translate.goog"
    ""
)
_FREE_HOST_SUFFIXES: Final = (
    ".firebasestorage.googleapis.com",
    ".blob.core.windows.net",
    ".web.core.windows.net",
    ".sites.google.com",
)
# Open redirects of big sites: (the registrable domain's name, under any suffix: google.de as
# google.com; the host or "" for any; path prefixes). The target is in the query's
# q/url/u/to/target parameter, or (Google AMP) the rest of the path.
_OPEN_REDIRECTS: Final = (
    ("google", "", ("/url?", "/amp/s/")),
    ("bing", "", ("/ck/a?",)),
    ("facebook", "l.facebook.com", ("/",)),
    ("facebook", "lm.facebook.com", ("/",)),
    ("instagram", "l.instagram.com", ("/",)),
    ("youtube", "", ("/redirect?",)),
    ("linkedin", "", ("/slink?",)),
)
_TARGET_PARAMS: Final = ("q", "url", "u", "to", "target")
_IPFS_LABEL: Final = re.compile(r"(?:^|[.-])ip[fn]s(?:[.-]|$)")
# Words a display name may hold beside a brand that is also an everyday word ("Apple Support").
_GENERIC_WORDS: Final = _names(
    "service services support team security secure alert alerts account accounts customer customers care"
    " online bank banking notification notifications notice no reply noreply donotreply do not billing"
    " payment payments center centre help desk helpdesk info information official verification verify"
    " update updates store shop inc ltd llc corp co com id mail email message messages delivery shipping"
    " express tracking the fraud prevention protection member members rewards card cards app department"
    " dept admin administrator system webmail mailbox storage cloud login access wallet pay premium plus"
    " prime us uk usa ca de fr au group international global mobile web direct staff agent contact"
    " your my from by and of for en parcel parcels package packages order orders financial"
    ""
)
# Greek letters that name units and quantities in ordinary text (μs, kΩ, Δt) are not counted.
_LATIN_LETTERS: Final = "a-zA-Z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_GREEK_QUANTITIES: Final = "ΓΔΘΛΞΠΣΦΨΩθλμπσςφψω"
_LOOKALIKE_LETTERS: Final = (
    "".join(chr(c) for c in range(0x370, 0x400) if chr(c).isalpha() and chr(c) not in _GREEK_QUANTITIES)
    + "\u0400-\u052f\u1c80-\u1c8f\u2de0-\u2dff\ua640-\ua69f"  # Cyrillic
    + "\u0531-\u0556\u0561-\u0587"  # Armenian
    + "\u13a0-\u13f5\uab70-\uabbf"  # Cherokee
)
_MIXED: Final = re.compile(
    f"[{_LATIN_LETTERS}][{_LOOKALIKE_LETTERS}]|[{_LOOKALIKE_LETTERS}][{_LATIN_LETTERS}]"
)
_LOOKALIKE: Final = re.compile(f"[{_LOOKALIKE_LETTERS}]")
_WORD: Final = re.compile(r"[^\W_]+")
_SCHEME: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]{0,15}:")
# A link: its scheme, the // before an authority, and the authority (up to the path).
_HREF: Final = re.compile(r"\s*(?:([a-zA-Z][a-zA-Z0-9+.-]{0,15}):)?(//)?([^/?#\\\s]*)")
_AUTHORITY_END: Final = re.compile(r"[/?#\\\s]")
_DOTS: Final = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_HEX_OR_DIGITS: Final = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_IPV6: Final = re.compile(r"[0-9a-f:.]+")
# A domain or URL shown as text: an address, a URL, www.-something, or a name with a known suffix.
_SHOWN_DOMAIN: Final = re.compile(
    r"(?:[a-z][a-z0-9+.-]{0,15}://(?:[^\s/?#@]*@)?|[\w.+-]+@)?"
    r"((?:[\w](?:[\w-]{0,62})\.)+[\w-]{2,63})(?![\w-])",
    re.IGNORECASE,
)
_COMMON_TLDS: Final = _names(
    "com net org info biz edu gov mil int io ai app dev xyz top online site shop store club live email"
    " cloud tech pro name mobi asia link click icu vip work world today support services bank"
)
_MARKS: Final = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_EMBEDDED_ADDRESS: Final = re.compile(r"[\w.+-]*@[\w.-]+")
# An address in lowercased text, of ASCII characters only: a subject runs Chinese words into one
# ("资料大全jane@example.org"), which \w would take for the address's first letters.
_ASCII_ADDRESS: Final = re.compile(r"[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9.-]+")
_DIGIT_LEET: Final = str.maketrans("013457", "oleast")
# A loose key that look-alike spellings of a brand share with it, cheap enough for every word:
# digits as the letters they stand for, i and | as l, rn as m.
_LOOSE: Final = str.maketrans("013457|i", "oleastll")
_LOOSE_BYTES: Final = bytes.maketrans(b"013457|i", b"oleastll")
_ASCII_WORD_BYTES: Final = bytes(c if chr(c).isalnum() and c < 128 else 32 for c in range(256))
_DIGIT_LEET_I: Final = str.maketrans("013457", "oieast")


def load_tables() -> None:
    """Load the Public Suffix List, the confusables and the brands now instead of on first use."""
    _psl()
    _confusables()
    _brands()
    _styled()


# -- registrable domains -------------------------------------------------------------------------


@functools.cache
def _psl() -> PublicSuffixList:
    # The list the package ships (no source given: it never fetches one). ICANN suffixes only:
    # with the private ones, every blogspot.com, github.io or r2.dev site would be a registrable
    # domain of its own; as one domain the free hosting is a token that means something.
    return PublicSuffixList(only_icann=True)


def _ascii_host(host: str) -> str:
    """`host` with IDNA A-labels (xn--) for its Unicode labels; labels IDNA refuses stay as they are."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        labels = []
        for label in host.split("."):
            try:
                labels.append(label.encode("idna").decode("ascii") if not label.isascii() else label)
            except UnicodeError:
                labels.append(label)
        return ".".join(labels)


@functools.lru_cache(maxsize=8192)
def url_host(text: str) -> str:
    """The host of a URL, an authority, an address or a host name: lowercase, IDNA A-labels, no
    user part, port or trailing dot ("" when there is none). ``http://paypal.com@evil.ru:8080/``
    -> ``evil.ru``; ``[2001:db8::1]`` stays bracketed."""
    text = text[:MAX_INPUT_CHARS].strip()
    scheme = _SCHEME.match(text)
    if scheme is not None and text.startswith("//", scheme.end()):
        text = text[scheme.end() + 2 :]
    elif text.startswith("//"):
        text = text[2:]
    end = _AUTHORITY_END.search(text)
    authority = text[: end.start()] if end is not None else text
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        return host.partition("]")[0].lower() + "]"
    if host.count(":") == 1:
        host = host.partition(":")[0]
    elif ":" in host and _IPV6.fullmatch(host.lower()):
        return "[" + host.lower() + "]"
    if "%" in host:
        host = urllib.parse.unquote(host)
    host = host.translate(_DOTS).lower()
    if "." in host:
        host = ".".join(label for label in host.split(".") if label)
    if not host.isascii():
        host = _ascii_host(host).lower()
    return host[:253]


def _is_ip(host: str) -> bool:
    # What browsers read as an address: bracketed IPv6, or a last label of digits or hex
    # (1.2.3.4, 3232235777, 0x7f.1).
    return host.startswith("[") or _HEX_OR_DIGITS.fullmatch(host.rpartition(".")[2]) is not None


@functools.lru_cache(maxsize=8192)
def registrable(host: str) -> str:
    """The registrable domain of a host (or URL, or address) by the Public Suffix List's ICANN
    section: ``mail.example.co.uk`` -> ``example.co.uk``; "ip" for IP literals, "" for nothing.
    A name that is itself a public suffix, or has an unknown one-label suffix, is kept whole."""
    try:
        name = url_host(host)
        if not name:
            return ""
        if _is_ip(name):
            return "ip"
        return _psl().privatesuffix(name) or name
    except Exception:  # a table or codec refused this text: it has no registrable domain
        return ""


def same_registrable(a: str, b: str) -> bool:
    """Whether two hosts, URLs or addresses have the same, non-empty registrable domain."""
    first = registrable(a)
    return bool(first) and first == registrable(b)


@functools.lru_cache(maxsize=4096)
def _has_public_suffix(host: str) -> bool:
    """Whether `host` ends in a suffix the list knows, with a name in front of it."""
    try:
        return _psl().privatesuffix(host, accept_unknown=False) is not None
    except Exception:
        return False


# -- skeletons -----------------------------------------------------------------------------------


@functools.cache
def _confusables() -> dict[int, str]:
    table: dict[int, str] = {}
    text = resources.files("milter").joinpath("data/confusables.txt").read_text("utf-8")
    for line in text.splitlines():
        if line and line[0] != "#":
            source, _, target = line.partition(";")
            table[int(source, 16)] = "".join(chr(int(code, 16)) for code in target.split())
    return table


@functools.cache
def _ascii_confusables() -> dict[int, str]:
    return {code: target for code, target in _confusables().items() if code < 128}


def skeleton(text: str) -> str:
    """The Unicode TR39 skeleton of `text`: NFD, each character by its confusable prototype,
    NFD again. Two strings that look alike have the same skeleton (``paypa1`` and ``paypal``;
    Paypal with a Cyrillic a and ``Paypal``; ``rn`` and ``m`` both become ``rn``)."""
    text = text[:MAX_INPUT_CHARS]
    if text.isascii():
        return text.translate(_ascii_confusables())
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", text).translate(_confusables()))


def _fold(text: str) -> str:
    """Lowercase, compatibility forms (mathematical bold, fullwidth, ligatures) as their letters,
    accents dropped."""
    if text.isascii():
        return text.lower()
    return _MARKS.sub("", unicodedata.normalize("NFKD", text.casefold()))


def is_mixed_script(text: str) -> bool:
    """Whether a word of `text` has a Latin letter next to a Cyrillic, Greek, Armenian or
    Cherokee one (their look-alikes of Latin letters are what spoofing uses)."""
    return not text.isascii() and _MIXED.search(text) is not None


# -- brands --------------------------------------------------------------------------------------


class Brand(NamedTuple):
    name: str  # as spelled in the list
    key: str  # letters and digits, folded: "wellsfargo"
    weak: bool  # an everyday word as well: counts only beside generic words
    domains: frozenset[str]  # its own registrable domains beyond those that contain the key
    others: frozenset[str]  # domains that contain the key but are not the brand's


class _Brands(NamedTuple):
    by_key: dict[str, Brand]
    literal: frozenset[str]  # the spellings that are the brand's own, casefolded and joined
    by_skeleton: dict[str, Brand]  # skeletons of the spellings in their usual cases
    first_words: frozenset[str]  # folded first words of brands of more than one word
    loose: frozenset[bytes]  # loose keys (of 3 characters or more) of the brands


def _loose(folded: str) -> str:
    return folded.translate(_LOOSE).replace("rn", "m")


def _key(text: str) -> str:
    return _fold("".join(_WORD.findall(text)))


@functools.cache
def _brands() -> _Brands:
    by_key: dict[str, Brand] = {}
    literal: set[str] = set()
    by_skeleton: dict[str, Brand] = {}
    first_words: set[str] = set()
    text = resources.files("milter").joinpath("data/brands.txt").read_text("utf-8")
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] == "#":
            continue
        spelling, _, domains = line.partition("|")
        weak = spelling.startswith("~")
        spelling = spelling.lstrip("~").strip()
        words = _WORD.findall(spelling)
        listed = domains.split()
        own = frozenset(d for d in listed if d[0] != "!")
        brand = Brand(spelling, _key(spelling), weak, own, frozenset(d[1:] for d in listed if d[0] == "!"))
        by_key[brand.key] = brand
        joined = "".join(words)
        literal.update((joined.casefold(), brand.key))
        if len(words) > 1:
            first_words.add(_fold(words[0]))
        title = "".join(word[:1].upper() + word[1:].lower() for word in words)
        for variant in (joined, joined.lower(), joined.upper(), title, joined.capitalize()):
            by_skeleton.setdefault(skeleton(variant), brand)
    loose = frozenset(_loose(key).encode() for key in by_key if len(key) >= 3)
    return _Brands(by_key, frozenset(literal), by_skeleton, frozenset(first_words), loose)


def belongs(brand: Brand, domain: str) -> bool:
    """Whether registrable `domain` is the brand's: its label in front of the public suffix holds
    the brand's key (a short key as a whole hyphen-separated part) and the brand does not list it
    as another's (!onmicrosoft.com), or the brand lists it as its own."""
    if domain in brand.domains:
        return True
    if domain in brand.others:
        return False
    label = domain.partition(".")[0]
    if len(brand.key) <= 4:
        return brand.key in label.split("-")
    return brand.key in label.replace("-", "")


def _match(raw: str, brands: _Brands) -> tuple[Brand | None, bool]:
    """The brand that `raw` (letters and digits of one or more words, joined) reads as, and
    whether it is spelled otherwise than the brand spells itself."""
    folded = _fold(raw)
    brand = brands.by_key.get(folded)
    if brand is not None:
        return brand, raw.casefold() not in brands.literal
    if len(raw) < 2 or len(raw) > 40:
        return None, False
    variants = [raw]
    if not raw.isalpha() and any(c.isdigit() for c in raw):  # a leet spelling: amaz0n, paypa1
        variants += [raw.translate(_DIGIT_LEET), raw.translate(_DIGIT_LEET_I)]
    for variant in variants:
        shape = skeleton(variant)
        brand = brands.by_skeleton.get(shape) or brands.by_key.get(_fold(shape))
        if brand is not None:
            return brand, True
    return None, False


def _brand_mentions(text: str, brands: _Brands) -> list[tuple[Brand, bool, list[str]]]:
    """(brand, confusable, the text's other words) for each brand that `text` names."""
    text = text[:MAX_INPUT_CHARS]
    found: list[tuple[Brand, bool, list[str]]] = []
    if not _names_a_brand(text, brands):
        return found
    words = _WORD.findall(text)[:MAX_WORDS]
    i = 0
    while i < len(words):
        word = words[i]
        if not _may_be_brand(word, brands):
            i += 1
            continue
        folded = _fold(word)
        if folded in brands.first_words or (
            not word.isascii() and _fold(skeleton(word)) in brands.first_words
        ):
            spans = [3, 2, 1]
        elif folded in _GENERIC_WORDS:
            i += 1
            continue
        else:
            spans = [1]
        for span in spans:
            if i + span > len(words):
                continue
            brand, confusable = _match("".join(words[i : i + span]), brands)
            if brand is not None:
                found.append((brand, confusable, words[:i] + words[i + span :]))
                i += span - 1
                break
        i += 1
    return found


def _names_a_brand(text: str, brands: _Brands) -> bool:
    """Whether `text` may name a brand or a look-alike of one: the cheap test, by C string and
    set operations, that spares most texts the word-by-word one in _brand_mentions."""
    if text.isascii():
        low = text.lower().encode("ascii")
        words = low.translate(_ASCII_WORD_BYTES).decode("ascii").split()
        loose = low.translate(_LOOSE_BYTES).translate(_ASCII_WORD_BYTES).replace(b"rn", b"m").split()
    else:
        folded = _fold(skeleton(text))
        words = _WORD.findall(folded)
        loose = [word.encode("utf-8") for word in _WORD.findall(_loose(folded))]
    if not brands.by_key.keys().isdisjoint(words) or not brands.loose.isdisjoint(loose):
        return True
    if brands.first_words.isdisjoint(words):
        return False
    pairs = [a + b for a, b in itertools.pairwise(words)]
    triples = [a + b for a, b in zip(pairs, words[2:], strict=False)]
    return not brands.by_key.keys().isdisjoint(pairs + triples)


def _may_be_brand(word: str, brands: _Brands) -> bool:
    """`_names_a_brand` for one word, or the first word of a brand's name."""
    folded = word.lower() if word.isascii() else _fold(skeleton(word))
    return folded in brands.by_key or folded in brands.first_words or _loose(folded).encode() in brands.loose


def _only_generic(words: Iterable[str]) -> bool:
    return all(_fold(word) in _GENERIC_WORDS or word.isdigit() for word in words)


_VIA: Final = re.compile(r"\bvia\b", re.IGNORECASE)


def sender_tokens(display_name: str, address: str, subject: str) -> list[str]:
    """``sig:`` tokens for the From header's display name and address and the Subject.

    A display name "X via Foo" (mailing lists, Google Groups, DocuSign, LinkedIn send on behalf
    of a person X) is judged by Foo alone."""
    try:
        return _sender_tokens(display_name[:MAX_INPUT_CHARS], address[:MAX_INPUT_CHARS], subject)
    except Exception:  # never seen; a token function must not take the message down with it
        return []


def _sender_tokens(display_name: str, address: str, subject: str) -> list[str]:
    out: list[str] = []
    subject = subject[:MAX_INPUT_CHARS]
    domain = registrable(address.rpartition("@")[2]) if "@" in address else ""
    name = display_name
    via = list(_VIA.finditer(name))
    if via:
        name = name[via[-1].end() :]
    brands = _brands()
    confusable = False
    if name and not name.isspace():
        # An address in the name is the next test's: "Jane (jane@gmail.com)" does not name Gmail.
        named = _EMBEDDED_ADDRESS.sub(" ", name) if "@" in name else name
        for brand, odd, others in _brand_mentions(named, brands):
            confusable |= odd
            if domain and not (brand.weak and not _only_generic(others)) and not belongs(brand, domain):
                out.append("sig:name-brand-mismatch")
                break
        if domain and ("." in name) and _name_domain_differs(name, domain):
            out.append("sig:name-address-mismatch")
    if via:  # the person's part of the name, for look-alike brands only
        confusable |= any(odd for _, odd, _ in _brand_mentions(display_name[: via[-1].start()], brands))
    if subject and not subject.isspace():
        for brand, odd, _ in _brand_mentions(subject, brands):
            confusable |= odd
            if brand.weak:
                continue
            if domain and not belongs(brand, domain):
                out.append("sig:subject-brand-mismatch")
                break
    if confusable:
        out.append("sig:confusable-brand")
    if is_mixed_script(display_name) or is_mixed_script(subject):
        out.append("sig:mixed-script")
    return out


def _shown(match: re.Match[str]) -> str:
    """The host of a _SHOWN_DOMAIN match that reads as a domain to a person, or "".

    A URL, an address or www.-something does; a bare name only with a common or country-code
    top-level domain and three characters or more in front of it ("Amazon.co.uk", not
    "Craig R.Hughes", where .hughes is a brand's top-level domain, nor "Mr.Li")."""
    host = url_host(match.group(1))
    if not _has_public_suffix(host):
        return ""
    shown = match.group(0)
    if "://" in shown or "@" in shown or host.startswith("www."):
        return host
    tld = host.rpartition(".")[2]
    if (len(tld) == 2 or tld in _COMMON_TLDS) and len(registrable(host).partition(".")[0]) >= 3:
        return host
    return ""


def _name_domain_differs(name: str, domain: str) -> bool:
    """Whether the display name shows an address or domain of another registrable domain."""
    for match in _SHOWN_DOMAIN.finditer(name):
        host = _shown(match)
        if host and registrable(host) != domain:
            return True
    return False


# Invisible characters between two letters: the reader sees one word, a word-counting filter two
# ("Pay<U+200B>Pal", "ac<U+00AD>count"): spam's way past keyword lists. Zero-width (non-)joiners
# and direction marks are left out: Persian, Indic scripts, emoji and bidirectional text need them;
# so are the bidirectional embeddings and isolates, which mail clients write around names. A
# variation selector or a tag character between two letters is no letter's.
# The runs are found by a character class alone, which the regex engine skips to in C, and their
# neighbours tested after: what (?<=[^\W\d_])[...]+(?=[^\W\d_]) finds, at a fraction of the cost
# of trying the look-behind at every character (tested).
_INVISIBLE_RUN: Final = re.compile(
    r"[\u00ad\u034f\u180e\u200b\u2060-\u2064\ufe00-\ufe0f\ufeff\U000e0001\U000e0020-\U000e007f]+"
)


def is_latin1(text: str) -> bool:
    """Whether every character of `text` is Latin-1, as most mail's is (ASCII or Western
    European text): then no pattern for characters beyond it (styled letters, look-alike
    scripts, the invisible characters but the soft hyphen) needs to scan it. One encode in C."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _letter(char: str) -> bool:
    r"""What [^\W\d_] matches: a word character that is no decimal digit (nor "_")."""
    return char.isalnum() and not char.isdecimal()


# -- styled letters ------------------------------------------------------------------------------

# The blocks where Unicode keeps Latin letters and digits in other styles: IPA extensions and
# the phonetic extensions (small capitals), enclosed alphanumerics (circled, parenthesised),
# Latin extended-D (small capital F and S), fullwidth forms, mathematical alphanumerics and the
# enclosed alphanumeric supplement (squared, negative circled and squared); and the letterlike
# symbols, where the mathematical alphabets keep the letters they had before (script e, g, o,
# double-struck C, R, Z), of which only the single letters count (not the TM sign, nor No).
_LETTERLIKE: Final = range(0x2100, 0x2150)
_STYLED_BLOCKS: Final = (
    (0x0250, 0x02AF), (0x1D00, 0x1D2B), (0x2100, 0x214F), (0x2460, 0x24FF), (0xA730, 0xA731),
    (0xFF10, 0xFF5A), (0x1D400, 0x1D7FF), (0x1F100, 0x1F189), (0x1F1E6, 0x1F1FF),
)  # fmt: skip
_FULLWIDTH: Final = range(0xFF10, 0xFF5B)
_LETTER_NAME: Final = re.compile(
    r"(?:LATIN (?:CAPITAL |SMALL )?|REGIONAL INDICATOR SYMBOL )LETTER (?:SMALL CAPITAL )?([A-Z])"
)
# Two regional indicators (U+1F1E6-1F1FF, the boxed capitals of the flag emoji) on their own are
# a flag, which the reader sees as one (a German flag, not "DE"); one alone, or three or more in
# a row, are the letters a spammer spells with them (version 20).
_REGIONAL: Final = range(0x1F1E6, 0x1F200)


# Runs of characters of those blocks: the few whole ranges make a pattern that the regex engine
# tests in a few comparisons a character (a class of the 1,056 styled characters themselves is a
# list of hundreds of ranges beyond U+FFFF, which made message->text four times slower); what is
# in a run is then looked up (`_Styled`), and the runs are rare.
_STYLED_RUN: Final = re.compile(
    "[" + "".join(f"{re.escape(chr(start))}-{re.escape(chr(end))}" for start, end in _STYLED_BLOCKS) + "]+"
)


class _Styled(NamedTuple):
    fold: dict[int, str]  # styled character -> its plain letters or digits
    letters: frozenset[str]  # the styled characters that are letters (not fullwidth ones)


@functools.cache
def _styled() -> _Styled:
    fold: dict[int, str] = {}
    letters: list[str] = []
    for start, end in _STYLED_BLOCKS:
        for code in range(start, end + 1):
            char = chr(code)
            # NFKC knows the mathematical, fullwidth, circled and most squared forms; the small
            # capitals and the negative squared letters are only named after their letter.
            folded = unicodedata.normalize("NFKC", char)
            plain = "".join(c for c in folded if c.isascii() and c.isalnum())
            if code in _LETTERLIKE and (len(folded) != 1 or not plain):
                continue
            if not plain or plain == char:
                named = _LETTER_NAME.fullmatch(
                    unicodedata.name(char, "")
                    .removeprefix("NEGATIVE ")
                    .removeprefix("SQUARED ")
                    .removeprefix("CIRCLED ")
                )
                if named is None:
                    continue
                plain = named[1] if "CAPITAL LETTER" in named[0] else named[1].lower()
            fold[code] = plain
            if plain.isalpha() and code not in _FULLWIDTH:
                letters.append(char)
    return _Styled(fold, frozenset(letters))


def fold_styled(text: str) -> str:
    """`text` with letters and digits of other styles (mathematical bold, circled, fullwidth,
    small capitals, regional indicators but where two make a flag) as the plain ones a reader
    reads: FREE in mathematical bold (U+1D405...) is FREE, a circled 1 (U+2460) is 1."""
    if _STYLED_RUN.search(text) is None:
        return text
    fold = _styled().fold
    return _STYLED_RUN.sub(lambda run: run[0] if _flag(run[0]) else run[0].translate(fold), text)


def _flag(run: str) -> bool:
    return len(run) == 2 and ord(run[0]) in _REGIONAL and ord(run[1]) in _REGIONAL


def styled_tokens(subject: str, name: str, body: str) -> list[str]:
    """``sig:styled-letters`` when the subject, the display name or the body has a word of three
    letters in another style (not fullwidth): what no mail client writes and a spammer does, to
    be read as ordinary words by people and as unknown ones by filters."""
    for text in (subject, name, body[:MAX_BODY_CHARS]):
        if text.isascii() or is_latin1(text):  # every styled block is beyond Latin-1
            continue
        for run in _STYLED_RUN.finditer(text):
            if len(run[0]) >= 3 and _three_letters(run[0], _styled().letters):
                return ["sig:styled-letters"]
    return []


def _three_letters(run: str, letters: frozenset[str]) -> bool:
    count = 0
    for char in run:
        count = count + 1 if char in letters else 0
        if count == 3:
            return True
    return False


# -- letters spaced out ---------------------------------------------------------------------------

# Where a run of single letters may be: a space, a letter, a space, a letter, then no letter. It
# starts with a literal, which the regex engine skips to, so texts without such a run (about 98 %
# of the corpora's) cost a fast scan; the run itself is then found in full. Digits written on to
# the run's first or last letter stay with it (``R e a d y2``, ``C.a.n.a.r.i.a.s24``).
_SPACED_HINT: Final = re.compile(r" [^\W\d_] [^\W\d_](?![^\W\d_])")
_SPACED_RUN: Final = re.compile(r"(?<![^\W_])\d*[^\W\d_](?: [^\W\d_]){2,}\d*(?![^\W_])")
# What the end of every run of four or more letters matches (its last three letters and the
# space before them): a fast scan that texts whose runs are of three letters at most (initials
# such as "J R R", "a b c") fail, so only texts with a longer run are searched in full.
_SPACED4_HINT: Final = re.compile(r" [^\W\d_] [^\W\d_] [^\W\d_](?![^\W\d_])")
# The same with a dot, hyphen, star, underscore, middle dot or bullet between the letters, one
# and the same or in any mix (V.e.r.i.f.y, F*R*E*E, V.e-r.i-f.y; message->text version 18), or
# a slash or a vertical bar (V/e/r/i/f/y, F|R|E|E; version 20), a tilde or a plus sign
# (V~e~r~i~f~y, F+R+E+E; version 21), not going on into a longer word (b.a.t.m.a.n.lists, a host
# name, a path).
_SEPARATOR: Final = "[.*_\u00b7\u2022/|~+-]"
_DOTTED_HINT: Final = re.compile(rf"{_SEPARATOR}[^\W\d_]{_SEPARATOR}[^\W\d_](?![^\W\d_])")
# What may not follow a run: its separator and a letter (a longer word, a host name, a path),
# nor a dot (or the like) and a digit (``c1.example.com``, a version); a slash or a bar and a
# digit may (``R.e.a.d.y2/7/2023``: a date after the word).
_GOES_ON: Final = r"(?:[^\W\d_]|(?<![/|])\d)"
_DOTTED_RUN: Final = re.compile(
    rf"(?<![^\W_])\d*[^\W\d_]({_SEPARATOR})[^\W\d_](?:\1[^\W\d_])+\d*(?![^\W_])(?!\1{_GOES_ON})"
)
# Runs that mix them, read after the runs of one separator: ``A.W.B.C_Loans`` stays a run of
# dots before a word, as it was read before.
_MIXED_RUN: Final = re.compile(
    rf"(?<![^\W_])\d*[^\W\d_]{_SEPARATOR}[^\W\d_](?:{_SEPARATOR}[^\W\d_])+\d*(?![^\W_])"
    rf"(?!{_SEPARATOR}{_GOES_ON})"
)
_SEPARATORS: Final = re.compile(_SEPARATOR)


def join_spaced(text: str) -> str:
    """`text` with each run of three or more single letters, one space between each (``V e r i
    f y``) or one separator (``V.e.r.i.f.y``, ``F*R*E*E``, ``V.e-r.i-f.y``, ``V/e/r/i/f/y``),
    written as the word it spells. Runs of two (``a b``, ``e.g.``) are left as they are."""
    if _DOTTED_HINT.search(text) is not None:
        text = _DOTTED_RUN.sub(lambda run: run[0].replace(run[1], ""), text)
        text = _MIXED_RUN.sub(lambda run: _SEPARATORS.sub("", run[0]), text)
    if _SPACED_HINT.search(text) is None:
        return text
    return _SPACED_RUN.sub(lambda run: run[0].replace(" ", ""), text)


def spaced_tokens(subject: str, name: str, body: str) -> list[str]:
    """``sig:spaced-letters`` when the subject, the display name or the body spells a word of
    four or more letters one letter at a time."""
    for text in (subject, name, body[:MAX_BODY_CHARS]):
        if _SPACED4_HINT.search(text) is None:
            continue
        if any(run[0].count(" ") >= 3 for run in _SPACED_RUN.finditer(text)):  # 4 letters
            return ["sig:spaced-letters"]
    return []


def invisible_tokens(subject: str, body: str) -> list[str]:
    """``sig:invisible-in-word`` when an invisible character splits a word of the subject or body."""
    for text in (subject, body[:MAX_BODY_CHARS]):
        if text.isascii() or ("\xad" not in text and is_latin1(text)):
            continue
        for run in _INVISIBLE_RUN.finditer(text):
            start, end = run.span()
            if start and end < len(text) and _letter(text[start - 1]) and _letter(text[end]):
                return ["sig:invisible-in-word"]
    return []


# A subject that says the message answers another: "Re:" and what mail clients write for it in
# other languages (AW, SV, Antw, VS, Odp, Ynt, R and RIF, Chinese and Japanese), with a count
# ("Re[2]:") and after a tag ("[list] Re:").
_REPLY_SUBJECT: Final = re.compile(
    r"\s*(?:\[[^\[\]]{0,60}\]\s*)?(?:re|aw|sv|antw|vs|odp|ynt|rif|r|回复|答复|回覆|返信)"
    r"(?:\[\d{1,3}\]|\(\d{1,3}\))?\s*[:\uff1a]",
    re.IGNORECASE,
)


def reply_tokens(subject: str, threaded: bool) -> list[str]:
    """``sig:fake-reply`` when the subject says the message is a reply and it has no In-Reply-To
    or References field (not `threaded`) to say which message it answers: mail clients of today
    thread every reply, spam writes "Re:" to look like an answer (SpamAssassin's FAKE_REPLY rules,
    Rspamd's FAKE_REPLY). A real reply gives no token: list talk is replies, newsletters are not."""
    return ["sig:fake-reply"] if not threaded and _REPLY_SUBJECT.match(subject) is not None else []


def recipient_tokens(to: str, subject: str) -> list[str]:
    """``sig:recipient-in-subject`` when the subject holds one of the addresses of the To field."""
    if "@" not in subject or "@" not in to:
        return []
    shown = {found.strip(".") for found in _ASCII_ADDRESS.findall(subject[:MAX_INPUT_CHARS].lower())}
    for found in itertools.islice(_ASCII_ADDRESS.finditer(to[:MAX_INPUT_CHARS].lower()), MAX_RECIPIENTS):
        address = found.group().strip(".")
        if "@" in address[1:-1] and address in shown:
            return ["sig:recipient-in-subject"]
    return []


@functools.cache
def _lookalike_latin() -> dict[int, str]:
    """Each look-alike script's letter whose confusables prototype is one Latin letter, to it."""
    return {
        code: target
        for code, target in _confusables().items()
        if len(target) == 1 and target.isascii() and target.isalpha() and _LOOKALIKE.match(chr(code))
    }


def fold_lookalikes(text: str) -> str:
    """`text` with each word that mixes Latin letters and look-alike letters of another script
    (Verify with a Cyrillic e, U+0435) spelled with the Latin letters those look like, when every
    letter of it is Latin or looks Latin: a Latin word in disguise. Words in one script, and
    words with a letter of the other script that looks like no Latin one (a Russian word with a
    Latin o in it), are left as they are, so Russian or Greek text keeps its words."""
    if text.isascii() or is_latin1(text) or _LOOKALIKE.search(text) is None:
        return text
    pairs = list(itertools.islice(_MIXED.finditer(text), MAX_MIXED_WORDS))
    if not pairs:
        return text
    table = _lookalike_latin()
    pieces, done = [], 0
    for pair in pairs:
        start, end = pair.start(), pair.end()
        if start < done:  # in the word already folded
            continue
        while start > done and text[start - 1].isalnum():
            start -= 1
        while end < len(text) and text[end].isalnum():
            end += 1
        word = text[start:end]
        folded = word.translate(table)
        pieces += [text[done:start], folded if folded.isascii() else word]
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def body_tokens(text: str) -> list[str]:
    """``sig:`` tokens for the (decoded, visible) body text: ``sig:body-mixed-script``."""
    if text.isascii():
        return []
    text = text[:MAX_BODY_CHARS]
    if is_latin1(text):  # every look-alike script is beyond Latin-1
        return []
    if _LOOKALIKE.search(text) is None or _MIXED.search(text) is None:
        return []
    return ["sig:body-mixed-script"]


# -- links ---------------------------------------------------------------------------------------


def _shown_host(anchor: str) -> str:
    """The host a link text shows, when the text is (or holds) a URL, an address or a domain."""
    anchor = anchor.strip()
    if "." not in anchor:
        return ""
    for match in _SHOWN_DOMAIN.finditer(anchor[:MAX_INPUT_CHARS]):
        host = _shown(match)
        if host:
            return host
    return ""


def link_tokens(links: Sequence[tuple[str, str]], from_domain: str) -> list[str]:
    """``sig:link-*`` tokens for a message's links, each an (href, link text) pair; links found
    in plain text come with an empty text, and a bare host ("www.example.com") does as an href.
    `from_domain` is the From address's domain (or its registrable part)."""
    try:
        return _link_tokens(links, from_domain)
    except Exception:  # never seen; a token function must not take the message down with it
        return []


def _link_tokens(links: Sequence[tuple[str, str]], from_domain: str) -> list[str]:
    found: set[str] = set()
    sender = registrable(from_domain) if from_domain else ""
    links = list(links[:MAX_LINKS])
    redirects = 0
    for href, anchor in links:
        match = _HREF.match(href)
        if match is None:  # cannot happen: every part of the pattern may be empty
            continue
        scheme, slashes, authority = match.groups()
        if scheme is not None and "." in scheme and not slashes:
            scheme = None  # "www.example.com:8080/": a host and its port, not a scheme
            authority = _AUTHORITY_END.split(href.strip(), maxsplit=1)[0]
        kind = scheme.lower() if scheme is not None else ""
        if kind == "javascript":
            found.add("sig:link-javascript")
            continue
        if kind == "data":
            if href.partition(":")[2].lstrip()[:6].lower() != "image/":
                found.add("sig:link-data-uri")
            continue
        if kind == "mailto":
            site = registrable(authority.rpartition("@")[2])
        elif slashes or (not kind and authority and authority[0] not in "#/."):
            site, tokens = _authority_tokens(authority[:MAX_INPUT_CHARS], not slashes)
            found.update(tokens)
            path = href[match.end() : match.end() + MAX_INPUT_CHARS]
            if site and path[:6].lower() in ("/ipfs/", "/ipns/"):
                found.add("sig:link-ipfs")
            target = _redirect_target(site, authority, path) if site else ""
            if target:
                found.add("sig:link-open-redirect")
                if redirects < 4:  # its target is a link too, but a chain of them is not followed far
                    redirects += 1
                    links.append((target, ""))
        else:
            continue  # cid:, tel:, an anchor in the page or a relative link
        if anchor and site and "." in anchor:
            shown = registrable(_shown_host(anchor))
            if (
                shown
                and shown != site
                and site != sender
                and site not in _REDIRECTORS
                and site not in SHORTENERS
                and shown not in _REDIRECTORS
            ):
                found.add("sig:link-text-domain-mismatch")
    return sorted(found)


@functools.lru_cache(maxsize=4096)
def _authority_tokens(authority: str, bare: bool) -> tuple[str, tuple[str, ...]]:
    """(registrable domain, sig:link- tokens) of a link's authority (user@host:port). A `bare`
    one came without a scheme: a host name only if its suffix is a known one, as in plain text
    ("www.example.com"), else a relative link ("page.html") with no domain."""
    host = url_host(authority)
    if not host:
        return "", ()
    site = registrable(host)
    if site == "ip":
        return site, ("sig:link-ip",)
    if bare and not _has_public_suffix(host):
        return "", ()
    found: list[str] = []
    if "xn--" in host:
        found.append("sig:link-punycode")
    if site in SHORTENERS:
        found.append("sig:link-shortener")
    if "@" in authority:
        found.append("sig:link-userinfo")
    port = authority.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
    if port and port not in ("80", "443"):
        found.append("sig:link-port")
    if _brand_host(host, site, _brands()):
        found.append("sig:link-brand-host")
    if _IPFS_LABEL.search(host) is not None:
        found.append("sig:link-ipfs")
    if site in _FREE_HOSTS or ("." + host).endswith(_FREE_HOST_SUFFIXES):
        found.append("sig:link-free-host")
    return site, tuple(found)


def _redirect_target(site: str, authority: str, path: str) -> str:
    """The target of a link through a big site's open redirect ("" if it is not one): what its
    q/url/u/to parameter holds, or the rest of a Google AMP path, as a URL."""
    host, name = "", site.partition(".")[0]
    for known, exact, prefixes in _OPEN_REDIRECTS:
        if name != known:
            continue
        host = host or url_host(authority)
        if (exact and host != exact) or not path.lower().startswith(prefixes):
            continue
        if path[:7].lower() == "/amp/s/":
            return "https://" + path[7:]
        # The path is at most MAX_INPUT_CHARS long, which bounds the fields (parse_qs's own
        # bound raises, and a link with many fields must not take the others' tokens with it).
        query = urllib.parse.parse_qs(path.partition("?")[2])
        for param in _TARGET_PARAMS:
            for value in query.get(param, ()):
                if value.startswith("a1") and param == "u":  # Bing's: "a1" and the URL in base64url
                    value = _base64url(value[2:])
                if value[:8].lower().startswith(("http://", "https://")):
                    return value
    return ""


def _base64url(text: str) -> str:
    """Text that `text` is the base64url (RFC 4648) of, unpadded, or "" if it is not."""
    try:
        return base64.urlsafe_b64decode(text[:MAX_INPUT_CHARS] + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return ""


def _brand_host(host: str, site: str, brands: _Brands) -> bool:
    """Whether the subdomain labels of `host` name a brand that `site` is not."""
    subdomains = host[: max(0, len(host) - len(site) - 1)]
    if not subdomains or subdomains == "www":
        return False
    labels = subdomains.split(".")
    for n, label in enumerate(labels):
        parts = label.split("-")
        for part in parts:
            brand = brands.by_key.get(part)
            if brand is None or brand.weak or belongs(brand, site):
                continue
            # A short key alone as a label is often something else (citi.umich.edu): it counts
            # beside other words (dhl-express.) or before a domain's ending (dhl.com.).
            after = labels[n + 1] if n + 1 < len(labels) else ""
            if len(part) > 4 or len(parts) > 1 or len(after) == 2 or after in _COMMON_TLDS:
                return True
    return False
