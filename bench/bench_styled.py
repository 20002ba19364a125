#!/usr/bin/env python3
"""Styled letters in real spam: how much of the spam the model junks stays junked.

Today's consumer spam writes its subject, its sender's name and sometimes its text in letters
from other Unicode blocks that every mail client shows as ordinary letters in another font:
mathematical bold (U+1D400...), mathematical sans-serif bold, fullwidth forms, circled letters,
small capitals. To a model that reads code points these are words it has never seen. Here the
same is done to corpus mail: a seeded sample of the modern corpus's spam that the model junks
(p >= 0.9); in each, the letters and digits of the subject and the From display name, and then
also of the text (the text nodes of HTML parts, plain parts outside their links), are rewritten
in one style at a time (or, for HTML, each word of four letters or more cut in two by an empty
comment), the parts re-encoded (base64, UTF-8), the rest as it was. Links, mail addresses
and host names are left as written (restyled, they would no longer work), as is a header that
does not decode cleanly, and of a display name a list rewrote, "Jane via List", only the
sender's part is restyled.

Prints, per style and reach, how many stay junked and the median and largest drop of p, as a
markdown table (docs/model.md keeps it).

    bench/bench_styled.py [--corpus DIR] [--model FILE] [--sample N] [--seed N]
                          [--write-junked FILE] [--also-junked-by FILE ...]

Two models are compared on the same spam: each run writes the names of all the modern spam it
junks with --write-junked, and each then samples only among the spam every other model junks
too (--also-junked-by the others' files). Sampled apart, one model's 300 are not the other's,
and a message either way is what the sample moves, not what the model does.
"""

from __future__ import annotations

import argparse
import email
import email.header
import email.policy
import email.utils
import random
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_hidden import stay_junked  # noqa: E402

from milter.model import load_model  # noqa: E402
from milter.text import message_text  # noqa: E402

_LOWER, _UPPER, _DIGITS = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"


def _block(upper: int, lower: int, digits: int | None) -> dict[int, str]:
    table = {ord(c): chr(upper + i) for i, c in enumerate(_UPPER)}
    table |= {ord(c): chr(lower + i) for i, c in enumerate(_LOWER)}
    if digits is not None:
        table |= {ord(c): chr(digits + i) for i, c in enumerate(_DIGITS)}
    return table


# Small capitals exist for 24 of the 26 letters (q and x have none); capitals are left as they are.
_SMALL_CAPS = dict(zip(map(ord, "abcdefghijklmnoprstuvwyz"), "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ", strict=True))
# Latin letters swapped for the Cyrillic ones that look the same (a c e i j o p s x y, and the
# capitals A B C E H K M O P T X): what `sig:mixed-script` reads in the subject and name.
_CYRILLIC = dict(
    zip(
        map(ord, "aceijopsxyABCEHKMOPTX"),
        "\u0430\u0441\u0435\u0456\u0458\u043e\u0440\u0455\u0445\u0443"
        "\u0410\u0412\u0421\u0415\u041d\u041a\u041c\u041e\u0420\u0422\u0425",
        strict=True,
    )
)
Restyle = Callable[[str], str]
# A word of four letters or more, of any alphabet: a spammer who spells its words out spells
# out "działu" whole, not its first four letters. Chinese and Japanese, written without spaces
# between words, are left as they are.
_LONG_WORD = re.compile(r"(?:(?![\u3000-\u9fff\uac00-\ud7af\uf900-\ufaff])[^\W\d_]){4,}")


def _translated(table: dict[int, str]) -> tuple[Restyle, Restyle]:
    return (lambda text: text.translate(table)), (lambda text: text.translate(table))


def _each_word(rewrite: Callable[[str], str]) -> Restyle:
    """Each word of four letters or more rewritten by `rewrite`."""
    return lambda text: _LONG_WORD.sub(lambda w: rewrite(w[0]), text)


def _inside(char: str) -> Restyle:
    """Each word of four letters or more cut in two by `char`, which no reader sees (a
    character that takes no room, an empty HTML comment)."""
    return _each_word(lambda word: word[: len(word) // 2] + char + word[len(word) // 2 :])


def _marked(mark: str) -> Restyle:
    """Each letter of each word of four letters or more followed by the combining `mark`."""
    return _each_word(lambda word: "".join(letter + mark for letter in word))


def _reversed(before: str, after: str) -> Restyle:
    """Each word of four letters or more written backwards between `before` and `after`, which
    turn it round again for the reader."""
    return _each_word(lambda word: before + word[::-1] + after)


def _turned_with_markup(word: str) -> str:
    """`word` written backwards inside <bdo dir="rtl"> with its middle letters in bold: markup
    inside the reversed text (the reader reads "verify" from ``yf<b>ire</b>v``)."""
    backwards, third = word[::-1], max(1, len(word) // 3)
    return f'<bdo dir="rtl">{backwards[:third]}<b>{backwards[third:-third]}</b>{backwards[-third:]}</bdo>'


def _between_words(blank: str) -> Restyle:
    """The spaces between words written as `blank`, a character that shows as a gap but is no
    space to a program (a Hangul filler, a Braille blank)."""
    return lambda text: text.replace(" ", blank)


def _mixed(separators: str) -> Callable[[str], str]:
    """The letters of a word set apart by `separators` in turn (``V.e-r.i-f.y``)."""
    return lambda word: (
        "".join(letter + separators[i % len(separators)] for i, letter in enumerate(word[:-1])) + word[-1]
    )


def _decomposed(text: str) -> str:
    """Accented letters written as the letter and its combining accent (Unicode NFD)."""
    return unicodedata.normalize("NFD", text)


def _spaced(separator: str) -> Restyle:
    """Each word of four letters or more written with a space between its letters, and the
    spaces between words widened to `separator` so that the reader still sees the words (two
    spaces in a subject or plain text; in HTML, which shows runs of spaces as one, a space and
    a no-break space)."""
    spell_out = _each_word(" ".join)
    return lambda text: separator.join(spell_out(word) for word in text.split(" "))


# Each style: what it does to the subject, the name and plain text, and to the text of HTML.
STYLES: dict[str, tuple[Restyle, Restyle]] = {
    "mathematical bold": _translated(_block(0x1D400, 0x1D41A, 0x1D7CE)),
    "mathematical sans-serif bold": _translated(_block(0x1D5D4, 0x1D5EE, 0x1D7EC)),
    "fullwidth": _translated(_block(0xFF21, 0xFF41, 0xFF10)),
    "circled": _translated(_block(0x24B6, 0x24D0, None)),
    # The flag emoji halves: one set of 26, shown as boxed capitals (two that name a country
    # may show as its flag).
    "regional indicators": _translated(_block(0x1F1E6, 0x1F1E6, None)),
    "small capitals": _translated(_SMALL_CAPS),
    "cyrillic look-alikes": _translated(_CYRILLIC),
    "comments inside words (HTML)": (lambda text: text, _inside("<!-- -->")),
    "letters spaced out": (_spaced("  "), _spaced(" &nbsp;")),
    "letters dotted": (_each_word(".".join), _each_word(".".join)),
    "letters set apart by middle dots": (_each_word("\u00b7".join), _each_word("\u00b7".join)),
    "letters set apart by dots and hyphens in turn": (_each_word(_mixed(".-")), _each_word(_mixed(".-"))),
    "letters set apart by slashes": (_each_word("/".join), _each_word("/".join)),
    "letters set apart by vertical bars": (_each_word("|".join), _each_word("|".join)),
    "letters set apart by tildes": (_each_word("~".join), _each_word("~".join)),
    "letters set apart by plus signs": (_each_word("+".join), _each_word("+".join)),
    # Characters that show as a gap between words but are letters or symbols to a program.
    "Hangul fillers between words": (_between_words("\u3164"), _between_words("\u3164")),
    "Braille blanks between words": (_between_words("\u2800"), _between_words("\u2800")),
    # Characters that take no room: the zero-width space (read since version 4), a variation
    # selector (what follows an emoji to pick its colour form), a tag character (the letters of
    # a flag's subdivision code) and a left-to-right embedding.
    "zero-width space inside words": (_inside("\u200b"), _inside("\u200b")),
    "variation selector inside words": (_inside("\ufe0f"), _inside("\ufe0f")),
    "tag character inside words": (_inside("\U000e0061"), _inside("\U000e0061")),
    "left-to-right embedding inside words": (_inside("\u202a"), _inside("\u202a")),
    # Letters with a combining mark that has no precomposed form (a line struck through each
    # letter), and accented letters written decomposed, as a letter and its accent (Unicode NFD).
    "struck through (combining marks)": (_marked("\u0336"), _marked("\u0336")),
    "accents decomposed (NFD)": (_decomposed, _decomposed),
    # Each word written backwards and turned round for the reader: by a right-to-left override
    # character (U+202E ... U+202C), by HTML's <bdo dir="rtl">, or by CSS.
    "reversed by a right-to-left override": (_reversed("\u202e", "\u202c"), _reversed("\u202e", "\u202c")),
    "reversed by <bdo> (HTML)": (lambda text: text, _reversed('<bdo dir="rtl">', "</bdo>")),
    "reversed by CSS (HTML)": (
        lambda text: text,
        _reversed('<span style="unicode-bidi:bidi-override;direction:rtl">', "</span>"),
    ),
    "reversed by a CSS class (HTML)": (lambda text: text, _reversed('<span class="r">', "</span>")),
    "reversed with markup inside (HTML)": (lambda text: text, _each_word(_turned_with_markup)),
}
# The stylesheet a style's HTML needs, put before the part's markup (a browser reads a <style>
# wherever it is).
SHEETS: dict[str, str] = {
    "reversed by a CSS class (HTML)": "<style>.r{unicode-bidi:bidi-override;direction:rtl}</style>",
}
# Links, mail addresses and host names are left as written: restyled, they would no longer work
# (nor would the list's own address in a subject or a display name be the spammer's to style).
_ADDRESS_OR_HOST = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|(?:[\w-]+\.)+[a-z]{2,}\b"
_TAG_OR_ENTITY = re.compile(rf"(<[^>]*>|&#?\w+;|https?://\S+|{_ADDRESS_OR_HOST})", re.IGNORECASE)
_LINK = re.compile(rf"(https?://\S+|www\.\S+|{_ADDRESS_OR_HOST})", re.IGNORECASE)


def restyle_html(html: str, restyle: Restyle) -> str:
    """The letters of the text nodes restyled; tags, entities and links as they were."""
    pieces = _TAG_OR_ENTITY.split(html)
    out, in_style = [], False
    for i, piece in enumerate(pieces):
        if i % 2:  # a tag, an entity or a link
            lowered = piece.lower()
            opens = lowered.startswith(("<style", "<script"))
            in_style = opens or (in_style and not lowered.startswith("</"))
            out.append(piece)
        else:
            out.append(piece if in_style else restyle(piece))
    return "".join(out)


def restyle_plain(text: str, restyle: Restyle) -> str:
    return "".join(p if i % 2 else restyle(p) for i, p in enumerate(_LINK.split(text)))


def _decoded(value: str) -> str:
    pieces = []
    for chunk, charset in email.header.decode_header(str(value)):
        if isinstance(chunk, str):
            pieces.append(chunk)
            continue
        try:
            pieces.append(chunk.decode(charset or "ascii", errors="replace"))
        except LookupError:  # a charset Python does not know
            pieces.append(chunk.decode("latin-1"))
    return "".join(pieces)


def restyled(raw: bytes, style: tuple[Restyle, Restyle], text_too: bool, sheet: str = "") -> bytes:
    plain, html = style
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    # Headers that do not decode cleanly are left as they were (re-encoding them would change
    # more than the style); of a name a list rewrote ("Jane via List"), only the sender's part
    # is the spammer's to style.
    subject = message["Subject"]
    if subject is not None and "\ufffd" not in _decoded(subject):
        del message["Subject"]
        message["Subject"] = email.header.Header(restyle_plain(_decoded(subject), plain), "utf-8").encode()
    sender = message["From"]
    if sender is not None and "\ufffd" not in _decoded(sender):
        name, address = email.utils.parseaddr(_decoded(sender))
        author, via, rest = name.partition(" via ")
        if author:
            del message["From"]
            restyled_name = restyle_plain(author, plain) + via + rest
            message["From"] = email.utils.formataddr((restyled_name, address), charset="utf-8")
    if text_too:
        for part in message.walk():
            kind = part.get_content_type()
            if kind not in ("text/plain", "text/html"):
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            text = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
            text = sheet + restyle_html(text, html) if kind == "text/html" else restyle_plain(text, plain)
            del part["Content-Transfer-Encoding"]
            part.set_payload(text, charset="utf-8")  # base64 for utf-8
    return message.as_bytes(policy=email.policy.compat32)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=ROOT / ".cache/corpus")
    parser.add_argument("--model", type=Path, default=ROOT / "model/spam.onnx")
    parser.add_argument("--sample", type=int, default=600, help="junked spam to restyle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--styles", nargs="*", choices=sorted(STYLES), help="only these styles")
    parser.add_argument(
        "--write-junked", type=Path, metavar="FILE", help="write the names of all modern spam junked"
    )
    parser.add_argument(
        "--also-junked-by",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="sample only spam named in each of these files (another model's --write-junked)",
    )
    args = parser.parse_args()
    model = load_model(args.model)

    def p(raw: bytes) -> float:
        return model.score_texts([message_text(raw)])[0].probability

    rng = random.Random(args.seed)
    spam = sorted((args.corpus / "modern/spam").glob("*.eml"))
    rng.shuffle(spam)
    for names in args.also_junked_by:
        theirs = set(names.read_text().split())
        spam = [path for path in spam if path.name in theirs]
    junked: list[str] = []
    chosen: list[tuple[bytes, float]] = []
    for path in spam:
        if len(chosen) == args.sample and args.write_junked is None:
            break
        raw = path.read_bytes()
        before = p(raw)
        if before >= 0.9:
            junked.append(path.name)
            if len(chosen) < args.sample:
                chosen.append((raw, before))
    if args.write_junked is not None:
        args.write_junked.write_text("".join(f"{name}\n" for name in sorted(junked)))
        print(f"{len(junked)} junked modern spam named in {args.write_junked}")
    also = f", also junked by {len(args.also_junked_by)} other" if args.also_junked_by else ""
    print(f"{len(chosen)} junked modern spam (seed {args.seed}{also}), model {model.id}\n")
    print("| style | restyled | stay junked (p >= 0.9) | median change of p | largest drop |")
    print("|---|---|---|---|---|")
    reaches = {"subject and name": False, "subject, name and text": True}
    for style, restyles in STYLES.items():
        if args.styles and style not in args.styles:
            continue
        for reach, text_too in reaches.items():
            if not text_too and "(HTML)" in style:
                continue
            sheet = SHEETS.get(style, "")
            cells = stay_junked(
                (before, p(restyled(raw, restyles, text_too, sheet))) for raw, before in chosen
            )
            print(f"| {style} | {reach} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
