"""Leave one source out: how the model does on mail from a source it has never seen.

A random or time split of one collection flatters a model: the same lists, hosts and campaigns
are on both sides. Here, for each source (a group of milter.training.corpus: one mailing list,
one folder), a model is trained exactly as `milter train` trains (fit_calibrated) on all the
*other* mail, and that source's mail is scored with it. The comparison systems (the word TF-IDF
yardstick, bogofilter) are trained on the same mail the model's weights were fitted on.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from milter.training.corpus import LabelledMessage
from milter.training.evaluate import bogofilter, yardstick
from milter.training.train import TrainConfig, fit_calibrated


@dataclass(frozen=True)
class HeldOut:
    """One source's mail scored by systems that never saw it: name -> probabilities."""

    source: str
    labels: np.ndarray
    probabilities: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Job:
    messages: Sequence[LabelledMessage]
    texts: Sequence[str]
    rewrapped: Mapping[str, Sequence[str]]
    config: TrainConfig
    compare: tuple[str, ...]


_job: _Job | None = None  # what forked workers read (inherited, not pickled)


def _hold_out(source: str) -> HeldOut:
    assert _job is not None
    job = _job
    keep = [i for i, m in enumerate(job.messages) if m.group != source]
    held = [i for i, m in enumerate(job.messages) if m.group == source]
    fitted = fit_calibrated(
        [job.messages[i] for i in keep],
        [job.texts[i] for i in keep],
        job.config,
        rewrapped={style: [texts[i] for i in keep] for style, texts in job.rewrapped.items()},
    )
    labels = np.array([job.messages[i].label for i in held], dtype=np.int64)
    scores = {"milter": fitted.fitted.probabilities([job.texts[i] for i in held])}
    # The comparison systems learn from the mail the model's final weights were fitted on.
    train_raws = [job.messages[keep[j]].raw for j in fitted.fit_ix]
    train_labels = np.array([job.messages[keep[j]].label for j in fitted.fit_ix], dtype=np.int64)
    held_raws = [job.messages[i].raw for i in held]
    for name in job.compare:
        if name == "yardstick":
            scores[name] = yardstick(train_raws, train_labels, held_raws).probabilities
        else:
            bogo = bogofilter(train_raws, train_labels, held_raws, header_tokens=name == "bogofilter")
            if bogo is not None:
                scores[name] = bogo.probabilities
    return HeldOut(source, labels, scores)


def leave_one_source_out(
    messages: Sequence[LabelledMessage],
    texts: Sequence[str],
    rewrapped: Mapping[str, Sequence[str]],
    config: TrainConfig,
    sources: Sequence[str],
    compare: Sequence[str] = (),
    jobs: int = 1,
    log: Callable[[str], None] = lambda _: None,
) -> list[HeldOut]:
    """For each of `sources` (message groups), the scores of its mail by systems trained without it."""
    global _job
    unknown = set(compare) - {"yardstick", "bogofilter", "bogofilter-noheaders"}
    if unknown:
        raise ValueError(f"unknown comparison(s) {sorted(unknown)}")
    _job = _Job(messages, texts, rewrapped, config, tuple(compare))
    try:
        results: list[HeldOut] = []
        if jobs > 1:
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                for held in pool.imap(_hold_out, sources):
                    log(f"left out {held.source}: {len(held.labels)} messages")
                    results.append(held)
        else:
            for source in sources:
                results.append(_hold_out(source))
                log(f"left out {source}: {len(results[-1].labels)} messages")
        return results
    finally:
        _job = None
