"""The decision as a plain value: the real model and rules, and the scoring-fault paths."""

from __future__ import annotations

import dataclasses
from typing import Any

from milter.config import Config
from milter.message import Envelope, Message
from milter.model import Model, Score
from milter.policy import Policy, Verdict, evaluate
from milter.rules import Action, Ruleset
from milter.text import message_text

ENVELOPE = Envelope("alice@example.org", ("bob@example.net",), "192.0.2.1")


class FailingModel:
    """A model that raises: the one fault the real model cannot be made to produce."""

    id = "failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def score(self, text: str) -> Score:
        raise self.error


class OddModel:
    id = "odd"

    def score(self, text: str) -> Score:
        return Score(float("nan"), "odd")


def test_real_model_and_rules_decide_each_band(model: Model, rules: Ruleset, banded: Any) -> None:
    policy = Policy(Config(), model, rules)
    for action, expected_rule in (
        (Action.SPAM_FOLDER, "spam"),
        (Action.FLAG, "suspicious"),
        (Action.DELIVER, "default"),
    ):
        verdict = evaluate(policy, Message(banded[action].raw, ENVELOPE))
        assert verdict.action is action and verdict.decision.rule == expected_rule
        assert verdict.probability == banded[action].probability
        assert verdict.model_id == model.id and verdict.error is None
        assert verdict.score is not None and verdict.score.features  # the explanation comes along
    assert evaluate(policy, Message(banded[Action.SPAM_FOLDER].raw, ENVELOPE)).is_spam
    assert not evaluate(policy, Message(banded[Action.FLAG].raw, ENVELOPE)).is_spam


def test_text_extracted_elsewhere_gives_the_same_verdict(model: Model, rules: Ruleset, banded: Any) -> None:
    policy = Policy(Config(), model, rules)
    for case in banded.values():
        message = Message(case.raw, ENVELOPE)
        assert evaluate(policy, message, message_text(case.raw)) == evaluate(policy, message)


def test_scoring_fault_delivers_unscored_by_default(rules: Ruleset) -> None:
    policy = Policy(Config(), FailingModel(RuntimeError("boom")), rules)
    verdict = evaluate(policy, Message(b"Subject: x\r\n\r\nbody\r\n", ENVELOPE))
    assert verdict.action is Action.DELIVER and verdict.score is None
    assert verdict.error == "RuntimeError: boom"


def test_scoring_fault_tempfails_when_configured(rules: Ruleset) -> None:
    policy = Policy(dataclasses.replace(Config(), on_error="tempfail"), FailingModel(MemoryError()), rules)
    verdict = evaluate(policy, Message(b"Subject: x\r\n\r\n", ENVELOPE))
    assert verdict.action is Action.TEMPFAIL and verdict.decision.rule == "on_error"


def test_text_failed_elsewhere_is_a_scoring_fault(model: Model, rules: Ruleset, banded: Any) -> None:
    from milter.workers import TextTimeout

    spam = Message(banded[Action.SPAM_FOLDER].raw, ENVELOPE)
    failed = TextTimeout("no model text within 30 s (text worker killed)")
    verdict = evaluate(Policy(Config(), model, rules), spam, None, failed)
    assert verdict.action is Action.DELIVER and verdict.score is None  # not scored in the daemon
    assert verdict.error == "TextTimeout: no model text within 30 s (text worker killed)"
    strict = Policy(dataclasses.replace(Config(), on_error="tempfail"), model, rules)
    assert evaluate(strict, spam, None, failed).action is Action.TEMPFAIL


def test_a_probability_outside_0_1_is_a_fault(rules: Ruleset) -> None:
    verdict = evaluate(Policy(Config(), OddModel(), rules), Message(b"Subject: x\r\n\r\n", ENVELOPE))
    assert (
        verdict.action is Action.DELIVER and verdict.score is None and "probability" in (verdict.error or "")
    )


def test_unscored_rules_still_apply(tmp_path: Any) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - {name: unscored, if: {unscored: true}, action: quarantine}\n"
        "  - {name: default, action: deliver}\n"
    )
    policy = Policy(Config(), FailingModel(ValueError("x")), Ruleset.load(path))
    assert evaluate(policy, Message(b"", ENVELOPE)).action is Action.QUARANTINE


def test_scoring_off_decides_without_the_model(model: Model, rules: Ruleset, banded: Any) -> None:
    policy = Policy(
        dataclasses.replace(Config(), scoring=False), FailingModel(AssertionError("not called")), rules
    )
    verdict = evaluate(policy, Message(banded[Action.SPAM_FOLDER].raw, ENVELOPE))
    assert verdict == Verdict(verdict.decision, None, "failing", "scoring off")
    assert verdict.action is Action.DELIVER


def test_evaluate_is_repeatable(model: Model, rules: Ruleset, banded: Any) -> None:
    policy = Policy(Config(), model, rules)
    raw = banded[Action.FLAG].raw
    assert evaluate(policy, Message(raw, ENVELOPE)) == evaluate(policy, Message(raw, ENVELOPE))
