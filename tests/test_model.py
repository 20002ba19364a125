"""The model file: loading, checking, scoring, explaining; refusing every kind of bad file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import milter
from milter.errors import ModelError
from milter.model import (
    META_TEXT_VERSION,
    Model,
    Score,
    describe_model,
    load_model,
    model_id_of,
    validate_model,
)
from milter.text import TEXT_VERSION, message_text
from milter.training.synthetic import make_message, write_corpus
from milter.training.train import TrainConfig, TrainResult, onnx_probabilities, train

SHIPPED = Path(milter.__file__).resolve().parent.parent / "model" / "spam.onnx"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    root = tmp_path_factory.mktemp("corpus")
    ham, spam = write_corpus(root, ham=150, spam=150)
    result = train([ham], [spam], TrainConfig(min_df=1, max_features=5000), "test")
    path = root / "tiny.onnx"
    path.write_bytes(result.model_bytes)
    return path, result


@pytest.fixture(scope="module")
def model(trained: tuple[Path, TrainResult]) -> Model:
    return load_model(trained[0])


def test_loads_with_identity_and_metadata(model: Model, trained: tuple[Path, TrainResult]) -> None:
    path, _ = trained
    assert model.path == path
    assert model.id == model_id_of(path.read_bytes())
    assert model.id.startswith("spam-") and len(model.id) == len("spam-") + 8
    assert model.text_version == TEXT_VERSION
    assert model.metadata[META_TEXT_VERSION] == TEXT_VERSION
    assert model.load_seconds > 0
    for key in ("milter.counts", "milter.dates", "milter.libraries", "milter.command", "milter.validation"):
        assert key in model.metadata, key


def test_scores_spam_above_ham_with_an_explanation(model: Model) -> None:
    spam = model.score_message(make_message(10_001, spam=True, seed=7))
    ham = model.score_message(make_message(10_001, spam=False, seed=7))
    assert isinstance(spam, Score)
    assert 0.0 <= ham.probability < 0.5 < spam.probability <= 1.0
    assert spam.model_id == model.id
    assert 1 <= len(spam.features) <= 5
    magnitudes = [abs(value) for _, value in spam.features]
    assert magnitudes == sorted(magnitudes, reverse=True)
    text_tokens = set(message_text(make_message(10_001, spam=True, seed=7)).split())
    assert all(name in text_tokens for name, _ in spam.features)
    assert any(value > 0 for _, value in spam.features)


def test_score_message_is_score_of_message_text(model: Model) -> None:
    raw = make_message(5, spam=True, seed=3)
    assert model.score_message(raw) == model.score(message_text(raw))


def test_batch_scores_equal_single_scores(model: Model) -> None:
    raws = [make_message(i, spam=bool(i % 2), seed=9) for i in range(20)]
    batch = model.score_messages(raws)
    single = [model.score_message(raw) for raw in raws]
    assert [s.probability for s in batch] == pytest.approx([s.probability for s in single], abs=1e-6)


def test_empty_and_odd_texts_score(model: Model) -> None:
    for text in ("", "   ", "unknownword", "caf\udce9 lone surrogate", "x" * 100_000):
        score = model.score(text)
        assert 0.0 <= score.probability <= 1.0


def test_onnx_agrees_with_scikit_learn(trained: tuple[Path, TrainResult]) -> None:
    _, result = trained
    texts = result.validation_texts
    assert texts
    onnx_p = onnx_probabilities(result.model_bytes, texts)
    sklearn_p = result.fitted.probabilities(texts)
    assert float(np.max(np.abs(onnx_p - sklearn_p))) < 1e-4


def test_the_explanation_is_the_strongest_per_token_contributions(
    model: Model, trained: tuple[Path, TrainResult]
) -> None:
    """The graph's explanation equals scikit-learn's own per-token logit contributions."""
    fitted = trained[1].fitted
    a, _ = fitted.platt
    vectorizer: Any = fitted.vectorizer
    coef = np.asarray(fitted.classifier.coef_[0], dtype=np.float64)  # type: ignore[attr-defined]
    for text in trained[1].validation_texts[:30]:
        row = vectorizer.transform([text])
        expected = {
            term: a * coef[column] * row[0, column]
            for term, column in vectorizer.vocabulary_.items()
            if row[0, column] and coef[column]
        }
        strongest = sorted(expected.values(), key=abs, reverse=True)[:5]
        features = model.score(text).features
        assert len(features) == len(strongest)
        for (name, value), want in zip(features, strongest, strict=True):
            assert value == pytest.approx(expected[name], abs=2e-4)
            assert abs(value) == pytest.approx(abs(want), abs=2e-4)


def test_texts_shorter_than_the_explanation_and_unknown_tokens(model: Model) -> None:
    """Fewer tokens than the explanation's five, or none the model knows: no error, no weight."""
    intercept_only = model.score("<PAD> zzzunknown-token-1 zzzunknown-token-2")
    assert intercept_only.features == ()
    assert model.score("zzzunknown-token-3").probability == intercept_only.probability
    known = model.score_message(make_message(10_001, spam=True, seed=7)).features[0][0]
    short = model.score(f"{known} zzzunknown-token-4")
    assert [name for name, _ in short.features] == [known]
    assert short == model.score(f"{known} <PAD> <PAD> <PAD> <PAD> <PAD> <PAD>")


def test_thread_safe_scoring(model: Model) -> None:
    texts = [message_text(make_message(i, spam=bool(i % 3), seed=1)) for i in range(40)]
    expected = [model.score(text) for text in texts]
    results: dict[int, list[Score]] = {}

    def work(worker: int) -> None:
        results[worker] = [model.score(text) for text in texts]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[w] == expected for w in range(4))


def test_validate_accepts_a_good_model(model: Model) -> None:
    validate_model(model)


def test_validate_refuses_a_model_slower_than_the_limit(model: Model) -> None:
    with pytest.raises(ModelError, match=r"ms per message; expected at most 0\.0 ms"):
        validate_model(model, max_seconds_per_message=0.0)


def test_describe(model: Model) -> None:
    info = describe_model(model)
    assert info["id"] == model.id
    assert info["text_version"] == TEXT_VERSION
    assert isinstance(info["figures"], dict) and "all" in info["figures"]
    assert isinstance(info["metadata"], dict) and "milter.counts" in info["metadata"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"absent\.onnx: no such file; expected an ONNX model"):
        load_model(tmp_path / "absent.onnx")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.onnx: empty file; expected an ONNX model"):
        load_model(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is a directory"):
        load_model(tmp_path)


def test_truncated_file(tmp_path: Path, trained: tuple[Path, TrainResult]) -> None:
    data = trained[0].read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelError, match=r"truncated\.onnx: not a loadable ONNX model .*expected a model file"
    ):
        load_model(path)


def test_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "rules.onnx"
    path.write_text("version: 1\nrules: []\n")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        load_model(path)


def test_wrong_inputs_and_outputs(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    other = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    other.ir_version = 10
    helper.set_model_props(other, {META_TEXT_VERSION: TEXT_VERSION})
    path = tmp_path / "other.onnx"
    path.write_bytes(other.SerializeToString())
    with pytest.raises(
        ModelError, match=r"model inputs are \[\('x', 'tensor\(float\)'\)\]; expected one input 'text'"
    ):
        load_model(path)


def _with_metadata(source: Path, target: Path, **changes: str | None) -> Path:
    proto = onnx.load(str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        key = key.replace("_", ".", 1)
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del proto.metadata_props[:]
    helper.set_model_props(proto, props)
    target.write_bytes(proto.SerializeToString())
    return target


# "1": models trained before message->text parsed HTML with lexbor (their tokens differ).
@pytest.mark.parametrize("version", ["999", "1"])
def test_refuses_a_text_version_this_code_does_not_implement(
    tmp_path: Path, trained: tuple[Path, TrainResult], version: str
) -> None:
    assert version != TEXT_VERSION
    path = _with_metadata(trained[0], tmp_path / "other.onnx", milter_text_version=version)
    with pytest.raises(ModelError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: model expects message->text version '{version}'")
    assert f"expected version {TEXT_VERSION}" in message
    assert "milter train" in message


def test_refuses_a_model_without_text_version(tmp_path: Path, trained: tuple[Path, TrainResult]) -> None:
    path = _with_metadata(trained[0], tmp_path / "anonymous.onnx", milter_text_version=None)
    with pytest.raises(ModelError, match=r"model metadata has no 'milter\.text_version'"):
        load_model(path)


def test_the_shipped_model_loads_and_validates() -> None:
    shipped = load_model(SHIPPED)
    validate_model(shipped)
    assert shipped.text_version == TEXT_VERSION
    spam = (
        b'From: "Cheap Meds" <x@pharma.example.ru>\r\nSubject: Cheap viagra, no prescription\r\n'
        b"Content-Type: text/html\r\n\r\n<html><body><a href='http://pills.example.ru/'>Buy cheap viagra "
        b"and cialis online, no prescription needed, discount pharmacy</a></body></html>\r\n"
    )
    ham = (
        b"From: Alice <alice@example.org>\r\nSubject: Re: patch for the build script\r\n"
        b"In-Reply-To: <1@example.org>\r\nMessage-ID: <2@example.org>\r\n\r\n"
        b"Thanks, I applied your patch and the build works again on my machine.\r\n"
        b"> Could you try the attached patch?\r\n"
    )
    assert shipped.score_message(spam).probability > 0.9
    assert shipped.score_message(ham).probability < 0.5
