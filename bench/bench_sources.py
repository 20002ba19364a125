#!/usr/bin/env python3
"""Leave-one-source-out and per-source time splits: the model's figures on mail it never saw.

For each source of the modern corpus (one mailing list, the shipping notices, the DMARC
reports), a model is trained as `milter train` trains, on all the other mail (the old corpora
included), and that source's mail is scored; the yardstick and bogofilter are trained on the same
mail (--compare). Then one model trained on everything gives the time split: the latest slice of
every source (and of the old corpora) is validation, scored per source. Prints markdown tables
(docs/model.md keeps them) and writes the raw figures as JSON with --out.

message->text of every message and of its rewrapped copies is cached under .cache/texts/, keyed
by the code that makes it, so that trying training settings does not redo it.

    bench/bench_sources.py [--corpus DIR] [--jobs N] [--compare yardstick bogofilter] [--out FILE]
        [--hard-ham] [--calibration-ham-weights W ...]

--hard-ham leaves SpamAssassin's hard_ham folder (commercial mail people wanted: the corpora's
nearest to newsletters) out as one more source. --calibration-ham-weights reads the model
calibrated with each of those weights from the same fits, one more table each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.training import metrics  # noqa: E402
from milter.training.corpus import HAM, SPAM, LabelledMessage, load_labelled  # noqa: E402
from milter.training.evaluate import yardstick_text  # noqa: E402
from milter.training.holdout import HeldOut, group_source, leave_one_source_out, weight_key  # noqa: E402
from milter.training.train import Rewrapped, TrainConfig, fit_calibrated, texts_of  # noqa: E402

# The code whose output the text cache holds.
TEXT_CODE = ("milter/text.py", "milter/visible.py", "milter/signals.py", "milter/training/reencode.py")
SHORT_BODY = 200  # characters: what "short personal mail" means in the figures
HARD_HAM = "spamassassin/hard_ham"  # the source --hard-ham leaves out


def source_of(message: LabelledMessage) -> str:
    """The message's group, but SpamAssassin's hard_ham folder is a source of its own."""
    return HARD_HAM if Path(message.source).name.startswith("hard_ham") else message.group


def corpus_paths(corpus: Path) -> tuple[list[Path], list[Path]]:
    ham = [corpus / "spamassassin/ham", corpus / "trec07p-early/ham", corpus / "modern/ham"]
    spam = [corpus / "spamassassin/spam", corpus / "trec07p-early/spam", corpus / "modern/spam"]
    return ham, spam


def cached_texts(
    messages: Sequence[LabelledMessage], styles: Sequence[str], jobs: int
) -> tuple[list[str], dict[str, list[str]]]:
    digest = hashlib.sha256()
    for name in TEXT_CODE:
        path = ROOT / name
        digest.update(path.read_bytes() if path.exists() else b"")
    for message in messages:
        digest.update(message.source.encode())
    cache = ROOT / ".cache/texts" / f"{digest.hexdigest()[:16]}.pickle"
    if cache.exists():
        texts, rewrapped = pickle.loads(cache.read_bytes())
        if all(style in rewrapped for style in styles):
            return texts, rewrapped
    raws = [m.raw for m in messages]
    texts = texts_of(raws, len(raws), jobs)
    rewrapped = {style: texts_of(raws, len(raws), jobs, text_of=Rewrapped(style)) for style in styles}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps((texts, rewrapped)))
    return texts, rewrapped


def body_chars(raw: bytes) -> int:
    """Characters of the decoded text parts (the yardstick's view without the subject)."""
    text = yardstick_text(raw)
    return len(text.partition("\n")[2].strip())


def row(name: str, y: np.ndarray, p: np.ndarray) -> str:
    ham, spam = p[y == HAM], p[y == SPAM]

    def share(values: np.ndarray, threshold: float) -> str:
        if not values.size:
            return "-"
        n = int((values >= threshold).sum())
        return f"{n} ({100 * n / values.size:.2f} %)" if n else "0"

    auc = "-"
    at_01 = "-"
    if ham.size and spam.size:
        figures = metrics.figures(y, p)
        auc = f"{figures['one_minus_auc_percent']:.3f}"
        at_01 = f"{100 * float(figures['recall_at_0.1%_fpr']):.1f} %"  # type: ignore[arg-type]
    spam90 = f"{100 * (spam >= 0.9).mean():.1f} %" if spam.size else "-"
    spam50 = f"{100 * (spam >= 0.5).mean():.1f} %" if spam.size else "-"
    return (
        f"| {name} | {ham.size} | {share(ham, 0.9)} | {share(ham, 0.5)} | {spam.size} | {spam90} | {spam50}"
        f" | {auc} | {at_01} |"
    )


HEADER = (
    "| source | ham | ham p>=0.9 | ham p>=0.5 | spam | spam p>=0.9 | spam p>=0.5 | (1-AUC) % "
    "| recall @0.1 % FPR |\n|---|---|---|---|---|---|---|---|---|"
)


def short_ham(messages: Sequence[LabelledMessage], ix: Sequence[int], p: np.ndarray) -> str:
    ham = [j for j, i in enumerate(ix) if messages[i].label == HAM]
    short = [j for j in ham if body_chars(messages[ix[j]].raw) < SHORT_BODY]
    if not ham:
        return "no ham"
    at = lambda js, t: int((p[js] >= t).sum()) if js else 0  # noqa: E731
    return (
        f"ham at p>=0.5: all {at(ham, 0.5)} of {len(ham)} ({100 * at(ham, 0.5) / len(ham):.2f} %), "
        f"bodies under {SHORT_BODY} characters {at(short, 0.5)} of {len(short)}"
        f" ({100 * at(short, 0.5) / max(1, len(short)):.2f} %);"
        f" at p>=0.9: all {at(ham, 0.9)}, short {at(short, 0.9)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=ROOT / ".cache/corpus")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--compare", nargs="*", default=[], choices=["yardstick", "bogofilter"])
    parser.add_argument("--sources", nargs="*", help="only these modern sources (default: all)")
    parser.add_argument("--no-time-split", action="store_true", help="leave-one-source-out only")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--calibrate-on", nargs="*", default=[], help="as milter train --calibrate-on")
    parser.add_argument("--calibration-ham-weight", type=float, default=TrainConfig.calibration_ham_weight)
    parser.add_argument("--C", type=float, default=TrainConfig.C, dest="C")
    parser.add_argument("--source-balance", type=float, default=TrainConfig.source_balance)
    parser.add_argument("--min-sources", type=int, default=TrainConfig.min_sources)
    parser.add_argument("--clip", type=float, default=TrainConfig.clip, help="as milter train --clip")
    parser.add_argument(
        "--fuse-nb", type=float, default=TrainConfig.fuse_nb, help="as milter train --fuse-nb"
    )
    parser.add_argument("--exclude-prefix", nargs="*", default=list(TrainConfig.exclude_prefixes))
    parser.add_argument("--exclude-token", nargs="*", default=[], help="as milter train --exclude-token")
    parser.add_argument("--hard-ham", action="store_true", help="leave out SpamAssassin's hard_ham too")
    parser.add_argument(
        "--calibration-ham-weights", nargs="*", type=float, default=[], help="more tables, one per weight"
    )
    args = parser.parse_args()
    config = TrainConfig(
        jobs=args.jobs,
        calibrate_on=tuple(args.calibrate_on),
        calibration_ham_weight=args.calibration_ham_weight,
        C=args.C,
        source_balance=args.source_balance,
        min_sources=args.min_sources,
        clip=args.clip,
        fuse_nb=args.fuse_nb,
        exclude_prefixes=tuple(args.exclude_prefix),
        exclude_words=(*TrainConfig.exclude_words, *args.exclude_token),
    )
    shown = {k: v for k, v in asdict(config).items() if k != "exclude_words"}
    print(f"# {shown}, exclude_words: {len(config.exclude_words)} words, also {args.exclude_token}")
    started = time.time()
    messages = list(load_labelled(*corpus_paths(args.corpus)))
    print(f"# {len(messages)} messages, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    texts, rewrapped = cached_texts(messages, config.augment, args.jobs)
    print(f"# texts ready after {time.time() - started:.0f} s", flush=True)
    modern = sorted({m.group for m in messages if "/modern/" in m.group})
    if args.sources:
        modern = [g for g in modern if Path(g).name in args.sources]
    if args.hard_ham:
        modern.append(HARD_HAM)
    held = leave_one_source_out(
        messages,
        texts,
        rewrapped,
        config,
        modern,
        args.compare,
        args.jobs,
        lambda line: print("#", line, flush=True),
        source_of=source_of if args.hard_ham else group_source,
        calibration_ham_weights=args.calibration_ham_weights,
    )
    out: dict[str, object] = {"leave_one_source_out": {}, "time_split": {}}
    print("\n## Leave one source out\n")
    weighted = [weight_key(w) for w in args.calibration_ham_weights]
    for system in ["milter", *weighted, *args.compare]:
        print(f"\n### {system}\n\n{HEADER}")
        for h in held:
            if system in h.probabilities:
                print(row(Path(h.source).name, h.labels, h.probabilities[system]))
                out["leave_one_source_out"].setdefault(system, {})[Path(h.source).name] = {  # type: ignore[union-attr]
                    "labels": h.labels.tolist(),
                    "p": [round(float(x), 5) for x in h.probabilities[system]],
                }
    pooled = _pooled(messages, held)
    print(f"\nshort ham, pooled over the left-out sources: {pooled}")
    if not args.no_time_split:
        print("\n## Time split: one model on everything, the latest slice of every source\n", flush=True)
        fit = fit_calibrated(messages, texts, config, rewrapped=rewrapped)
        val = fit.val_ix
        p = fit.fitted.probabilities([texts[i] for i in val])
        y = np.array([messages[i].label for i in val], dtype=np.int64)
        groups = [messages[i].group for i in val]
        print(HEADER)
        for group in sorted(set(groups)):
            mask = np.array([g == group for g in groups])
            print(row(Path(group).name, y[mask], p[mask]))
        mod = np.array(["/modern/" in g for g in groups])
        print(row("**modern, all**", y[mod], p[mod]))
        print(row("**old corpora, all**", y[~mod], p[~mod]))
        ece_modern, ece_old = metrics.ece(y[mod], p[mod]), metrics.ece(y[~mod], p[~mod])
        print(f"\nECE modern validation: {ece_modern:.4f}; old: {ece_old:.4f}")
        print(f"short ham, validation slice: {short_ham(messages, val, p)}")
        out["time_split"] = {"groups": groups, "labels": y.tolist(), "p": [round(float(x), 5) for x in p]}
    if args.out:
        args.out.write_text(json.dumps(out))
    print(f"\n# {time.time() - started:.0f} s in all")
    return 0


def _pooled(messages: Sequence[LabelledMessage], held: Sequence[HeldOut]) -> str:
    by_group: dict[str, list[int]] = {}
    for i, m in enumerate(messages):
        by_group.setdefault(source_of(m), []).append(i)
    ix: list[int] = []
    ps: list[np.ndarray] = []
    for h in held:
        if h.source == HARD_HAM:  # the modern corpus's short ham, as before --hard-ham
            continue
        ix.extend(by_group[h.source])
        ps.append(h.probabilities["milter"])
    return short_ham(messages, ix, np.concatenate(ps)) if ps else "-"


if __name__ == "__main__":
    sys.exit(main())
