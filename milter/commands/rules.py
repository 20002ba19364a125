"""`milter rules test RULES [MESSAGE...]`: which rule each message hits, and why."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Protocol

from milter.errors import FileError
from milter.message import Envelope, Message
from milter.paths import SHIPPED_MODEL
from milter.rules import MODE_ACTIONS, Decision, Facts, Ruleset, Trace, actions_for_mode, facts_of

DESCRIPTION = """\
Work with rules files. `milter rules test` shows which rule each message hits and why, so a
rules change can be tried on real mail before it is saved where the daemon reads it.
"""

TEST_DESCRIPTION = """\
Score each MESSAGE (a file holding one raw RFC 5322 message, a directory of them, or - for
standard input) with the model, as the daemon would, then run the rules of RULES on it and show
the probability, the rule that decides, its action, and why it matched. With --all, every rule
is shown with each of its conditions and whether it holds.

--probability P skips the model and tests the rules with that probability (no MESSAGE needed:
the rules are then tried on an empty message); --unscored tests what happens when scoring fails.

Rules may look at the SMTP envelope, which a stored message no longer carries: it is taken from
--sender, --recipient and --client when given, else from the message's Return-Path (sender)
and Delivered-To / X-Original-To headers (recipients), which delivery agents add.
"""

TEST_EPILOG = """\
exit status:
  0  every message was tested
  1  the rules file or model is invalid, or a message could not be read
  2  usage error

examples:
  milter rules test rules/default.yaml ~/Maildir/.Junk/cur/
  milter rules test --all --probability 0.7 rules/new.yaml
  milter rules test --json --sender bounce@list.example rules/new.yaml - < message.eml
"""


class Scorer(Protocol):
    id: str

    def score_message(self, raw: bytes) -> Any: ...


class _IntermixedParser(argparse.ArgumentParser):
    """Lets options follow the messages (`rules test R.yaml a.eml --all b.eml`), which plain
    argparse refuses once a `*` positional has been consumed."""

    _inside = False

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "rules",
        help="test rules files on messages",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_help(parser))
    commands = parser.add_subparsers(
        dest="rules_command", metavar="SUBCOMMAND", parser_class=_IntermixedParser
    )
    test = commands.add_parser(
        "test",
        help="show which rule each message hits and why",
        description=TEST_DESCRIPTION,
        epilog=TEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    test.add_argument("rules", type=Path, metavar="RULES", help="the rules file to test")
    test.add_argument(
        "messages",
        nargs="*",
        metavar="MESSAGE",
        help="message file, directory of message files, or - (stdin)",
    )
    given = test.add_mutually_exclusive_group()
    given.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="PATH",
        help="the model to score with (default: the shipped model/spam.onnx)",
    )
    given.add_argument(
        "--probability",
        type=_probability,
        default=None,
        metavar="P",
        help="use probability P instead of a model",
    )
    given.add_argument(
        "--unscored", action="store_true", help="test as if the model could not score the message"
    )
    test.add_argument(
        "--all", action="store_true", help="show every rule and condition, not only the deciding rule"
    )
    test.add_argument("--json", action="store_true", help="one JSON object per message instead of text")
    test.add_argument("--sender", metavar="ADDRESS", help="envelope sender (MAIL FROM) to test with")
    test.add_argument(
        "--recipient",
        action="append",
        default=None,
        metavar="ADDRESS",
        help="envelope recipient (RCPT TO); repeat for several",
    )
    test.add_argument(
        "--client", metavar="IP", help="client address to test with (as Postfix's XFORWARD gives it)"
    )
    test.add_argument(
        "--mode",
        choices=tuple(MODE_ACTIONS),
        default=None,
        help="also check the rules' actions against this filter mode, as the daemon does",
    )
    test.set_defaults(func=run_test)


def _help(parser: argparse.ArgumentParser) -> Any:
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2  # a subcommand is required: a usage error, but a helpful one

    return show


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; expected a probability from 0 to 1"
        ) from None
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is out of range; expected a probability from 0 to 1")
    return p


@dataclass(frozen=True)
class Outcome:
    name: str  # file name, "-" or "(no message)"
    probability: float | None
    model: str | None
    note: str  # how the probability was obtained
    envelope: Envelope
    decision: Decision
    traces: tuple[Trace, ...]


def run_test(args: argparse.Namespace) -> int:
    try:
        if args.mode is not None:
            ruleset = Ruleset.load(args.rules, allowed_actions=actions_for_mode(args.mode), mode=args.mode)
        else:
            ruleset = Ruleset.load(args.rules)
    except FileError as e:
        print(e, file=sys.stderr)
        return 1
    if not args.messages and args.probability is None and not args.unscored:
        print(
            "milter rules test: no MESSAGE given; name message files, a directory or - (standard input),"
            " or give --probability P or --unscored to test without a message",
            file=sys.stderr,
        )
        return 2

    scorer: Scorer | None = None
    if args.probability is None and not args.unscored and args.messages:
        from milter.model import load_model

        try:
            scorer = load_model(args.model or SHIPPED_MODEL)
        except FileError as e:
            print(
                f"{e}\n(use --model PATH, or --probability P to test the rules without a model)",
                file=sys.stderr,
            )
            return 1

    failed = 0
    inputs: Iterator[tuple[str, bytes | None, str | None]] = (
        _read_messages(args.messages) if args.messages else iter([("(no message)", b"", None)])
    )
    for name, raw, error in inputs:
        if raw is None:
            print(f"{name}: {error}", file=sys.stderr, flush=True)
            failed += 1
            continue
        outcome = test_message(name, raw, ruleset, args, scorer)
        print(_json(outcome, args.all) if args.json else _text(outcome, args.all), flush=True)
    return 1 if failed else 0


def _read_messages(names: list[str]) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(name, raw bytes, None) per message, or (name, None, error) when it cannot be read."""
    for name in names:
        if name == "-":
            yield "-", sys.stdin.buffer.read(), None
            continue
        path = Path(name)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            if not files:
                yield name, None, "no message files in this directory"
            for p in files:
                yield from _read_file(p)
        else:
            yield from _read_file(path)


def _read_file(path: Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    try:
        yield str(path), path.read_bytes(), None
    except FileNotFoundError:
        yield str(path), None, "no such file"
    except OSError as e:
        yield str(path), None, f"cannot read: {e.strerror or e}"


def envelope_of(message: Message, args: argparse.Namespace) -> Envelope:
    """The envelope to test with: the options given, else what delivery left in the headers."""
    sender = args.sender
    if sender is None:
        paths = [a for _, a in getaddresses(message.header_values("Return-Path"))]
        sender = paths[-1] if paths else ""
    recipients = args.recipient
    if recipients is None:
        recipients = []
        for header in ("Delivered-To", "X-Original-To"):
            for _, address in getaddresses(message.header_values(header)):
                if address and address.lower() not in (r.lower() for r in recipients):
                    recipients.append(address)
    return Envelope(sender, tuple(recipients), client_address=args.client)


def test_message(
    name: str, raw: bytes, ruleset: Ruleset, args: argparse.Namespace, scorer: Scorer | None
) -> Outcome:
    message = Message(raw, Envelope("", ()))
    message = Message(raw, envelope_of(message, args))
    model: str | None = None
    probability: float | None
    if args.unscored:
        probability, note = None, "unscored (--unscored)"
    elif args.probability is not None:
        probability, note = args.probability, "given (--probability)"
    elif scorer is not None:
        model = scorer.id
        try:
            probability = float(scorer.score_message(raw).probability)
            note = f"model {model}"
        except Exception as e:  # as in the daemon: a scoring fault leaves the message unscored
            probability, note = None, f"unscored: scoring failed ({type(e).__name__}: {e})"
    else:
        probability, note = None, "unscored"
    facts: Facts = facts_of(message, probability)
    return Outcome(
        name, probability, model, note, message.envelope, ruleset.decide(facts), ruleset.explain(facts)
    )


def _text(o: Outcome, show_all: bool) -> str:
    p = "unscored" if o.probability is None else f"{o.probability:.4f}"
    d = o.decision
    rule = next((t.rule for t in o.traces if t.chosen), None)
    where = f" (line {rule.line})" if rule is not None and rule.line else ""
    head = f'{o.name}: probability {p} [{o.note}] -> {d.action.value} by rule "{d.rule}"{where}: {d.reason}'
    if not show_all:
        return head
    env = o.envelope
    lines = [
        head,
        f"  envelope: from <{env.mail_from}> to {', '.join(f'<{r}>' for r in env.rcpt_tos) or '(none)'}"
        f" client {env.client_address or '(unknown)'}",
    ]
    width = max((len(t.rule.name) for t in o.traces), default=0)
    for t in o.traces:
        verdict = "DECIDES" if t.chosen else "match" if t.matched else "no"
        lines.append(f"  {verdict:<7}  {t.rule.name:<{width}}  -> {t.rule.action.value}")
        for holds, why in t.conditions:
            lines.append(f"      {'yes' if holds else 'no ':<3}  {why}")
    if rule is None:
        lines.append(f"  no rule matched: {d.action.value} by default")
    return "\n".join(lines)


def _json(o: Outcome, show_all: bool) -> str:
    obj: dict[str, object] = {
        "file": o.name,
        "probability": o.probability,
        "model": o.model,
        "source": o.note,
        "action": o.decision.action.value,
        "rule": o.decision.rule,
        "required": o.decision.required,
        "reason": o.decision.reason,
        "envelope": {
            "mail_from": o.envelope.mail_from,
            "rcpt_tos": list(o.envelope.rcpt_tos),
            "client_address": o.envelope.client_address,
        },
    }
    if show_all:
        obj["rules"] = [
            {
                "name": t.rule.name,
                "action": t.rule.action.value,
                "line": t.rule.line,
                "matched": t.matched,
                "decides": t.chosen,
                "conditions": [{"holds": holds, "why": why} for holds, why in t.conditions],
            }
            for t in o.traces
        ]
    return json.dumps(obj, ensure_ascii=False)
