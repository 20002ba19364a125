"""`milter train`: fit the spam model on labelled mail and write one ONNX file."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from milter.training.reencode import STYLES

HELP = """\
Read labelled mail, fit a linear TF-IDF model over message->text tokens, calibrate it and write
ONE self-contained ONNX file (text in, spam probability and explanation out).

Mail is split per collection and by time (TREC's inmail.N numbering, else the newest Received
date, else Date): the earliest part trains, the next --calibration-fraction calibrates, the last
--validation-fraction validates. Once calibrated, the weights are fitted again on training +
calibration mail (the mail nearest in time to what the model will score) and keep the
calibration; --no-refit keeps the weights of the training slice alone. The validation figures
are printed and stored in the model's metadata with the training counts, date ranges, library
versions and this command line.

PATH may be a directory of one-message-per-file files, a Maildir folder or an mbox file. The
collection of a path is its parent directory (corpus/ham and corpus/spam are one collection).
The output is written atomically; the same data and --seed give the same file.
"""

EXAMPLE = """\
example:
  milter train --ham corpus/spamassassin/ham corpus/trec07p-early/ham \\
               --spam corpus/spamassassin/spam corpus/trec07p-early/spam \\
               --out model/spam.onnx --seed 0

The shipped model's own command (the modern corpus, --source-balance, the exclusions) is in
docs/model.md, "How to reproduce it".
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the spam model on labelled mail",
        description=HELP,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ham", nargs="+", type=Path, required=True, metavar="PATH", help="ham mail")
    parser.add_argument("--spam", nargs="+", type=Path, required=True, metavar="PATH", help="spam mail")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--max-features", type=int, default=200_000, help="vocabulary size (default: %(default)s)"
    )
    parser.add_argument(
        "--min-df", type=int, default=2, help="least messages a term must occur in (default: %(default)s)"
    )
    parser.add_argument(
        "--C", type=float, default=100.0, dest="C", help="inverse regularisation (default: %(default)s)"
    )
    parser.add_argument(
        "--ham-weight", type=float, default=1.0, help="class weight of ham (default: %(default)s)"
    )
    parser.add_argument(
        "--calibration-ham-weight",
        type=float,
        default=8.0,
        help="weight of ham when calibrating: >1 makes probabilities err towards ham (default: %(default)s)",
    )
    parser.add_argument(
        "--source-balance",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="weigh the sources alike: a message of a source (a --ham/--spam path's collection, or "
        "the <source> of files named <source>.<n>.eml) with n messages of its kind weighs "
        "max(n, 100)^-ALPHA, so that one big collection does not teach what its own mail looks "
        "like; 0 weighs every message alike (default: %(default)s)",
    )
    parser.add_argument(
        "--min-sources",
        type=int,
        default=1,
        metavar="N",
        help="leave out of the vocabulary the terms that fewer than N sources' mail has (a source as "
        "for --source-balance): a word of one list or one collection alone says where a message "
        "comes from, not whether it is spam (default: %(default)s)",
    )
    parser.add_argument(
        "--clip",
        type=float,
        default=0.0,
        metavar="C",
        help="bound each token's share of the model's log-odds to [-C, C] (before the calibration), "
        "so that no one token decides a message: in a short text each of a few tokens has a large "
        "share; 0: unbounded (default: %(default)s)",
    )
    parser.add_argument(
        "--fuse-nb",
        type=float,
        default=0.0,
        metavar="BETA",
        help="fuse a second model on log-odds: Bernoulli naive Bayes over the same tokens, its "
        "log-odds (bounded to +-30) added times BETA to the linear model's before the calibration; "
        "it keeps more commercial mail out of Junk and lets more spam in (docs/model.md, candidate "
        "H). `milter retrain` keeps the naive Bayes part fixed and corrects the linear weights; "
        "0: not fused (default: %(default)s)",
    )
    parser.add_argument(
        "--exclude-prefix",
        nargs="*",
        default=["mailer:"],
        metavar="PREFIX",
        help="leave tokens starting with PREFIX out of the vocabulary; none with no PREFIX "
        "(default: %(default)s: mail client names, which mark a collection's era, not spam)",
    )
    parser.add_argument(
        "--exclude-word",
        nargs="*",
        default=None,
        metavar="WORD",
        help="leave these tokens out of the vocabulary; none with no WORD (default: month and "
        "weekday names, which say when a collection was gathered, and the commonest words of six "
        "European languages, which say which language a message is in, and English function "
        "words and '!', in the body and the subject, which say the register: not what is spam)",
    )
    parser.add_argument(
        "--exclude-token",
        nargs="*",
        default=[],
        metavar="TOKEN",
        help="leave these tokens out of the vocabulary too, besides the --exclude-word list (default: none)",
    )
    parser.add_argument(
        "--augment",
        nargs="*",
        default=list(STYLES),
        choices=sorted(STYLES),
        metavar="STYLE",
        help="also fit every message rewrapped as these mail programs send it today (the words "
        "kept, the MIME wrapping changed), so that the corpus' era-bound wrapping carries no "
        "weight; none with no STYLE (default: %(default)s)",
    )
    parser.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="keep the weights fitted on the training slice alone (default: once calibrated, fit "
        "them again on training + calibration mail, keeping the calibration)",
    )
    parser.add_argument(
        "--calibrate-on",
        nargs="+",
        default=[],
        metavar="COLLECTION",
        help="fit the calibration on the calibration slice of these collections only (the name of "
        "a --ham/--spam path's parent directory, e.g. modern), so that the thresholds mean what "
        "they say on that mail (default: every collection's)",
    )
    parser.add_argument("--calibration-fraction", type=float, default=0.1, help="default: %(default)s")
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="default: %(default)s")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes for message->text (default: %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _recorded_arguments(argv: list[str]) -> list[str]:
    """The arguments that shape the model; --jobs and --quiet do not, so they are not recorded
    (the same data, seed and options then give the same file, byte for byte)."""
    args = argv[2:] if argv[1:2] == ["train"] else argv[1:]
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--jobs":
            skip = True
        elif arg != "--quiet" and not arg.startswith("--jobs="):
            kept.append(arg)
    return kept


def run(args: argparse.Namespace) -> int:
    from milter.training.train import TrainConfig, train

    config = TrainConfig(
        max_features=args.max_features,
        min_df=args.min_df,
        C=args.C,
        ham_weight=args.ham_weight,
        calibration_ham_weight=args.calibration_ham_weight,
        refit=args.refit,
        exclude_prefixes=tuple(args.exclude_prefix),
        exclude_words=(
            *(TrainConfig.exclude_words if args.exclude_word is None else args.exclude_word),
            *args.exclude_token,
        ),
        augment=tuple(args.augment),
        calibrate_on=tuple(args.calibrate_on),
        source_balance=args.source_balance,
        min_sources=args.min_sources,
        clip=args.clip,
        fuse_nb=args.fuse_nb,
        seed=args.seed,
        calibration_fraction=args.calibration_fraction,
        validation_fraction=args.validation_fraction,
        jobs=args.jobs,
    )
    for path in [*args.ham, *args.spam]:
        if not path.exists():
            print(f"milter train: {path}: no such file or directory", file=sys.stderr)
            return 2
    command = "milter train " + shlex.join(_recorded_arguments(sys.argv))

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    try:
        result = train(args.ham, args.spam, config, command, progress=not args.quiet, log=log)
    except (ValueError, OSError) as exc:
        print(f"milter train: {exc}", file=sys.stderr)
        return 2
    from milter.files import write_atomically

    write_atomically(args.out, result.model_bytes)
    print(
        json.dumps(
            {"out": str(args.out), "bytes": len(result.model_bytes), "figures": result.figures}, indent=2
        )
    )
    return 0
