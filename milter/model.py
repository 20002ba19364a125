"""The spam model: an ONNX file loaded once, checked against this code, scoring model text.

(Skeleton contract; the loader and scorer are filled in by the model work.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Score:
    """What the model says of one message."""

    probability: float
    model_id: str
    # The tokens/features that pushed the score most: (feature, contribution), strongest first.
    features: tuple[tuple[str, float], ...] = ()
