"""The shipped model on mail these tests write themselves: what a reader sees decides the score.

Two promises of the model, checked on the real model/spam.onnx:
- hidden text is not the message's words: ham text hidden from the reader by CSS in spam the
  model junks moves its score by at most 0.02, and message->text says it was hidden (so are
  invisible characters inside words and letters written in another Unicode style);
- short and non-English personal mail is not spam: one- or two-line notes with no display name,
  in several languages, and what a local `sendmail` submission looks like, all below p = 0.50.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import pytest

from milter.model import Model
from milter.text import message_text
from milter.training.synthetic import HIDING_STYLES
from milter.visible import MAX_HTML_CHARS

HAM_TEXT = (
    "Hi Bob, are we still on for lunch on Friday? I can book the usual place for half past twelve. "
    "Anna says the kids loved the trip to the lake last weekend, and the weather was lovely. "
    "Let me know if Thursday works better for you, I have a meeting in the morning but the "
    "afternoon is free. Also, could you send me the photos from the birthday party when you get "
    "a chance? Mum asked about them again. See you soon, and say hello to everyone at home. "
    "Thanks again for helping with the move, we finally unpacked the last boxes yesterday."
)

# Spam as it comes today, written here: a phishing notice and an offer, HTML only.
SPAM_HTML = (
    "<html><body><table width='600' align='center'><tr><td>"
    "<p><b>Your account has been suspended!</b></p>"
    "<p>Dear customer, we detected unusual activity. Verify your account information within 24 hours "
    "or your account will be permanently closed. Click the link below to confirm your identity and "
    "restore full access. Urgent action required.</p>"
    "<p><a href='http://secure-verify-login.example.ru/account/update'>VERIFY NOW</a></p>"
    "{hidden}"
    "<p>Limited time offer: claim your $500 reward card today! Unsubscribe here.</p>"
    "</td></tr></table></body></html>"
)


def html_only(html: str) -> bytes:
    return (
        b'From: "Account Service" <alert@secure-verify-login.example.ru>\r\n'
        b"To: bob@example.net\r\nSubject: URGENT: your account is suspended, verify now\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(html.encode())
    )


def with_plain(html: str) -> bytes:
    plain = "Your account has been suspended! Verify your account now: http://secure-verify-login.example.ru/"
    return (
        b'From: "Account Service" <alert@secure-verify-login.example.ru>\r\n'
        b"To: bob@example.net\r\nSubject: URGENT: your account is suspended, verify now\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="=_b"\r\n\r\n'
        b"--=_b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + plain.encode() + b"\r\n"
        b"--=_b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(html.encode())
        + b"--=_b--\r\n"
    )


# Each trick: an inline style, the same as a <style> rule's declarations.
TRICKS = HIDING_STYLES


def inline(style: str) -> str:
    return f"<div style='{style}'>{HAM_TEXT}</div>"


def via_id(style: str) -> str:
    return f"<style>#n1 {{ {style} }}</style><div id='n1'>{HAM_TEXT}</div>"


def in_sheet(around: str) -> Callable[[str], str]:
    """A placement by class in a <style> element: the rule as is, or where `around` has "{}"."""

    def place(style: str) -> str:
        rule = around.replace("{}", f".note {{ {style} }}")
        return f"<style>{rule}</style><div class='note'>{HAM_TEXT}</div>"

    return place


PLACEMENTS: dict[str, Callable[[str], str]] = {
    "inline": inline,
    "class": in_sheet("{}"),
    "id": via_id,
    # In an @media rule that every desktop reader matches (phones' rules do not hide).
    "media": in_sheet("@media only screen and (min-width: 1px) { {} }"),
    # In an @media rule inside an @supports rule, both of which apply to the reader.
    "nested": in_sheet("@supports (display: block) { @media screen { {} } }"),
    # In a cascade layer (message->text version 22): below rules in no layer, but none here.
    "layer": in_sheet("@layer base, theme; @layer theme { {} }"),
    # In an @container rule whose condition the reader's pane matches (version 22).
    "container": in_sheet("@container (min-width: 1px) { {} }"),
    # Nested in another style rule after a declaration of its own (CSS Nesting: `body .note`).
    "css-nesting": in_sheet("body { color: #222; {} }"),
}
WRAPPINGS: dict[str, Callable[[str], bytes]] = {"html-only": html_only, "alternative": with_plain}


def probability(model: Model, raw: bytes) -> float:
    return model.score_texts([message_text(raw)])[0].probability


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_hidden_ham_text_does_not_rescue_spam(
    model: Model, trick: str, placement: str, wrapping: str
) -> None:
    wrap = WRAPPINGS[wrapping]
    clean = probability(model, wrap(SPAM_HTML.format(hidden="")))
    assert clean >= 0.9, f"the spam these tests start from is junked ({clean:.3f})"
    poisoned_raw = wrap(SPAM_HTML.format(hidden=PLACEMENTS[placement](TRICKS[trick])))
    poisoned = probability(model, poisoned_raw)
    assert abs(poisoned - clean) <= 0.02, (clean, poisoned)
    tokens = message_text(poisoned_raw).split()
    assert any(token.startswith("hidden:") for token in tokens), tokens
    assert "lunch" not in tokens and "birthday" not in tokens


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("summary", ["", "<summary>More</summary>"])
def test_ham_text_folded_in_closed_details_does_not_rescue_spam(
    model: Model, summary: str, wrapping: str
) -> None:
    """A <details> element without `open` shows only its summary, whatever the CSS says."""
    wrap = WRAPPINGS[wrapping]
    clean = probability(model, wrap(SPAM_HTML.format(hidden="")))
    folded_raw = wrap(SPAM_HTML.format(hidden=f"<details>{summary}<p>{HAM_TEXT}</p>{HAM_TEXT}</details>"))
    folded = probability(model, folded_raw)
    assert clean >= 0.9 and abs(folded - clean) <= 0.02, (clean, folded)
    tokens = message_text(folded_raw).split()
    assert "hidden:display-none" in tokens
    assert "lunch" not in tokens and "birthday" not in tokens
    # Opened, the same block is the message's words again.
    opened = message_text(
        wrap(SPAM_HTML.format(hidden=f"<details open>{summary}<p>{HAM_TEXT}</p></details>"))
    )
    assert "lunch" in opened.split()


# Characters no reader sees, put between the letters of every word of the subject and the text:
# the reader reads the same words, a filter that splits words on them reads fragments it does not
# know (with the model before message->text version 4, 45 % of junked modern spam left Junk so).
# Since version 15 also a variation selector and a tag character (`bench_styled`: 72.7 % of junked
# modern spam stayed junked before).
INVISIBLE = {
    "zero-width-space": "\u200b",
    "soft-hyphen": "\u00ad",
    "word-joiner": "\u2060",
    "bom": "\ufeff",
    "variation-selector": "\ufe0f",
    "tag-character": "\U000e0061",
}


def split_words(text: str, char: str) -> str:
    """Every word of `text` (outside HTML tags and entities) with `char` between its letters."""
    return re.sub(r"(?<=[A-Za-z])(?=[A-Za-z])(?![^<]*>)(?![^&;]*;)", char, text)


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("char", sorted(INVISIBLE))
def test_invisible_characters_inside_words_do_not_rescue_spam(model: Model, char: str, wrapping: str) -> None:
    wrap = WRAPPINGS[wrapping]
    clean_raw = wrap(SPAM_HTML.format(hidden=""))
    obfuscated = split_words(SPAM_HTML.format(hidden=""), INVISIBLE[char])
    subject = b"Subject: URGENT: your account is suspended, verify now"
    raw = wrap(obfuscated).replace(
        subject,
        b"Subject: =?utf-8?b?"
        + base64.b64encode(split_words(subject[9:].decode(), INVISIBLE[char]).encode())
        + b"?=",
    )
    shown = re.sub(r"<[^>]*>", " ", obfuscated).lower()
    assert "verify" not in shown and "account" not in shown  # every word the reader sees is split
    clean, tricked = probability(model, clean_raw), probability(model, raw)
    assert clean >= 0.9 and tricked >= clean - 0.02, (clean, tricked)
    # The same words as the clean message, and a token that says a word was split.
    clean_tokens, tricked_tokens = set(message_text(clean_raw).split()), set(message_text(raw).split())
    assert clean_tokens - tricked_tokens == set() and tricked_tokens - clean_tokens == {
        "sig:invisible-in-word"
    }


def _block(upper: int, lower: int) -> dict[int, str]:
    return {ord("A") + i: chr(upper + i) for i in range(26)} | {
        ord("a") + i: chr(lower + i) for i in range(26)
    }


# Letters of other Unicode blocks that mail clients show as the same letters in another font: the
# reader reads the same words, a filter that reads code points reads words it has never seen
# (with the model before message->text version 10, 20-24 % of junked modern spam left Junk so).
STYLED = {
    "mathematical-bold": _block(0x1D400, 0x1D41A),
    "mathematical-sans-serif-bold": _block(0x1D5D4, 0x1D5EE),
    "circled": _block(0x24B6, 0x24D0),
    "fullwidth": _block(0xFF21, 0xFF41),
    # Not another style but another script: Cyrillic letters that look like Latin a c e o p x y
    # and the capitals A C E O P T X.
    "cyrillic-look-alikes": dict(
        zip(
            map(ord, "aceopxyACEOPTX"),
            "\u0430\u0441\u0435\u043e\u0440\u0445\u0443\u0410\u0421\u0415\u041e\u0420\u0422\u0425",
            strict=True,
        )
    ),
}
# What each adds to the clean message's tokens: fullwidth letters, which Chinese and Japanese mail
# writes, nothing; look-alike letters of another script, that a word mixes scripts.
STYLED_TOKENS = {
    "fullwidth": set(),
    "cyrillic-look-alikes": {"sig:mixed-script", "sig:body-mixed-script"},
}


def restyle(text: str, table: dict[int, str]) -> str:
    """The letters of `text` outside HTML tags and entities in another style."""
    return "".join(
        p if p.startswith(("<", "&")) else p.translate(table) for p in re.split(r"(<[^>]*>|&\w+;)", text)
    )


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("style", sorted(STYLED))
def test_letters_in_another_style_do_not_rescue_spam(model: Model, style: str, wrapping: str) -> None:
    wrap, table = WRAPPINGS[wrapping], STYLED[style]
    clean_raw = wrap(SPAM_HTML.format(hidden=""))
    styled = restyle(SPAM_HTML.format(hidden=""), table)
    subject = b"Subject: URGENT: your account is suspended, verify now"
    raw = wrap(styled).replace(
        subject,
        b"Subject: =?utf-8?b?" + base64.b64encode(restyle(subject[9:].decode(), table).encode()) + b"?=",
    )
    shown = re.sub(r"<[^>]*>", " ", styled).lower()
    assert "verify" not in shown and "account" not in shown  # every word the reader sees is restyled
    clean, tricked = probability(model, clean_raw), probability(model, raw)
    assert clean >= 0.9 and tricked >= clean - 0.02, (clean, tricked)
    # The same words as the clean message, and a token that says how they were written.
    clean_tokens, tricked_tokens = set(message_text(clean_raw).split()), set(message_text(raw).split())
    assert clean_tokens - tricked_tokens == set()
    assert tricked_tokens - clean_tokens == STYLED_TOKENS.get(style, {"sig:styled-letters"})


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_comments_inside_words_do_not_rescue_spam(model: Model, wrapping: str) -> None:
    """An empty HTML comment in every word (``Ver<!-- -->ify``): a browser joins the text either
    side of it; read as a word break (before message->text version 12), the words were fragments."""
    wrap = WRAPPINGS[wrapping]
    clean_raw = wrap(SPAM_HTML.format(hidden=""))
    html = SPAM_HTML.format(hidden="")
    split = re.sub(r"(?<=>)([^<]+)", lambda m: re.sub(r"\b(\w\w)(\w\w+)", r"\1<!-- -->\2", m[1]), html)
    raw = wrap(split)
    assert "<!-- -->rify" in split and "<!-- -->count" in split
    clean, tricked = probability(model, clean_raw), probability(model, raw)
    assert clean >= 0.9 and tricked >= clean - 0.02, (clean, tricked)
    assert set(message_text(raw).split()) == set(message_text(clean_raw).split())


def each_long_word(rewrite: Callable[[str], str]) -> str:
    """The spam's HTML with every word of four letters or more of its text rewritten."""
    return re.sub(
        r"(?<=>)([^<]+)",
        lambda m: re.sub(r"[A-Za-z]{4,}", lambda w: rewrite(w[0]), m[1]),
        SPAM_HTML.format(hidden=""),
    )


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_letters_set_apart_by_dots_do_not_rescue_spam(model: Model, wrapping: str) -> None:
    """Every word of four letters or more written with a dot between its letters (V.e.r.i.f.y)."""
    wrap = WRAPPINGS[wrapping]
    clean_raw = wrap(SPAM_HTML.format(hidden=""))
    html = each_long_word(".".join)
    raw = wrap(html)
    assert "V.e.r.i.f.y" in html
    clean, tricked = probability(model, clean_raw), probability(model, raw)
    assert clean >= 0.9 and tricked >= clean - 0.02, (clean, tricked)
    assert set(message_text(raw).split()) == set(message_text(clean_raw).split())


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_letters_struck_through_do_not_rescue_spam(model: Model, wrapping: str) -> None:
    """Every letter of every word of four letters or more followed by a combining long stroke
    overlay (U+0336): the reader reads the words struck through (version 16)."""
    wrap = WRAPPINGS[wrapping]
    clean_raw = wrap(SPAM_HTML.format(hidden=""))
    html = each_long_word(lambda word: "".join(c + "\u0336" for c in word))
    raw = wrap(html)
    assert "V\u0336e\u0336r\u0336" in html
    clean, tricked = probability(model, clean_raw), probability(model, raw)
    assert clean >= 0.9 and tricked >= clean - 0.02, (clean, tricked)
    assert set(message_text(raw).split()) == set(message_text(clean_raw).split())


TURNED = {
    "override": ("\u202e", "\u202c"),
    "bdo": ('<bdo dir="rtl">', "</bdo>"),
    "css": ('<span style="unicode-bidi:bidi-override;direction:rtl">', "</span>"),
}


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("how", sorted(TURNED))
def test_words_written_backwards_and_turned_round_do_not_rescue_spam(
    model: Model, how: str, wrapping: str
) -> None:
    """Every word of four letters or more written backwards inside something that shows it
    reversed (version 17): the reader reads the words."""
    wrap, (before, after) = WRAPPINGS[wrapping], TURNED[how]
    clean_raw = wrap(SPAM_HTML.format(hidden=""))
    html = each_long_word(lambda word: before + word[::-1] + after)
    raw = wrap(html)
    assert "yfireV" in html
    clean, tricked = probability(model, clean_raw), probability(model, raw)
    assert clean >= 0.9 and tricked >= clean - 0.02, (clean, tricked)
    clean_tokens, tricked_tokens = set(message_text(clean_raw).split()), set(message_text(raw).split())
    assert clean_tokens - tricked_tokens == set()
    assert tricked_tokens - clean_tokens <= {"html:bdo", "html:bdo.dir", "html:span.style", "html:span"}


def _turned_with_markup(word: str) -> str:
    backwards = word[::-1]
    return f'<bdo dir="rtl">{backwards[0]}<b>{backwards[1:-1]}</b>{backwards[-1]}</bdo>'


def _mixed(word: str) -> str:
    return "".join(letter + ".-"[i % 2] for i, letter in enumerate(word[:-1])) + word[-1]


TURNED_SHEET = "<style>.r { unicode-bidi: bidi-override; direction: rtl }</style>"


def _boxed(word: str) -> str:
    """`word` in regional indicators (the flag emoji's boxed capitals), a zero-width space
    between each letter so that no two make a flag."""
    return "\u200b".join(chr(0x1F1E6 + ord(letter) - ord("a")) for letter in word.lower())


def _markup(token: str) -> bool:
    return token.startswith("html:")


def _nothing(token: str) -> bool:
    return False


# The readings of versions 18 and 20: (the spam's HTML so written, a piece of it that shows the
# trick is there, which of the tokens it adds may be added). Version 18's add the tags of the
# markup they are written in. Regional indicators may add `sig:styled-letters`, which needs three
# styled letters in a row (the zero-width spaces part them).
READINGS: dict[str, tuple[Callable[[], str], str, Callable[[str], bool]]] = {
    "dots and hyphens in turn": (lambda: each_long_word(_mixed), "V.e-r.i-f.y", _markup),
    "middle dots": (lambda: each_long_word("\u00b7".join), "V\u00b7e\u00b7r", _markup),
    "Hangul fillers between words": (
        lambda: re.sub(r"(?<=>)([^<]+)", lambda m: m[1].replace(" ", "\u3164"), SPAM_HTML.format(hidden="")),
        "your\u3164account",
        _markup,
    ),
    "turned by a stylesheet class": (
        lambda: TURNED_SHEET + each_long_word(lambda word: f'<span class="r">{word[::-1]}</span>'),
        '<span class="r">yfireV</span>',
        _markup,
    ),
    "turned with markup inside": (lambda: each_long_word(_turned_with_markup), "y<b>fire</b>V", _markup),
    "slashes": (lambda: each_long_word("/".join), "V/e/r/i/f/y", _nothing),
    "vertical bars": (lambda: each_long_word("|".join), "V|e|r|i|f|y", _nothing),
    "tildes": (lambda: each_long_word("~".join), "V~e~r~i~f~y", _nothing),
    "plus signs": (lambda: each_long_word("+".join), "V+e+r+i+f+y", _nothing),
    "regional indicators": (
        lambda: each_long_word(_boxed),
        _boxed("Verify"),
        lambda token: token == "sig:styled-letters",
    ),
}


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("how", sorted(READINGS))
def test_readings_of_versions_18_to_21_do_not_rescue_spam(model: Model, how: str, wrapping: str) -> None:
    """Letters set apart by mixed separators, middle dots, slashes, vertical bars (version 20),
    tildes or plus signs (version 21), words set apart by Hangul fillers, written backwards and
    turned round by a stylesheet class or with markup inside (version 18), or spelled in regional
    indicators (version 20): the reader reads the words, and so does the model."""
    wrap, (written, piece, may_add) = WRAPPINGS[wrapping], READINGS[how]
    clean_raw = wrap(SPAM_HTML.format(hidden=""))
    html = written()
    raw = wrap(html)
    assert piece in html
    clean, tricked = probability(model, clean_raw), probability(model, raw)
    assert clean >= 0.9 and tricked >= clean - 0.02, (clean, tricked)
    clean_tokens, tricked_tokens = set(message_text(clean_raw).split()), set(message_text(raw).split())
    assert clean_tokens - tricked_tokens == set()
    added = tricked_tokens - clean_tokens
    assert all(may_add(token) for token in added), added


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_letters_spaced_out_do_not_rescue_spam(model: Model, wrapping: str) -> None:
    """Every word of four letters or more spelled with spaces between its letters and the words set
    apart by a no-break space (``V e r i f y &nbsp;y o u r``): a reader reads the words."""
    wrap = WRAPPINGS[wrapping]
    clean_raw = wrap(SPAM_HTML.format(hidden=""))

    def spaced(text: str) -> str:
        return " &nbsp;".join(
            re.sub(r"[A-Za-z]{4,}", lambda w: " ".join(w[0]), word) for word in text.split(" ")
        )

    html = re.sub(r"(?<=>)([^<]+)", lambda m: spaced(m[1]), SPAM_HTML.format(hidden=""))
    raw = wrap(html)
    assert "V e r i f y" in html
    clean, tricked = probability(model, clean_raw), probability(model, raw)
    assert clean >= 0.9 and tricked >= clean - 0.02, (clean, tricked)
    clean_tokens, tricked_tokens = set(message_text(clean_raw).split()), set(message_text(raw).split())
    assert clean_tokens - tricked_tokens == set() and tricked_tokens - clean_tokens == {"sig:spaced-letters"}


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_a_hidden_block_longer_than_what_is_read_does_not_rescue_spam(
    model: Model, trick: str, wrapping: str
) -> None:
    """Hidden markup does not use up the markup read of a part (message->text version 19): the
    spam's words after a hidden block longer than MAX_HTML_CHARS are still read."""
    wrap = WRAPPINGS[wrapping]
    block = " ".join([HAM_TEXT] * (MAX_HTML_CHARS // len(HAM_TEXT) + 2))
    assert len(block) > MAX_HTML_CHARS
    clean = probability(model, wrap(SPAM_HTML.format(hidden="")))
    raw = wrap(SPAM_HTML.format(hidden=f"<div style='{TRICKS[trick]}'>{block}</div>"))
    assert abs(probability(model, raw) - clean) <= 0.02, (clean, probability(model, raw))
    tokens = message_text(raw).split()
    assert "reward" in tokens and "unsubscribe" in tokens and "hidden:chars-200" in tokens
    assert "lunch" not in tokens


def test_the_same_text_left_visible_is_read(model: Model) -> None:
    """The ham text is not ignored as such: shown to the reader, it is the message's words."""
    raw = html_only(SPAM_HTML.format(hidden=f"<div>{HAM_TEXT}</div>"))
    tokens = message_text(raw).split()
    assert "lunch" in tokens and "birthday" in tokens
    assert not any(token.startswith("hidden:") for token in tokens)
    assert probability(model, raw) < probability(model, html_only(SPAM_HTML.format(hidden="")))


def note(
    body: str, sender: str = "jan@example.org", subject: str = "", extra: str = "", msgid_host: str = ""
) -> bytes:
    """A note as a mail program writes it: the Message-ID at the sender's domain (Thunderbird,
    Apple Mail, mutt, Postfix's sendmail) unless `msgid_host` names the provider's host."""
    host = msgid_host or sender.partition("@")[2].split()[0]
    head = f"From: {sender}\r\nTo: bob@example.net\r\n"
    if subject:
        head += f"Subject: {subject}\r\n"
    head += f"Date: Tue, 01 Dec 2026 10:00:00 +0100\r\nMessage-ID: <20261201090000.A1@{host}>\r\n"
    head += extra + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    head += "Content-Transfer-Encoding: 8bit\r\n\r\n"
    return (head + body.replace("\n", "\r\n") + "\r\n").encode()


SHORT_NOTES = {
    "english one line": note("See you at 7 tonight.", subject="tonight"),
    "english no subject": note("Can you call me when you're back?"),
    "english two lines": note("Hi Tom,\nthe keys are under the mat. Back on Sunday.", subject="keys"),
    "german": note(
        "Hallo Bernd,\nschöne Grüße aus Hamburg, wir sehen uns am Samstag!",
        sender="anna@example.de",
        subject="Samstag",
    ),
    "german no subject": note("Kannst du mich heute Abend anrufen?", sender="jan@example.de"),
    "french": note("Salut Marie,\non se voit demain à midi devant la gare ? Bisous", subject="demain"),
    "spanish": note("Hola Carlos,\n¿quedamos el viernes para cenar? Un abrazo.", subject="viernes"),
    "japanese": note("田中さん、\n明日の会議は十時からです。よろしくお願いします。", subject="明日の会議"),
    # What Postfix's sendmail makes of `echo ... | mail -s ... user` on a server.
    "local sendmail": note(
        "backup finished at 03:12, 14 GB written, no errors.",
        sender="root@backup1.example.org (Cron Daemon)",
        subject="nightly backup",
        extra="X-Cron-Env: <SHELL=/bin/sh>\r\n",
    ),
    "local sendmail bare": note("disk /dev/sda1 at 91%", sender="root@web2.example.org", subject="disk"),
}


@pytest.mark.parametrize("name", sorted(SHORT_NOTES))
def test_short_and_non_english_personal_mail_is_not_spam(model: Model, name: str) -> None:
    p = probability(model, SHORT_NOTES[name])
    assert p < 0.5, f"{name}: p = {p:.3f}"
