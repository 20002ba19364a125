"""The ONNX graph of a linear TF-IDF model: split on spaces, look up, weigh, sum, sigmoid.

The stock skl2onnx TF-IDF graph normalises and tokenises strings inside the graph, and its
TfIdfVectorizer produces a dense vocabulary-wide vector per message; both cost milliseconds on
long text with a large vocabulary. Here `message_text` has already produced clean, unique
tokens, so the graph works per token: StringSplit -> LabelEncoder (token -> column) -> Gather
(calibrated weight * idf, and idf^2 for the L2 norm) -> sums -> Sigmoid. The explanation comes
from the same weights: per-token contributions, TopK by magnitude, and the tokens themselves.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from milter.model import INPUT, OUT_CONTRIBUTIONS, OUT_FEATURES, OUT_PROBABILITY

OPSET = 21


def build_graph(
    terms: Sequence[str],
    idf: np.ndarray,
    coef: np.ndarray,
    intercept: float,
    metadata: Mapping[str, str],
    top_k: int = 5,
) -> onnx.ModelProto:
    """The model for `p = sigmoid(coef . l2norm(idf * present(terms)) + intercept)`.

    The input is a batch of model texts whose tokens are unique within each text (as
    `message_text` makes them), so the binary TF-IDF vector is a sum over tokens: each token
    is looked up once (LabelEncoder: string -> column; unknown -> a zero column) and its
    weight gathered. Cost grows with the message's tokens, not with the vocabulary.
    Calibration must already be folded into coef and intercept.
    """
    if any(not term or len(term.split()) != 1 for term in terms):
        raise ValueError("terms must be single tokens without whitespace")
    size = len(terms)
    idf32 = np.asarray(idf, dtype=np.float64)
    coef64 = np.asarray(coef, dtype=np.float64).reshape(-1)
    # Column `size` is where unknown tokens and padding land: no weight, no part in the norm.
    weight = np.append(coef64 * idf32, 0.0).astype(np.float32)
    idf_sq = np.append(idf32 * idf32, 0.0).astype(np.float32)

    initializers = [
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(idf_sq, "idf_sq"),
        numpy_helper.from_array(np.array([intercept], dtype=np.float32), "intercept"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([1e-12], dtype=np.float32), "eps"),
        numpy_helper.from_array(np.array([max(1, top_k)], dtype=np.int64), "k_max"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "two"),
    ]
    nodes = [
        helper.make_node("StringSplit", [INPUT], ["tokens", "token_counts"]),
        helper.make_node(
            "LabelEncoder",
            ["tokens"],
            ["column"],
            domain="ai.onnx.ml",
            keys_strings=list(terms),
            values_int64s=list(range(size)),
            default_int64=size,
        ),
        helper.make_node("Gather", ["weight", "column"], ["contrib_raw"], axis=0),
        helper.make_node("Gather", ["idf_sq", "column"], ["sq"], axis=0),
        helper.make_node("ReduceSum", ["sq", "axis1"], ["sq_sum"], keepdims=1),
        helper.make_node("Sqrt", ["sq_sum"], ["norm_raw"]),
        helper.make_node("Max", ["norm_raw", "eps"], ["norm"]),
        helper.make_node("Div", ["contrib_raw", "norm"], ["contrib"]),
        helper.make_node("ReduceSum", ["contrib", "axis1"], ["dot"], keepdims=1),
        helper.make_node("Add", ["dot", "intercept"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob2d"]),
        helper.make_node("Reshape", ["prob2d", "flat"], [OUT_PROBABILITY]),
        # Explanation: the k tokens with the largest |contribution| (k <= tokens in the batch).
        helper.make_node("Shape", ["tokens"], ["tokens_shape"]),
        helper.make_node("Slice", ["tokens_shape", "one", "two"], ["width"]),
        helper.make_node("Min", ["width", "k_max"], ["k"]),
        helper.make_node("Abs", ["contrib"], ["contrib_abs"]),
        helper.make_node("TopK", ["contrib_abs", "k"], ["top_abs", "top_index"], axis=1, largest=1, sorted=1),
        helper.make_node("GatherElements", ["contrib", "top_index"], [OUT_CONTRIBUTIONS], axis=1),
        helper.make_node("GatherElements", ["tokens", "top_index"], [OUT_FEATURES], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "milter_spam",
        [helper.make_tensor_value_info(INPUT, TensorProto.STRING, ["N"])],
        [
            helper.make_tensor_value_info(OUT_PROBABILITY, TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(OUT_FEATURES, TensorProto.STRING, ["N", "K"]),
            helper.make_tensor_value_info(OUT_CONTRIBUTIONS, TensorProto.FLOAT, ["N", "K"]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="milter",
    )
    model.ir_version = 10
    helper.set_model_props(model, dict(metadata))
    onnx.checker.check_model(model)
    return model


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
