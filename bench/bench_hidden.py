#!/usr/bin/env python3
"""Hidden ham text in real spam: how much of the spam the model junks stays junked.

The outside check hides a block of ordinary personal text in junked spam, by the CSS tricks of
today's spam, and asks that >= 95 % of it stays junked. Here the same is done to corpus mail: a
seeded sample of the modern corpus's spam with an HTML part that the model junks (p >= 0.9); in
each HTML part a block of ham text (the first words of a modern ham message of the corpus,
drawn at random for each spam) is put after <body> inside an element hidden by one trick at a
time, the part re-encoded (base64, UTF-8), the rest of the message as it was. A plain
alternative is left alone (as the spammer leaves it). The same block shown (no trick) is the
control: visible ham text may move the score, hidden must not. With --chars the block is
repeated to that many characters: a block longer than the markup read of a part (12 KB) must
not push the spam's own words out of it (message->text version 19). With --via the tricks'
declarations are put in a <style> rule instead of the inline style: by class, in an @layer
block (marked !important) or in an @container rule the reader's pane matches (message->text
version 22), or nested in a rule for body (CSS Nesting, read since 2026-12-08); the trick
`details-closed` folds the block into a <details> element without `open` whatever --via.

With --pitch-in-span no ham is added: the spam's own body is put in a <span> with each trick's
declarations instead. A span is an inline box, and chromium draws its text whatever a size, an
overflow, a transform or a top margin says (2026-12-08): with those tricks every reader still
sees the pitch, and the model must read it too (stay junked); with the others the pitch is
hidden from the reader as well, and what the model gives it does not matter.

Prints, per trick, how many stay junked and the median and largest drop of p, as a markdown
table (docs/model.md keeps it).

    bench/bench_hidden.py [--corpus DIR] [--model FILE] [--sample N] [--words N] [--chars N] [--seed N]
                        [--via inline|class|layer|container|nesting] [--pitch-in-span]
"""

from __future__ import annotations

import argparse
import email
import email.policy
import random
import re
import statistics
import sys
from collections.abc import Callable, Iterable
from email.message import Message as EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.model import load_model  # noqa: E402
from milter.text import message_text  # noqa: E402
from milter.training.synthetic import HIDING_STYLES  # noqa: E402

DETAILS = "details-closed"
TRICKS = {"shown (control)": "", **HIDING_STYLES, DETAILS: ""}
# Where a trick's declarations go: the inline style, or a <style> rule for a class, as is or
# inside an at-rule that applies to the reader.
VIAS = {
    "inline": "",
    "class": "{rule}",
    "layer": "@layer milter-bench {{ {rule} }}",
    "container": "@container (min-width: 1px) {{ {rule} }}",
    "nesting": "body {{ margin: 0; {rule} }}",  # CSS Nesting: `body .mb`
}
_BODY = re.compile(r"<body[^>]*>", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+|[.,?!]")


def html_parts(message: EmailMessage) -> list[EmailMessage]:
    return [part for part in message.walk() if part.get_content_type() == "text/html"]


def ham_block(raw: bytes, words: int, chars: int = 0) -> str:
    """The first `words` words of a ham message's text, repeated to `chars` characters if
    that is more."""
    text = message_text(raw)
    body = [t for t in text.split() if ":" not in t and not t.startswith("num") and t.isalpha()]
    block = " ".join(body[:words])
    if not block or len(block) >= chars:
        return block
    return " ".join([block] * (chars // (len(block) + 1) + 1))[:chars]


def hiding(block: str, trick: str, style: str, via: str) -> str:
    """The markup that holds `block` hidden by `trick` (shown where the trick is the control)."""
    if trick == DETAILS:
        return f"<details><summary>&nbsp;</summary>{block}</details>"
    if not style:
        return f"<div>{block}</div>"
    if via == "inline":
        return f"<div style='{style}'>{block}</div>"
    if via == "layer":
        # A rule in no layer beats a layered one: a sender who hides text in a layer, whatever
        # the message's own rules say, marks it !important (which turns the order round).
        style = "; ".join(f"{item.strip()} !important" for item in style.split(";") if item.strip())
    sheet = VIAS[via].format(rule=f".mb {{ {style} }}")
    return f"<style>{sheet}</style><div class='mb'>{block}</div>"


_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def in_span(style: str) -> Callable[[str], str]:
    """The edit that puts an HTML part's body in a <span> with `style` (a plain one for the control)."""

    def edit(html: str) -> str:
        start = _BODY.search(html)
        head, body = (html[: start.end()], html[start.end() :]) if start else ("", html)
        end = _BODY_END.search(body)
        body, tail = (body[: end.start()], body[end.start() :]) if end else (body, "")
        attribute = f" style='{style}'" if style else ""
        return f"{head}<span{attribute}>{body}</span>{tail}"

    return edit


def after_body(element: str) -> Callable[[str], str]:
    """The edit that puts `element` right after an HTML part's <body>."""

    def edit(html: str) -> str:
        found = _BODY.search(html)
        return html[: found.end()] + element + html[found.end() :] if found else element + html

    return edit


def with_hidden(message: EmailMessage, element: str | Callable[[str], str]) -> bytes:
    # A copy per trick: the parse is cheap next to scoring, and the parts are changed in place.
    copy = email.message_from_bytes(
        message.as_bytes(policy=email.policy.compat32), policy=email.policy.compat32
    )
    for part in html_parts(copy):
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        html = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
        html = (after_body(element) if isinstance(element, str) else element)(html)
        del part["Content-Transfer-Encoding"]
        part.set_payload(html, charset="utf-8")  # base64 for utf-8
    return copy.as_bytes(policy=email.policy.compat32)


def stay_junked(scores: Iterable[tuple[float, float]]) -> str:
    """The table cells for one trick, from (p before, p after) of each junked message: how many
    stay junked (p >= 0.9), the median change of p and the largest drop."""
    pairs = list(scores)
    changes = [after - before for before, after in pairs]
    kept = sum(after >= 0.9 for _, after in pairs)
    return (
        f"{kept} of {len(changes)} ({100 * kept / len(changes):.1f} %) "
        f"| {statistics.median(changes):+.3f} | {-min(changes):.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=ROOT / ".cache/corpus")
    parser.add_argument("--model", type=Path, default=ROOT / "model/spam.onnx")
    parser.add_argument("--sample", type=int, default=600, help="junked spam with HTML to attack")
    parser.add_argument("--words", type=int, default=120, help="words of ham text hidden")
    parser.add_argument("--chars", type=int, default=0, help="repeat the block to this many characters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--via", choices=sorted(VIAS), default="inline", help="where the tricks' declarations go"
    )
    parser.add_argument(
        "--pitch-in-span", action="store_true", help="put the spam's own body in a span with each trick"
    )
    args = parser.parse_args()
    model = load_model(args.model)

    def p(raw: bytes) -> float:
        return model.score_texts([message_text(raw)])[0].probability

    rng = random.Random(args.seed)
    spam = sorted((args.corpus / "modern/spam").glob("*.eml"))
    ham = sorted((args.corpus / "modern/ham").glob("*.eml"))
    rng.shuffle(spam)
    chosen: list[tuple[EmailMessage, float, str]] = []
    for path in spam:
        if len(chosen) == args.sample:
            break
        raw = path.read_bytes()
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        if not html_parts(message):
            continue
        before = p(raw)
        if before < 0.9:
            continue
        block = ham_block(rng.choice(ham).read_bytes(), args.words, args.chars)
        chosen.append((message, before, block))
    size = f"{args.words} words of ham each"
    if args.chars:
        size += f", repeated to {args.chars} characters"
    if args.pitch_in_span:
        print(f"{len(chosen)} junked modern spam with HTML (seed {args.seed}); each body in a <span>\n")
        print("| trick on the span | stay junked (p >= 0.9) | median change of p | largest drop |")
        print("|---|---|---|---|")
        for trick, style in {"plain span (control)": "", **HIDING_STYLES}.items():
            cells = stay_junked(
                (before, p(with_hidden(message, in_span(style)))) for message, before, _ in chosen
            )
            print(f"| {trick} | {cells} |", flush=True)
        return 0
    print(f"{len(chosen)} junked modern spam with HTML (seed {args.seed}); {size}; via {args.via}\n")
    print("| trick | stay junked (p >= 0.9) | median change of p | largest drop |")
    print("|---|---|---|---|")
    for trick, style in TRICKS.items():
        cells = stay_junked(
            (before, p(with_hidden(message, hiding(block, trick, style, args.via))))
            for message, before, block in chosen
        )
        print(f"| {trick} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
