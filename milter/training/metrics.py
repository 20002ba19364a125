"""The figures a spam model is judged by, computed from labels and probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def recall_at_fpr(y: np.ndarray, p: np.ndarray, max_fpr: float) -> float:
    """The highest spam recall at a threshold whose ham false-positive rate is <= max_fpr."""
    fpr, tpr, _ = roc_curve(y, p)
    allowed = tpr[fpr <= max_fpr]
    return float(allowed.max()) if allowed.size else 0.0


def rates_at(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """(ham false-positive rate, spam recall) for the rule `p >= threshold`."""
    ham = p[y == 0]
    spam = p[y == 1]
    fpr = float((ham >= threshold).mean()) if ham.size else 0.0
    recall = float((spam >= threshold).mean()) if spam.size else 0.0
    return fpr, recall


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width probability bin: count, mean predicted probability, observed spam rate."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": n,
                "mean_probability": float(p[mask].mean()) if n else 0.0,
                "spam_rate": float(y[mask].mean()) if n else 0.0,
            }
        )
    return table


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width bins (weighted by bin size)."""
    total = len(y)
    if not total:
        return 0.0
    return float(
        sum(
            row["count"] / total * abs(row["mean_probability"] - row["spam_rate"])
            for row in reliability(y, p, bins)
        )
    )


def figures(
    y: Sequence[int] | np.ndarray,
    p: Sequence[float] | np.ndarray,
    thresholds: Sequence[tuple[str, float]] = (),
) -> dict[str, object]:
    """The standard set: AUC, recall at 0.1 % and 1 % FPR, Brier, ECE, rates at thresholds."""
    ya = np.asarray(y, dtype=np.int64)
    pa = np.asarray(p, dtype=np.float64)
    both = 0 < ya.sum() < len(ya)
    auc = float(roc_auc_score(ya, pa)) if both else float("nan")
    out: dict[str, object] = {
        "ham": int((ya == 0).sum()),
        "spam": int((ya == 1).sum()),
        "auc": round(auc, 6),
        "one_minus_auc_percent": round((1 - auc) * 100, 4),
        "recall_at_0.1%_fpr": round(recall_at_fpr(ya, pa, 0.001), 4) if both else float("nan"),
        "recall_at_1%_fpr": round(recall_at_fpr(ya, pa, 0.01), 4) if both else float("nan"),
        "brier": round(float(np.mean((pa - ya) ** 2)), 5),
        "ece": round(ece(ya, pa), 5),
    }
    for name, threshold in thresholds:
        fpr, recall = rates_at(ya, pa, threshold)
        out[f"threshold {name} p>={threshold:g}"] = {
            "ham_fpr": round(fpr, 5),
            "spam_recall": round(recall, 5),
        }
    return out
