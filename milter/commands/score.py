"""`milter score`: score messages with the model and the rules, like `spamc` for milter."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from milter.errors import MilterError
from milter.paths import SHIPPED_MODEL, SHIPPED_RULES

DEFAULT_RULES = SHIPPED_RULES
DEFAULT_MODEL = SHIPPED_MODEL
BATCH = 64  # messages per graph run: amortises the per-call cost of onnxruntime

HELP = """\
Score each message with the model and decide its action with the rules, exactly as the daemon
would, and print one line per message. FILE may be a message file, a directory (every file
under it, e.g. a Maildir's cur/ or a corpus folder) or `-` for standard input.

With --json each line is a JSON object:
  {"file", "probability", "action", "rule", "required", "model", "features"}
where "features" lists the tokens that pushed the score most as [token, contribution] pairs,
strongest first (positive: towards spam). A file that cannot be read is reported on standard
error and as {"file", "error"}; the run goes on and the exit status is 1.
"""

EPILOG = """\
exit status:
  0  every message was scored
  1  at least one file could not be read
  2  the rules file or the model could not be loaded

examples:
  milter score message.eml
  milter score --json ~/Maildir/cur | jq 'select(.probability > 0.5)'
  cat message.eml | milter score -
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score messages and show the action the rules give them",
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="message file, directory, or - for stdin")
    parser.add_argument("--json", action="store_true", help="one JSON object per message and line")
    parser.add_argument(
        "--rules",
        type=Path,
        default=DEFAULT_RULES,
        metavar="PATH",
        help="rules file (default: the shipped rules)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        metavar="PATH",
        help="model file (default: the shipped model)",
    )
    parser.set_defaults(func=run)


def _sources(names: list[str]) -> Iterator[tuple[str, bytes | OSError]]:
    """(name, raw bytes or the error reading it) for every message named on the command line."""
    for name in names:
        if name == "-":
            yield "-", sys.stdin.buffer.read()
            continue
        path = Path(name)
        if path.is_dir():
            from milter.training.corpus import _files

            files: Iterator[Path] = _files(path)
        else:
            files = iter([path])
        for file in files:
            try:
                yield str(file), file.read_bytes()
            except OSError as exc:
                yield str(file), exc


def _line(record: dict[str, object], as_json: bool) -> str:
    if as_json:
        return json.dumps(record, ensure_ascii=False)
    features = " ".join(f"{name}({value:+.2f})" for name, value in record["features"])  # type: ignore[attr-defined]
    return (
        f"{record['file']}: probability={record['probability']:.4f} action={record['action']} "
        f"rule={record['rule']} model={record['model']} features: {features}"
    )


def run(args: argparse.Namespace) -> int:
    from milter.message import Message
    from milter.model import load_model
    from milter.rules import Ruleset, facts_of
    from milter.text import message_text

    try:
        ruleset = Ruleset.load(args.rules)
        model = load_model(args.model)
    except MilterError as exc:
        print(f"milter score: {exc}", file=sys.stderr)
        return 2
    out: IO[str] = sys.stdout
    failed = 0
    batch: list[tuple[str, bytes]] = []

    def flush() -> None:
        scores = model.score_texts([message_text(raw) for _, raw in batch])
        lines = []
        for (name, raw), score in zip(batch, scores, strict=True):
            decision = ruleset.decide(facts_of(Message(raw), score.probability))
            record: dict[str, object] = {
                "file": name,
                "probability": round(score.probability, 6),
                "action": str(decision.action),
                "rule": decision.rule,
                "required": decision.required,
                "model": score.model_id,
                "features": [[feature, value] for feature, value in score.features],
            }
            lines.append(_line(record, args.json))
        out.write("\n".join(lines) + "\n")
        batch.clear()

    for name, raw in _sources(args.files):
        if isinstance(raw, OSError):
            failed += 1
            reason = raw.strerror or str(raw)
            print(f"milter score: {name}: cannot read: {reason}", file=sys.stderr)
            if batch:
                flush()
            if args.json:
                out.write(json.dumps({"file": name, "error": f"cannot read: {reason}"}) + "\n")
            continue
        batch.append((name, raw))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    out.flush()
    return 1 if failed else 0
