"""Placeholder until the evaluate command lands (being written now); replaced wholesale by its owner."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser("evaluate", help="(evaluate: not yet available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("milter evaluate: not yet available")
