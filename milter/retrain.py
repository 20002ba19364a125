"""A site model: the shipped model corrected by the site's feedback, written as one model file.

The shipped model is linear: p = sigmoid(coef . l2norm(idf * present(tokens)) + intercept) over
the tokens of `message_text` (milter.training.export builds the graph). Its vocabulary, idf and
calibrated weights are all in the ONNX file, so a site needs no training corpus to retrain: it
reads them out of the file (`read_linear`) and fits a correction to the weights on the feedback
store's messages, the base model's log-odds as the starting point (an offset), with an L2
penalty on the correction: the site model is the base model moved only as far as the feedback
pulls it, and a little feedback moves it a little. Tokens the base model never saw that occur
in at least MIN_DF taught messages join the vocabulary (a newsletter's sender domain, its list
id), with the idf of the base model's rarest terms and no weight but what the feedback gives
them. A model trained with `--fuse-nb` keeps its naive Bayes part as it is, a fixed offset to
the logit, and only the linear weights are corrected on top of it. The result is the same graph
as the base model's (`build_graph`), so `milter score --model`, the daemon and its hot reload
load it like any other. Everything is a pure function of the base file and the store's
messages, in the store's order: the same store gives the same file.

docs/learning.md says why this design and not the others.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from milter.errors import ModelError
from milter.feedback import Feedback
from milter.model import META_FIGURES, META_TEXT_VERSION, model_id_of
from milter.text import message_text
from milter.words import REGISTER_WORDS

if TYPE_CHECKING:
    from milter.training.export import NaiveBayesPart

# Graph nodes a milter linear model has (milter.training.export.build_graph), in order.
_LINEAR_OPS: Final = (
    "StringConcat", "StringSplit", "LabelEncoder", "Gather", "ReduceSum", "Pow", "ReduceProd",
    "Add", "Sigmoid", "TopK", "Gather", "Gather", "Mul", "GatherElements",
)  # fmt: skip
# The same with a naive Bayes model fused on log-odds (`milter train --fuse-nb`): its Gather,
# sum, intercept, bound and addition come after the linear dot product.
_FUSED_OPS: Final = (*_LINEAR_OPS[:7], "Gather", "ReduceSum", "Add", "Clip", "Add", *_LINEAR_OPS[7:])

META_BASE: Final = "milter.base_model"
META_FEEDBACK: Final = "milter.feedback"
META_GATE: Final = "milter.gate"
META_RETRAIN: Final = "milter.retrain_params"

HAM, SPAM = 0, 1


@dataclass(frozen=True)
class RetrainConfig:
    # The L2 penalty on the correction, against the log loss summed over the taught messages.
    # Small: a consistent group of messages (a newsletter's issues) moves its tokens as far as
    # it takes, while what no feedback speaks of keeps the base weights, and one message alone
    # moves its own log-odds by about ln(1/penalty) at most. On bench/bench_learning.py, 0.003
    # against 0.01 left the newsletters in Junk as they were (0.8-2.4 %) and junked 1-2 points
    # more of the spam not taught; 1.0 left 6 % of the newsletters there.
    penalty: float = 0.003
    # Ham counts this many times a spam message in the loss: a wanted message in Junk costs more
    # than a spam in the inbox, as the shipped model's calibration assumes (ham weight 6).
    ham_weight: float = 2.0
    # A token new to the model joins its vocabulary when this many taught messages have it.
    min_df: int = 2
    max_new_terms: int = 50_000
    max_iterations: int = 500


@dataclass(frozen=True)
class LinearModel:
    """The weights of a milter linear model, as read out of its ONNX file."""

    terms: tuple[str, ...]
    idf: np.ndarray  # float64, per term
    coef: np.ndarray  # float64, per term: calibrated weight of the l2-normalised idf feature
    intercept: float
    top_k: int
    metadata: Mapping[str, str]
    model_id: str
    index: dict[str, int] = field(repr=False)
    # A fused model's naive Bayes part (per term, in the order of `terms`). Retraining keeps it
    # as it is, a fixed offset to the logit, and corrects the linear weights on top of it.
    naive_bayes: NaiveBayesPart | None = field(default=None, repr=False)

    def fixed_log_odds(self, texts: Sequence[str]) -> np.ndarray:
        """The naive Bayes part's bounded log-odds for each text, as the graph adds them
        (0 for a linear model)."""
        if self.naive_bayes is None:
            return np.zeros(len(texts))
        part = self.naive_bayes
        sums = np.array(
            [
                sum(float(part.weight[self.index[t]]) for t in set(text.split()) if t in self.index)
                for text in texts
            ],
            dtype=np.float64,
        )
        return np.clip(sums + part.intercept, -part.bound, part.bound)

    def excluded(self) -> tuple[tuple[str, ...], frozenset[str]]:
        """The token families and words the base model left out of its vocabulary (milter train's
        exclude_prefixes and exclude_words, from its metadata) that the site may not add either.

        The English function words and "!" are the exception: the base leaves them out because
        the corpora's ham is technical list talk, so personal register leaned to spam there; a
        site's own feedback has no such bias, and its newsletters and its spam differ in register.
        Learnt back from the site's mail, they took the wanted newsletters left in Junk on
        bench/bench_learning.py from 3.2 % to 0.0-1.6 % (docs/benchmarks.md, "Learning")."""
        try:
            params = json.loads(self.metadata.get("milter.params", "{}"))
        except ValueError:
            params = {}
        prefixes = tuple(params.get("exclude_prefixes", ()))
        words = frozenset(params.get("exclude_words", ())) - frozenset(REGISTER_WORDS)
        return prefixes, words


def read_linear(data: bytes, name: str) -> LinearModel:
    """The vocabulary and weights of a model file written by `milter train` (or `milter
    retrain`); ModelError naming `name` for any other graph."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(data)
    except Exception as e:
        raise ModelError(name, f"not an ONNX model ({type(e).__name__}); expected a milter model file") from e
    ops = tuple(node.op_type for node in model.graph.node)
    if ops not in (_LINEAR_OPS, _FUSED_OPS):
        raise ModelError(
            name,
            "is not milter's linear graph (nodes " + ", ".join(ops[:6]) + ", ...); expected a model "
            "written by `milter train`, whose vocabulary and weights retraining starts from",
        )
    init = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    encoder = model.graph.node[2]
    attributes = {a.name: a for a in encoder.attribute}
    keys = [k.decode("utf-8") for k in attributes["keys_strings"].strings]
    rows = list(attributes["values_int64s"].ints)
    table = np.asarray(init["table"], dtype=np.float64)
    if rows != list(range(len(keys))) or table.shape != (len(keys) + 1, 2):
        raise ModelError(name, "its vocabulary and weight table do not match; expected a milter model file")
    idf = np.sqrt(table[:-1, 1])
    coef = np.divide(table[:-1, 0], idf, out=np.zeros_like(idf), where=idf > 0)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    naive_bayes = None
    if ops == _FUSED_OPS:
        from milter.training.export import NaiveBayesPart

        nb_table = np.asarray(init["nb_table"], dtype=np.float64).reshape(-1)
        if nb_table.shape != (len(keys) + 1,):
            raise ModelError(
                name, "its vocabulary and naive Bayes table do not match; expected a milter model file"
            )
        naive_bayes = NaiveBayesPart(
            weight=nb_table[:-1],
            intercept=float(np.asarray(init["nb_intercept"]).reshape(-1)[0]),
            bound=float(np.asarray(init["nb_high"]).reshape(-1)[0]),
        )
    return LinearModel(
        terms=tuple(keys),
        idf=idf,
        coef=coef,
        intercept=float(np.asarray(init["intercept"]).reshape(-1)[0]),
        top_k=int(np.asarray(init["k"]).reshape(-1)[0]),
        metadata=metadata,
        model_id=model_id_of(data),
        index={term: i for i, term in enumerate(keys)},
        naive_bayes=naive_bayes,
    )


@dataclass(frozen=True)
class Fitted:
    """A site model before it is written: the full vocabulary and weights."""

    terms: list[str]
    idf: np.ndarray
    coef: np.ndarray
    intercept: float
    new_terms: int
    changed_terms: int  # terms whose weight the feedback moved
    iterations: int


def new_vocabulary(base: LinearModel, texts: Sequence[str], config: RetrainConfig) -> list[str]:
    """Tokens the base model does not know, in at least min_df of `texts`, sorted; at most
    max_new_terms of them (the commonest)."""
    prefixes, words = base.excluded()
    seen: Counter[str] = Counter()
    for text in texts:
        seen.update(
            token
            for token in set(text.split())
            if token not in base.index and token not in words and not token.startswith(prefixes)
        )
    kept = [term for term, count in seen.items() if count >= config.min_df]
    if len(kept) > config.max_new_terms:
        kept = sorted(kept, key=lambda term: (-seen[term], term))[: config.max_new_terms]
    return sorted(kept)


def features(texts: Sequence[str], index: Mapping[str, int], idf: np.ndarray) -> Any:
    """The model's input for each text: the l2-normalised idf of its known tokens (a sparse
    matrix, one row per text), as the graph computes it."""
    from scipy.sparse import csr_matrix

    indptr, indices, values = [0], [], []
    for text in texts:
        columns = sorted({index[token] for token in text.split() if token in index})
        row = idf[columns]
        norm = float(np.sqrt(np.sum(row * row))) if columns else 1.0
        indices.extend(columns)
        values.extend((row / norm).tolist())
        indptr.append(len(indices))
    return csr_matrix(
        (np.asarray(values, dtype=np.float64), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
        shape=(len(texts), len(idf)),
    )


def fit(base: LinearModel, texts: Sequence[str], labels: np.ndarray, config: RetrainConfig) -> Fitted:
    """The base model corrected by (texts, labels): minimise the weighted log loss of
    base logit + x . delta plus penalty/2 |delta|^2 (L-BFGS; deterministic)."""
    from scipy.optimize import minimize

    added = new_vocabulary(base, texts, config)
    terms = [*base.terms, *added]
    rare_idf = float(np.max(base.idf)) if len(base.idf) else 1.0
    idf = np.concatenate([base.idf, np.full(len(added), rare_idf)])
    coef = np.concatenate([base.coef, np.zeros(len(added))])
    index = dict(base.index)
    for i, term in enumerate(added, start=len(base.terms)):
        index[term] = i
    x = features(texts, index, idf)
    # Only the columns some taught message has can move; the rest keep the base weights.
    used = np.unique(x.indices)
    x_used = x[:, used]
    offset = x @ coef + base.intercept + base.fixed_log_odds(texts)
    sign = np.where(labels == SPAM, 1.0, -1.0)
    weight = np.where(labels == HAM, config.ham_weight, 1.0)
    penalty = config.penalty

    def objective(delta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = sign * (offset + x_used @ delta)
        loss = float(np.sum(weight * np.logaddexp(0.0, -margin))) + 0.5 * penalty * float(delta @ delta)
        # d/dmargin log(1 + e^-m) = -sigmoid(-m)
        slope = -weight * sign * _sigmoid(-margin)
        return loss, np.asarray(x_used.T @ slope) + penalty * delta

    result = minimize(
        objective,
        np.zeros(len(used)),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": config.max_iterations, "gtol": 1e-7},
    )
    delta = np.asarray(result.x, dtype=np.float64)
    coef = coef.copy()
    coef[used] += delta
    return Fitted(
        terms=terms,
        idf=idf,
        coef=coef,
        intercept=base.intercept,
        new_terms=len(added),
        changed_terms=int(np.count_nonzero(np.abs(delta) > 1e-6)),
        iterations=int(result.nit),
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def model_bytes(fitted: Fitted, base: LinearModel, metadata: Mapping[str, str]) -> bytes:
    """The site model's ONNX file: the shipped graph with the corrected weights."""
    from milter.training.export import build_graph

    naive_bayes = None
    if base.naive_bayes is not None:  # kept as it is; the terms the site added have no weight in it
        part = base.naive_bayes
        added = len(fitted.terms) - len(base.terms)
        naive_bayes = part._replace(weight=np.concatenate([part.weight, np.zeros(added)]))
    graph = build_graph(
        fitted.terms,
        fitted.idf,
        fitted.coef,
        fitted.intercept,
        metadata,
        top_k=base.top_k,
        naive_bayes=naive_bayes,
    )
    return bytes(graph.SerializeToString())


def iso_day(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def feedback_summary(trained: Sequence[Feedback], held_back: Sequence[Feedback]) -> dict[str, object]:
    """The store's part in a site model: counts by label, the time range taught, the users."""

    def counts(messages: Sequence[Feedback]) -> dict[str, int]:
        return {
            "ham": sum(m.label == "ham" for m in messages),
            "spam": sum(m.label == "spam" for m in messages),
        }

    every = [*trained, *held_back]
    return {
        "trained": counts(trained),
        "held_back": counts(held_back),
        "taught": [iso_day(min(m.taught_at for m in every)), iso_day(max(m.taught_at for m in every))]
        if every
        else None,
        "held_back_from": iso_day(min(m.taught_at for m in held_back)) if held_back else None,
        "users": len({m.user for m in every}),
    }


def site_metadata(
    base: LinearModel,
    fitted: Fitted,
    config: RetrainConfig,
    summary: Mapping[str, object],
    gate: Mapping[str, object] | None,
) -> dict[str, str]:
    """What the site model's file says of itself (`milter check` shows it)."""
    kind = base.metadata.get("milter.model_kind", "a milter linear model")
    metadata = {
        META_TEXT_VERSION: base.metadata[META_TEXT_VERSION],
        "milter.model_kind": (
            f"site model: {base.model_id} ({kind}) corrected by the site's feedback "
            f"(L2 toward the base weights, penalty {config.penalty:g})"
        ),
        META_BASE: base.model_id,
        META_FEEDBACK: json.dumps(summary, sort_keys=True),
        META_RETRAIN: json.dumps(
            {
                "penalty": config.penalty,
                "ham_weight": config.ham_weight,
                "min_df": config.min_df,
                "new_terms": fitted.new_terms,
                "changed_terms": fitted.changed_terms,
                "iterations": fitted.iterations,
                "vocabulary": len(fitted.terms),
            },
            sort_keys=True,
        ),
        "milter.command": "milter retrain",
    }
    # The base model's own settings (its excluded tokens), so a site model can be a base too.
    for key in ("milter.params", "milter.counts", "milter.dates", "milter.libraries"):
        if key in base.metadata:
            metadata[f"milter.base_{key.removeprefix('milter.')}" if key != "milter.params" else key] = (
                base.metadata[key]
            )
    if META_FIGURES in base.metadata:
        metadata["milter.base_validation"] = base.metadata[META_FIGURES]
    if gate is not None:
        metadata[META_GATE] = json.dumps(gate, sort_keys=True)
        metadata[META_FIGURES] = json.dumps({"gate": gate}, sort_keys=True)
    return metadata


def texts_of(messages: Sequence[Feedback]) -> list[str]:
    return [message_text(m.raw) for m in messages]


@dataclass
class Outcome:
    """What one retrain produced: the gate's report, and the model file if it passed."""

    report: Any  # milter.gate.Report
    data: bytes | None = None
    model_id: str | None = None
    summary: dict[str, object] = field(default_factory=dict)
    fitted: Fitted | None = None
    base_id: str | None = None


def trained_until(metadata: Mapping[str, str]) -> float | None:
    """The time of the latest message a site model was fitted on (None: not a site model)."""
    try:
        summary = json.loads(metadata.get(META_FEEDBACK, "null"))
    except ValueError:
        return None
    value = summary.get("trained_until") if isinstance(summary, dict) else None
    return float(value) if isinstance(value, int | float) else None


def retrain(
    messages: Sequence[Feedback],
    base_data: bytes,
    base_name: str,
    live: Any,  # milter.model.Model: what serves now
    decide: Any,  # Facts -> Decision: the live rules
    config: RetrainConfig | None = None,
    texts: Sequence[str] | None = None,
) -> Outcome:
    """Fit a site model on `messages` (oldest taught first) and put it through the gate.
    `texts`: their model texts, if made already (then only the held-back messages, by
    gate.split, need their bytes: the gate decides them by the rules)."""
    from milter import gate
    from milter.model import model_from_bytes

    config = config or RetrainConfig()
    base = read_linear(base_data, base_name)
    report = gate.Report()
    refusal = gate.enough(messages)
    if refusal is not None:
        report.refusals.append(refusal)
        return Outcome(report, base_id=base.model_id)
    texts = texts_of(messages) if texts is None else texts
    live_all = [s.probability for s in live.score_texts(texts)]
    store_refusals = [r for r in (gate.flipped(messages, live_all), gate.one_user(messages, live_all)) if r]
    if store_refusals:
        report.refusals += store_refusals
        return Outcome(report, base_id=base.model_id)
    trained, held = gate.split(messages)
    position = {m.id: i for i, m in enumerate(messages)}
    train_texts = [texts[position[m.id]] for m in trained]
    labels = np.array([SPAM if m.label == "spam" else HAM for m in trained], dtype=np.int64)
    fitted = fit(base, train_texts, labels, config)
    summary = feedback_summary(trained, held)
    summary["trained_until"] = max(m.taught_at for m in trained)
    draft = model_from_bytes(
        model_bytes(fitted, base, site_metadata(base, fitted, config, summary, None)), "candidate"
    )
    # A live site model was fitted on the store too: compare on what neither has seen, if the
    # held-back part has both labels after its last fitted message; else on all of it.
    since = trained_until(live.metadata)
    compared = held
    if since is not None:
        newer = [m for m in held if m.taught_at > since]
        if {m.label for m in newer} == {"ham", "spam"}:
            compared = newer
    held_texts = [texts[position[m.id]] for m in compared]
    canary_texts = [message_text(c.raw) for c in gate.CANARIES]
    report = gate.verdict(
        compared,
        [s.probability for s in live.score_texts(held_texts)],
        [s.probability for s in draft.score_texts(held_texts)],
        [s.probability for s in live.score_texts(canary_texts)],
        [s.probability for s in draft.score_texts(canary_texts)],
        decide,
    )
    report.figures["live_model"] = live.id
    report.figures["compared_on"] = (
        "held back, newer than the live model's feedback" if compared is not held else "held back"
    )
    if not report.passed:
        return Outcome(report, None, None, summary, fitted, base.model_id)
    data = model_bytes(fitted, base, site_metadata(base, fitted, config, summary, report.as_dict()))
    return Outcome(report, data, model_id_of(data), summary, fitted, base.model_id)
