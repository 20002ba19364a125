"""Leave one source out: how the model does on mail from a source it has never seen.

A random or time split of one collection flatters a model: the same lists, hosts and campaigns
are on both sides. Here, for each source (a group of milter.training.corpus: one mailing list,
one folder), a model is trained exactly as `milter train` trains (fit_calibrated) on all the
*other* mail, and that source's mail is scored with it. The comparison systems (the word TF-IDF
yardstick, bogofilter) are trained on the same mail the model's weights were fitted on.

A source is a message group by default; `source_of` can draw other lines (the SpamAssassin
corpus's hard_ham folder, its commercial mail, is a source of its own in bench/bench_sources.py).
Other calibration ham weights can be read from the same fits (`calibration_ham_weights`): the
weights do not depend on it, only the Platt fit does.
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
    probabilities: dict[str, np.ndarray]  # "milter", "milter@<weight>", the comparisons


def weight_key(ham_weight: float) -> str:
    """The probabilities' key for the model calibrated with another calibration ham weight."""
    return f"milter@{ham_weight:g}"


def group_source(message: LabelledMessage) -> str:
    return message.group


@dataclass(frozen=True)
class _Job:
    messages: Sequence[LabelledMessage]
    texts: Sequence[str]
    rewrapped: Mapping[str, Sequence[str]]
    config: TrainConfig
    compare: tuple[str, ...]
    source_of: Callable[[LabelledMessage], str]
    calibration_ham_weights: tuple[float, ...]


_job: _Job | None = None  # what forked workers read (inherited, not pickled)


def _hold_out(source: str) -> HeldOut:
    assert _job is not None
    job = _job
    keep = [i for i, m in enumerate(job.messages) if job.source_of(m) != source]
    held = [i for i, m in enumerate(job.messages) if job.source_of(m) == source]
    fitted = fit_calibrated(
        [job.messages[i] for i in keep],
        [job.texts[i] for i in keep],
        job.config,
        rewrapped={style: [texts[i] for i in keep] for style, texts in job.rewrapped.items()},
    )
    labels = np.array([job.messages[i].label for i in held], dtype=np.int64)
    held_texts = [job.texts[i] for i in held]
    scores = {"milter": fitted.fitted.probabilities(held_texts)}
    for weight in job.calibration_ham_weights:
        scores[weight_key(weight)] = fitted.recalibrated(weight).probabilities(held_texts)
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
    source_of: Callable[[LabelledMessage], str] = group_source,
    calibration_ham_weights: Sequence[float] = (),
) -> list[HeldOut]:
    """For each of `sources` (values of `source_of`: message groups by default), the scores of its
    mail by systems trained without it."""
    global _job
    unknown = set(compare) - {"yardstick", "bogofilter", "bogofilter-noheaders"}
    if unknown:
        raise ValueError(f"unknown comparison(s) {sorted(unknown)}")
    _job = _Job(messages, texts, rewrapped, config, tuple(compare), source_of, tuple(calibration_ham_weights))
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
