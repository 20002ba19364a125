"""Model scoring calls onnxruntime's compiled session directly (see Model.__init__): it must
give exactly what the public InferenceSession.run gives, for real model texts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from conftest import MODEL_PATH

from milter.model import _OUTPUTS, INPUT, load_model
from milter.text import message_text


def test_the_compiled_run_is_used_and_agrees_with_the_public_run() -> None:
    model = load_model(MODEL_PATH)
    session = model._session
    assert model._run == session._sess.run  # the fast path is live with the pinned onnxruntime
    root = Path(os.environ.get("MILTER_CORPUS", "/work/corpus"))
    files = sorted((root / "spamassassin" / "spam").iterdir())[:40]
    files += sorted((root / "trec07p-early" / "ham").iterdir())[:40]
    texts = [message_text(f.read_bytes()) for f in files] + ["x", "ünïcödé tokens 日本語"]
    for batch in ([t] for t in texts):
        feed = {INPUT: np.array(batch, dtype=object)}
        fast = model._run(_OUTPUTS, feed, None)
        public = session.run(_OUTPUTS, feed)
        assert len(fast) == len(public) == 3
        for a, b in zip(fast, public, strict=True):
            assert a.dtype == b.dtype and a.tolist() == b.tolist()
    assert [s.probability for s in model.score_texts(texts)] == [
        float(p) for p in session.run(_OUTPUTS, {INPUT: np.array(texts, dtype=object)})[0]
    ]
