"""`milter retrain`: a site model from the shipped model and the feedback store, through the gate."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from milter.errors import ConfigError, MilterError

if TYPE_CHECKING:  # imported where used: `milter --help` loads every command module
    from milter.config import Config
    from milter.feedback import Feedback, Store
    from milter.retrain import Outcome

DESCRIPTION = """\
Make a site model: the shipped model corrected by what the site's users taught (the feedback
store that `milter learn` fills), and write it only if it passes the gate. Needs no training
corpus: the shipped model's vocabulary and weights are read out of its file, and the correction
is fitted on the store's messages alone, pulled toward the shipped weights, so a little feedback
moves the model a little (docs/learning.md).

The latest fifth of each label in the store (by the time taught) is held back: the candidate is
fitted on the rest, then compared with the live model (the one the daemon serves: the config's
model) on the held-back messages, by the actions the rules would take. It is refused, and
nothing is written, when:
  - the store has fewer than 10 messages of either label (exit status 3: not yet);
  - one user among several taught most of the spam, nearly nothing else, and the live model
    calls most of it ham (one user moving everything into Junk);
  - it makes more mistakes on the held-back messages than the live model (more than chance
    allows, or with a higher log loss; or as many, with a log loss higher by more than 0.02),
    or puts more held-back ham in a spam action;
  - it moves a built-in message (obvious spam, plain personal mail) that the live model has
    right to the other side: what feedback with its labels flipped teaches.
Each reason is printed on standard error, and counted in the file the daemon's metrics read
(config key retrain_state, /var/lib/milter/retrain.json, when its directory exists).

--out FILE writes the model there; --to shadow writes it into the config's shadow_model (a
directory: as site-ID.onnx), where the daemon scores every message with it too without acting
on it; --to live into the config's model directory, where the daemon serves it. Either way the
file is written under a temporary name beside its place, loaded and checked as the daemon
checks a model, and renamed into place: the daemon's reload never sees half a file.

The same store and base model give the same file. Its metadata records the base model's id,
the store's counts and date range, and the gate's figures (`milter check FILE` shows them).
With --json a single object: {"result", "out", "model_id", "base", "live", "feedback", "gate"}.
"""

EPILOG = """\
exit status:
  0  the candidate passed the gate and was written
  1  the gate refused it (the reasons on standard error); nothing was written
  2  usage error, a bad config file, the store or a model could not be read
  3  not enough feedback yet; nothing was written

files:
  /var/lib/milter-feedback/feedback.sqlite3   the store (config key feedback_store)
  /var/lib/milter/retrain.json                 the runs, for the metrics (retrain_state)

examples:
  milter retrain --store /var/lib/milter-feedback --out site.onnx
  milter score --model site.onnx message.eml
  milter retrain --config /etc/milter/milter.yaml --to shadow     (what milter-retrain.service runs)
  milter promote                                                  (the shadow model goes live)
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "retrain",
        help="make a site model from the shipped model and the feedback store, through the gate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="FILE", help="write the site model to FILE")
    where.add_argument(
        "--to",
        choices=("shadow", "live"),
        help="write it into the config's shadow_model, or its model directory",
    )
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="the store's directory (default: the config's feedback_store, /var/lib/milter-feedback)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the config file (default: /etc/milter/milter.yaml if it exists)",
    )
    parser.add_argument(
        "--base", type=Path, metavar="FILE", help="the model to start from (default: the shipped model)"
    )
    parser.add_argument(
        "--live",
        type=Path,
        metavar="PATH",
        help="the model to beat (default: the config's model, as the daemon selects it)",
    )
    parser.add_argument(
        "--exclude-user",
        action="append",
        default=[],
        metavar="NAME",
        help="leave out what this user taught (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on standard output")
    parser.set_defaults(func=run)


def _error(message: str, status: int = 2) -> int:
    print(f"milter retrain: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    from milter.config import load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        return _error(str(e))
    try:
        out = destination(args, config)
    except ValueError as e:
        return _error(f"{e}; see milter retrain --help")
    try:
        return _retrain(args, config, out)
    except MilterError as e:
        return _error(str(e))
    except OSError as e:  # writing the model: its directory, permissions, a full disk
        where = e.filename if e.filename is not None else (out or "the model directory")
        return _error(f"{where}: cannot write the model: {e.strerror or e}")


def destination(args: argparse.Namespace, config: Config) -> Path | None:
    """Where the model goes: --out, or the shadow or model place of the config (a directory:
    None here, named after the model once its id is known)."""
    if args.out is not None:
        return Path(args.out)
    target = config.shadow_model if args.to == "shadow" else config.model
    if target is None:
        raise ValueError(
            "--to shadow needs shadow_model in the config (a directory, e.g. /var/lib/milter/shadow)"
        )
    return None if target.is_dir() else target


def _retrain(args: argparse.Namespace, config: Config, out: Path | None) -> int:
    from milter import retrain_state
    from milter.feedback import Store
    from milter.paths import SHIPPED_MODEL
    from milter.reload import select_model
    from milter.retrain import retrain
    from milter.rules import Ruleset, actions_for_mode

    directory = args.store if args.store is not None else config.feedback_store
    messages, texts = _read(Store(directory), set(args.exclude_user))
    base_path = args.base if args.base is not None else SHIPPED_MODEL
    try:
        base_data = base_path.read_bytes()
    except OSError as e:
        return _error(f"{base_path}: cannot read: {e.strerror or e}; expected the base model file")
    rules = Ruleset.load(config.rules, allowed_actions=actions_for_mode(config.mode), mode=config.mode)
    live = select_model(args.live if args.live is not None else config.model)
    outcome = retrain(messages, base_data, str(base_path), live, rules.decide, texts=texts)
    report = outcome.report
    reasons = [r.reason for r in report.refusals]
    texts = [r.text for r in report.refusals]
    if not report.passed:
        result = "not_enough_feedback" if reasons == ["not_enough_feedback"] else "refused"
        for text in texts:
            print(f"milter retrain: refused: {text}", file=sys.stderr)
        _record(config, retrain_state, result, reasons, texts, None, None)
        _show(args, outcome, result, None, live.id)
        return 3 if result == "not_enough_feedback" else 1
    assert outcome.data is not None and outcome.model_id is not None
    if out is None:
        target = config.shadow_model if args.to == "shadow" else config.model
        assert target is not None
        out = target / f"site-{outcome.model_id.removeprefix('spam-')}.onnx"
    install(outcome.data, out, config.max_ms_per_message / 1000.0)
    _record(config, retrain_state, "written", [], [], outcome.model_id, out)
    _show(args, outcome, "written", out, live.id)
    return 0


def _read(store: Store, excluded: set[str]) -> tuple[list[Feedback], list[str]]:
    """The store's messages (those of `excluded` users left out) and their model texts, from
    one snapshot, a message at a time: only the held-back messages keep their bytes."""
    from milter import gate
    from milter.text import message_text

    with store, store.snapshot() as snapshot:
        messages = [m for m in snapshot.labels() if m.user not in excluded]
        wanted = {m.id for m in messages}
        _, held = gate.split(messages)
        kept = {m.id for m in held}
        texts, raws = [], {}
        for row_id, raw in snapshot.raws():
            if row_id in wanted:
                texts.append(message_text(raw))
                if row_id in kept:
                    raws[row_id] = raw
    return [dataclasses.replace(m, raw=raws.get(m.id, b"")) for m in messages], texts


def install(data: bytes, out: Path, max_seconds_per_message: float) -> None:
    """Write `data` beside `out` under a temporary name (which the reload watcher ignores),
    check it as the daemon checks a model, and rename it into place."""
    from milter.files import write_atomically
    from milter.model import load_model, validate_model

    write_atomically(out, data, check=lambda tmp: validate_model(load_model(tmp), max_seconds_per_message))


def _record(
    config: Config,
    state: Any,
    result: str,
    reasons: list[str],
    texts: list[str],
    model_id: str | None,
    out: Path | None,
) -> None:
    """Count the run where the daemon's metrics read it; a machine without milter's state
    directory (a test box, an admin's laptop) has nothing to count into."""
    path: Path = config.retrain_state
    if not path.parent.is_dir():
        return
    try:
        state.record(path, result, reasons, texts, model_id, out)
    except OSError as e:
        print(f"milter retrain: {path}: cannot record this run: {e.strerror or e}", file=sys.stderr)


def _show(args: argparse.Namespace, outcome: Outcome, result: str, out: Path | None, live_id: str) -> None:
    summary = outcome.summary
    gate = outcome.report.as_dict()
    fitted = outcome.fitted
    if args.json:
        print(
            json.dumps(
                {
                    "result": result,
                    "out": str(out) if out is not None else None,
                    "model_id": outcome.model_id,
                    "base": outcome.base_id,
                    "live": live_id,
                    "feedback": summary,
                    "gate": gate,
                },
                sort_keys=True,
            )
        )
        return
    if summary:
        trained, held = summary["trained"], summary["held_back"]
        print(
            f"feedback: trained on {trained['ham']} ham and {trained['spam']} spam "  # type: ignore[index]
            f"(taught {summary['taught'][0]} to {summary['taught'][1]}), "  # type: ignore[index]
            f"held back {held['ham']} ham and {held['spam']} spam"  # type: ignore[index]
        )
    if fitted is not None:
        print(f"candidate: {fitted.new_terms} new terms, {fitted.changed_terms} weights moved")
    figures = gate.get("held_back")
    if isinstance(figures, dict):
        for name in ("live", "candidate"):
            side = figures[name]
            who = live_id if name == "live" else (outcome.model_id or "candidate")
            print(
                f"held back, {name} {who}: {side['ham_junked']} ham junked, {side['spam_missed']} spam "
                f"missed, log loss {side['log_loss']:.4f}"
            )
    if result == "written":
        print(f"gate: passed; wrote {outcome.model_id} to {out}")
    else:
        print(f"gate: {result.replace('_', ' ')}; nothing written")
