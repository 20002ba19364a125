#!/usr/bin/env python3
"""visible_text against chromium: is the text hidden where the browser draws none of it?

Seeded random markup (nested elements of the tags mail uses, each with a few declarations
drawn from the ways of hiding, showing and boxing text, inline or by a class rule) holds one
run of words in its innermost element. Each case is drawn by Debian's chromium, headless,
through selenium, twice: as is, and with the words' glyphs made invisible by
`visibility:hidden` on a span right around them (the layout stays). If the two screenshots
differ, the browser drew the words; if not, it hid them. visible_text reads the same markup.
Links are not underlined (an underline alone is drawn where the words are not). The page has
no doctype, as most mail does not: chromium and lexbor both parse it in quirks mode (where a
<table> does not close a <p>).

Values where the reading deliberately counts as hidden what a browser draws faintly (opacity
0.1 and less, a font or box of 1px) are not drawn, and neither is `mso-hide:all` (hidden from
Outlook, shown by chromium). Known deviations are counted apart: a table cell of zero size
with overflow hidden (docs/model.md, Limits).

Prints how many cases agree, the disagreements (markup, chromium, the reading) and writes them
as JSON with --out.

With --attributes some elements also get a presentational attribute (`bgcolor` on cells, `color`
and `size` on `<font>`, `hidden`).

    bench/bench_chromium.py [--cases N] [--seed N] [--attributes] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.visible import visible_text  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
WORDS = "dear friend the meeting moved"

DECLARATIONS = {
    "display": ["none", "block", "inline", "inline-block", "flex", "grid", "table-cell", "list-item"],
    "visibility": ["hidden", "visible"],
    "opacity": ["0", "0.5", "1"],
    "font-size": ["0", "20px"],
    "position": ["absolute", "relative", "static", "fixed"],
    "left": ["-9999px", "10px"],
    "top": ["-9999px"],
    "width": ["0", "300px"],
    "height": ["0", "300px"],
    "max-height": ["0"],
    "overflow": ["hidden", "visible"],
    "transform": ["scale(0)", "scale(1)", "none"],
    "color": ["#fff", "#000", "transparent", "red"],
    "background-color": ["#fff", "#000"],
    "text-indent": ["-9999px", "0"],
    "margin-left": ["-9999px"],
    "margin-top": ["-9999px"],
    "clip": ["rect(0,0,0,0)"],
    "clip-path": ["inset(50%)", "none"],
    "-webkit-text-fill-color": ["transparent", "red", "currentcolor"],
    "filter": ["opacity(0)", "none"],
    "float": ["left"],
    "content-visibility": ["hidden", "visible"],
}
TAGS = ["div", "span", "p", "a", "font", "b", "td", "li", "em", "section", "xyz", "center"]


# Presentational attributes mail still carries, per tag that takes them.
ATTRIBUTES = {
    "td": ['bgcolor="#000000"', 'bgcolor="#ffffff"'],
    "font": ['color="#ffffff"', 'color="#000000"', 'size="1"'],
    "div": ["hidden"],
    "span": ["hidden"],
}


def element(
    rng: random.Random, tag: str, style: str, rules: list[str], inner: str, hints: bool = False
) -> str:
    """One element: its declarations inline or in a class rule, and with `hints` now and then
    a presentational attribute."""
    attributes = ' href="#"' if tag == "a" else ""
    if hints and tag in ATTRIBUTES and rng.random() < 0.3:
        attributes += " " + rng.choice(ATTRIBUTES[tag])
    if style:
        if rng.random() < 0.5:
            name = f"c{len(rules)}"
            rules.append(f".{name} {{ {style} }}")
            attributes += f' class="{name}"'
        else:
            attributes += f' style="{style}"'
    markup = f"<{tag}{attributes}>{inner}</{tag}>"
    if tag == "td":
        markup = f"<table><tr>{markup}</tr></table>"
    elif tag == "li":
        markup = f"<ul>{markup}</ul>"
    return markup


def case(rng: random.Random, hints: bool = False) -> str:
    """A case's body: nested elements around the words, innermost last."""
    rules: list[str] = []
    markup = f'<span class="words">{WORDS}</span>'
    for _ in range(rng.randint(1, 4)):
        properties = rng.sample(sorted(DECLARATIONS), rng.randint(0, 3))
        style = ";".join(f"{p}:{rng.choice(DECLARATIONS[p])}" for p in properties)
        markup = element(rng, rng.choice(TAGS), style, rules, markup, hints)
    sheet = f"<style>{' '.join(rules)}</style>" if rules else ""
    return sheet + markup


PAGE = (
    '<html><head><meta charset="utf-8"><style>body {{ margin: 0; background: #fff;'
    " color: #000; font-size: 40px }} a {{ text-decoration: none }} {extra}</style></head>"
    "<body>{body}</body></html>"
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--attributes", action="store_true", help="presentational attributes too (bgcolor, ...)"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=800,600")
    options.add_argument("--hide-scrollbars")
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    agree = 0
    known = 0
    disagreements: list[dict[str, object]] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            page = Path(folder) / "case.html"

            def shot(body: str, extra: str) -> bytes:
                page.write_text(PAGE.format(body=body, extra=extra), encoding="utf-8")
                driver.get(page.as_uri())
                return driver.get_screenshot_as_png()

            for _ in range(args.cases):
                body = case(rng, args.attributes)
                drawn = shot(body, "") != shot(body, ".words { visibility: hidden !important }")
                read = WORDS in " ".join(visible_text(f"<html><body>{body}</body></html>").text.split())
                if drawn == read:
                    agree += 1
                elif drawn and "<td" in body and "overflow:hidden" in body:
                    known += 1  # perhaps a cell of zero size: look at it
                    disagreements.append({"markup": body, "chromium_draws": drawn, "read_as_shown": read})
                else:
                    disagreements.append({"markup": body, "chromium_draws": drawn, "read_as_shown": read})
    finally:
        driver.quit()
    print(f"{agree} of {args.cases} cases agree; {known} known deviations; {len(disagreements)} disagree")
    for item in disagreements:
        print(
            f"- chromium {'draws' if item['chromium_draws'] else 'hides'}, read as "
            f"{'shown' if item['read_as_shown'] else 'hidden'}: {item['markup']}"
        )
    if args.out:
        args.out.write_text(json.dumps(disagreements, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
