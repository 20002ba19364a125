"""visible_text (milter/visible.py) against text.py's _html_text on the HTML parts of corpus mail.

For each message (a sample spread evenly over each collection's ham and spam), its HTML parts are
found and decoded as message->text finds and decodes them; each part is then read by both
functions, alternately, once each:

- ``_html_text`` the way _extract calls it (comments, CSS and scripts cut by regex, the first
  12K characters parsed), timed with that cut;
- ``visible_text`` on the same decoded text (it reads the <style> elements, then makes the same
  cut), timed with its caches as they are (as in a running daemon) and emptied first.

Each time is the least of --repeat runs (the machine is shared: the least is the cost, the rest
is other work); the cold one is run once, after its caches are emptied.

Prints the median and p99 microseconds per part for each, the same per message (with the
message's whole message->text time today and the difference the swap would make), the parts
where nothing is hidden whose text, tags or link targets differ (with examples), and how often
each ``hidden:`` token appears, by collection and label.

    MILTER_CORPUS=.cache/corpus .venv/bin/python bench/bench_visible.py --messages 3000
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

from milter import text as T
from milter import visible as V


def html_parts(raw: bytes) -> list[str]:
    """The decoded HTML parts of a message, as _extract finds them, before its regex cut."""
    out = []
    for part in T._walk(raw[: T.MAX_RAW_BYTES]):
        ctype, params = part.content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        cte = "".join((part.header("content-transfer-encoding") or "").split()).lower()
        charset = params.get("charset", "").strip().lower()
        text = T.decode_bytes(T._payload(part, cte), charset or None)
        if ctype == "text/html" or text.lstrip()[:6].lower() == "<html>":
            out.append(text[: T.MAX_HTML_CHARS * 4])
    return out


def old(text: str) -> tuple[str, list[str], set[str]]:
    return T._html_text(T._INVISIBLE.sub(" ", text[: T.MAX_HTML_CHARS * 4])[: T.MAX_HTML_CHARS])


def clear_caches() -> None:
    V._STYLE_CACHE.clear()
    V._SHEET_CACHE.clear()
    V._COLOUR_CACHE.clear()
    V._LEGACY_CACHE.clear()
    V._HINT_CACHE.clear()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("MILTER_CORPUS", ".cache/corpus")))
    parser.add_argument("--messages", type=int, default=3000, help="messages with HTML parts to read")
    parser.add_argument("--examples", type=int, default=5, help="differing parts to show")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per part and function; the least counts")
    args = parser.parse_args()

    # Messages with HTML parts, the same share of each collection and label.
    folders = sorted(p for p in args.corpus.glob("*/*") if p.is_dir())
    rng = random.Random(args.seed)
    candidates: dict[Path, list[Path]] = {}
    for folder in folders:
        files = sorted(folder.iterdir())
        rng.shuffle(files)
        candidates[folder] = files
    per_folder = max(1, args.messages // len(folders))
    chosen: list[tuple[str, str, bytes, list[str]]] = []
    for folder, files in candidates.items():
        taken = 0
        for path in files:
            if taken >= per_folder:
                break
            raw = path.read_bytes()
            parts = html_parts(raw)
            if parts:
                chosen.append((folder.parent.name, folder.name, raw, parts))
                taken += 1

    part_old: list[float] = []
    part_warm: list[float] = []
    part_cold: list[float] = []
    msg_today: list[float] = []
    msg_after: list[float] = []
    tokens: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    parts_by: Counter[tuple[str, str]] = Counter()
    differ: Counter[tuple[str, str]] = Counter()
    examples: list[str] = []
    clean: Counter[str] = Counter()
    for collection, label, raw, parts in chosen:
        today = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            T.message_text(raw)
            today = min(today, time.perf_counter() - start)
        delta = 0.0
        for text in parts:
            t_old = t_warm = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                before = old(text)
                t_old = min(t_old, time.perf_counter() - start)
                start = time.perf_counter()
                after = V.visible_text(text)
                t_warm = min(t_warm, time.perf_counter() - start)
            clear_caches()
            start = time.perf_counter()
            V.visible_text(text)
            t_cold = time.perf_counter() - start
            part_old.append(t_old * 1e6)
            part_warm.append(t_warm * 1e6)
            part_cold.append(t_cold * 1e6)
            delta += t_warm - t_old
            parts_by[collection, label] += 1
            tokens[collection, label].update(after.hidden)
            if after.hidden - {"hidden:mso-hide", "hidden:spacer"}:
                continue
            kind = "nothing hidden" if not after.hidden else "spacer or mso-hide only"
            clean[kind] += 1
            if after.text != before[0]:
                same_words = after.text.split() == before[0].split()
                differ[kind, "text (spaces only)" if same_words else "text (words)"] += 1
                if not same_words and len(examples) < args.examples:
                    a, b = before[0].split(), after.text.split()
                    examples.append(f"{kind}: {len(a)} words before, {len(b)} after: {set(a) ^ set(b)}"[:300])
            if set(after.tags) != before[2]:
                differ[kind, "tags"] += 1
            if list(after.urls) != before[1]:
                differ[kind, "urls"] += 1
        msg_today.append(today * 1e6)
        msg_after.append((today + delta) * 1e6)

    counts = ", ".join(f"{c}/{label} {n}" for (c, label), n in sorted(parts_by.items()))
    print(f"{len(chosen)} messages, {len(part_old)} HTML parts ({counts})")
    for name, values in (
        ("_html_text (with its regex cut)", part_old),
        ("visible_text, caches warm", part_warm),
        ("visible_text, caches emptied", part_cold),
        ("message->text today, per message", msg_today),
        ("message->text with visible_text (estimated)", msg_after),
    ):
        print(f"  {name:45s} median {statistics.median(values):7.1f} us   p99 {pct(values, 0.99):8.1f} us")
    print(f"parts hiding no words: {dict(clean)}; differing from _html_text: {dict(differ) or 'none'}")
    for example in examples:
        print("   ", example)
    names = sorted({t for c in tokens.values() for t in c})
    keys = sorted(tokens)
    print("hidden tokens, parts with each, by " + ", ".join(f"{c}/{label}" for c, label in keys) + ":")
    for name in names:
        print(f"  {name:22s}" + "".join(f"{tokens[k][name]:8d}" for k in keys))


if __name__ == "__main__":
    main()
