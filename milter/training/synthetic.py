"""Synthetic labelled mail for tests and benchmarks: written here, never taken from a corpus.

The messages are made from two small vocabularies that overlap, in several MIME shapes (plain,
HTML, base64, quoted-printable, multipart), with Received dates that increase with their number,
so a model can be trained, split by time and checked end to end in seconds.
"""

from __future__ import annotations

import base64
import email.utils
import quopri
import random
from pathlib import Path

# The CSS tricks today's spam hides text with: each an inline style (the same declarations serve
# as a <style> rule's). The model tests and bench/bench_hidden.py hide ham text in spam with them.
HIDING_STYLES: dict[str, str] = {
    "display-none": "display:none",
    "offscreen": "position:absolute;left:-9999px;top:-9999px",
    "zero-box": "width:0;height:0;overflow:hidden",
    "font-size-0": "font-size:0px",
    "white-on-white": "color:#ffffff;background-color:#ffffff",
    "visibility": "visibility:hidden",
    "opacity": "opacity:0",
    "mso-hide": "mso-hide:all",  # alone: it hides from Outlook for Windows (message->text version 23)
    # Moved or shrunk out of sight without `position` (message->text version 6).
    "negative-margin": "margin-left:-9999px",
    "zero-scale": "transform:scale(0)",
    # The glyphs painted in no colour, or the box faded out by a filter (read since 2026-12-08).
    "text-fill": "-webkit-text-fill-color:transparent",
    "filter-opacity": "filter:opacity(0)",
}

HAM_WORDS = [
    "meeting",
    "project",
    "report",
    "lunch",
    "schedule",
    "thanks",
    "review",
    "draft",
    "agenda",
    "notes",
    "team",
    "budget",
    "question",
    "patch",
    "release",
    "build",
    "test",
    "deadline",
    "minutes",
    "friday",
    "monday",
    "call",
    "kernel",
    "python",
    "paper",
    "conference",
    "slides",
    "attached",
    "regards",
    "cheers",
    "please",
    "comments",
    "version",
]
SPAM_WORDS = [
    "viagra",
    "winner",
    "cheap",
    "pills",
    "offer",
    "free",
    "money",
    "click",
    "casino",
    "lottery",
    "prize",
    "credit",
    "loan",
    "discount",
    "pharmacy",
    "guaranteed",
    "limited",
    "unsubscribe",
    "bonus",
    "rolex",
    "replica",
    "deal",
    "urgent",
    "million",
    "investment",
    "cash",
    "weight",
]
COMMON_WORDS = [
    "the",
    "a",
    "to",
    "and",
    "of",
    "you",
    "your",
    "for",
    "is",
    "in",
    "this",
    "we",
    "on",
    "with",
    "it",
]
HAM_NAMES = ("Alice Example", "Bob Builder", "Carol Jones", "Dave Smith")
SPAM_NAMES = ("Best Deals", "Pharmacy Online", "Lucky Winner", "VIP Offers")

START = 1_700_000_000  # 2023-11-14: the synthetic stream's first arrival time


def _body(rng: random.Random, spam: bool, words: int) -> str:
    own = SPAM_WORDS if spam else HAM_WORDS
    other = HAM_WORDS if spam else SPAM_WORDS
    chosen = []
    for _ in range(words):
        roll = rng.random()
        pool = own if roll < 0.45 else COMMON_WORDS if roll < 0.93 else other
        chosen.append(rng.choice(pool))
    lines = [" ".join(chosen[i : i + 12]) for i in range(0, len(chosen), 12)]
    return "\n".join(lines) + "\n"


def make_message(index: int, spam: bool, seed: int = 0) -> bytes:
    """One synthetic message; `index` orders it in time (and varies its shape)."""
    rng = random.Random(seed * 1_000_003 + index * 2 + int(spam))
    when = email.utils.formatdate(START + index * 600, usegmt=True)
    name = rng.choice(SPAM_NAMES if spam else HAM_NAMES)
    domain = rng.choice(("deals.example.ru", "offers.example.cn")) if spam else "example.org"
    subject = " ".join(rng.choice(SPAM_WORDS if spam else HAM_WORDS) for _ in range(3))
    if spam and rng.random() < 0.5:
        subject = subject.upper()
    body = _body(rng, spam, rng.randint(20, 80))
    headers = [
        f"Received: from relay.example.net by mx.example.net; {when}",
        f'From: "{name}" <sender{index}@{domain}>',
        "To: someone@example.net",
        f"Subject: {subject}",
        f"Date: {when}",
        f"Message-ID: <{index}.{int(spam)}@{domain}>",
        "MIME-Version: 1.0",
    ]
    shape = index % 4
    if shape == 0:
        headers.append("Content-Type: text/plain; charset=us-ascii")
        payload = body.encode("ascii")
    elif shape == 1:
        link = f"http://www.{domain}/go" if spam else "https://wiki.example.org/page"
        html = f"<html><body><p>{body}</p><a href='{link}'>link</a><script>x()</script></body></html>"
        headers += ["Content-Type: text/html; charset=utf-8", "Content-Transfer-Encoding: base64"]
        payload = base64.encodebytes(html.encode("utf-8"))
    elif shape == 2:
        headers += [
            "Content-Type: text/plain; charset=iso-8859-1",
            "Content-Transfer-Encoding: quoted-printable",
        ]
        payload = quopri.encodestring((body + "caf\xe9\n").encode("latin-1"))
    else:
        boundary = f"b{index}"
        headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        payload = (
            f"--{boundary}\nContent-Type: text/plain\n\n{body}\n"
            f"--{boundary}\nContent-Type: text/html\n\n<p>{body}</p>\n--{boundary}--\n"
        ).encode("ascii")
    return ("\n".join(headers) + "\n\n").encode("ascii") + payload


def write_corpus(root: Path, ham: int = 120, spam: int = 120, seed: int = 0) -> tuple[Path, Path]:
    """Write `ham` and `spam` messages as files under root/ham and root/spam; return both dirs."""
    paths = (root / "ham", root / "spam")
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    for i in range(max(ham, spam)):
        if i < ham:
            (paths[0] / f"msg.{i:05d}").write_bytes(make_message(i, spam=False, seed=seed))
        if i < spam:
            (paths[1] / f"msg.{i:05d}").write_bytes(make_message(i, spam=True, seed=seed))
    return paths
