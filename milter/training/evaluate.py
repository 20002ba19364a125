"""Evaluation: the model, the word TF-IDF yardstick and bogofilter on the same later-in-time mail.

The yardstick is the last row of the issue's anchor table: word TF-IDF + logistic regression over
subject + body only (stdlib decoding, scikit-learn's default word tokeniser), retrained on the
same training slice. bogofilter, when installed, is trained on that slice too (a fresh wordlist
in a temporary directory) and classifies the evaluation slice in bulk mode.
"""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from milter.model import Model
from milter.text import message_text
from milter.training import metrics
from milter.training.corpus import LabelledMessage
from milter.training.reencode import reencode


@dataclass
class SystemScores:
    """One system's probabilities for the evaluation messages, and how long scoring took."""

    name: str
    probabilities: np.ndarray
    seconds: float
    note: str = ""
    figures: dict[str, object] = field(default_factory=dict)


def score_with_model(
    model: Model, raws: Sequence[bytes], batch: int = 64, rewrap: str | None = None
) -> SystemScores:
    """The model's probabilities, timed end to end: message->text and the graph, one process.
    With `rewrap`, of the messages rewrapped in that style (milter.training.reencode) instead;
    the time then includes the rewrapping."""
    started = time.perf_counter()
    out: list[float] = []
    for start in range(0, len(raws), batch):
        chunk = raws[start : start + batch]
        texts = [message_text(reencode(raw, rewrap) if rewrap else raw) for raw in chunk]
        out.extend(score.probability for score in model.score_texts(texts))
    seconds = time.perf_counter() - started
    name = f"milter ({model.id})" + (f", rewrapped {rewrap}" if rewrap else "")
    return SystemScores(name, np.array(out, dtype=np.float64), seconds)


def yardstick_text(raw: bytes) -> str:
    """Subject and the decoded text parts, nothing else: the yardstick's view of a message."""
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw[: 256 * 1024])
        pieces = []
        subject = message.get("Subject", "")
        try:
            pieces.append(str(email.header.make_header(email.header.decode_header(str(subject)))))
        except Exception:  # broken encoded words: the raw value
            pieces.append(str(subject))
        for part in message.walk():
            if part.get_content_maintype() != "text":
                continue
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                charset = part.get_content_charset() or "latin-1"
                try:
                    pieces.append(data[:65536].decode(charset, "replace"))
                except LookupError:
                    pieces.append(data[:65536].decode("latin-1"))
        return "\n".join(pieces)
    except Exception:  # the yardstick is not ours to harden: an unparsable message is empty to it
        return ""


def yardstick(
    train_raws: Sequence[bytes], train_labels: np.ndarray, eval_raws: Sequence[bytes]
) -> SystemScores:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, dtype=np.float32)
    x = vectorizer.fit_transform([yardstick_text(raw) for raw in train_raws])
    classifier = LogisticRegression(C=10.0, solver="liblinear", max_iter=1000)
    classifier.fit(x, train_labels)
    started = time.perf_counter()
    p = classifier.predict_proba(vectorizer.transform([yardstick_text(raw) for raw in eval_raws]))[:, 1]
    seconds = time.perf_counter() - started
    return SystemScores(
        "yardstick: word TF-IDF + LR, subject + body", np.asarray(p, dtype=np.float64), seconds
    )


def _bogofilter_version(binary: str) -> str:
    result = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
    return (
        (result.stdout or result.stderr).splitlines()[0].strip() if (result.stdout or result.stderr) else ""
    )


def bogofilter(
    train_raws: Sequence[bytes],
    train_labels: np.ndarray,
    eval_raws: Sequence[bytes],
    header_tokens: bool = True,
) -> SystemScores | None:
    """bogofilter trained on the training slice; None if it is not installed."""
    binary = shutil.which("bogofilter")
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="milter-bogo-") as tmp:
        root = Path(tmp)
        wordlist = root / "db"
        wordlist.mkdir()
        flags = [] if header_tokens else ["-H"]

        def write(prefix: str, raws: Sequence[bytes]) -> list[str]:
            names = []
            folder = root / prefix
            folder.mkdir()
            for i, raw in enumerate(raws):
                path = folder / f"{i:07d}"
                path.write_bytes(raw)
                names.append(str(path))
            return names

        ham_files = write("ham", [r for r, y in zip(train_raws, train_labels, strict=True) if y == 0])
        spam_files = write("spam", [r for r, y in zip(train_raws, train_labels, strict=True) if y == 1])
        eval_files = write("eval", eval_raws)
        for flag, files in (("-n", ham_files), ("-s", spam_files)):
            subprocess.run(
                [binary, "-d", str(wordlist), *flags, flag, "-b"],
                input="\n".join(files) + "\n",
                text=True,
                check=True,
                capture_output=True,
            )
        started = time.perf_counter()
        result = subprocess.run(
            [binary, "-d", str(wordlist), *flags, "-T", "-b"],
            input="\n".join(eval_files) + "\n",
            text=True,
            check=False,
            capture_output=True,
        )
        seconds = time.perf_counter() - started
    scores = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            scores[parts[0]] = float(parts[2])
    p = np.array([scores.get(name, 0.5) for name in eval_files], dtype=np.float64)
    name = _bogofilter_version(binary) or "bogofilter"
    if not header_tokens:
        name += ", header tokens off (-H)"
    return SystemScores(name, p, seconds, note="one process, bulk mode")


def figures_by_group(
    messages: Sequence[LabelledMessage],
    indices: Sequence[int],
    p: np.ndarray,
    thresholds: Sequence[tuple[str, float]],
) -> dict[str, object]:
    labels = np.array([messages[i].label for i in indices], dtype=np.int64)
    out: dict[str, object] = {}
    if len(set(labels.tolist())) == 2:
        out["all"] = metrics.figures(labels, p, thresholds)
    groups = [messages[i].group for i in indices]
    for group in sorted(set(groups)):
        mask = np.array([g == group for g in groups])
        if len(set(labels[mask].tolist())) == 2:
            out[Path(group).name] = metrics.figures(labels[mask], p[mask], thresholds)
    return out


def evaluate(
    model: Model,
    messages: Sequence[LabelledMessage],
    eval_ix: Sequence[int],
    train_ix: Sequence[int],
    thresholds: Sequence[tuple[str, float]],
    compare: Sequence[str] = (),
    log: Callable[[str], None] = lambda _: None,
    rewrap: Sequence[str] = (),
) -> list[SystemScores]:
    """Score the evaluation messages with the model, with the model again for each style of
    `rewrap` (the same messages rewrapped as today's mail programs send them), and with each
    comparison system."""
    eval_raws = [messages[i].raw for i in eval_ix]
    train_raws = [messages[i].raw for i in train_ix]
    train_labels = np.array([messages[i].label for i in train_ix], dtype=np.int64)
    log(f"scoring {len(eval_raws)} messages with {model.id}")
    systems = [score_with_model(model, eval_raws)]
    for style in rewrap:
        log(f"scoring them rewrapped ({style}) with {model.id}")
        systems.append(score_with_model(model, eval_raws, rewrap=style))
    for name in compare:
        log(f"training and scoring: {name}")
        if name == "yardstick":
            systems.append(yardstick(train_raws, train_labels, eval_raws))
        elif name in ("bogofilter", "bogofilter-noheaders"):
            scored = bogofilter(train_raws, train_labels, eval_raws, header_tokens=name == "bogofilter")
            if scored is None:
                log("bogofilter is not installed: skipped")
            else:
                systems.append(scored)
        else:
            raise ValueError(
                f"unknown comparison {name!r}; expected yardstick, bogofilter or bogofilter-noheaders"
            )
    for system in systems:
        system.figures = figures_by_group(messages, eval_ix, system.probabilities, thresholds)
        system.figures["messages_per_second"] = (
            round(len(eval_raws) / system.seconds, 1) if system.seconds else 0
        )
    return systems
