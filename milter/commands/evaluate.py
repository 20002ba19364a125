"""`milter evaluate`: how good is a model on labelled mail, next to the yardstick and bogofilter."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from milter.commands.score import DEFAULT_MODEL, DEFAULT_RULES
from milter.errors import MilterError
from milter.training.reencode import STYLES

if TYPE_CHECKING:
    from milter.training.evaluate import SystemScores

HELP = """\
Score labelled mail with a model and report: ROC AUC, spam recall at a ham false-positive rate
of 0.1 % and 1 %, ham FPR and spam recall at each probability threshold of the rules file,
calibration (Brier score, expected calibration error, reliability table) and messages per
second, per collection and over all.

By default only the *validation* slice is scored: the latest --validation-fraction of each
collection, cut exactly as `milter train` cuts it, so a model trained on the same paths is
judged on mail later than any it learnt from. --all scores every message instead (for mail the
model has never seen). --compare retrains other systems on the same earlier slices (training +
calibration) and scores the same messages: `yardstick` (word TF-IDF + logistic regression over
subject + body) and `bogofilter` / `bogofilter-noheaders` (if installed).

--rewrap scores the same messages again rewrapped as today's mail programs send them (Outlook:
base64 UTF-8 with a Word HTML alternative; Gmail: quoted-printable with a <div> alternative; a
mail service: HTML alone): the words stay, the wrapping changes. Old corpora wrap ham and spam
differently (plain ASCII ham, HTML and base64 spam), so a model that learnt the wrapping shows
it here as ham pushed above the thresholds.
"""

EPILOG = """\
example:
  milter evaluate --ham corpus/*/ham --spam corpus/*/spam --compare yardstick bogofilter \\
                  --report report/
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure a model on labelled mail (AUC, low-FPR recall, calibration, speed)",
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ham", nargs="+", type=Path, required=True, metavar="PATH", help="ham mail")
    parser.add_argument("--spam", nargs="+", type=Path, required=True, metavar="PATH", help="spam mail")
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, metavar="PATH", help="default: shipped model"
    )
    parser.add_argument(
        "--rules", type=Path, default=DEFAULT_RULES, metavar="PATH", help="default: shipped rules"
    )
    parser.add_argument(
        "--all", action="store_true", help="score every message, not only the validation slice"
    )
    parser.add_argument(
        "--calibration-fraction", type=float, default=0.1, help="as in train (default: %(default)s)"
    )
    parser.add_argument(
        "--validation-fraction", type=float, default=0.1, help="as in train (default: %(default)s)"
    )
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        choices=("yardstick", "bogofilter", "bogofilter-noheaders"),
        help="systems to retrain on the earlier slices and score alongside",
    )
    parser.add_argument(
        "--rewrap",
        nargs="*",
        choices=sorted(STYLES),
        metavar="STYLE",
        help=f"also score the messages rewrapped in these styles, all with no STYLE ({', '.join(STYLES)})",
    )
    parser.add_argument(
        "--report", type=Path, metavar="DIR", help="also write PNG plots and report.json here"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on standard error")
    parser.set_defaults(func=run)


def _table(systems: Sequence[SystemScores]) -> str:
    lines = []
    for system in systems:
        figures = system.figures
        lines.append(f"{system.name}  ({figures['messages_per_second']} msg/s)")
        for group, row in figures.items():
            if not isinstance(row, dict):
                continue
            rates = "  ".join(
                f"{key.split()[1]}: fpr {value['ham_fpr']:.2%} recall {value['spam_recall']:.1%}"
                for key, value in row.items()
                if key.startswith("threshold ")
            )
            lines.append(
                f"  {group:<16} ham {row['ham']:>5} spam {row['spam']:>5}"
                f"  (1-AUC) {row['one_minus_auc_percent']:.3f}%"
                f"  recall@0.1% {row['recall_at_0.1%_fpr']:.1%}  @1% {row['recall_at_1%_fpr']:.1%}"
                f"  Brier {row['brier']:.4f}  ECE {row['ece']:.4f}  {rates}"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from milter.model import load_model
    from milter.rules import Ruleset
    from milter.training import metrics
    from milter.training.corpus import load_labelled, time_split
    from milter.training.evaluate import evaluate

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    try:
        ruleset = Ruleset.load(args.rules)
        model = load_model(args.model)
    except MilterError as exc:
        print(f"milter evaluate: {exc}", file=sys.stderr)
        return 2
    for path in [*args.ham, *args.spam]:
        if not path.exists():
            print(f"milter evaluate: {path}: no such file or directory", file=sys.stderr)
            return 2
    messages = list(load_labelled(args.ham, args.spam))
    if args.all:
        eval_ix, train_ix = list(range(len(messages))), []
        if args.compare:
            print("milter evaluate: --compare needs the time split (not --all)", file=sys.stderr)
            return 2
    else:
        train_ix, cal_ix, eval_ix = time_split(messages, args.calibration_fraction, args.validation_fraction)
        train_ix = train_ix + cal_ix
    labels = np.array([messages[i].label for i in eval_ix], dtype=np.int64)
    if len(set(labels.tolist())) < 2:
        print("milter evaluate: the evaluated mail needs both ham and spam", file=sys.stderr)
        return 2
    thresholds = list(ruleset.thresholds)
    rewrap = [] if args.rewrap is None else (args.rewrap or list(STYLES))
    systems = evaluate(model, messages, eval_ix, train_ix, thresholds, args.compare, log=log, rewrap=rewrap)
    ours = systems[0]
    report = {
        "model": model.id,
        "model_path": str(model.path),
        "evaluated": "all"
        if args.all
        else f"validation slice (latest {args.validation_fraction:g} per collection)",
        "systems": [{"name": s.name, "note": s.note, "figures": s.figures} for s in systems],
        "reliability": metrics.reliability(labels, ours.probabilities),
    }
    print(_table(systems))
    if args.report:
        from milter.training.plots import write_report

        written = write_report(args.report, labels, systems, thresholds)
        (args.report / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        log("wrote " + ", ".join(str(p) for p in [*written, args.report / "report.json"]))
    return 0
