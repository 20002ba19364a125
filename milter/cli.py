"""`milter`: the command line. Each subcommand lives in milter/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from milter import __version__

# Order is the order `milter --help` lists them in.
COMMANDS = (
    "serve",
    "score",
    "train",
    "evaluate",
    "check",
    "rules",
    "learn",
    "retrain",
    "promote",
    "console_password",
)

DESCRIPTION = """\
milter is a spam filter for Postfix. It runs as an SMTP proxy (after-queue content_filter or
before-queue smtpd_proxy_filter), scores each message in-process with a compact ONNX model,
turns the probability into an action with YAML rules, and hands the message on: back to Postfix
over SMTP/LMTP, or into a local Maildir.
"""

EPILOG = """\
exit status:
  0  success
  1  a message, rules file or model failed a check (score, check, rules test); learn: the
     feedback store could not be written; retrain: the gate refused the candidate
  2  usage or configuration error; learn: an input refused as not a message
  3  retrain: not enough feedback yet (nothing written)

files:
  /etc/milter/milter.yaml   configuration (absent: built-in defaults)
  rules/default.yaml        the shipped rules: p >= 0.90 spam_folder, p >= 0.50 flag, else deliver
  model/spam.onnx           the shipped model

Run `milter COMMAND --help` for each command's options.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="milter",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"milter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"milter.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `milter score ... | head`: the reader went away; not an error of ours.
        sys.stderr.close()
        return 0
