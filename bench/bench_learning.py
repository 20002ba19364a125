#!/usr/bin/env python3
"""A simulated site learning from its users: teach part of its mail, retrain, score the rest.

The site's mail, from the corpora we have: the newsletters and marketing its users want
(SpamAssassin's hard_ham: Tesco, Amazon, CuteFTP, ...), the spam it gets (the modern corpus's
industrypack-devel spam) and its ordinary mail (two modern lists, samba-technical and
linux-audit), which nobody teaches. A seeded random half of the newsletters and of the spam is
taught with the real commands, as the outside check does:

    milter learn --ham  --store DIR NEWSLETTERS...     milter learn --spam --store DIR SPAM...
    milter retrain --store DIR --out FILE               milter score --json --model FILE REST...

and the other half, and the mail never taught, is scored before (the base model) and after (the
site model), by the shipped rules' actions.

Two base models: `holdout`, trained here as `milter train` trains (its exclusions and
calibration, without the rewrapped copies, on a sample of the old corpora) on everything but
the site's mail, so the site's mail is new to it as a real site's is; and `shipped`, the real
model, which was trained on all of this mail (its "before" is flattering).

    bench/bench_learning.py [--corpus DIR] [--base holdout shipped] [--seed N] [--spam N]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SITE_LISTS = ("samba-technical.lists.samba.org", "linux-audit.redhat.com")
SITE_SPAM = "industrypack-devel.lists.sourceforge.net"
SPAM_ACTIONS = {"spam_folder", "quarantine", "reject", "discard"}


def milter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "milter", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def holdout_base(corpus: Path, out: Path, sample: float, seed: int) -> None:
    """A model trained as milter train trains, on the corpora minus the site's mail."""
    from milter.model import META_TEXT_VERSION
    from milter.text import TEXT_VERSION
    from milter.training.corpus import HAM, load_labelled
    from milter.training.train import TrainConfig, export, fit_calibrated, texts_of

    rng = random.Random(seed)
    messages = []
    ham = [corpus / "spamassassin/ham", corpus / "trec07p-early/ham", corpus / "modern/ham"]
    spam = [corpus / "spamassassin/spam", corpus / "trec07p-early/spam", corpus / "modern/spam"]
    for m in load_labelled(ham, spam):
        name = Path(m.source).name
        if name.startswith("hard_ham") or name.startswith(SITE_LISTS if m.label == HAM else (SITE_SPAM,)):
            continue
        if "trec07p" in m.source and rng.random() > sample:
            continue
        messages.append(m)
    texts = texts_of([m.raw for m in messages], len(messages), jobs=2)
    # The shipped model's settings (docs/model.md), less the rewrapped copies.
    config = TrainConfig(
        augment=(), exclude_prefixes=("mailer:", "html:"), calibration_ham_weight=8.0, source_balance=0.7
    )
    fitted = fit_calibrated(messages, texts, config).fitted
    params = {"exclude_prefixes": list(config.exclude_prefixes), "exclude_words": list(config.exclude_words)}
    metadata = {META_TEXT_VERSION: TEXT_VERSION, "milter.params": json.dumps(params)}
    out.write_bytes(export(fitted, metadata, config.top_k))
    print(f"holdout base: {len(messages)} messages (TREC sampled at {sample:.0%}), none of the site's")


def actions(model: Path, files: list[Path]) -> list[str]:
    done = milter("score", "--json", "--model", str(model), *map(str, files))
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["action"] for line in done.stdout.splitlines()]


def rates(found: list[str]) -> str:
    junked = sum(a in SPAM_ACTIONS for a in found) / len(found)
    flagged = sum(a == "flag" for a in found) / len(found)
    return f"{junked:6.1%} junked, {flagged:5.1%} flagged"


def run_site(base: Path | None, name: str, parts: dict[str, list[Path]], work: Path) -> dict[str, object]:
    store = work / f"store-{name}"
    store.mkdir()
    for label, key in (("ham", "teach_newsletters"), ("spam", "teach_spam")):
        done = milter("learn", f"--{label}", "--store", str(store), *map(str, parts[key]))
        assert done.returncode == 0, done.stderr
    out = work / f"site-{name}.onnx"
    extra = ["--base", str(base), "--live", str(base)] if base is not None else []
    started = time.perf_counter()
    done = milter("retrain", "--store", str(store), "--out", str(out), "--json", *extra)
    seconds = time.perf_counter() - started
    result = json.loads(done.stdout)
    from milter.paths import SHIPPED_MODEL

    before_model = base if base is not None else SHIPPED_MODEL
    figures: dict[str, object] = {"retrain_seconds": round(seconds, 1), "gate": result["result"]}
    print(f"\n## base {name}: retrain {seconds:.1f} s, gate: {result['result']}")
    if done.returncode not in (0,):
        print(done.stderr)
    print("| mail (scored, never taught) | n | before | after |\n|---|---|---|---|")
    for key, title in (
        ("test_newsletters", "wanted newsletters, other half"),
        ("test_spam", "site spam, other half"),
        ("never_ham", "site's list mail, never taught"),
    ):
        before = actions(before_model, parts[key])
        after = actions(out, parts[key]) if out.exists() else before
        figures[key] = {"before": before, "after": after}
        print(f"| {title} | {len(parts[key])} | {rates(before)} | {rates(after)} |")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=ROOT / ".cache/corpus")
    parser.add_argument("--base", nargs="*", default=["holdout", "shipped"], choices=["holdout", "shipped"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--spam", type=int, default=500, help="site spam messages (half taught)")
    parser.add_argument("--never", type=int, default=300, help="messages of each site list, never taught")
    parser.add_argument("--trec-sample", type=float, default=0.25, help="share of TREC in the holdout base")
    args = parser.parse_args()
    corpus = args.corpus
    rng = random.Random(args.seed)
    newsletters = sorted((corpus / "spamassassin/ham").glob("hard_ham.*"))
    spam = rng.sample(sorted((corpus / "modern/spam").glob(f"{SITE_SPAM}.*.eml")), args.spam)
    rng.shuffle(newsletters)
    never = [
        f
        for source in SITE_LISTS
        for f in sorted((corpus / "modern/ham").glob(f"{source}.*.eml"))[: args.never]
    ]
    half_n, half_s = len(newsletters) // 2, len(spam) // 2
    parts = {
        "teach_newsletters": newsletters[:half_n],
        "test_newsletters": newsletters[half_n:],
        "teach_spam": spam[:half_s],
        "test_spam": spam[half_s:],
        "never_ham": never,
    }
    print(
        f"site: {len(newsletters)} wanted newsletters (hard_ham), {len(spam)} spam ({SITE_SPAM}); "
        f"taught {half_n} + {half_s}; {len(never)} list messages never taught"
    )
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        work = Path(tmp)
        for name in args.base:
            base = None
            if name == "holdout":
                base = work / "holdout.onnx"
                started = time.perf_counter()
                holdout_base(corpus, base, args.trec_sample, args.seed)
                print(f"(trained in {time.perf_counter() - started:.0f} s)")
            run_site(base, name, parts, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
