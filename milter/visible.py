"""What the reader of an HTML part sees: its text less what CSS and HTML hide from view.

Spam hides a block of ordinary personal text from the reader (``display:none``, white on white,
``font-size:0``, ...) so that a word-based model reads it as ham. `visible_text` reads an HTML
part the way `milter.text` always has (lexbor, through selectolax: block tags separate words,
inline tags join, the head, comments, CSS and scripts are not shown), then takes out the text
that inline ``style=""`` attributes, the part's ``<style>`` rules, the ``hidden`` attribute and the
presentational colour attributes (``<font color>``, ``bgcolor``, ``<body text>``) keep off the
screen, and says how (`Visible.hidden`, tokens ``hidden:<how>``) and how much
(`Visible.hidden_chars`, a ``hidden:chars-<bucket>`` token).

Cost. Most HTML mail hides nothing, so that case costs next to nothing over the plain text walk:
one walk collects tags, link targets and the distinct style strings and colour attributes as it
goes; each distinct style string (and each stylesheet) is interpreted once and remembered
across messages (`_STYLE_CACHE`); only when some source can hide anything (a hiding value for
a property such as ``display``, ``opacity`` or ``font-size``, or a text colour that equals some
background colour of the part, white included) does a second walk work out, element by element,
what is shown. ``<style>`` rules are matched to elements by lexbor's selector engine, in C, and
only the rules that set a property that hides something somewhere in the part are matched.
The first MAX_HTML_CHARS of markup are read; a part whose first MAX_HTML_CHARS hide
MIN_HIDDEN_MARKUP of it or more is read again, to the end of what text.py passes, so that
hidden text does not use up what is read (message->text version 19): the cost of a second
parse falls only on such mail.

CSS parsing. Declarations are parsed with tinycss2 (``parse_declaration_list``), except that a
declaration list with no comments, escapes, blocks or brackets and whose every ``;``-separated
piece has balanced quotes and parentheses is split on ``;`` and ``:`` directly, which gives what
tinycss2 gives for such text (tests/test_visible.py checks this against tinycss2 on generated
input) at a tenth of the cost. Stylesheets are cut into rules by a scan for braces that skips
strings and comments (tested against tinycss2's ``parse_stylesheet``); each rule's declarations
then go through the same parser, and only rules whose text mentions a property read here.

Decisions:

- ``@media`` rules apply when their query matches one reader: a desktop client's reading pane,
  800px wide on a 1280x800 screen, in light mode, with a mouse (Media Queries levels 3 and 4:
  types, ``and``/``or``/``not``/``only``, ``min-``/``max-`` and range features). Most readers
  read so, and hiding a column at phone width (``max-width: 600px``) is what every responsive
  newsletter does; a query every screen matches (``min-width: 1px``) hides from everyone. A query
  this cannot read (brackets in brackets, an unknown feature such as Outlook's
  ``-ms-high-contrast``) does not match. ``@supports`` rules apply unless their condition says
  ``not`` (what they ask for is taken as supported), inside one another too (up to
  MAX_AT_RULE_DEPTH). ``@layer`` rules apply (message->text version 22), below every rule in no
  layer and each layer below the ones first named after it, as the cascade has it (the order an
  ``@layer a, b;`` statement gives is not read: layers rank as their blocks come). ``@container``
  rules apply when their condition matches the reader's pane as a media query would (the pane
  taken as the container; whether an element is declared a container is not read). Other
  at-rules (``@font-face``, ``@scope``, ...) and what is inside them are ignored.
- Style rules nested in style rules (CSS Nesting, which chromium, WebKit and Firefox read) apply
  as a browser applies them: ``.a { .h {...} }`` as ``.a .h``, ``&`` as the parent, the
  declarations of an ``@media`` (``@supports``, ...) rule inside a style rule as that rule's,
  and a rule's declarations after the rules nested in it as its own. A parent selector list is
  expanded, not wrapped in ``:is()`` (which lexbor misreads for lists), so ``.x &`` for a parent
  ``.a .b`` reads as ``.x .a .b``.
- A ``<details>`` element without ``open`` shows only its ``<summary>``: the rest of it is hidden
  as by ``display:none`` (version 22), whatever CSS says.
- ``mso-hide:all`` hides an element from Outlook for Windows, the desktop client of most
  offices: its text is hidden as by the other tricks, with ``hidden:mso-hide`` (message->text
  version 23; before, the text was kept, as every other client shows it, and a block of ham
  text so hidden rescued the spam it was put in). Newsletters put there what Outlook renders
  badly (an animated or interactive copy of a button), seldom words of their own; the price is
  that a pitch written only there, for the readers of other clients, is not read either.
- A hidden stretch with no characters but spaces and invisible ones (``&nbsp;``, ``&zwnj;``,
  ``&#847;``, soft hyphens: the preheader spacer every newsletter tool emits to keep the body out
  of the inbox preview) hides no words; it gives only ``hidden:spacer``, never the how-tokens, so
  that those stay the mark of hidden *words*. A hidden element with no text at all (a tracking
  pixel, a mobile-only image) gives nothing.
- Same colour: text is hidden when its colour is within 12/255 per channel of the background in
  effect (the nearest ancestor's ``bgcolor`` or CSS background colour, white by default), or
  fully transparent (given as ``hidden:opacity``). A background image (``background`` attribute,
  ``url()`` or a gradient) makes the background unknown: no colour is hidden on it. A link with
  no colour of its own is link-coloured, whatever its parent's colour.
- Zero boxes need ``overflow:hidden``: a ``height:0`` box with visible overflow shows its text.
  Sizes of 1px or less count as zero (the "screen-reader only" box is 1px by 1px); a font size
  of 1px or less counts as ``font-size-0``; opacity 0.1 or less as ``opacity``; a ``left``,
  ``top`` or ``text-indent`` of -500px or less (or -100% or less) as ``offscreen``, and so a
  ``margin-left`` or ``margin-top`` of -500px or less (it moves the box without positioning); a
  ``transform`` (or ``scale``) with a scale factor of 0.01 or less, or a matrix with no area, as
  ``zero-box``; ``content-visibility: hidden`` (the box stays, nothing in it is drawn) as
  ``display-none``.
- Text hidden by an inherited property (``visibility``, ``font-size``, ``text-indent``, colour)
  is taken out text node by text node, since a descendant may set it back (``font-size:0`` on a
  row of inline-block columns that set their own size is common in legitimate mail); text hidden
  by a property that no descendant can undo (``display``, ``opacity``, an offscreen or clipped
  box) is taken out with its whole element. A text node of white space only stays (it may be
  all that keeps two visible words apart); the spaces inside hidden text go with it, as a
  reader sees it: ``Vi<span hidden> x </span>agra`` reads "Viagra".
- Text shown reversed, letter by letter (``<bdo dir="rtl">``, or a style with ``direction: rtl``
  and ``unicode-bidi: bidi-override``, inline or by a ``<style>`` rule), is read reversed, as the
  reader reads it: ``<bdo dir="rtl">yfirev</bdo>`` and ``<bdo dir="rtl">yf<b>ire</b>v</bdo>``
  read "verify". Not where the text holds a block element or an element with attributes (whose
  letters may be hidden), and not in the scripts written right to left, which are stored in
  reading order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import tinycss2  # type: ignore[import-untyped]
import tinycss2.color4  # type: ignore[import-untyped]
from selectolax.lexbor import LexborHTMLParser, LexborNode

MAX_HTML_CHARS: Final = 12 * 1024  # markup characters parsed, after comments, CSS and scripts are cut
# Hidden markup that makes a long part be read on, to the 4 x MAX_HTML_CHARS that text.py
# passes: hidden text must not use up the cap and push what the reader sees out of it.
MIN_HIDDEN_MARKUP: Final = 1024
MAX_CSS_CHARS: Final = 16 * 1024  # characters of <style> content read
MAX_RULES: Final = 256  # stylesheet selectors matched against the document
MAX_CANDIDATES: Final = 400  # elements whose colours are looked up before a walk
MAX_LINKS: Final = 200  # anchors whose text is kept
MAX_ANCHOR_CHARS: Final = 200
MAX_AT_RULE_DEPTH: Final = 4  # @media / @supports rules inside one another that are read
MAX_NESTED_SELECTORS: Final = 32  # selectors a nested style rule's list is read as
_CACHE_SIZE: Final = 4096  # distinct style strings, colours and stylesheets remembered
_CACHEABLE_CHARS: Final = 2048  # longer style strings are interpreted every time

# text.py's pattern: comments, then <style> and <script> elements, are not shown.
_INVISIBLE: Final = re.compile(
    r"<!--.*?(?:-->|$)|<(style|script)\b.*?(?:</\1\s*>|$)", re.DOTALL | re.IGNORECASE
)
_STYLE_OPEN: Final = re.compile(r"<style\b", re.IGNORECASE)
_STYLE_CONTENT: Final = re.compile(
    r"<!--.*?(?:-->|$)|<script\b.*?(?:</script\s*>|$)|<style\b[^>]*>(.*?)(?:</style\s*>|$)",
    re.DOTALL | re.IGNORECASE,
)
# Each <style> element is a stylesheet of its own: what one leaves open (a block, a comment, a
# string) or stray at its end (a "=20" that quoted-printable encoding left) ends with it, as in a
# browser, and does not swallow the next one's rules. The sheets are joined by SHEET_BREAK, a
# character the HTML parser never passes to CSS (it turns U+0000 into U+FFFD).
SHEET_BREAK: Final = "\x00"
# What cuts a stylesheet into rules: braces, and strings and comments, whose braces do not count;
# and SHEET_BREAK, which ends all three.
_SHEET_TOKEN: Final = re.compile(
    r"""[{}\x00]|/\*[^\x00]*?(?:\*/|(?=\x00)|\Z)|"(?:[^"\\\n\x00]|\\[^\x00])*"?|'(?:[^'\\\n\x00]|\\[^\x00])*'?"""
)

# The same as text.py's _html_text.
_BLOCK_TAGS: Final = frozenset(
    {"br", "p", "div", "td", "th", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "hr"}
    | {"blockquote"}
)
_VOID_BLOCK_TAGS: Final = frozenset({"br", "hr"})
_STYLE_ATTRS: Final = frozenset({"color", "bgcolor", "face", "size", "align", "width", "height", "border"})
_LINK_ATTRS: Final = ("href", "src", "action")
# An inline style that lays its text out right to left letter by letter: text written backwards
# that the reader reads forwards (as <bdo dir="rtl"> does).
_TURNED_STYLE: Final = re.compile(r"bidi-override|isolate-override", re.IGNORECASE)
_RTL: Final = re.compile(r"direction\s*:\s*rtl", re.IGNORECASE)
# Letters of the scripts written right to left (Hebrew, Arabic, Syriac, Thaana, N'Ko, ...): text in
# them is stored in reading order already, and an override leaves its order as it was.
_RIGHT_TO_LEFT: Final = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefe]")


def shown_order(text: str) -> str:
    """`text`, shown right to left letter by letter (a bidi override), in the order the reader
    reads it: reversed, unless it is in a script written right to left (milter.text too)."""
    return text if _RIGHT_TO_LEFT.search(text) else text[::-1]


# Attributes that can hide text or colour it.
_HINT_ATTRS: Final = frozenset({"hidden", "color", "bgcolor", "background", "text", "size"})
# Elements that HTML's rendering rules do not display unless an author's display says otherwise
# (a <dialog> without `open` too), as the `hidden` attribute; and elements that draw something
# else than what they hold, whatever CSS says (media and canvas: what they hold is for a reader
# that cannot play them; an SVG image's description), as a closed <details>. An <iframe>'s
# text is not drawn either, but reading it so changes a text of the corpora and failed its
# round (docs/model.md, "What was tried (2026-12-08, sixth)"): it is read as shown.
_UNDISPLAYED_TAGS: Final = frozenset({"dialog", "datalist", "noembed", "noframes", "rp"})
_FALLBACK_TAGS: Final = frozenset({"audio", "video", "canvas", "desc", "metadata"})
_CSS_SPACE: Final = " \t\n\r\f"
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Characters a reader does not see: zero-width spaces and joiners, direction marks, soft hyphen,
# the combining grapheme joiner (&#847;) that preheader spacers repeat, the BOM; and, since
# message->text version 15, what spam puts inside words as well because it takes no room:
# variation selectors (FE00-FE0F, Mongolian 180B-180F), bidirectional embeddings, overrides and
# isolates, the Khmer inherent vowels, the musical format characters and the tag characters
# (E0001, E0020-E007F, which only spell a flag's subdivision code after a black flag).
_UNSEEN_POINTS: Final = (
    *(0xAD, 0x34F, 0x61C, 0x17B4, 0x17B5, *range(0x180B, 0x1810), *range(0x200B, 0x2010)),
    *(*range(0x202A, 0x202F), *range(0x2060, 0x2065), *range(0x2066, 0x206A), *range(0xFE00, 0xFE10)),
    *(0xFEFF, *range(0x1D173, 0x1D17B), 0xE0001, *range(0xE0020, 0xE0080)),
)
_UNSEEN: Final = dict.fromkeys(_UNSEEN_POINTS)


def _char_class(points: Iterable[int]) -> str:
    """A regex character class's inside for `points`, consecutive ones as ranges: a class of
    single characters above U+FFFF is tested one by one at every character (ranges are not)."""
    ranges: list[list[int]] = []
    for point in sorted(points):
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    escaped = [(re.escape(chr(low)), re.escape(chr(high))) for low, high in ranges]
    return "".join(low if low == high else f"{low}-{high}" for low, high in escaped)


INVISIBLE_CLASS: Final = _char_class(_UNSEEN_POINTS)  # the same, as a regex class (milter.text)

# Interpreted properties: a value of 1 is the hiding one (display:none, opacity:0, ...), 0 any
# other; colours are 0xRRGGBBAA.
_HIDING_PROPS: Final = frozenset(
    {"display", "visibility", "opacity", "font-size", "left", "top", "text-indent"}
    | {"width", "height", "max-width", "max-height", "clip", "clip-path", "mso-hide"}
    | {"transform", "margin-left", "margin-top", "content-visibility", "filter"}
)
# Properties that hide only together with others.
_GROUPS: Final = (
    frozenset({"position", "left", "top"}),
    frozenset({"overflow", "width", "height", "max-width", "max-height", "min-width", "min-height"}),
    frozenset({"position", "out-of-flow", "clip"}),
)
# "fill" is -webkit-text-fill-color (the glyphs' paint, over "color"), "stroke" whether glyphs are
# outlined (-webkit-text-stroke), "bg-clip" whether the background is painted through the text.
_COLOUR_PROPS: Final = frozenset({"color", "bg", "bg-image", "fill", "stroke", "bg-clip"})
# What kind of box an element makes ("box", from display; "out-of-flow", position absolute or
# fixed; "float"), as flags: what can hide its text. Chromium draws the text of an inline box
# whatever its size, transform or top margin says; a table's, a row's or a cell's box takes no
# margins, and only a cell's clips.
_LAYOUT_PROPS: Final = frozenset({"box", "out-of-flow", "float"})
_SIZED: Final = 1  # overflow with a size clips, containment applies
_TRANSFORMED: Final = 2  # a transform applies
_BLOCK_LEVEL: Final = 4  # a top margin moves it
_MARGINS: Final = 8  # a left margin moves it
_LINES: Final = 16  # a block container: lays out its lines with its own text-indent
_FLEXES: Final = 32  # a flex or grid container: its children are blocks
# An inline box's left margin moves the text on its line, not a block inside it (_State.shifted).
_INLINE: Final = 0  # span, a, font, an unknown tag; display:inline
_BLOCK: Final = _SIZED | _TRANSFORMED | _BLOCK_LEVEL | _MARGINS | _LINES  # div, p, li
_INLINE_BLOCK: Final = _SIZED | _TRANSFORMED | _MARGINS | _LINES  # inline-block, img, button
_FLEX: Final = _BLOCK | _FLEXES
_INLINE_FLEX: Final = _INLINE_BLOCK | _FLEXES
_TABLE: Final = _TRANSFORMED | _BLOCK_LEVEL | _MARGINS
_INLINE_TABLE: Final = _TRANSFORMED | _MARGINS
_ROW: Final = _TRANSFORMED  # rows, row groups, columns
# A cell of zero size with overflow:hidden hides in a table laid out with table-layout:fixed, and
# not in others (a browser widens the cell); the reading does not follow which, and hides.
_CELL: Final = _SIZED | _TRANSFORMED | _LINES
_TAG_DEFAULT: Final = -1  # display: revert (the element's own default)
# A box taken out of the flow (position absolute or fixed, a float) or in a flex or grid
# container is block-level.
_BLOCKIFIED: Final = {
    _INLINE: _BLOCK, _INLINE_BLOCK: _BLOCK, _INLINE_FLEX: _FLEX, _INLINE_TABLE: _TABLE,
    _ROW: _BLOCK, _CELL: _BLOCK,
}  # fmt: skip
# The tags whose boxes are not inline by default (the HTML standard's rendering rules); every
# other tag, an unknown one too, makes an inline box.
_BLOCK_TAGS_BY_DEFAULT: Final = (
    "html", "body", "div", "p", "caption", "li", "ul", "ol", "dl", "dt", "dd", "menu", "dir", "h1",
    "h2", "h3", "h4", "h5", "h6", "center", "blockquote", "pre", "listing", "xmp", "plaintext",
    "address", "article", "aside", "footer", "header", "hgroup", "main", "nav", "section", "search",
    "figure", "figcaption", "form", "fieldset", "legend", "details", "summary", "dialog", "hr",
    "frameset",
)  # fmt: skip
_ATOMIC_TAGS: Final = (
    "img", "button", "input", "select", "textarea", "video", "audio", "iframe", "object", "embed",
    "canvas", "svg", "meter", "progress", "marquee",
)  # fmt: skip
_TAG_BOXES: Final = (
    dict.fromkeys(_BLOCK_TAGS_BY_DEFAULT, _BLOCK)
    | dict.fromkeys(_ATOMIC_TAGS, _INLINE_BLOCK)
    | dict.fromkeys(("td", "th"), _CELL)
    | {"table": _TABLE}
    | dict.fromkeys(("tr", "tbody", "thead", "tfoot", "col", "colgroup"), _ROW)
)
_DISPLAY_BOX: Final = {
    "inline": _INLINE, "contents": _INLINE, "ruby": _INLINE, "initial": _INLINE, "unset": _INLINE,
    "block": _BLOCK, "list-item": _BLOCK, "flow-root": _BLOCK, "table-caption": _BLOCK,
    "inline-block": _INLINE_BLOCK, "flex": _FLEX, "grid": _FLEX, "-webkit-box": _FLEX,
    "-webkit-flex": _FLEX, "-ms-flexbox": _FLEX, "inline-flex": _INLINE_FLEX,
    "inline-grid": _INLINE_FLEX, "-webkit-inline-box": _INLINE_FLEX, "-webkit-inline-flex": _INLINE_FLEX,
    "-ms-inline-flexbox": _INLINE_FLEX, "table": _TABLE, "inline-table": _INLINE_TABLE,
    "table-row": _ROW, "table-row-group": _ROW, "table-header-group": _ROW,
    "table-footer-group": _ROW, "table-column": _ROW, "table-column-group": _ROW,
    "table-cell": _CELL, "revert": _TAG_DEFAULT, "revert-layer": _TAG_DEFAULT,
}  # fmt: skip
# Substrings one of which a declaration list holds if it sets any property read here.
_PROPERTY_MARKS: Final = (
    "display", "visib", "opacity", "font", "position", "left", "top", "indent", "width", "height",
    "overflow", "mso-hide", "clip", "color", "background", "margin", "transform", "scale",
    "filter", "stroke", "float",
)  # fmt: skip
_SKIPPED_PSEUDO: Final = (
    ":hover", ":focus", ":active", ":visited", ":before", ":after", ":first-l", ":selection",
    ":placeholder", ":target", ":-", "::",
)  # fmt: skip
_BLACK: Final = 0x000000FF
_WHITE: Final = 0xFFFFFFFF
_UNKNOWN: Final = -1  # a background image, or a colour this module cannot tell
_CURRENT: Final = -2  # -webkit-text-fill-color's initial value: the glyphs painted in "color"
_CLIPPED: Final = -3  # glyphs that show a background clipped to them: what colour, not known here
_NEAR: Final = 12  # colours within this per channel look the same
_FONT_SIZES_PX: Final = (10, 10, 13, 16, 18, 24, 32, 48)  # <font size=0..7>


@dataclass(frozen=True, slots=True)
class Visible:
    """What a reader sees of an HTML part.

    text: the body text as shown, block tags spaced apart, hidden text taken out.
    urls: every href, src and action value, in document order, hidden or not (what
        text.py's ``url:`` tokens are made from).
    links: (href, anchor text) of each ``<a href>``, the anchor text as shown, spaces collapsed
        ("" when hidden or empty); the first MAX_LINKS.
    tags: tag names, ``tag.attribute`` names and a few presentational values (text.py's
        ``html:`` tokens).
    hidden: ``hidden:<how>`` tokens (display-none, visibility, opacity, font-size-0, offscreen,
        zero-box, clip, same-color, attr, mso-hide), ``hidden:chars-1|20|200`` (1-19, 20-199,
        200 or more characters hidden) and ``hidden:spacer`` (see the module docstring).
    hidden_chars: characters hidden, spaces and invisible characters not counted.
    hidden_markup: characters of markup hidden: of each element hidden with all it holds, its
        markup; of text hidden by an inherited property, its characters (as hidden_chars).
    """

    text: str
    urls: tuple[str, ...]
    links: tuple[tuple[str, str], ...]
    tags: frozenset[str]
    hidden: frozenset[str]
    hidden_chars: int
    hidden_markup: int = 0


EMPTY: Final = Visible("", (), (), frozenset(), frozenset(), 0)

Effects = dict[str, tuple[int, bool]]  # property -> (interpreted value, !important)
_Hinted = tuple[str, dict[str, str | None], LexborNode]  # tag, attributes, element


@dataclass(frozen=True, slots=True)
class _Style:
    """One declaration list, interpreted: what it sets, and what of that can hide text."""

    effects: Effects
    hides: frozenset[str]  # properties it sets to a hiding value
    fg: frozenset[int]  # text colours it sets
    bg: frozenset[int]  # background colours it sets


@dataclass(frozen=True, slots=True)
class _Rule:
    selector: str
    specificity: tuple[int, int, int]
    order: int
    style: _Style
    layer: int  # the cascade layer's rank: later layers higher, rules in no layer highest


@dataclass(frozen=True, slots=True)
class _Sheet:
    rules: tuple[_Rule, ...]
    hides: frozenset[str]
    fg: frozenset[int]
    bg: frozenset[int]
    # Selectors of the rules whose own declarations lay text out right to left letter by letter
    # (``direction: rtl`` and a bidi override; message->text version 18).
    turning: tuple[str, ...] = ()


_NO_SHEET: Final = _Sheet((), frozenset(), frozenset(), frozenset())
_UNLAYERED: Final = 1 << 20  # the layer rank of rules in no @layer: above every layer's
_STYLE_CACHE: dict[str, _Style | None] = {}
_SHEET_CACHE: dict[str, _Sheet] = {}
_COLOUR_CACHE: dict[str, int | None] = {}
_LEGACY_CACHE: dict[str, int | None] = {}
_APPLIES_CACHE: dict[str, bool] = {}  # at-rule prelude -> whether its rules apply to the reader
_HINT_CACHE: dict[tuple[str, bool, str | None, str | None, str | None, str | None, bool], Effects] = {}


def visible_text(markup: str) -> Visible:
    """What a reader sees of an HTML part's markup. Never raises: garbage in, some value out.

    `markup` is the part as decoded (text.py passes the first 4 x MAX_HTML_CHARS characters):
    the ``<style>`` elements are read from it, then comments, ``<style>`` and ``<script>`` are
    cut out (as nothing, since message->text version 12: the text either side joins, as on
    screen) and the first MAX_HTML_CHARS characters of the rest are parsed. Where those hide
    MIN_HIDDEN_MARKUP characters of markup or more, all of the rest is parsed instead (version
    19): a block of hidden text put first would otherwise push the text shown after it out of
    what is read. Markup with no ``<style>`` left in it works the same, with inline styles only.
    """
    try:
        css = _stylesheet_text(markup) if _STYLE_OPEN.search(markup) else ""
        quirks = _quirks(markup)  # of the markup as sent: a <style> before the doctype makes it quirks
        # Cut as nothing, not as a space: a browser joins the text on either side of a comment
        # (``Ver<!-- -->ify`` reads "Verify"), and block elements separate text by themselves.
        shown = _INVISIBLE.sub("", markup)
        seen = _visible(shown[:MAX_HTML_CHARS], css, quirks)
        if seen.hidden_markup >= MIN_HIDDEN_MARKUP and len(shown) > MAX_HTML_CHARS:
            # Read to the end at once, not by the markup hidden so far: hidden blocks one after
            # another would each push the next out of a cap grown by the ones before it.
            seen = _visible(shown, css, quirks)
        return seen
    except Exception:  # the parser refused this markup (never seen): the part gives no words
        return EMPTY


def _stylesheet_text(markup: str) -> str:
    """The content of the <style> elements that text.py's pattern cuts, joined by SHEET_BREAK,
    capped.

    One findall in C: its pattern finds what _INVISIBLE finds, in the same order, and gives
    the content of the <style> elements ("" for comments and scripts)."""
    sheets = filter(None, _STYLE_CONTENT.findall(markup))
    return SHEET_BREAK.join(sheet.replace(SHEET_BREAK, "\ufffd") for sheet in sheets)[:MAX_CSS_CHARS]


_DOCTYPE: Final = re.compile(r"<!doctype\s+([^>]*)>", re.IGNORECASE)
_ELEMENT: Final = re.compile(r"<[a-zA-Z]")
_PUBLIC_ID: Final = re.compile(r"""public\s*(["'])(.*?)\1\s*(["'])?""", re.IGNORECASE | re.DOTALL)
# The public identifiers that put a document in quirks mode (the HTML standard's list, by the
# prefixes mail carries), and those that do only without a system identifier.
_QUIRKS_PUBLIC: Final = (
    "-//ietf//dtd html", "-//w3c//dtd html 3", "-//w3c//dtd html 4.0 frameset//",
    "-//w3c//dtd html 4.0 transitional//", "-//w3c//dtd html experimental", "-//w3o//dtd w3 html",
    "-//w3c//dtd w3 html//", "-//netscape comm. corp.//", "-//microsoft//dtd internet explorer",
    "-//sq//dtd html 2.0", "-//softquad", "-//spyglass//", "-//sun microsystems corp.//",
    "-//webtechs//", "-//o'reilly and associates//", "-//metrius//", "-//as//dtd html 3.0",
    "-//advasoft ltd//", "+//silmaril//", "-/w3c/dtd html 4.0 transitional/en", "html",
)  # fmt: skip
_QUIRKS_WITHOUT_SYSTEM_ID: Final = (
    "-//w3c//dtd html 4.01 frameset//",
    "-//w3c//dtd html 4.01 transitional//",
)


def _quirks(markup: str) -> bool:
    """Whether a browser renders `markup` in quirks mode: no doctype (most mail), or one of the
    legacy ones. There a table takes its font size and colour from no element but the body."""
    found = _DOCTYPE.search(markup, 0, 4096)
    if found is None or _ELEMENT.search(markup, 0, found.start()):  # after an element it is ignored
        return True
    words = found.group(1).strip().lower()
    if words.split()[:1] != ["html"]:
        return True
    public = _PUBLIC_ID.search(words)
    if public is None:
        return False
    identifier = public.group(2).strip()
    if identifier.startswith(_QUIRKS_PUBLIC):
        return True
    return public.group(3) is None and identifier.startswith(_QUIRKS_WITHOUT_SYSTEM_ID)


def _visible(markup: str, css: str, quirks: bool) -> Visible:
    tree = LexborHTMLParser(markup)
    urls: list[str] = []
    tags: set[str] = set()
    if tree.root is None:
        return EMPTY
    anchors: list[tuple[str, LexborNode]] = []
    styles: dict[str, list[LexborNode]] = {}  # the elements with each style attribute
    hinted: list[_Hinted] = []  # elements with attributes that hide or colour text
    turned: dict[int, LexborNode] = {}  # elements that show their text backwards, by mem_id (once each)
    # Closed <details> (and _FALLBACK_TAGS) by mem_id: their summary's mem_id (0 for none).
    closed: dict[int, int] = {}
    for node in tree.root.traverse():
        tag = node.tag
        if not tag or tag[0] == "-":  # comments
            continue
        if tag in _BLOCK_TAGS:
            if tag in _VOID_BLOCK_TAGS and node.first_child is None:
                node.insert_before("  ")
            else:
                node.insert_before(" ")
                node.insert_after(" ")
        attrs = node.attributes
        if len(tags) < 200:
            short = tag[:16]
            tags.add(short)
            for name, value in attrs.items():
                tags.add(short + "." + name[:16])
                if value and name in _STYLE_ATTRS:
                    tags.add(name[:16] + "=" + "".join(value.split()).lower()[:16])
        if attrs:
            for name in _LINK_ATTRS:
                value = attrs.get(name)
                if value:
                    urls.append(value)
                    if value[:4].lower() == "cid:":
                        tags.add(tag[:16] + "." + name + "=cid")
            if tag == "a" and len(anchors) < MAX_LINKS:
                href = attrs.get("href")
                if href:
                    anchors.append((href, node))
            if tag == "bdo" and _dir_rtl(node):
                turned[node.mem_id] = node
            style = attrs.get("style")
            if style:
                same = styles.get(style)
                if same is None:
                    styles[style] = [node]
                else:
                    same.append(node)
            if not _HINT_ATTRS.isdisjoint(attrs) or tag in _UNDISPLAYED_TAGS:
                hinted.append((tag, attrs, node))
        elif tag in _UNDISPLAYED_TAGS:
            hinted.append((tag, attrs, node))
        if tag == "details" and "open" not in attrs:
            closed[node.mem_id] = next((child.mem_id for child in node.iter() if child.tag == "summary"), 0)
        elif tag in _FALLBACK_TAGS:
            closed[node.mem_id] = 0
    for style, nodes in styles.items():  # each distinct style read once, as _hide does
        if _TURNED_STYLE.search(style):
            # The direction may come from the dir attribute (<div dir="rtl" style="unicode-bidi:
            # bidi-override">), as HTML maps it to the CSS property.
            rtl = _RTL.search(style) is not None
            turned.update((node.mem_id, node) for node in nodes if rtl or _dir_rtl(node))
    if css and _TURNED_STYLE.search(css):
        for _, nodes in _selected(tree, _sheet(css).turning):
            turned.update((node.mem_id, node) for node in nodes)
    if turned:
        pieces = {mem_id: _pieces(node, turned) for mem_id, node in turned.items()}
        for mem_id, node in turned.items():
            texts = pieces[mem_id]
            if texts is not None and not _turned_inside(node, pieces):
                _turn(texts)
    if "title" in tags:  # a title in the body (fragments pasted together) is not shown either
        tree.strip_tags(["title"])
    if len(" ".join(tags).split()) != len(tags):
        # A tag or attribute name may hold characters that HTML does not count as space but
        # Python does ("<a\x0b>"); a token must hold none.
        tags = {"".join(tag.split()) for tag in tags}
    body = tree.body
    hidden: set[str] = set()
    hidden_chars = hidden_markup = 0
    if body is not None and (styles or css or hinted or closed):
        try:
            hidden_chars, hidden_markup = _hide(tree, body, styles, css, hinted, closed, hidden, quirks)
        except Exception:  # a fault in reading the CSS: the text as if nothing were hidden
            hidden.add("hidden:error")
    links = tuple((href, " ".join(node.text().split())[:MAX_ANCHOR_CHARS]) for href, node in anchors)
    return Visible(
        body.text() if body is not None else "",
        tuple(urls),
        links,
        frozenset(tags),
        frozenset(hidden),
        hidden_chars,
        hidden_markup,
    )


def _dir_rtl(node: LexborNode) -> bool:
    return (node.attributes.get("dir") or "").strip().lower() == "rtl"


def _turned_inside(node: LexborNode, pieces: dict[int, list[LexborNode] | None]) -> bool:
    """Whether an element turned as a whole (its `pieces` not None) holds `node`: an override
    inside an override lays its text out right to left as the outer one does, not back again."""
    parent = node.parent
    while parent is not None:
        if pieces.get(parent.mem_id) is not None:
            return True
        parent = parent.parent
    return False


def _pieces(node: LexborNode, turned: dict[int, LexborNode]) -> list[LexborNode] | None:
    """The text nodes of an element to be turned round, or None where it holds markup whose
    letters may not all be shown together: markup other than inline elements without attributes
    (such an element neither hides its text nor, by a class or an id, lets a stylesheet hide it)
    and elements turned themselves. A block element starts a paragraph of its own."""
    pieces: list[LexborNode] = []
    for child in node.traverse(include_text=True):
        if child.tag == "-text":
            pieces.append(child)
        elif child.mem_id != node.mem_id and (
            child.tag in _BLOCK_TAGS or (child.attributes and child.mem_id not in turned)
        ):
            return None
    return pieces


def _turn(pieces: list[LexborNode]) -> None:
    """The text of an element shown right to left, letter by letter, in the order the reader
    reads it: reversed (message->text version 17), as a whole where markup is inside
    (``yf<b>ire</b>v``, version 18), each text node holding its stretch of the reversed whole."""
    texts = [piece.text_content or "" for piece in pieces]
    whole = "".join(texts)
    shown = shown_order(whole)
    if shown == whole:
        return
    start = 0
    for piece, text in zip(pieces, texts, strict=True):
        stretch = shown[start : start + len(text)]
        start += len(text)
        if stretch != text:
            piece.replace_with(stretch)


def _hide(
    tree: LexborHTMLParser,
    body: LexborNode,
    styles: dict[str, list[LexborNode]],
    css: str,
    hinted: list[_Hinted],
    closed: dict[int, int],
    hidden: set[str],
    quirks: bool,
) -> tuple[int, int]:
    """Take the hidden text out of `body`; add the tokens to `hidden`; the characters hidden
    and the markup hidden (Visible's hidden_chars and hidden_markup).

    The second walk runs only if some source can hide text: a hiding value somewhere, or a text
    colour that an element with a background of that colour holds (looked for upwards from the
    elements that set either colour, `_clash_found`)."""
    hides: set[str] = set()
    fg = {_BLACK}
    bg = {_WHITE}
    for text in styles:
        style = _style(text)
        if style is not None:
            hides |= style.hides
            fg |= style.fg
            bg |= style.bg
    sheet = _sheet(css) if css else _NO_SHEET
    hides |= sheet.hides
    fg |= sheet.fg
    bg |= sheet.bg
    hint_effects = [(_hints(tag, attrs), node) for tag, attrs, node in hinted]
    if closed:
        hides.add("display")
    for effects, _ in hint_effects:
        if "display" in effects:
            hides.add("display")
        if "color" in effects:
            fg.add(effects["color"][0])
        if "bg" in effects:
            bg.add(effects["bg"][0])
    colours = _clash(fg, bg)
    if colours and not hides:
        # Which colours can meet: the elements that set them, and what is above those.
        opaque = {b for b in bg if b & 0xFF == 0xFF}
        clash_fg = {f for f in fg if f & 0xFF <= 0x10 or any(_near(f, b) for b in opaque)}
        clash_bg = {b for b in opaque if any(_near(f, b) for f in fg)}
        candidates: list[LexborNode] = []
        for text, nodes in styles.items():
            style = _style(text)
            if style is not None and not (style.fg.isdisjoint(clash_fg) and style.bg.isdisjoint(clash_bg)):
                candidates.extend(nodes)
        for effects, node in hint_effects:
            if effects.get("color", (None,))[0] in clash_fg or effects.get("bg", (None,))[0] in clash_bg:
                candidates.append(node)
        coloured = [
            rule
            for rule in sheet.rules
            if not (rule.style.fg.isdisjoint(clash_fg) and rule.style.bg.isdisjoint(clash_bg))
        ]
        matched = _match(tree, coloured, _COLOUR_PROPS)
        for rules in matched.values():
            candidates.extend(rule_node for _, rule_node in rules[:1])
        if candidates and quirks and tree.root is not None:
            candidates.extend(tree.root.css("table"))  # they take the body's colour, not their parent's
        colours = bool(candidates) and _clash_found(
            candidates, {k: [r for r, _ in v] for k, v in matched.items()}, quirks
        )
    if not hides and not colours:
        return 0, 0
    relevant = set(hides) | _LAYOUT_PROPS
    for group in _GROUPS:
        if not group.isdisjoint(hides):
            relevant |= group
    if colours:
        relevant |= _COLOUR_PROPS
    matched = _match(tree, sheet.rules, relevant)
    return _walk(body, {k: [r for r, _ in v] for k, v in matched.items()}, colours, closed, hidden, quirks)


def _match(
    tree: LexborHTMLParser, rules: Iterable[_Rule], relevant: set[str] | frozenset[str]
) -> dict[int, list[tuple[_Rule, LexborNode]]]:
    """The elements that the rules setting `relevant` properties select, by node id (lexbor's
    selector engine, in C); at most MAX_RULES selectors are tried."""
    matched: dict[int, list[tuple[_Rule, LexborNode]]] = {}
    setting = [rule for rule in rules if not relevant.isdisjoint(rule.style.effects)]
    for index, nodes in _selected(
        tree, [rule.selector for rule in setting], [rule.order for rule in setting]
    ):
        for node in nodes:
            matched.setdefault(node.mem_id, []).append((setting[index], node))
    return matched


def _selected(
    tree: LexborHTMLParser, selectors: Sequence[str], lists: Sequence[int] = ()
) -> Iterator[tuple[int, list[LexborNode]]]:
    """(index, the elements it selects) for each of the first MAX_RULES `selectors` that
    lexbor's selector engine (in C) reads. `lists` numbers the rule each selector came from: a
    selector it cannot read drops the others of its rule, as a browser drops a rule with one
    invalid selector in its list."""
    if tree.root is None:
        return
    found: list[tuple[int, list[LexborNode]]] = []
    dropped: set[int] = set()
    for index, selector in enumerate(selectors[:MAX_RULES]):
        try:
            nodes = tree.root.css(selector)
        except Exception:  # a selector lexbor does not know
            if lists:
                dropped.add(lists[index])
            continue
        found.append((index, nodes))
    for index, nodes in found:
        if not dropped or lists[index] not in dropped:
            yield index, nodes


def _own(node: LexborNode, tag: str, matched: dict[int, list[_Rule]]) -> dict[str, int] | None:
    """An element's own properties: its attributes, the rules that select it, its style."""
    attrs = node.attributes
    undisplayed = tag in _UNDISPLAYED_TAGS
    if not attrs and not matched and not undisplayed:
        return None
    text = attrs.get("style")
    inline = _style(text) if text else None
    rules = matched.get(node.mem_id) if matched else None
    hints = _hints(tag, attrs) if undisplayed or not _HINT_ATTRS.isdisjoint(attrs) else None
    if inline is None and not rules and not hints:
        return None
    return _cascade(hints, rules, inline)


def _clash_found(candidates: list[LexborNode], matched: dict[int, list[_Rule]], quirks: bool) -> bool:
    """Whether one of `candidates` has a text colour that looks like the background in effect,
    each element's colours taken from it or the nearest element above that sets them (in quirks
    mode a table's from the body). The background behind a block inside a candidate counts too:
    it may differ from the candidate's own (an inline box's background is not behind a block)."""
    # node id -> (text colour, background, fill, stroke, background behind a block, flex) in effect
    resolved: dict[int, tuple[int, int, int, int, int, int]] = {}
    body_colour = _BLACK
    for candidate in candidates[:MAX_CANDIDATES]:
        path: list[tuple[int, LexborNode]] = []
        node: LexborNode | None = candidate
        base = (_BLACK, _WHITE, _CURRENT, 0, _WHITE, 0)
        while node is not None:
            mid = node.mem_id
            if mid in resolved:
                base = resolved[mid]
                break
            path.append((mid, node))
            node = node.parent
        for mid, node in reversed(path):
            tag = node.tag or ""
            own = (_own(node, tag, matched) if tag[:1] != "-" else None) or {}
            colour, back, fill, stroke, block_back, flex = base
            if quirks and tag == "table":
                colour = body_colour
            kind = _kind(tag, own, flex)
            colour, back, block_back = _painted(own, tag, kind, colour, back, block_back)
            fill, stroke = _filled(own, fill, stroke)
            if tag == "body":
                body_colour = colour
            base = resolved[mid] = (colour, back, fill, stroke, block_back, kind & _FLEXES)
        colour, back, fill, stroke, block_back, _ = base
        colour = _glyph(colour, fill, stroke)
        if (
            colour != _UNKNOWN
            and (colour & 0xFF <= 0x10 or any(b != _UNKNOWN and _near(colour, b) for b in (back, block_back)))
            and _seen_chars(candidate.text())
        ):
            return True
    return len(candidates) > MAX_CANDIDATES


class _State(NamedTuple):
    """What an element passes on to its children (the inherited properties read here, as their
    interpreted values), and the reasons its own text is hidden (from those)."""

    invisible: int  # visibility hidden
    tiny: int  # font-size 1px or less
    indent: int  # text-indent off screen
    colour: int  # text colour
    back: int  # background colour
    fill: int  # glyph fill (-webkit-text-fill-color)
    stroke: int  # glyphs outlined
    indented: int  # the text laid out here is on an indented line (its block container's indent)
    flex: int  # a flex or grid container: its children are blocks
    block_back: int  # the background behind a block-level box here (an inline's is not)
    shifted: int  # the text here is on a line an inline box's left margin moved off screen
    narrow: int  # the block here is 1px wide at most: an in-flow block of no width inside is too
    reasons: tuple[str, ...]


_ROOT: Final = _State(0, 0, 0, _BLACK, _WHITE, _CURRENT, 0, 0, 0, _WHITE, 0, 0, ())


def _walk(
    body: LexborNode,
    matched: dict[int, list[_Rule]],
    colours: bool,
    closed: dict[int, int],
    hidden: set[str],
    quirks: bool,
) -> tuple[int, int]:
    """The second walk: each element's style, what it inherits, and the text it hides (the
    characters and the markup).

    Elements come in document order (lexbor's traverse, in C); each finds its parent's state
    by the parent's node id, and shares it when it changes nothing. An element whose box hides
    everything in it has state None, which its descendants take on. Text nodes are removed at
    the end, so that the traversal never meets a freed node."""
    total = markup = 0
    spacer = False
    doomed: list[LexborNode] = []
    states: dict[int, _State | None] = {}
    body_id = body.mem_id
    body_colour = _BLACK
    for node in body.traverse():
        tag = node.tag
        if not tag or tag[0] == "-":
            continue
        mid = node.mem_id
        folded = False  # inside a closed <details>, not its summary
        if mid == body_id:
            state: _State | None = _ROOT
        else:
            parent = node.parent
            if parent is None or parent.mem_id not in states:
                continue
            state = states[parent.mem_id]
            if state is None:
                states[mid] = None
                continue
            folded = bool(closed) and closed.get(parent.mem_id, mid) != mid
        assert state is not None
        reset = quirks and tag == "table" and (state.tiny != 0 or state.colour != body_colour)
        if reset:  # quirks mode: a table's font size and colour are the body's, not its parent's
            state = state._replace(tiny=0, colour=body_colour)
        own = _own(node, tag, matched)
        kind = _kind(tag, own, state.flex)
        if own or folded:
            reasons = _box_reasons(own, kind, state.narrow) if own else []
            if folded and "display-none" not in reasons:
                reasons.insert(0, "display-none")
            if reasons:
                chars, only_spaces = _take_text(node.traverse(include_text=True), doomed, True)
                total += chars
                if chars:
                    hidden.update("hidden:" + reason for reason in reasons)
                    markup += len(node.html or "")
                spacer = spacer or only_spaces
                states[mid] = None
                continue
            assert own is not None  # not folded: it would have a reason
            state = _inherit(state, own, tag, colours, kind)
        elif (
            reset
            or (tag == "a" and colours and state.colour != _UNKNOWN)
            or state.flex
            or (kind & _LINES and state.indent != state.indented)
            or (tag == "table" and state.indent)
            or (kind & _BLOCK_LEVEL and state.shifted)
            or (state.narrow and kind != _INLINE and not _fills({}, kind))
            or (kind != _INLINE and state.back != state.block_back)
        ):
            state = _inherit(state, {}, tag, colours, kind)
        states[mid] = state
        if mid == body_id:
            body_colour = state.colour
        if mid in closed:  # the text right inside a closed <details>, outside its summary
            chars, only_spaces = _take_text(
                (child for child in node.iter(include_text=True) if child.tag == "-text"), doomed, True
            )
            total += chars
            if chars:
                hidden.add("hidden:display-none")
                markup += chars
            spacer = spacer or only_spaces
        if state.reasons:
            chars, only_spaces = _take_text(node.iter(include_text=True), doomed, False)
            total += chars
            markup += chars
            if chars:
                hidden.update("hidden:" + reason for reason in state.reasons)
            spacer = spacer or only_spaces
    for node in doomed:
        node.decompose()
    if spacer:
        hidden.add("hidden:spacer")
    if total:
        hidden.add("hidden:chars-" + ("1" if total < 20 else "20" if total < 200 else "200"))
    return total, markup


def _painted(
    own: dict[str, int], tag: str, kind: int, colour: int, back: int, block_back: int
) -> tuple[int, int, int]:
    """(text colour, background, background behind a block-level box inside) of an element
    from its own properties and its parent's: a link is link-coloured unless it says
    otherwise; a background image or a translucent background makes the background unknown
    (what shows through is not known here). An inline box's background is painted behind its
    lines, not behind a block inside it; a box of no height paints none behind what overflows it."""
    colour = own.get("color", _UNKNOWN if tag == "a" else colour)
    if kind & _BLOCK_LEVEL:
        back = block_back
    if not (kind & _SIZED and own.get("overflow") != 1 and _no_height(own)):
        if own.get("bg-image") == 1:
            back = _UNKNOWN
        else:
            paint = own.get("bg", 0)
            if paint & 0xFF == 0xFF:
                back = paint
            elif paint & 0xFF:
                back = _UNKNOWN
    return colour, back, back if kind != _INLINE else block_back


def _filled(own: dict[str, int], fill: int, stroke: int) -> tuple[int, int]:
    """(fill, stroke) of an element from its own properties and its parent's pair: both are
    inherited on their own, apart from "color"; a background clipped to the text shows through
    the glyphs of all the element holds."""
    if own.get("bg-clip") == 1 or fill == _CLIPPED:
        return _CLIPPED, own.get("stroke", stroke)
    return own.get("fill", fill), own.get("stroke", stroke)


def _glyph(colour: int, fill: int, stroke: int) -> int:
    """The colour glyphs are painted in: the fill where one is set, else the text colour;
    unknown for outlined glyphs (the outline's colour is not read) or a clipped background."""
    if stroke == 1 or fill == _CLIPPED:
        return _UNKNOWN
    return colour if fill == _CURRENT else fill


def _kind(tag: str, own: dict[str, int] | None, flex_parent: int) -> int:
    """The kind of box an element makes: its display, else its tag's; an inline box taken out
    of the flow (position absolute or fixed, a float) or in a flex or grid container is a block."""
    box = own.get("box", _TAG_DEFAULT) if own else _TAG_DEFAULT
    if box == _TAG_DEFAULT:
        box = _TAG_BOXES.get(tag, _INLINE)
    if box in _BLOCKIFIED and (
        flex_parent or (own and (own.get("out-of-flow") == 1 or own.get("float") == 1))
    ):
        return _BLOCKIFIED[box]
    return box


def _inherit(parent: _State, own: dict[str, int], tag: str, colours: bool, kind: int) -> _State:
    """An element's state from its parent's and its own properties."""
    invisible, tiny, indent, colour, back, fill, stroke, indented, _, block_back, shifted, narrow, _ = parent
    invisible = own.get("visibility", invisible)
    tiny = own.get("font-size", tiny)
    # HTML's own stylesheet gives a table no text-indent of its parent's.
    indent = own.get("text-indent", 0 if tag == "table" else indent)
    if kind & _LINES:  # an inline box's text is on its block container's lines
        indented = indent
    if kind & _BLOCK_LEVEL:
        shifted = 0
    elif kind == _INLINE and own.get("margin-left") == 1:
        shifted = 1
    if kind != _INLINE:  # an inline box's width is not its own; a cell widens to what it holds
        narrow = int(kind != _CELL and _no_width(own, kind, narrow))
    if colours:
        colour, back, block_back = _painted(own, tag, kind, colour, back, block_back)
        fill, stroke = _filled(own, fill, stroke)
    reasons: list[str] = []
    if invisible == 1:
        reasons.append("visibility")
    if tiny == 1:
        reasons.append("font-size-0")
    if indented == 1 or shifted:
        reasons.append("offscreen")
    glyph = _glyph(colour, fill, stroke) if colours else _UNKNOWN
    if glyph != _UNKNOWN:
        if glyph & 0xFF <= 0x10:
            reasons.append("opacity")
        elif back != _UNKNOWN and _near(glyph, back):
            reasons.append("same-color")
    flex = kind & _FLEXES
    state = _State(
        invisible,
        tiny,
        indent,
        colour,
        back,
        fill,
        stroke,
        indented,
        flex,
        block_back,
        shifted,
        narrow,
        tuple(reasons),
    )
    return parent if state == parent else state


def _take_text(nodes: Iterable[LexborNode], doomed: list[LexborNode], box: bool) -> tuple[int, bool]:
    """Mark for removal the text nodes among `nodes` that hold more than ASCII white space.

    Returns the characters a reader would have seen in them and whether they held only
    spaces and invisible characters (a spacer). Such text is left alone where it is hidden by
    an inherited property (`box` false): white &nbsp; on white, or between the inline-block
    columns of a font-size:0 row, hides nothing."""
    pieces: list[str] = []
    found: list[LexborNode] = []
    for node in nodes:
        if node.tag == "-text":
            text = node.text_content or ""
            if text.strip(_CSS_SPACE):
                pieces.append(text)
                found.append(node)
    chars = _seen_chars("".join(pieces))
    if chars or box:
        doomed.extend(found)
    return chars, box and bool(pieces) and not chars


def _seen_chars(text: str) -> int:
    """Characters of `text` a reader sees: not spaces, not zero-width or other invisible ones."""
    return len("".join(text.translate(_UNSEEN).split()))


def _cascade(hints: Effects | None, rules: list[_Rule] | None, inline: _Style | None) -> dict[str, int]:
    """The value of each property for one element: presentational hints, then the stylesheet's
    rules by specificity and order, then the style attribute; !important ones over all others
    (the style attribute's over the stylesheet's)."""
    layers: list[Effects] = []
    if hints:
        layers.append(hints)
    if rules:
        layers.extend(
            rule.style.effects for rule in sorted(rules, key=lambda r: (r.layer, r.specificity, r.order))
        )
    if inline is not None:
        layers.append(inline.effects)
    out: dict[str, int] = {}
    important = False
    for layer in layers:
        for name, (value, imp) in layer.items():
            if imp:
                important = True
            else:
                out[name] = value
    if important:
        if rules and any(rule.layer != _UNLAYERED for rule in rules):
            # !important turns the layers round: an earlier layer's over a later one's, and any
            # layer's over those of rules in none.
            ordered = sorted(rules, key=lambda r: (-r.layer, r.specificity, r.order))
            layers = [*([hints] if hints else []), *(rule.style.effects for rule in ordered)]
            layers += [inline.effects] if inline is not None else []
        for layer in layers:
            for name, (value, imp) in layer.items():
                if imp:
                    out[name] = value
    return out


def _box_reasons(own: dict[str, int], kind: int, narrow: int = 0) -> list[str]:
    """How an element's own box hides all it holds, whatever its descendants say. An inline
    box has no size, transform, top margin or containment of its own (chromium draws its text
    whatever those say); a table's or a row's box no overflow. `narrow`: the element's width
    is that of a block of no width it sits in (_State.narrow)."""
    reasons: list[str] = []
    display = own.get("display")
    if display == 1 or (own.get("content-visibility") == 1 and kind & _SIZED):  # nothing it holds is drawn
        reasons.append("display-none")
    elif display == 2:
        reasons.append("attr")
    if own.get("opacity") == 1 or own.get("filter") == 1:
        reasons.append("opacity")
    if (own.get("position") == 1 and (own.get("left") == 1 or own.get("top") == 1)) or (
        kind & _MARGINS
        and (own.get("margin-left") == 1 or (own.get("margin-top") == 1 and kind & _BLOCK_LEVEL))
    ):
        reasons.append("offscreen")
    if (own.get("transform") == 1 and kind & _TRANSFORMED) or (
        own.get("overflow") == 1 and kind & _SIZED and (_no_width(own, kind, narrow) or _no_height(own))
    ):
        reasons.append("zero-box")
    if own.get("clip-path") == 1 or (own.get("out-of-flow") == 1 and own.get("clip") == 1):
        reasons.append("clip")
    if own.get("mso-hide") == 1:
        reasons.append("mso-hide")
    return reasons


def _no_width(own: dict[str, int], kind: int, narrow: int) -> bool:
    """Whether an element's box is 1px wide at most: its width or max-width says so, or it is an
    in-flow block of no width of its own in a block of none; a min-width undoes it."""
    if own.get("min-width") == 1:
        return False
    if own.get("width") == 1 or own.get("max-width") == 1:
        return True
    return bool(narrow) and "width" not in own and _fills(own, kind)


def _no_height(own: dict[str, int]) -> bool:
    return own.get("min-height") != 1 and (own.get("height") == 1 or own.get("max-height") == 1)


def _fills(own: dict[str, int], kind: int) -> bool:
    """Whether an element with no width of its own is as wide as its containing block: an
    in-flow block is; a float, an absolutely positioned box, an inline-block, a table and a
    cell are as wide as what they hold."""
    return (
        bool(kind & _BLOCK_LEVEL) and kind != _TABLE and own.get("out-of-flow") != 1 and own.get("float") != 1
    )


def _hints(tag: str, attrs: dict[str, str | None]) -> Effects:
    """What an element's presentational attributes set: below every CSS rule. Remembered."""
    key = (
        tag if tag in ("font", "body") else "",
        "hidden" in attrs or (tag in _UNDISPLAYED_TAGS and (tag != "dialog" or "open" not in attrs)),
        attrs.get("color"),
        attrs.get("text"),
        attrs.get("size"),
        attrs.get("bgcolor"),
        bool(attrs.get("background")),
    )
    cached = _HINT_CACHE.get(key)
    if cached is None:
        cached = _read_hints(tag, attrs, key[1])
        if len(_HINT_CACHE) >= _CACHE_SIZE:
            _HINT_CACHE.clear()
        _HINT_CACHE[key] = cached
    return cached


def _read_hints(tag: str, attrs: dict[str, str | None], undisplayed: bool) -> Effects:
    out: Effects = {}
    if undisplayed:  # the hidden attribute, or a tag HTML does not display
        out["display"] = (2, False)
    if tag == "font":
        colour = _legacy_colour(attrs.get("color"))
        if colour is not None:
            out["color"] = (colour, False)
        if attrs.get("size"):
            out["font-size"] = (0, False)  # <font size> is 10px at least
    elif tag == "body":
        colour = _legacy_colour(attrs.get("text"))
        if colour is not None:
            out["color"] = (colour, False)
    back = _legacy_colour(attrs.get("bgcolor"))
    if back is not None:
        out["bg"] = (back, False)
    if attrs.get("background"):
        out["bg-image"] = (1, False)
    return out


def _clash(fg: set[int], bg: set[int]) -> bool:
    """Whether some text colour of the part is transparent or looks like some background."""
    if fg & bg:
        return True
    opaque = [b for b in bg if b & 0xFF == 0xFF]
    return any(f & 0xFF <= 0x10 or any(_near(f, b) for b in opaque) for f in fg)


def _near(a: int, b: int) -> bool:
    return (
        abs((a >> 24) - (b >> 24)) <= _NEAR
        and abs((a >> 16 & 0xFF) - (b >> 16 & 0xFF)) <= _NEAR
        and abs((a >> 8 & 0xFF) - (b >> 8 & 0xFF)) <= _NEAR
    )


# Declarations.


def _style(text: str) -> _Style | None:
    """A declaration list (a style attribute, a rule's block), interpreted; None when it sets
    nothing read here. Remembered."""
    if text in _STYLE_CACHE:
        return _STYLE_CACHE[text]
    low = text.lower()
    style = _interpret(_declarations(text)) if any(mark in low for mark in _PROPERTY_MARKS) else None
    if len(text) <= _CACHEABLE_CHARS:
        if len(_STYLE_CACHE) >= _CACHE_SIZE:
            _STYLE_CACHE.clear()
        _STYLE_CACHE[text] = style
    return style


def _declarations(text: str) -> list[tuple[str, str, bool]]:
    """(lowercased name, value, important) of each declaration, as tinycss2 parses them.

    Text with nothing that tinycss2 could read differently (comments, escapes, blocks, a
    quote or parenthesis that a ";" splits) is split directly."""
    if "/*" in text or "\\" in text or "{" in text or "}" in text or "[" in text:
        return _tinycss2_declarations(text)
    out: list[tuple[str, str, bool]] = []
    for piece in text.split(";"):
        if ("'" in piece or '"' in piece) and (
            piece.count("'") % 2 or piece.count('"') % 2 or "\n" in piece or "\r" in piece or "\f" in piece
        ):
            return _tinycss2_declarations(text)  # a string that a ";" or a newline ends
        if ("(" in piece or ")" in piece) and not (
            piece.count("(") == piece.count(")") == 1 and piece.index("(") < piece.index(")")
        ):
            return _tinycss2_declarations(text)  # more than one function, or a ";" in one
        name, colon, value = piece.partition(":")
        if not colon:
            continue
        name = name.strip(_CSS_SPACE)
        if not _is_ident(name):
            continue  # tinycss2: a parse error, skipped up to the next ";"
        name = name.translate(_ASCII_LOWER)
        value = value.strip(_CSS_SPACE)
        important = False
        if value.count("!") > 1:
            return _tinycss2_declarations(text)  # "!important!important": tinycss2's own reading
        if value[-9:].lower() == "important":
            head = value[:-9].rstrip(_CSS_SPACE)
            if head.endswith("!"):
                important = True
                value = head[:-1].rstrip(_CSS_SPACE)
        out.append((name, value, important))
    return out


def _is_ident(name: str) -> bool:
    """Whether `name` (with no escapes) is a CSS identifier, as a declaration's name must be."""
    rest = name[2:] if name[:2] == "--" else name[1:] if name[:1] == "-" else name
    if name[:2] != "--" and not (rest[:1].isalpha() or rest[:1] == "_" or rest[:1] > "\x7f"):
        return False
    return all(c.isalnum() or c in "-_" or c > "\x7f" for c in rest)


def _tinycss2_declarations(text: str) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    for item in tinycss2.parse_declaration_list(text, skip_comments=True, skip_whitespace=True):
        if item.type == "declaration":
            value = tinycss2.serialize(item.value).strip(_CSS_SPACE)
            out.append((item.lower_name, value, bool(item.important)))
    return out


def _interpret(declarations: list[tuple[str, str, bool]]) -> _Style | None:
    """The properties read here, later declarations over earlier, !important over the rest."""
    effects: Effects = {}
    for name, value, important in declarations:
        for prop, interpreted in _property(name, value.lower()):
            if not important and prop in effects and effects[prop][1]:
                continue
            effects[prop] = (interpreted, important)
    if not effects:
        return None
    hides = frozenset(p for p, (v, _) in effects.items() if v == 1 and p in _HIDING_PROPS)
    # Overflow and position hide only with a size or an offset; they count where those do.
    fg = frozenset(v for p, (v, _) in effects.items() if p in ("color", "fill") and v >= 0)
    bg = frozenset(v for p, (v, _) in effects.items() if p == "bg" and v & 0xFF == 0xFF)
    return _Style(effects, hides, fg, bg)


def _property(name: str, value: str) -> list[tuple[str, int]]:
    """(property, interpreted value) for one declaration; [] for what is not read here."""
    if name == "display":
        if value == "none":
            return [("display", 1)]
        return [("display", 0), ("box", _DISPLAY_BOX.get(value, _BLOCK))]
    if name == "visibility":
        return [("visibility", int(value in ("hidden", "collapse")))]
    if name == "content-visibility":
        return [("content-visibility", int(value == "hidden"))]
    if name == "opacity":
        number = _number(value)
        return [] if number is None else [("opacity", int(number <= 0.1))]
    if name == "font-size":
        size = _px(value, 16.0)
        return [] if size is None else [("font-size", int(size <= 1))]
    if name == "font":
        # The shorthand: [style variant weight] size[/line-height] family; the first length is the size.
        for word in value.replace("/", " / ").split():
            if word == "/":
                break
            size = _px(word, 16.0)
            if size is not None:
                return [("font-size", int(size <= 1))]
        return []
    if name == "position":
        out = value in ("absolute", "fixed")
        return [("position", int(out or value == "relative")), ("out-of-flow", int(out))]
    if name == "float":
        return [("float", int(value in ("left", "right", "inline-start", "inline-end")))]
    if name in ("left", "top", "text-indent", "margin-left", "margin-top"):
        offset = _px(value, 10.0)  # a percentage of a screen of 1,000px
        return [] if offset is None else [(name, int(offset <= -500))]
    if name == "margin":
        # One to four lengths: top, right, bottom, left (CSS's shorthand order).
        sides = value.split()
        if not 1 <= len(sides) <= 4:
            return []
        top, left = _px(sides[0], 10.0), _px(sides[{1: 0, 2: 1, 3: 1, 4: 3}[len(sides)]], 10.0)
        return [
            (side, int(offset <= -500))
            for side, offset in (("margin-top", top), ("margin-left", left))
            if offset is not None
        ]
    if name in ("transform", "-webkit-transform", "-ms-transform", "scale"):
        return [("transform", int(_flattened(value, name == "scale")))]
    if name in ("width", "height", "max-width", "max-height"):
        size = _px(value, 10.0)
        return [] if size is None else [(name, int(0 <= size <= 1))]
    if name in ("min-width", "min-height"):  # 1: a minimum that undoes a size of 0
        size = _px(value, 10.0)
        return [] if size is None else [(name, int(size > 1))]
    if name in ("overflow", "overflow-x", "overflow-y"):
        return [("overflow", int(value.split()[:1] in (["hidden"], ["clip"])))]
    if name == "mso-hide":
        return [("mso-hide", int(value == "all"))]
    if name == "clip":
        if not value.startswith("rect(") or not value.endswith(")"):
            return [("clip", 0)]
        edges = [_px(word, 10.0) for word in value[5:-1].replace(",", " ").split()]
        return [("clip", int(len(edges) == 4 and all(e is not None and e <= 1 for e in edges)))]
    if name in ("clip-path", "-webkit-clip-path"):
        compact = "".join(value.split())
        inset = _number(compact[6:].partition("%")[0]) if compact.startswith("inset(") else None
        zero = compact.startswith(("circle(0", "ellipse(0")) or (inset is not None and inset >= 50)
        return [("clip-path", int(zero))]
    if name == "color":
        colour = _css_colour(value)
        return [] if colour is None or colour == _UNKNOWN else [("color", colour)]
    if name == "-webkit-text-fill-color":
        return _fill(value)
    if name in ("-webkit-text-stroke", "-webkit-text-stroke-width"):
        return _stroke(value, name == "-webkit-text-stroke")
    if name in ("background-clip", "-webkit-background-clip"):
        return [("bg-clip", int("text" in value.replace(",", " ").split()))]
    if name in ("filter", "-webkit-filter"):
        return _filter(value)
    if name == "background-color":
        colour = _css_colour(value)
        return [] if colour is None else [("bg", _UNKNOWN_BG if colour == _UNKNOWN else colour)]
    if name == "background-image":
        return [("bg-image", int(value not in ("none", "")))]
    if name == "background":
        return _background(value)
    return []


def _fill(value: str) -> list[tuple[str, int]]:
    """-webkit-text-fill-color: a colour over "color" for the glyphs (every engine reads it)."""
    if value in ("currentcolor", "initial", "revert", "revert-layer"):
        return [("fill", _CURRENT)]
    if value in ("inherit", "unset"):
        return [("fill", _UNKNOWN)]  # the parent's, which a rule below this one need not be
    colour = _css_colour(value)
    return [] if colour is None else [("fill", colour)]


_STROKE_WIDTHS: Final = frozenset({"thin", "medium", "thick"})


def _stroke(value: str, shorthand: bool) -> list[tuple[str, int]]:
    """Whether glyphs are outlined: -webkit-text-stroke(-width) wider than 0. The shorthand
    without a width sets it to 0."""
    for word in value.split() if shorthand else [value]:
        if word in _STROKE_WIDTHS:
            return [("stroke", 1)]
        width = _px(word, 0.0)
        if width is not None:
            return [("stroke", int(width > 0))]
    return [("stroke", 0)] if shorthand else []


_FILTERS: Final = frozenset(
    {"blur", "brightness", "contrast", "drop-shadow", "grayscale", "hue-rotate", "invert", "opacity"}
    | {"saturate", "sepia", "url"}
)


def _filter(value: str) -> list[tuple[str, int]]:
    """filter: whether its opacity() functions, multiplied, leave 0.1 or less (as opacity).
    A function a browser does not know drops the declaration."""
    if "(" not in value:
        return [("filter", 0)] if value in ("none", "initial", "inherit", "unset") else []
    alpha = 1.0
    for token in tinycss2.parse_component_value_list(value, skip_comments=True):
        if token.type == "whitespace" or token.type == "url":
            continue
        if token.type != "function" or token.lower_name not in _FILTERS:
            return []
        if token.lower_name == "opacity":
            words = [t for t in token.arguments if t.type not in ("whitespace", "comment")]
            if not words:
                continue  # opacity() is opacity(1)
            if len(words) != 1 or words[0].type not in ("number", "percentage") or words[0].value < 0:
                return []
            amount = words[0].value / 100 if words[0].type == "percentage" else words[0].value
            alpha *= min(1.0, amount)
    return [("filter", int(alpha <= 0.1))]


_TRANSFORM: Final = re.compile(r"(scale3d|scalex|scaley|scale|matrix)\(([^()]*)\)")


def _flattened(value: str, bare: bool) -> bool:
    """Whether a transform (or the `scale` property, `bare`) shrinks a box to nothing: a scale
    factor of 0.01 or less, or a matrix with no area."""
    calls = [("scale", value)] if bare else _TRANSFORM.findall(value)
    for function, args in calls:
        values = [_number(word) for word in args.replace(",", " ").split()]
        numbers = [n for n in values if n is not None]
        if not numbers or len(numbers) != len(values):
            continue
        if function == "matrix":
            if len(numbers) == 6 and abs(numbers[0] * numbers[3] - numbers[1] * numbers[2]) <= 1e-4:
                return True
        elif (function != "scale3d" or len(numbers) == 3) and min(abs(n) for n in numbers[:2]) <= 0.01:
            return True
    return False


# An unreadable background colour: painted, but in a colour this module cannot tell; like an image.
_UNKNOWN_BG: Final = 0x000000FE


def _background(value: str) -> list[tuple[str, int]]:
    """The background shorthand: its colour (transparent if none) and whether it has an image."""
    image = int("url(" in value or "gradient(" in value or "image(" in value)
    colour = 0  # transparent
    if "(" in value:
        words = [
            tinycss2.serialize([token])
            for token in tinycss2.parse_component_value_list(value, skip_comments=True)
            if token.type != "whitespace"
        ]
    else:
        words = value.split()
    for word in words:
        found = _css_colour(word)
        if found is not None and found != _UNKNOWN:
            colour = found
            break
    clip = int("text" in words)  # the shorthand sets background-clip too
    return [("bg", colour), ("bg-image", image), ("bg-clip", clip)]


def _number(text: str) -> float | None:
    """A CSS number or percentage (as a fraction); None if `text` is neither."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def _px(value: str, percent: float) -> float | None:
    """A length in CSS pixels (a percentage counts `percent` px each); None if not a length."""
    value = value.strip(_CSS_SPACE)
    digits = value.rstrip("abcdefghijklmnopqrstuvwxyz%")
    if not digits or digits[-1] not in "0123456789.":
        return None
    try:
        number = float(digits)
    except ValueError:
        return None
    unit = value[len(digits) :]
    if unit == "px":
        return number
    if unit in ("pt",):
        return number * 4 / 3
    if unit in ("em", "rem"):
        return number * 16
    if unit in ("ex", "ch"):
        return number * 8
    if unit == "%":
        return number * percent
    if unit in ("vw", "vh", "vmin", "vmax"):
        return number * 10
    if unit in ("cm", "mm", "in", "pc", "q"):
        return number * {"cm": 37.8, "mm": 3.78, "in": 96.0, "pc": 16.0, "q": 0.945}[unit]
    if unit == "" and number == 0:
        return 0.0
    return None


def _css_colour(value: str) -> int | None:
    """A CSS colour as 0xRRGGBBAA; None for currentColor, inherit and what is not a colour."""
    value = value.strip(_CSS_SPACE)
    if value[:1] == "#" and len(value) in (4, 7) and _is_hex(value[1:]):
        digits = value[1:] if len(value) == 7 else "".join(c * 2 for c in value[1:])
        return int(digits, 16) << 8 | 0xFF
    if value in _COLOUR_CACHE:
        return _COLOUR_CACHE[value]
    colour: int | None = None
    if len(value) <= 64:
        try:
            parsed = tinycss2.color4.parse_color(value)
            if parsed is not None and not isinstance(parsed, str):
                red, green, blue = (min(255, max(0, round(c * 255))) for c in parsed.to("srgb").coordinates)
                alpha = min(255, max(0, round(parsed.alpha * 255)))
                colour = red << 24 | green << 16 | blue << 8 | alpha
        except Exception:  # a colour space tinycss2 cannot convert
            colour = _UNKNOWN
        if len(_COLOUR_CACHE) >= _CACHE_SIZE:
            _COLOUR_CACHE.clear()
        _COLOUR_CACHE[value] = colour
    return colour


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


def _legacy_colour(value: str | None) -> int | None:
    """An HTML colour attribute (bgcolor, <font color>) as browsers read it: a colour keyword,
    #rgb, or the legacy rules (non-hex digits read as 0, split in three, ...)."""
    if not value:
        return None
    if value in _LEGACY_CACHE:
        return _LEGACY_CACHE[value]
    colour = _read_legacy_colour(value)
    if len(value) <= 64:
        if len(_LEGACY_CACHE) >= _CACHE_SIZE:
            _LEGACY_CACHE.clear()
        _LEGACY_CACHE[value] = colour
    return colour


def _read_legacy_colour(value: str) -> int | None:
    value = value.strip(_CSS_SPACE)
    if not value or value.lower() == "transparent":
        return None
    if value.isalpha():
        named = _css_colour(value.lower())
        if named is not None:
            return named
    if len(value) == 4 and value[0] == "#" and _is_hex(value[1:]):
        return _css_colour(value.lower())
    digits = "".join("00" if ord(c) > 0xFFFF else c for c in value)[:128]
    if digits.startswith("#"):
        digits = digits[1:]
    digits = "".join(c if c in "0123456789abcdefABCDEF" else "0" for c in digits)
    while not digits or len(digits) % 3:
        digits += "0"
    size = len(digits) // 3
    parts = [digits[i * size : (i + 1) * size] for i in range(3)]
    if size > 8:
        parts = [p[size - 8 :] for p in parts]
        size = 8
    while size > 2 and all(p[0] == "0" for p in parts):
        parts = [p[1:] for p in parts]
        size -= 1
    if size > 2:
        parts = [p[:2] for p in parts]
    red, green, blue = (int(p, 16) for p in parts)
    return red << 24 | green << 16 | blue << 8 | 0xFF


# Stylesheets.


def _sheet(css: str) -> _Sheet:
    """A part's stylesheet: the rules that set properties read here, each selector apart, in order.
    Remembered."""
    cached = _SHEET_CACHE.get(css)
    if cached is not None:
        return cached
    rules: list[_Rule] = []
    hides: set[str] = set()
    fg: set[int] = set()
    bg: set[int] = set()
    turning: list[str] = []
    ranks: dict[str, int] = {"": _UNLAYERED}  # each layer by its name, in the order first met
    for order, (prelude, block, layer) in enumerate(_rule_texts(css)):
        if _TURNED_STYLE.search(block) and _RTL.search(block):
            turning.extend(_selectors(prelude))
        style = _style(block)
        if style is None:
            continue
        hides |= style.hides
        fg |= style.fg
        bg |= style.bg
        rank = ranks.setdefault(layer, len(ranks))
        for selector in _selectors(prelude):
            rules.append(_Rule(selector, _specificity(selector), order, style, rank))
    sheet = _Sheet(tuple(rules), frozenset(hides), frozenset(fg), frozenset(bg), tuple(turning))
    if len(_SHEET_CACHE) >= _CACHE_SIZE // 16:
        _SHEET_CACHE.clear()
    _SHEET_CACHE[css] = sheet
    return sheet


@dataclass(slots=True)
class _Open:
    """A block of a stylesheet that `_rule_texts` has seen open and not yet closed."""

    prelude: str
    begin: int  # where its prelude begins
    content: int  # where its content begins
    # A style rule's selector list, composed with the style rules it is nested in; for an
    # at-rule inside a style rule, that rule's (its declarations are that rule's): None for
    # an at-rule in no style rule.
    selector: str | None
    slot: int  # its place in the rules read, taken when it opened (-1: none)
    cuts: list[tuple[int, int]]  # the spans of the rules nested in it: not its declarations


def _rule_texts(css: str) -> list[tuple[str, str, str]]:
    """(selector list, declarations, layer) of the style rules at the top level and in the
    ``@media``, ``@supports``, ``@layer`` and ``@container`` rules that apply to the reader
    (`_applies`), nested or not, in order. The layer is the names of the ``@layer`` rules around
    the rule, joined by dots ("" for none; an anonymous layer is named by where its block
    starts). `css` is one or more sheets joined by SHEET_BREAK, each read as a stylesheet of
    its own.

    Style rules nested in style rules (CSS Nesting; since 2026-12-08, in version 22, whose
    corpus texts it leaves as they were) are read as a browser reads them: a nested selector
    relative to its parent's (``.a { .h {...} }`` is ``.a .h``, ``&`` standing for the
    parent), the declarations of an at-rule inside a style rule as that rule's when the at-rule
    applies, and a rule's declarations after the rules nested in it as its own.

    One scan for braces, strings and comments in C; what it finds is what tinycss2's
    parse_stylesheet, and parse_blocks_contents inside style rules, find for each sheet
    (tested), at a fraction of the cost."""
    out: list[tuple[str, str, str] | None] = []
    stack: list[_Open] = []
    start = 0  # where the current prelude starts
    comments: list[tuple[int, int]] = []  # comment spans inside the current prelude
    quoted: list[tuple[int, int]] = []  # string spans inside it
    for match in _SHEET_TOKEN.finditer(css):
        token = match.group()
        if token == "{":
            _open(css, stack, start, match.start(), match.end(), comments, quoted, out)
            start = match.end()
            comments, quoted = [], []
        elif token == "}":
            if not stack:  # a stray brace at the top level ends nothing
                continue
            _close(css, stack, match.start(), match.end(), out)
            start = match.end()
            comments, quoted = [], []
        elif token == SHEET_BREAK:  # the end of one sheet closes what is open in it
            while stack:
                _close(css, stack, match.start(), match.start(), out)
            start = match.end()
            comments, quoted = [], []
        elif token[:2] == "/*":
            comments.append(match.span())
        else:
            quoted.append(match.span())
    while stack:  # the end of the stylesheet closes what is open
        _close(css, stack, len(css), len(css), out)
    return [rule for rule in out if rule is not None]


def _open(
    css: str,
    stack: list[_Open],
    start: int,
    brace: int,
    content: int,
    comments: list[tuple[int, int]],
    quoted: list[tuple[int, int]],
    out: list[tuple[str, str, str] | None],
) -> None:
    """Open the block whose brace is at `brace`, its prelude from `start` (with `comments` and
    strings `quoted` in it); take its place in `out` if it may give a rule."""
    parent = stack[-1].selector if stack else None
    if parent is not None:
        # In a style rule's block, declarations end at ";" and a nested rule's prelude begins
        # after the last of them (one in a comment or a string ends nothing).
        # The spans come in order and do not overlap: one walk back over them, linear.
        skips = sorted(comments + quoted)
        at = len(skips) - 1
        last = css.rfind(";", start, brace)
        while last >= 0:
            while at >= 0 and skips[at][0] > last:
                at -= 1
            if at < 0 or last >= skips[at][1]:
                break
            last = css.rfind(";", start, skips[at][0])
        if last >= 0:
            start = last + 1
            comments = [span for span in comments if span[0] >= start]
    prelude = _prelude(css, start, brace, comments, not stack)
    if prelude[:1] == "@" or parent is None:
        selector = parent if prelude[:1] == "@" else prelude
    else:
        selector = _nested(parent, prelude)
    slot = -1
    if selector is not None:
        slot = len(out)
        out.append(None)
    stack.append(_Open(prelude, start, content, selector, slot, []))


def _close(
    css: str, stack: list[_Open], end: int, after: int, out: list[tuple[str, str, str] | None]
) -> None:
    """Close the innermost open block, whose content ends at `end`; keep it if it is a style
    rule (or an at-rule holding a style rule's declarations) at the top level or inside
    at-rules that all apply (``@supports (...) { @media screen { ... } }``), inside no more than
    MAX_AT_RULE_DEPTH blocks: a deeper one is not read (its cost would grow with the depth)."""
    block = stack.pop()
    if stack:
        stack[-1].cuts.append((block.begin, after))
    if block.slot < 0 or len(stack) > MAX_AT_RULE_DEPTH:
        return
    inner = [*stack, block] if block.prelude[:1] == "@" else stack
    if not all(_applies(outer.prelude) for outer in inner if outer.prelude[:1] == "@"):
        return
    layer = ".".join(
        outer.prelude[6:].strip(_CSS_SPACE) or f"#{outer.content}"
        for outer in inner
        if outer.prelude[:6].translate(_ASCII_LOWER) == "@layer"
    )
    if block.cuts:
        pieces: list[str] = []
        begin = block.content
        for left, right in block.cuts:
            pieces.append(css[begin:left])
            begin = right
        pieces.append(css[begin:end])
        declarations = " ".join(pieces)
    else:
        declarations = css[block.content : end]
    out[block.slot] = (block.selector or "", declarations, layer)


def _nested(parent: str, child: str) -> str:
    """A nested style rule's selector list: each of its selectors for each of its parent's,
    ``&`` standing for the parent and a selector without it relative to the parent as a
    descendant (or by the combinator it begins with); at most MAX_NESTED_SELECTORS."""
    children = _selector_list(child)
    parents = _selector_list(parent)
    if not children or not parents:
        return ""  # an invalid list selects nothing, nor do the rules nested in it
    selectors: list[str] = []
    for nested in children:
        for outer in parents:
            selectors.append(nested.replace("&", outer) if "&" in nested else f"{outer} {nested}")
    return ", ".join(selectors[:MAX_NESTED_SELECTORS])


def _selector_list(prelude: str) -> list[str]:
    """The selectors of a list, split at the commas outside brackets and strings; none if one
    is empty (the list is invalid)."""
    parts: list[str] = []
    depth = 0
    quote = ""
    begin = 0
    for at, char in enumerate(prelude):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth = max(0, depth - 1)
        elif char == "," and not depth:
            parts.append(prelude[begin:at])
            begin = at + 1
    parts.append(prelude[begin:])
    selectors = [" ".join(part.split()) for part in parts]
    return selectors if all(selectors) else []


def _prelude(css: str, start: int, end: int, comments: list[tuple[int, int]], top: bool) -> str:
    """A rule's prelude: comments, at-rule statements before it (``@import ...;``) and, at the
    top level, ``<!--`` and ``-->`` cut."""
    if comments:
        pieces: list[str] = []
        for left, right in comments:
            pieces.append(css[start:left])
            start = right
        pieces.append(css[start:end])
        text = " ".join(pieces)
    else:
        text = css[start:end]
    text = text.strip(_CSS_SPACE)
    while True:
        if top and text[:4] == "<!--":  # HTML comment marks between top-level rules are skipped
            text = text[4:].lstrip(_CSS_SPACE)
        elif top and text[:3] == "-->":
            text = text[3:].lstrip(_CSS_SPACE)
        elif text[:1] == "@" and ";" in text:
            if "'" in text or '"' in text or "(" in text or "[" in text:
                return _after_statements(text, top)  # a ";" may be inside a string or brackets
            text = text.partition(";")[2].lstrip(_CSS_SPACE)
        else:
            return text


def _after_statements(text: str, top: bool) -> str:
    """`text` after the at-rule statements (``@import "a;b";``) that begin it, by tinycss2's tokens."""
    tokens = tinycss2.parse_component_value_list(text, skip_comments=True)
    start = 0
    while True:
        while start < len(tokens) and (
            tokens[start].type == "whitespace"
            or (top and tokens[start].type == "literal" and tokens[start].value in ("<!--", "-->"))
        ):
            start += 1
        if start >= len(tokens) or tokens[start].type != "at-keyword":
            break
        end = next(
            (i for i in range(start, len(tokens)) if tokens[i].type == "literal" and tokens[i].value == ";"),
            None,
        )
        if end is None:
            break  # the prelude of an at-rule with a block
        start = end + 1
    return str(tinycss2.serialize(tokens[start:])).strip(_CSS_SPACE)


def _applies(prelude: str) -> bool:
    """Whether an at-rule's rules apply to the reader: an @media rule whose query list matches
    `_READER`, an @supports rule whose condition asks for no `not`, an @layer rule, or an
    @container rule whose condition matches the reader's pane. Remembered per prelude."""
    cached = _APPLIES_CACHE.get(prelude)
    if cached is None:
        lowered = prelude.translate(_ASCII_LOWER)
        if lowered[:6] == "@media" and lowered[6:7] in ("", "(", *_CSS_SPACE):
            cached = _media_matches(lowered[6:])
        elif lowered[:9] == "@supports" and lowered[9:10] in ("(", *_CSS_SPACE):
            cached = _supports(lowered[9:])
        elif lowered[:6] == "@layer" and lowered[6:7] in ("", *_CSS_SPACE):
            # Anonymous, or one name (`a.b` names a layer inside `a`); `@layer a, b {` or
            # `@layer .a {` is no rule a browser reads.
            name = lowered[6:].strip(_CSS_SPACE)
            cached = not name or _LAYER_NAME.fullmatch(name) is not None
        elif lowered[:10] == "@container" and lowered[10:11] in ("(", *_CSS_SPACE):
            cached = _container_matches(lowered[10:].strip(_CSS_SPACE))
        else:
            cached = False
        if len(_APPLIES_CACHE) >= _CACHE_SIZE:
            _APPLIES_CACHE.clear()
        _APPLIES_CACHE[prelude] = cached
    return cached


# The reader the message is judged for: a desktop mail client's reading pane (800 px wide, on a
# 1280 x 800 screen at one device pixel per CSS pixel) in light mode, with a mouse, no scripts.
# Responsive newsletters hide columns at phone widths (max-width: 600px): that is not hiding from
# this reader; a query every screen matches, (min-width: 1px), is.
_READER_NUMBERS: Final = {
    "width": 800.0, "height": 600.0, "device-width": 1280.0, "device-height": 800.0,
    "aspect-ratio": 800 / 600, "device-aspect-ratio": 1280 / 800, "resolution": 1.0,
    "device-pixel-ratio": 1.0, "color": 8.0, "color-index": 0.0, "monochrome": 0.0, "grid": 0.0,
}  # fmt: skip
_READER_WORDS: Final = {
    "orientation": "landscape", "prefers-color-scheme": "light", "prefers-reduced-motion": "no-preference",
    "prefers-contrast": "no-preference", "prefers-reduced-transparency": "no-preference",
    "hover": "hover", "any-hover": "hover", "pointer": "fine", "any-pointer": "fine", "scripting": "none",
    "update": "fast", "scan": "progressive", "inverted-colors": "none", "forced-colors": "none",
    "display-mode": "browser", "overflow-block": "scroll", "overflow-inline": "scroll",
}  # fmt: skip
_MEDIA_PART: Final = re.compile(r"\(([^()]*)\)|([^\s()]+)")
_RANGE: Final = re.compile(r"(<=|>=|<|>|=)")
# A cascade layer's name: identifiers joined by dots (escapes and non-ASCII letters let through).
_LAYER_IDENT: Final = r"-?[a-z_\\\u0080-\U0010ffff][a-z0-9_\\\u0080-\U0010ffff-]*"
_LAYER_NAME: Final = re.compile(rf"{_LAYER_IDENT}(?:\.{_LAYER_IDENT})*")
# The name an @container rule may give before its condition: `@container sidebar (width > 1px)`.
_CONTAINER_NAME: Final = re.compile(r"(?!(?:not|and|or)\b)[a-z_-][a-z0-9_-]*[ \t\n\r\f]+")
# The length units a media query's value is read in (by `_px`); others make it unreadable.
_MEDIA_LENGTH_UNITS: Final = frozenset({"px", "em", "rem", "pt", "pc", "in", "cm", "mm"})
_UNITS_DPPX: Final = {"dppx": 1.0, "x": 1.0, "dpi": 1 / 96, "dpcm": 2.54 / 96}
_VALUE: Final = re.compile(r"(-?[0-9]*\.?[0-9]+)\s*([a-z%]*)\s*(?:/\s*(-?[0-9]*\.?[0-9]+))?")


def _media_matches(query_list: str) -> bool:
    """Whether a media query list (Media Queries level 3 and 4) matches `_READER`: one of its
    queries does. What this cannot read (nested brackets, a feature it does not know, a value it
    cannot read) does not match, which is what a client does with a query it cannot parse."""
    if query_list.count("(") != query_list.count(")"):
        return False
    return any(_query_matches(query.strip(_CSS_SPACE)) for query in query_list.split(","))


def _query_matches(query: str) -> bool:
    parts = [(m.group(1), m.group(2)) for m in _MEDIA_PART.finditer(query)]
    if query.count("(") != sum(inner is not None for inner, _ in parts):
        return False  # brackets inside brackets: `(not (hover))`, `((a) or (b))`
    if not parts:
        return True  # an empty query (`@media {`) matches all
    negate = parts[0][1] == "not"
    if parts[0][1] in ("not", "only"):
        parts = parts[1:]
    if parts and parts[0][1] is not None and parts[0][1] not in ("and", "or"):
        if parts[0][1] not in ("all", "screen"):
            return negate  # print, speech, tv, an unknown type: not this reader
        parts = parts[1:]
        if not parts:
            return not negate
        if parts[0][1] != "and":
            return False
        parts = parts[1:]
    if not parts:
        return False  # `not` or `screen and` with nothing after it
    # What is left: conditions joined all by `and` or all by `or`.
    conditions = [inner for inner, word in parts[0::2]]
    joiners = {word for _, word in parts[1::2]}
    if None in conditions or len(joiners) > 1 or not joiners <= {"and", "or"} or len(parts) % 2 == 0:
        return False
    results = [_feature_matches(inner.strip(_CSS_SPACE)) for inner in conditions if inner is not None]
    if None in results:
        return False
    matched = any(results) if joiners == {"or"} else all(results)
    return matched != negate


def _feature_matches(feature: str) -> bool | None:
    """One media feature against the reader: `(name: value)`, `(name)` or a range such as
    `(400px <= width < 700px)`; None for one this cannot read."""
    if _RANGE.search(feature):
        pieces = [piece.strip(_CSS_SPACE) for piece in _RANGE.split(feature)]
        names = [piece for piece in pieces[0::2] if piece in _READER_NUMBERS]
        if len(names) != 1 or len(pieces) not in (3, 5):
            return None
        have = _READER_NUMBERS[names[0]]
        for left, op, right in zip(pieces[0::2], pieces[1::2], pieces[2::2], strict=False):
            a = have if left == names[0] else _media_value(left, names[0])
            b = have if right == names[0] else _media_value(right, names[0])
            if a is None or b is None:
                return None
            if not {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "=": abs(a - b) < 1e-9}[op]:
                return False
        return True
    name, colon, value = (piece.strip(_CSS_SPACE) for piece in feature.partition(":"))
    for vendor in ("-webkit-", "-moz-", "-o-"):
        if name.startswith(vendor):
            name = name[len(vendor) :]
    bound = ""
    if name.startswith(("min-", "max-")):
        bound, name = name[:3], name[4:]
    if name in _READER_WORDS and not bound:
        have_word = _READER_WORDS[name]
        return value == have_word if colon else have_word not in ("none", "no-preference")
    if name not in _READER_NUMBERS:
        return None
    have = _READER_NUMBERS[name]
    if not colon:
        return None if bound else have != 0
    want = _media_value(value, name)
    if want is None:
        return None
    if bound == "min":
        return have >= want - 1e-9
    if bound == "max":
        return have <= want + 1e-9
    return abs(have - want) < 1e-9


def _media_value(text: str, feature: str) -> float | None:
    """A media feature's value in the reader's units (px, dppx, a ratio, a number)."""
    match = _VALUE.fullmatch(text)
    if match is None:
        return None
    number, unit, denominator = float(match.group(1)), match.group(2), match.group(3)
    if denominator is not None:
        return number / float(denominator) if float(denominator) and not unit else None
    if feature.endswith(("width", "height")):
        return _px(text, 0.0) if unit in _MEDIA_LENGTH_UNITS or (not unit and number == 0) else None
    if feature == "resolution":
        dppx = _UNITS_DPPX.get(unit)
        return None if dppx is None else number * dppx
    return None if unit else number


def _container_matches(prelude: str) -> bool:
    """Whether an @container rule's condition, after the container's name if it has one, matches
    the reader's pane as a media condition; `style()` queries and a name alone do not."""
    match = _CONTAINER_NAME.match(prelude)
    condition = prelude[match.end() :] if match else prelude
    return bool(condition) and "," not in condition and _query_matches(condition)


def _supports(condition: str) -> bool:
    """Whether an @supports condition holds for the reader: what it asks for (a declaration, a
    selector) this module takes as supported, so a condition holds unless it says `not`."""
    words = condition.replace("(", " ( ").replace(")", " ) ").split()
    return "(" in words and "not" not in words and condition.count("(") == condition.count(")")


def _selectors(prelude: str) -> list[str]:
    """The selectors of a rule, each apart (`_selector_list`); those that match only while the
    reader hovers or that select pseudo-elements left out."""
    return [
        selector
        for selector in _selector_list(prelude)
        if ":" not in selector or not any(p in selector.lower() for p in _SKIPPED_PSEUDO)
    ]


def _specificity(selector: str) -> tuple[int, int, int]:
    """(ids, classes and attributes and pseudo-classes, types), counted on the text."""
    ids = selector.count("#")
    classes = selector.count(".") + selector.count("[") + selector.count(":") - 2 * selector.count("::")
    words = selector.replace(">", " ").replace("+", " ").replace("~", " ").split()
    types = sum(1 for word in words if word[:1].isalpha())
    return ids, classes, types
