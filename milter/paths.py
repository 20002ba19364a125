"""Where the shipped rules and model live: beside the package in a checkout (and an editable
install), or under `<prefix>/share/milter` where `pip install .` puts them (pyproject.toml's
data-files). One place, so every command and the daemon agree on "the shipped ones"."""

from __future__ import annotations

import sys
from pathlib import Path


def _shipped_root() -> Path:
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "rules" / "default.yaml").is_file():
        return checkout
    return Path(sys.prefix) / "share" / "milter"


SHIPPED_ROOT = _shipped_root()
SHIPPED_RULES = SHIPPED_ROOT / "rules" / "default.yaml"
SHIPPED_MODEL_DIR = SHIPPED_ROOT / "model"
SHIPPED_MODEL = SHIPPED_MODEL_DIR / "spam.onnx"
