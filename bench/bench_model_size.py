#!/usr/bin/env python3
"""Size study of the spam model: vocabulary size and L1 pruning vs accuracy, size and speed.

Every variant is trained exactly like `milter train` (same time split, same calibration) on the
shared corpus: each fitting message is fitted next to its copies rewrapped in every style of
TrainConfig.augment, min_df counts messages (not copies), and Platt scaling sees the original
mail alone; the L1-pruned variants choose their terms on that same augmented fitting set. Each
is exported to ONNX with the same graph and measured: file size, load time, per-message
inference median (one thread, text already extracted), and the validation figures ((1-AUC) %,
spam recall at 0.1 % and 1 % ham FPR, ham FPR at p >= 0.9, ECE). The ONNX-vs-scikit-learn
maximum probability difference is printed for each.

usage: bench/bench_model_size.py [--corpus /work/corpus] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from milter.model import META_TEXT_VERSION, load_model  # noqa: E402
from milter.text import TEXT_VERSION  # noqa: E402
from milter.training import metrics  # noqa: E402
from milter.training.corpus import load_labelled, time_split  # noqa: E402
from milter.training.train import (  # noqa: E402
    FittedModel,
    Rewrapped,
    TrainConfig,
    export,
    fit,
    fitting_set,
    onnx_probabilities,
    platt,
    texts_of,
)


def fit_variant(
    texts: Sequence[str], labels: np.ndarray, config: TrainConfig, l1_c: float | None, messages: int
) -> tuple[object, object]:
    """Fit like `milter train` (texts are versions of `messages` messages, vocabulary by message);
    with l1_c, keep the terms an L1 model at that C uses on the same texts and refit L2."""
    vectorizer, classifier = fit(texts, labels, config, messages=messages)
    if l1_c is None:
        return vectorizer, classifier
    from sklearn.linear_model import LogisticRegression

    x = vectorizer.transform(texts)  # type: ignore[attr-defined]
    l1 = LogisticRegression(C=l1_c, l1_ratio=1.0, solver="liblinear", max_iter=1000, random_state=0)
    l1.fit(x, labels)
    terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)  # type: ignore[attr-defined]
    kept = [t for t, w in zip(terms, l1.coef_[0], strict=True) if w != 0.0]
    return fit(texts, labels, config, terms=kept)  # L2 over the surviving terms only


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("MILTER_CORPUS", "/work/corpus")))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    c = args.corpus
    messages = list(
        load_labelled(
            [c / "spamassassin/ham", c / "trec07p-early/ham"],
            [c / "spamassassin/spam", c / "trec07p-early/spam"],
        )
    )
    texts = texts_of((m.raw for m in messages), len(messages), args.jobs)
    base = TrainConfig()
    rewrapped = {
        style: texts_of((m.raw for m in messages), len(messages), args.jobs, text_of=Rewrapped(style))
        for style in base.augment
    }
    labels = np.array([m.label for m in messages])
    train_ix, cal_ix, val_ix = time_split(messages, 0.1, 0.1)
    ca = [texts[i] for i in cal_ix]
    va = [texts[i] for i in val_ix]
    variants: list[tuple[str, TrainConfig, float | None]] = [
        ("vocab 5k", replace(base, max_features=5_000), None),
        ("vocab 20k", replace(base, max_features=20_000), None),
        ("vocab all (min_df 2)", base, None),
        ("vocab all (min_df 1)", replace(base, min_df=1), None),
        ("L1-pruned (C=30) + L2 refit", base, 30.0),
        ("L1-pruned (C=5) + L2 refit", base, 5.0),
    ]
    rows = []
    for name, config, l1_c in variants:
        # As `milter train`: fit on the training slice (and its rewrapped copies), calibrate on
        # the next (original mail), then (refit) fit again on both and keep the calibration.
        fit_texts, fit_labels = fitting_set(train_ix, texts, rewrapped, labels, config.augment)
        vectorizer, classifier = fit_variant(fit_texts, fit_labels, config, l1_c, len(train_ix))
        fitted = FittedModel(vectorizer, classifier, (1.0, 0.0))
        fitted.platt = platt(fitted.decision(ca), labels[cal_ix], config.calibration_ham_weight)
        if config.refit:
            fit_ix = train_ix + cal_ix
            fit_texts, fit_labels = fitting_set(fit_ix, texts, rewrapped, labels, config.augment)
            vectorizer, classifier = fit_variant(fit_texts, fit_labels, config, l1_c, len(fit_ix))
            fitted = FittedModel(vectorizer, classifier, fitted.platt)
        p = fitted.probabilities(va)
        figures = metrics.figures(labels[val_ix], p, [("spam", 0.9)])
        data = export(fitted, {META_TEXT_VERSION: TEXT_VERSION}, config.top_k)
        diff = float(np.max(np.abs(onnx_probabilities(data, va) - p)))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            path.write_bytes(data)
            loads = []
            for _ in range(3):
                started = time.perf_counter()
                model = load_model(path)
                loads.append(time.perf_counter() - started)
            for text in va[:50]:
                model.score(text)
            timings = []
            for text in va:
                started = time.perf_counter()
                model.score(text)
                timings.append(time.perf_counter() - started)
        row = {
            "variant": name,
            "terms": len(vectorizer.vocabulary_),  # type: ignore[attr-defined]
            "file_kb": round(len(data) / 1024),
            "load_ms": round(statistics.median(loads) * 1000, 1),
            "infer_median_us": round(statistics.median(timings) * 1e6, 1),
            "one_minus_auc_%": figures["one_minus_auc_percent"],
            "recall@0.1%": figures["recall_at_0.1%_fpr"],
            "recall@1%": figures["recall_at_1%_fpr"],
            "ham_fpr@0.9": figures["threshold spam p>=0.9"]["ham_fpr"],  # type: ignore[index]
            "ece": figures["ece"],
            "onnx_vs_sklearn": float(f"{diff:.2g}"),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"loadavg {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
