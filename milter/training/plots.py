"""PNG plots for `milter evaluate --report DIR`: ROC, score histograms, reliability."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from milter.training import metrics
from milter.training.evaluate import SystemScores


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc(path: Path, labels: np.ndarray, systems: Sequence[SystemScores]) -> None:
    """ROC curves with a log false-positive axis: the low-FPR end is where spam filters differ."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for system in systems:
        fpr, tpr, _ = roc_curve(labels, system.probabilities)
        ax.step(np.maximum(fpr, 1e-4), tpr, where="post", label=system.name)
    for x in (0.001, 0.01):
        ax.axvline(x, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("ham false-positive rate (log)")
    ax.set_ylabel("spam recall")
    ax.set_title(f"ROC on {int((labels == 0).sum())} ham, {int((labels == 1).sum())} spam")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def histogram(path: Path, labels: np.ndarray, p: np.ndarray, thresholds: Sequence[tuple[str, float]]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    bins = np.linspace(0.0, 1.0, 51)
    ax.hist(p[labels == 0], bins=bins, alpha=0.6, label="ham", color="tab:blue")
    ax.hist(p[labels == 1], bins=bins, alpha=0.6, label="spam", color="tab:red")
    for name, threshold in thresholds:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
        ax.text(
            threshold,
            0.35,
            f" {name} p>={threshold:g}",
            rotation=90,
            fontsize=8,
            transform=ax.get_xaxis_transform(),
            horizontalalignment="right",
        )
    ax.set_yscale("log")
    ax.set_xlabel("spam probability")
    ax.set_ylabel("messages (log)")
    ax.set_title("Scores of ham and spam, with the rules' thresholds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def reliability(path: Path, labels: np.ndarray, p: np.ndarray) -> None:
    plt = _pyplot()
    table = [row for row in metrics.reliability(labels, p) if row["count"]]
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    ax.plot(
        [row["mean_probability"] for row in table],
        [row["spam_rate"] for row in table],
        marker="o",
        label=f"model (ECE {metrics.ece(labels, p):.4f})",
    )
    for row in table:
        ax.annotate(str(int(row["count"])), (row["mean_probability"], row["spam_rate"]), fontsize=7)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed spam rate")
    ax.set_title("Reliability (10 bins; numbers: messages)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    directory: Path,
    labels: np.ndarray,
    systems: Sequence[SystemScores],
    thresholds: Sequence[tuple[str, float]],
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "roc.png", directory / "histogram.png", directory / "reliability.png"]
    roc(paths[0], labels, systems)
    histogram(paths[1], labels, systems[0].probabilities, thresholds)
    reliability(paths[2], labels, systems[0].probabilities)
    return paths
