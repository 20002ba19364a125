"""The record of `milter retrain`'s runs: one small JSON file the daemon's metrics read.

`milter retrain` runs as a process of its own (milter-retrain.service, from its timer), not in
the daemon, so it cannot count into the daemon's Prometheus registry. It adds each run to this
file instead (`/var/lib/milter/retrain.json`, config key `retrain_state`): counts by result and
by refusal reason, and the last run. The file is replaced whole (a temporary file and a rename)
under an exclusive lock, so the daemon, which reads it at every scrape, never sees half of it
and two runs never lose each other's counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from milter.files import write_atomically

RESULTS = ("written", "refused", "not_enough_feedback")
REASONS = ("not_enough_feedback", "labels_flipped", "one_user", "worse", "junks_more_ham", "broken_teacher")


def empty() -> dict[str, Any]:
    return {
        "runs": dict.fromkeys(RESULTS, 0),
        "refusals": dict.fromkeys(REASONS, 0),
        "last": None,
    }


def read(path: Path) -> dict[str, Any]:
    """The record; an empty one when the file is missing or unreadable (never raises: the
    metrics endpoint must answer whatever is in the file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return empty()
    state = empty()
    if isinstance(data, dict):
        for part in ("runs", "refusals"):
            found = data.get(part)
            if isinstance(found, dict):
                for key, value in found.items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        state[part][str(key)] = value
        if isinstance(data.get("last"), dict):
            state["last"] = data["last"]
    return state


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record(
    path: Path,
    result: str,
    reasons: Sequence[str] = (),
    text: Sequence[str] = (),
    model_id: str | None = None,
    out: Path | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Add one run to the record at `path` (created with its directory's permissions)."""
    if result not in RESULTS:
        raise ValueError(f"result {result!r}; expected one of {', '.join(RESULTS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        state = read(path)
        state["runs"][result] = state["runs"].get(result, 0) + 1
        for reason in reasons:
            state["refusals"][reason] = state["refusals"].get(reason, 0) + 1
        state["last"] = {
            "time": time.time() if now is None else now,
            "result": result,
            "reasons": list(reasons),
            "text": list(text),
            "model_id": model_id,
            "out": str(out) if out is not None else None,
        }
        write_atomically(path, (json.dumps(state, sort_keys=True) + "\n").encode())
    return state
