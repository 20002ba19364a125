"""Fit the spam model on labelled mail and write it as one self-contained ONNX file.

Split, per collection and by time: the earliest messages train the linear model, the next slice
calibrates it (Platt scaling, folded into the graph's weights), the latest slice validates it.
Then (by default) the linear model is fitted again on training + calibration mail with the same
settings and keeps that calibration: the calibration slice is the mail nearest in time to what
the model will score, and leaving it out of the weights cost more than the calibration shift of
the refit (measured on inner time splits: docs/model.md). Nothing of the validation slice is used
for fitting, so its figures say how the model does on mail later than any it learnt from.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import platform
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from milter.model import META_FIGURES, META_TEXT_VERSION
from milter.text import TEXT_VERSION, message_text
from milter.training import metrics
from milter.training.corpus import HAM, SPAM, LabelledMessage, load_labelled, received_time, time_split
from milter.training.reencode import STYLES, reencode
from milter.words import DATE_WORDS, LANGUAGE_WORDS, REGISTER_WORDS

# Groups smaller than this weigh as if they had this many messages (see
# TrainConfig.source_balance): a source of one or six messages must not weigh as much as a list.
SOURCE_FLOOR = 100

DEFAULT_THRESHOLDS: tuple[tuple[str, float], ...] = (("spam", 0.9), ("suspicious", 0.5))  # rules/default.yaml


@dataclass(frozen=True)
class TrainConfig:
    max_features: int = 200_000
    min_df: int = 2
    C: float = 100.0
    ham_weight: float = 1.0  # class weight of ham relative to spam in the linear model
    # Weight of ham in the calibration fit: >1 calibrates for a ham-heavier stream than the
    # corpora's (TREC is 75 % spam), so probabilities err on the side of ham: fewer wanted
    # mails reach the spam folder's threshold, at a small cost in calibration error.
    calibration_ham_weight: float = 8.0
    # Fit the weights again on training + calibration mail once calibrated (see the docstring).
    refit: bool = True
    # Token families left out of the vocabulary (the graph then gives them no weight). X-Mailer /
    # User-Agent names mark the mail clients of one collection and era (Outlook 2002 was forged
    # by spammers; today it is a business mail client): left out, a model trained on TREC scored
    # SpamAssassin's mail better ((1-AUC) 1.64 % vs 1.73 %) and the other way round no worse.
    exclude_prefixes: tuple[str, ...] = ("mailer:",)
    # Once each: a model records them (the language words and the function words share "de", "un").
    exclude_words: tuple[str, ...] = tuple(dict.fromkeys(DATE_WORDS + LANGUAGE_WORDS + REGISTER_WORDS))
    # Every fitting message is also fitted rewrapped as today's mail programs send it (see
    # milter.training.reencode): the corpora's wrapping (plain ASCII ham, HTML and base64 spam)
    # is of its era; fitted on the originals alone, 120 of 1,091 calibration-slice ham
    # rewrapped Outlook-style scored p >= 0.9, with these copies none (docs/model.md).
    augment: tuple[str, ...] = tuple(STYLES)
    # The collections (a --ham/--spam path's parent directory name, e.g. "modern") whose
    # calibration slice fits the calibration; empty: every collection's. The thresholds then
    # mean what they say on that mail (today's), not on an average with 2002's.
    calibrate_on: tuple[str, ...] = ()
    # Sources weighed alike: in the fit, a message of a (group, label) with n messages weighs
    # max(n, SOURCE_FLOOR) ** -source_balance (mean 1); 0 weighs every message alike. TREC's
    # 15,000 spam otherwise outweigh the modern lists' few hundred, and what the model learns
    # is what one big source's mail looks like rather than what spam from any source shares.
    source_balance: float = 0.0
    # A term must occur in the mail of this many sources (message groups) to be in the
    # vocabulary: a word only one list or one collection uses says which source a message is
    # from, which mail from elsewhere does not share.
    min_sources: int = 1
    # No token moves the decision by more than this (in the linear model's log-odds, before the
    # calibration); 0: unbounded. In a short text L2 normalisation gives each of a few tokens a
    # large share, and one token then decides the message; bounded, it takes several.
    clip: float = 0.0
    # The weight beta of a second model fused on log-odds: Bernoulli naive Bayes over the same
    # tokens' presence, fitted on the same mail and weights, its log-odds bounded to
    # [-NB_BOUND, NB_BOUND] and added times beta to the linear model's before the calibration;
    # 0: not fused. It weighs each token by its own counts, as bogofilter does, where logistic
    # regression shares weight between tokens that come together (docs/model.md, candidate H).
    fuse_nb: float = 0.0
    seed: int = 0
    calibration_fraction: float = 0.1
    validation_fraction: float = 0.1
    top_k: int = 5
    jobs: int = 1


NB_BOUND: Final = 30.0  # the naive Bayes log-odds' bound: long texts make it certain of anything


def _presence(x: Any) -> Any:
    """The binary presence matrix of a (sparse) TF-IDF matrix: 1 wherever a term is."""
    presence = x.copy().tocsr()
    presence.data[:] = 1.0
    return presence


@dataclass(frozen=True)
class Fused:
    """A logistic regression with a naive Bayes model fused on log-odds (TrainConfig.fuse_nb):
    decision = lr(x) + beta * clip(presence(x) . nb_weight + nb_intercept, +-NB_BOUND)."""

    lr: object
    nb_weight: np.ndarray  # per vocabulary column: the log-odds a present token adds
    nb_intercept: float  # the log-odds of a text with no token (priors and absent tokens)
    beta: float

    def naive_bayes(self, x: object) -> np.ndarray:
        log_odds = np.asarray(_presence(x) @ self.nb_weight, dtype=np.float64).reshape(-1) + self.nb_intercept
        bounded: np.ndarray = np.clip(log_odds, -NB_BOUND, NB_BOUND)
        return bounded

    def decision_function(self, x: object) -> np.ndarray:
        linear = np.asarray(self.lr.decision_function(x), dtype=np.float64)  # type: ignore[attr-defined]
        fused: np.ndarray = linear + self.beta * self.naive_bayes(x)
        return fused


def naive_bayes_weights(
    x: object, labels: np.ndarray, sample_weight: np.ndarray | None
) -> tuple[np.ndarray, float]:
    """Bernoulli naive Bayes (additive smoothing 1) on the presence of x's columns, as a linear
    model of presence: (weight per column, intercept) with log P(spam|x) - log P(ham|x) =
    presence . weight + intercept."""
    from sklearn.naive_bayes import BernoulliNB

    nb = BernoulliNB(alpha=1.0, binarize=None)
    nb.fit(_presence(x), labels, sample_weight=sample_weight)
    spam, ham = list(nb.classes_).index(SPAM), list(nb.classes_).index(HAM)
    log_p = np.asarray(nb.feature_log_prob_, dtype=np.float64)
    log_not = np.log1p(-np.exp(log_p))
    weight = (log_p[spam] - log_not[spam]) - (log_p[ham] - log_not[ham])
    prior = np.asarray(nb.class_log_prior_, dtype=np.float64)
    intercept = float(prior[spam] - prior[ham] + log_not[spam].sum() - log_not[ham].sum())
    return weight, intercept


@dataclass
class FittedModel:
    """The scikit-learn side of a trained model, kept to check the ONNX graph against it."""

    vectorizer: object
    classifier: object
    platt: tuple[float, float]  # p = sigmoid(a * decision + b)
    clip: float = 0.0  # each token's share of the decision bounded to [-clip, clip]; 0: not

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        x = self.vectorizer.transform(texts)  # type: ignore[attr-defined]
        if not self.clip:
            return np.asarray(self.classifier.decision_function(x), dtype=np.float64)  # type: ignore[attr-defined]
        coef = np.asarray(self.classifier.coef_[0], dtype=np.float64)  # type: ignore[attr-defined]
        shares = x.tocsr().astype(np.float64).multiply(coef.reshape(1, -1)).tocsr()
        np.clip(shares.data, -self.clip, self.clip, out=shares.data)
        intercept = float(self.classifier.intercept_[0])  # type: ignore[attr-defined]
        total: np.ndarray = np.asarray(shares.sum(axis=1), dtype=np.float64).reshape(-1) + intercept
        return total

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        a, b = self.platt
        return 1.0 / (1.0 + np.exp(-(a * self.decision(texts) + b)))


@dataclass
class TrainResult:
    model_bytes: bytes
    fitted: FittedModel
    figures: dict[str, object]
    metadata: dict[str, str]
    validation_texts: list[str] = field(repr=False)
    validation_labels: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Rewrapped:
    """message->text of a message rewrapped in one style (a class, so a process pool can take it)."""

    style: str

    def __call__(self, raw: bytes) -> str:
        return message_text(reencode(raw, self.style))


def texts_of(
    raws: Iterable[bytes],
    total: int,
    jobs: int = 1,
    progress: bool = False,
    desc: str = "message->text",
    text_of: Callable[[bytes], str] = message_text,
) -> list[str]:
    """text_of (message_text) of every message, in order, on `jobs` processes, with a progress bar."""
    from tqdm import tqdm

    iterator: Iterator[str]
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            iterator = pool.imap(text_of, raws, chunksize=64)
            return list(tqdm(iterator, total=total, desc=desc, disable=not progress, unit="msg"))
    return [text_of(raw) for raw in tqdm(raws, total=total, desc=desc, disable=not progress, unit="msg")]


@dataclass(frozen=True)
class Tokens:
    """The vectorizer's tokenizer: message_text's tokens but the excluded words and families."""

    exclude_prefixes: tuple[str, ...] = ()
    exclude_words: frozenset[str] = frozenset()

    def __call__(self, text: str) -> list[str]:
        tokens = text.split()
        if not self.exclude_prefixes and not self.exclude_words:
            return tokens
        words, prefixes = self.exclude_words, self.exclude_prefixes  # startswith(()) is False
        return [token for token in tokens if token not in words and not token.startswith(prefixes)]


def vocabulary_of(
    texts: Sequence[str],
    messages: int,
    tokens: Callable[[str], list[str]],
    min_df: int,
    max_features: int,
    sources: Sequence[str] | None = None,
    min_sources: int = 1,
) -> dict[str, int]:
    """The terms in at least `min_df` of `messages` messages, the `max_features` most frequent,
    where texts[j] is a version of message j % messages (the original, then its rewrappings): a
    term counts once per message however many of its versions have it, so that copies do not
    let a term seen in one message pass min_df. With `sources` (one per message), a term must
    also be in the messages of at least `min_sources` of them."""
    seen_in: Counter[str] = Counter()
    sources_of: dict[str, set[str]] = {}
    for i in range(messages):
        terms: set[str] = set()
        for text in texts[i::messages]:
            terms.update(tokens(text))
        seen_in.update(terms)
        if sources is not None and min_sources > 1:
            for term in terms:
                sources_of.setdefault(term, set()).add(sources[i])
    kept = [
        term
        for term, count in seen_in.items()
        if count >= min_df and (not sources_of or len(sources_of[term]) >= min_sources)
    ]
    if len(kept) > max_features:
        kept = sorted(kept, key=lambda term: (-seen_in[term], term))[:max_features]
    return {term: column for column, term in enumerate(sorted(kept))}


def fit(
    texts: Sequence[str],
    labels: np.ndarray,
    config: TrainConfig,
    messages: int | None = None,
    terms: Sequence[str] | None = None,
    sample_weight: np.ndarray | None = None,
    sources: Sequence[str] | None = None,
) -> tuple[object, object]:
    """Fit the vectorizer and classifier; with `messages`, texts are versions of that many
    messages (see vocabulary_of) and min_df counts messages, not versions; with `terms`, the
    vocabulary is exactly those terms (e.g. the ones an L1 model kept); `sample_weight`, one per
    text, weighs them in the classifier's fit; `sources`, one per message, are what
    config.min_sources counts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    tokens = Tokens(tuple(config.exclude_prefixes), frozenset(config.exclude_words))
    vocabulary = None
    if terms is not None:
        vocabulary = {term: column for column, term in enumerate(sorted(terms))}
    elif (messages is not None and messages != len(texts)) or (sources and config.min_sources > 1):
        vocabulary = vocabulary_of(
            texts,
            len(texts) if messages is None else messages,
            tokens,
            config.min_df,
            config.max_features,
            sources,
            config.min_sources,
        )
    vectorizer = TfidfVectorizer(
        tokenizer=tokens,
        token_pattern=None,
        lowercase=False,
        binary=True,
        min_df=1 if vocabulary else config.min_df,
        max_features=None if vocabulary else config.max_features,
        vocabulary=vocabulary,
        dtype=np.float32,
    )
    if config.fuse_nb and config.clip:
        raise ValueError("a model is either clipped (--clip) or fused (--fuse-nb), not both")
    x = vectorizer.fit_transform(texts)
    classifier = LogisticRegression(
        C=config.C,
        solver="liblinear",
        max_iter=1000,
        random_state=config.seed,
        class_weight={HAM: config.ham_weight, SPAM: 1.0},
    )
    classifier.fit(x, labels, sample_weight=sample_weight)
    if config.fuse_nb:
        nb_weight, nb_intercept = naive_bayes_weights(x, labels, sample_weight)
        return vectorizer, Fused(classifier, nb_weight, nb_intercept, config.fuse_nb)
    return vectorizer, classifier


def source_weights(keys: Sequence[object], balance: float) -> np.ndarray | None:
    """A weight per message, from its (group, label) key: max(n, SOURCE_FLOOR) ** -balance for
    a key n messages share, scaled to mean 1; None (all alike) for balance 0."""
    if not balance:
        return None
    size = Counter(keys)
    weights = np.array([max(size[key], SOURCE_FLOOR) ** -balance for key in keys], dtype=np.float64)
    scaled: np.ndarray = weights / weights.mean()
    return scaled


def platt(decision: np.ndarray, labels: np.ndarray, ham_weight: float = 1.0) -> tuple[float, float]:
    """Sigmoid calibration: (a, b) so that sigmoid(a * decision + b) matches the labels."""
    from sklearn.linear_model import LogisticRegression

    if len(set(labels.tolist())) < 2:
        return 1.0, 0.0
    calibrator = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
    weights = np.where(labels == HAM, ham_weight, 1.0)
    calibrator.fit(decision.reshape(-1, 1), labels, sample_weight=weights)
    return float(calibrator.coef_[0][0]), float(calibrator.intercept_[0])


def export(fitted: FittedModel, metadata: dict[str, str], top_k: int) -> bytes:
    from milter.training.export import NaiveBayesPart, build_graph

    vectorizer = fitted.vectorizer
    classifier = fitted.classifier
    fused = classifier if isinstance(classifier, Fused) else None
    if fused is not None:
        classifier = fused.lr
    vocabulary: dict[str, int] = vectorizer.vocabulary_  # type: ignore[attr-defined]
    # Terms the classifier gives no weight add only to the norm; they stay (idf^2 matters).
    terms = [""] * len(vocabulary)
    for term, column in vocabulary.items():
        terms[column] = term
    a, b = fitted.platt
    coef = np.asarray(classifier.coef_[0], dtype=np.float64) * a  # type: ignore[attr-defined]
    intercept = float(classifier.intercept_[0]) * a + b  # type: ignore[attr-defined]
    idf = np.asarray(vectorizer.idf_, dtype=np.float64)  # type: ignore[attr-defined]
    if fitted.clip and a <= 0:
        raise ValueError(f"a calibration slope of {a:g} cannot carry a clip (the model ranks spam below ham)")
    # sigmoid(a * (sum clip(s, -c, c) + i) + b) = sigmoid(sum clip(a s, -a c, a c) + a i + b) for a > 0.
    naive_bayes = None
    if fused is not None:
        if a <= 0:
            raise ValueError(
                f"a calibration slope of {a:g} cannot carry a fused model (it ranks spam below ham)"
            )
        # a * beta * clip(nb, -B, B) = clip(a beta nb, -a beta B, a beta B) for a > 0, likewise.
        scale = a * fused.beta
        naive_bayes = NaiveBayesPart(fused.nb_weight * scale, fused.nb_intercept * scale, NB_BOUND * scale)
    model = build_graph(
        terms, idf, coef, intercept, metadata, top_k=top_k, clip=fitted.clip * a, naive_bayes=naive_bayes
    )
    return bytes(model.SerializeToString())


def onnx_probabilities(model_bytes: bytes, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """Probabilities from the ONNX graph itself (as the daemon computes them)."""
    import onnxruntime as ort

    from milter.model import EMPTY_TEXT, INPUT, OUT_PROBABILITY

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(texts), batch):
        chunk = [t if t.strip() else EMPTY_TEXT for t in texts[start : start + batch]]
        out.append(session.run([OUT_PROBABILITY], {INPUT: np.array(chunk, dtype=object)})[0])
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def _params(config: TrainConfig) -> dict[str, object]:
    """The settings a model records; `clip` and `fuse_nb` only where set, so that a model
    trained without them is the same file, to the bit, as before the settings existed."""
    params = asdict(config) | {"jobs": None}
    for optional in ("clip", "fuse_nb"):
        if not params[optional]:
            del params[optional]
    return params


def _date_range(messages: Sequence[LabelledMessage], indices: Sequence[int]) -> dict[str, list[str]]:
    ranges: dict[str, list[float]] = {}
    for i in indices:
        when = received_time(messages[i].raw)
        if when is None or not 631152000 < when < 4102444800:  # ignore dates outside 1990-2100
            continue
        span = ranges.setdefault(Path(messages[i].group).name, [when, when])
        span[0] = min(span[0], when)
        span[1] = max(span[1], when)

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")

    return {group: [iso(lo), iso(hi)] for group, (lo, hi) in sorted(ranges.items())}


def _counts(messages: Sequence[LabelledMessage], indices: Sequence[int]) -> dict[str, int]:
    labels = [messages[i].label for i in indices]
    return {"ham": labels.count(HAM), "spam": labels.count(SPAM)}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import selectolax
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        # message->text parses HTML with it: another lexbor may give other tokens.
        "selectolax": selectolax.__version__,
    }


def fitting_set(
    ix: Sequence[int],
    texts: Sequence[str],
    rewrapped: Mapping[str, Sequence[str]],
    labels: np.ndarray,
    augment: Sequence[str],
) -> tuple[list[str], np.ndarray]:
    """The texts the model is fitted on for messages `ix`: theirs, then those of their copies in
    each style of `augment` (text j is a version of message ix[j % len(ix)]), with their labels."""
    chosen = [texts[i] for i in ix]
    for style in augment:
        chosen += [rewrapped[style][i] for i in ix]
    return chosen, np.tile(labels[list(ix)], 1 + len(augment))


def in_collections(group: str, collections: Sequence[str]) -> bool:
    """Whether a message group lies in one of `collections` (directory names); all do in ()."""
    return not collections or not set(Path(group).parts).isdisjoint(collections)


@dataclass
class Fit:
    """A calibrated model and the time slices it came from (indices into the messages)."""

    fitted: FittedModel
    train_ix: list[int]
    cal_ix: list[int]
    val_ix: list[int]
    fit_ix: list[int]  # what the final weights were fitted on
    # The calibration fit's input: the first fit's decisions on the calibration mail and its
    # labels, so that other calibration weights can be tried without fitting again.
    cal_decision: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cal_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def recalibrated(self, ham_weight: float) -> FittedModel:
        """The same weights calibrated with another calibration ham weight."""
        platt_ab = platt(self.cal_decision, self.cal_labels, ham_weight)
        return FittedModel(self.fitted.vectorizer, self.fitted.classifier, platt_ab, self.fitted.clip)


def fit_calibrated(
    messages: Sequence[LabelledMessage],
    texts: Sequence[str],
    config: TrainConfig,
    log: Callable[[str], None] = lambda _: None,
    rewrapped: Mapping[str, Sequence[str]] | None = None,
) -> Fit:
    """Split by time, fit, calibrate and (config.refit) fit again: milter train's model, unexported.

    `rewrapped` holds, for each style of config.augment, the texts of the messages rewrapped in
    it (aligned with `messages`): they are fitted next to the originals. Calibration uses the
    original mail alone.
    """
    rewrapped = rewrapped or {}
    missing = [style for style in config.augment if style not in rewrapped]
    if missing:
        raise ValueError(f"no rewrapped texts for augment style(s) {', '.join(missing)}")
    labels = np.array([m.label for m in messages], dtype=np.int64)

    def fitted_on(ix: Sequence[int]) -> tuple[object, object]:
        weights = source_weights([(messages[i].group, messages[i].label) for i in ix], config.source_balance)
        if weights is not None:  # the rewrapped copies weigh as their original
            weights = np.tile(weights, 1 + len(config.augment))
        chosen, chosen_labels = fitting_set(ix, texts, rewrapped, labels, config.augment)
        sources = [messages[i].group for i in ix]
        return fit(chosen, chosen_labels, config, len(ix), sample_weight=weights, sources=sources)

    train_ix, cal_ix, val_ix = time_split(messages, config.calibration_fraction, config.validation_fraction)
    for name, ix in (("training", train_ix), ("calibration", cal_ix)):
        if len(set(labels[ix].tolist())) < 2:
            raise ValueError(f"the {name} slice needs both ham and spam; give more mail of both kinds")
    log(f"split by time: train {len(train_ix)}, calibrate {len(cal_ix)}, validate {len(val_ix)}")
    vectorizer, classifier = fitted_on(train_ix)
    fitted = FittedModel(vectorizer, classifier, (1.0, 0.0), config.clip)
    platt_ix = [i for i in cal_ix if in_collections(messages[i].group, config.calibrate_on)]
    if len(set(labels[platt_ix].tolist())) < 2:
        raise ValueError(f"the calibration slice of {', '.join(config.calibrate_on)} needs both ham and spam")
    cal_decision = fitted.decision([texts[i] for i in platt_ix])
    fitted.platt = platt(cal_decision, labels[platt_ix], config.calibration_ham_weight)
    fit_ix = train_ix
    if config.refit:
        fit_ix = train_ix + cal_ix
        log(f"fitting again on training + calibration mail: {len(fit_ix)}")
        vectorizer, classifier = fitted_on(fit_ix)
        fitted = FittedModel(vectorizer, classifier, fitted.platt, config.clip)
    return Fit(fitted, train_ix, cal_ix, val_ix, fit_ix, cal_decision, labels[platt_ix])


def train_on(
    messages: Sequence[LabelledMessage],
    texts: Sequence[str],
    config: TrainConfig,
    command: str,
    thresholds: Sequence[tuple[str, float]] = DEFAULT_THRESHOLDS,
    log: Callable[[str], None] = lambda _: None,
    rewrapped: Mapping[str, Sequence[str]] | None = None,
) -> TrainResult:
    """fit_calibrated, then validate and export; everything but reading and writing files.

    The rewrapped texts of the validation slice are validated apart (figures["rewrapped"]).
    """
    rewrapped = rewrapped or {}
    labels = np.array([m.label for m in messages], dtype=np.int64)
    model_fit = fit_calibrated(messages, texts, config, log, rewrapped)
    fitted, val_ix = model_fit.fitted, model_fit.val_ix
    val_texts = [texts[i] for i in val_ix]
    val_labels = labels[val_ix]
    val_p = fitted.probabilities(val_texts) if val_ix else np.zeros(0)
    figures: dict[str, object] = {}
    if len(set(val_labels.tolist())) == 2:
        figures["all"] = metrics.figures(val_labels, val_p, thresholds)
        for group in sorted({messages[i].group for i in val_ix}):
            mask = np.array([messages[i].group == group for i in val_ix])
            if len(set(val_labels[mask].tolist())) == 2:
                figures[Path(group).name] = metrics.figures(val_labels[mask], val_p[mask], thresholds)
        if config.augment:
            # The same validation mail rewrapped: how far the model still leans on the wrapping.
            figures["rewrapped"] = {
                style: metrics.figures(
                    val_labels, fitted.probabilities([rewrapped[style][i] for i in val_ix]), thresholds
                )
                for style in config.augment
            }
    metadata = {
        META_TEXT_VERSION: TEXT_VERSION,
        "milter.model_kind": (
            "binary tf-idf (l2) of message_text tokens + logistic regression, Platt-calibrated"
            + (", refitted on training + calibration mail" if config.refit else "")
            + (f", each also fitted rewrapped ({', '.join(config.augment)})" if config.augment else "")
            + (f", sources weighed alike (^-{config.source_balance:g})" if config.source_balance else "")
            + (f", terms of >= {config.min_sources} sources" if config.min_sources > 1 else "")
            + (f", each token's share of the log-odds within +-{config.clip:g}" if config.clip else "")
            + (f", naive Bayes fused on log-odds (x{config.fuse_nb:g})" if config.fuse_nb else "")
        ),
        "milter.params": json.dumps(_params(config), sort_keys=True),
        "milter.counts": json.dumps(
            {
                "train": _counts(messages, model_fit.train_ix),
                "calibration": _counts(messages, model_fit.cal_ix),
                "validation": _counts(messages, val_ix),
                "fitted_on": _counts(messages, model_fit.fit_ix),
                "vocabulary": len(fitted.vectorizer.vocabulary_),  # type: ignore[attr-defined]
            },
            sort_keys=True,
        ),
        "milter.dates": json.dumps(
            {
                "train": _date_range(messages, model_fit.train_ix),
                "fitted_on": _date_range(messages, model_fit.fit_ix),
                "validation": _date_range(messages, val_ix),
            },
            sort_keys=True,
        ),
        "milter.libraries": json.dumps(_versions(), sort_keys=True),
        "milter.command": command,
    }
    # The figures include the ONNX-vs-sklearn agreement, measured on the graph without them.
    draft = export(fitted, metadata, config.top_k)
    if val_texts:
        onnx_p = onnx_probabilities(draft, val_texts)
        figures["onnx_vs_sklearn_max_abs_diff"] = float(f"{float(np.max(np.abs(onnx_p - val_p))):.3g}")
    metadata[META_FIGURES] = json.dumps(figures, sort_keys=True)
    model_bytes = export(fitted, metadata, config.top_k)
    return TrainResult(model_bytes, fitted, figures, metadata, val_texts, val_labels)


def train(
    ham: Sequence[Path],
    spam: Sequence[Path],
    config: TrainConfig,
    command: str,
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    messages = list(load_labelled(ham, spam))
    if not messages:
        raise ValueError("no messages found under the --ham and --spam paths")
    log(f"read {len(messages)} messages")
    texts = texts_of((m.raw for m in messages), len(messages), config.jobs, progress)
    rewrapped = {
        style: texts_of(
            (m.raw for m in messages),
            len(messages),
            config.jobs,
            progress,
            f"rewrapped ({style})",
            Rewrapped(style),
        )
        for style in config.augment
    }
    return train_on(messages, texts, config, command, log=log, rewrapped=rewrapped)
