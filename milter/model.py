"""The spam model: an ONNX file loaded once, checked against this code, scoring model text.

A model file is self-contained: its graph takes the model text of `milter.text.message_text`
(space-separated tokens) and returns, per message, the spam probability and the few tokens that
pushed it most (the explanation). Its metadata names the message->text version it was trained on;
a model for a version this code does not produce is refused, because its weights would silently
mean something else.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from milter.errors import ModelError, TextVersionError
from milter.text import TEXT_VERSION, message_text

# The graph's interface, as `milter train` writes it.
INPUT: Final = "text"
OUT_PROBABILITY: Final = "probability"
OUT_FEATURES: Final = "feature_names"
OUT_CONTRIBUTIONS: Final = "feature_contributions"
META_TEXT_VERSION: Final = "milter.text_version"
META_FIGURES: Final = "milter.validation"  # JSON: the validation figures `milter train` measured
SUPPORTED_TEXT_VERSIONS: Final = frozenset({TEXT_VERSION})
_OUTPUTS: Final = [OUT_PROBABILITY, OUT_FEATURES, OUT_CONTRIBUTIONS]
EMPTY_TEXT: Final = "body:empty"  # what an empty text is scored as (the graph needs one token)

# Built-in messages for validate_model: written here, not taken from any corpus.
_PROBES: Final[tuple[bytes, ...]] = (
    b"From: Alice Example <alice@example.org>\r\nTo: bob@example.net\r\nSubject: lunch on friday?\r\n"
    b"Date: Mon, 3 Mar 2025 10:00:00 +0000\r\n\r\nHi Bob,\r\n\r\nare we still on for lunch on Friday? "
    b"I can book the usual place for 12:30.\r\n\r\nAlice\r\n",
    b'From: "Best Deals" <promo@deals.example.ru>\r\nSubject: YOU WON $1,000,000 !!! claim now\r\n'
    b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><a href='http://win.example.ru/claim'>CLICK HERE</a> to claim your prize, "
    b"cheap pills, free money, no prescription!!!</body></html>\r\n",
    b"",
    b"\x00\xff\xfe garbage \x80\x81 not a message at all\r\n\r\n\xc3\x28",
)


@dataclass(frozen=True, slots=True)
class Score:
    """What the model says of one message."""

    probability: float
    model_id: str
    # The tokens/features that pushed the score most: (feature, contribution), strongest first.
    features: tuple[tuple[str, float], ...] = ()


def _session(path: Path, data: bytes) -> Any:
    import onnxruntime as ort

    # onnxruntime's process-wide logger writes its warnings to stderr (the journal) with colour
    # escape codes; milter reports what matters itself (ModelError below). Errors still show.
    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The daemon scores from a thread pool; one thread per call avoids oversubscribing the cores.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            path, f"not a loadable ONNX model ({first}); expected a model file written by `milter train`"
        ) from exc


def _check_interface(path: Path, session: Any) -> None:
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    if inputs != [(INPUT, "tensor(string)")]:
        raise ModelError(
            path, f"model inputs are {inputs}; expected one input {INPUT!r} of type tensor(string)"
        )
    outputs = {o.name: o.type for o in session.get_outputs()}
    expected = {
        OUT_PROBABILITY: "tensor(float)",
        OUT_FEATURES: "tensor(string)",
        OUT_CONTRIBUTIONS: "tensor(float)",
    }
    for name, kind in expected.items():
        if outputs.get(name) != kind:
            raise ModelError(
                path,
                f"model outputs are {outputs}; expected {name!r} of type {kind} "
                f"(outputs needed: {', '.join(expected)})",
            )


class Model:
    """A loaded, checked model. Immutable; `score` is safe to call from many threads."""

    def __init__(
        self, path: Path, model_id: str, session: Any, metadata: Mapping[str, str], load_seconds: float
    ) -> None:
        self.path = path
        self.id = model_id
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata))
        self.text_version = self.metadata[META_TEXT_VERSION]
        self.load_seconds = load_seconds
        self.size_bytes = path.stat().st_size if path.exists() else 0
        self._session = session
        # onnxruntime's InferenceSession.run checks the input names and graph-capture options
        # again on every call, through pybind attribute lookups: 5-8 us of a ~90 us score
        # (measured alternately on 2,000 corpus texts). The interface was checked once at load
        # (_check_interface), so scoring calls the compiled session that run() wraps; the public
        # method stays the fallback should an onnxruntime release rename it
        # (tests/test_model_run.py pins that both give the same outputs).
        compiled = getattr(getattr(session, "_sess", None), "run", None)
        self._run: Callable[[list[str], dict[str, Any], None], list[Any]] = compiled or (
            lambda outputs, feed, _options: session.run(outputs, feed)
        )

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, id={self.id!r})"

    def score_texts(self, texts: Sequence[str]) -> list[Score]:
        """Scores of many model texts in one graph run (cheaper per text than one by one)."""
        if not texts:
            return []
        batch = np.array([_clean(text) for text in texts], dtype=object)
        probabilities, names, contributions = self._run(_OUTPUTS, {INPUT: batch}, None)
        model_id = self.id
        # round(value * 1e4) / 1e4 gives the same doubles as round(value, 4) (checked on
        # corpus mail) at a fifth of the cost: round(x, 4) converts through decimal digits, and
        # that was ~6 us of a ~60 us score.
        return [
            Score(
                probability,
                model_id,
                tuple(
                    [
                        (name, round(value * 10000.0) / 10000.0)
                        for name, value in zip(row_names, row_values, strict=True)
                        if value
                    ]
                ),
            )
            for probability, row_names, row_values in zip(
                probabilities.tolist(), names.tolist(), contributions.tolist(), strict=True
            )
        ]

    def score(self, text: str) -> Score:
        """The score of one model text (from `message_text`)."""
        return self.score_texts([text])[0]

    def score_message(self, raw: bytes) -> Score:
        """The score of one raw message: `score(message_text(raw))`."""
        return self.score(message_text(raw))

    def score_messages(self, raws: Sequence[bytes]) -> list[Score]:
        return self.score_texts([message_text(raw) for raw in raws])


def _clean(text: str) -> str:
    # The graph needs valid UTF-8 and at least one token.
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text if text and not text.isspace() else EMPTY_TEXT


def model_id_of(data: bytes) -> str:
    """A short id that is stable for the file's content."""
    return "spam-" + hashlib.sha256(data).hexdigest()[:8]


def load_model(path: Path | str) -> Model:
    """Load and check a model file; ModelError says what was wrong and what was expected."""
    path = Path(path)
    started = time.perf_counter()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(
            path, "no such file; expected an ONNX model file written by `milter train`"
        ) from None
    except IsADirectoryError:
        raise ModelError(path, "is a directory; expected an ONNX model file") from None
    except OSError as exc:
        raise ModelError(
            path, f"cannot read: {exc.strerror or exc}; expected a readable ONNX model file"
        ) from exc
    if not data:
        raise ModelError(path, "empty file; expected an ONNX model file written by `milter train`")
    return model_from_bytes(data, path, started)


def model_from_bytes(data: bytes, path: Path | str, started: float | None = None) -> Model:
    """A model from the bytes of a model file (`path`: what errors and `Model.path` name), checked
    as `load_model` checks a file: `milter retrain` scores its candidate before writing it."""
    path = Path(path)
    started = time.perf_counter() if started is None else started
    session = _session(path, data)
    _check_interface(path, session)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    version = metadata.get(META_TEXT_VERSION)
    if version is None:
        raise ModelError(
            path,
            f"model metadata has no {META_TEXT_VERSION!r}; expected a model written by `milter train` "
            f"for message->text version {TEXT_VERSION}",
        )
    if version not in SUPPORTED_TEXT_VERSIONS:
        raise TextVersionError(
            path,
            f"model expects message->text version {version!r}, which this milter does not implement; "
            f"expected version {' or '.join(sorted(SUPPORTED_TEXT_VERSIONS))} "
            "(retrain it with this milter's `milter train`)",
        )
    return Model(path, model_id_of(data), session, metadata, time.perf_counter() - started)


# A model slower than this per message is refused before it serves (the shipped one: ~0.1 ms).
DEFAULT_MAX_SECONDS_PER_MESSAGE = 0.05


def validate_model(model: Model, max_seconds_per_message: float = DEFAULT_MAX_SECONDS_PER_MESSAGE) -> None:
    """Score the built-in probes; refuse odd probabilities and a model slower than the limit."""
    timings: list[float] = []
    for probe in _PROBES:
        for _ in range(3):
            started = time.perf_counter()
            try:
                score = model.score_message(probe)
            except Exception as exc:
                raise ModelError(model.path, f"scoring a built-in test message failed: {exc}") from exc
            timings.append(time.perf_counter() - started)
            if not (math.isfinite(score.probability) and 0.0 <= score.probability <= 1.0):
                raise ModelError(
                    model.path,
                    f"gave probability {score.probability!r} for a built-in test message; "
                    "expected a number in [0, 1]",
                )
    per_message = statistics.median(timings)
    if per_message > max_seconds_per_message:
        raise ModelError(
            model.path,
            f"takes {per_message * 1000:.1f} ms per message; expected at most "
            f"{max_seconds_per_message * 1000:.1f} ms",
        )


def describe_model(model: Model) -> dict[str, object]:
    """What `milter check` prints for a model: identity, metadata and validation figures."""
    figures: object = {}
    raw_figures = model.metadata.get(META_FIGURES)
    if raw_figures:
        try:
            figures = json.loads(raw_figures)
        except ValueError:
            figures = raw_figures
    return {
        "path": str(model.path),
        "id": model.id,
        "text_version": model.text_version,
        "size_bytes": model.size_bytes,
        "load_seconds": round(model.load_seconds, 4),
        "metadata": {k: v for k, v in sorted(model.metadata.items()) if k != META_FIGURES},
        "figures": figures,
    }
