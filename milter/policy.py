"""The policy: what the filter decides for a message, as a plain value computed without I/O.

A `Policy` bundles the config, the model and the rules that serve together; it is immutable and
swapped whole on reload, so a message scored with one model is never decided by another policy's
rules. `evaluate(policy, message)` runs message -> text -> probability -> first matching rule and
returns a `Verdict`; it never raises for a scoring fault (the model is the one part that may
fail on a hostile message): the policy's `on_error` decides, and the verdict records the error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from milter.message import Message
from milter.model import Score
from milter.rules import Action, Decision, Facts, facts_of
from milter.text import message_text

if TYPE_CHECKING:
    from milter.config import Config

# Actions that mean "this is spam" to SpamAssassin-aware readers (X-Spam-Flag: YES): a Sieve
# rule filing on that flag must not move `flag` mail (it stays in the inbox, flagged).
SPAM_ACTIONS = frozenset({Action.SPAM_FOLDER, Action.QUARANTINE, Action.REJECT, Action.DISCARD})
ON_ERROR_RULE = "on_error"


class Scorer(Protocol):
    """What the policy needs of a model (milter.model.Model)."""

    @property
    def id(self) -> str: ...

    def score(self, text: str) -> Score: ...


class Decider(Protocol):
    """What the policy needs of a ruleset (milter.rules.Ruleset)."""

    def decide(self, facts: Facts) -> Decision: ...


@dataclass(frozen=True, slots=True)
class Policy:
    config: Config
    model: Scorer
    rules: Decider
    # A candidate scoring every message beside `model` and acting on none (config shadow_model).
    shadow: Scorer | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of evaluating one message: a value, for the SMTP layer and the marker."""

    decision: Decision
    score: Score | None  # None: not scored (scoring off, or it failed: see `error`)
    model_id: str
    error: str | None = None  # why scoring failed, for the log line

    @property
    def action(self) -> Action:
        return self.decision.action

    @property
    def probability(self) -> float | None:
        return self.score.probability if self.score is not None else None

    @property
    def is_spam(self) -> bool:
        return self.decision.action in SPAM_ACTIONS


def score(policy: Policy, message: Message, text: str | None = None) -> Score:
    """The model's score for `message` (`text`: its model text, if already extracted); raises
    whatever the model raises, or ValueError for a probability outside [0, 1] (a broken model
    must not route mail)."""
    result = policy.model.score(message_text(message.raw) if text is None else text)
    if not (0.0 <= result.probability <= 1.0) or math.isnan(result.probability):
        raise ValueError(f"model returned probability {result.probability!r}, expected 0..1")
    return result


def evaluate(
    policy: Policy, message: Message, text: str | None = None, text_error: Exception | None = None
) -> Verdict:
    """Decide `message` under `policy`. Pure: no I/O, no clock; never raises for scoring faults.
    `text`: the message's model text when it was extracted elsewhere (milter.workers);
    `text_error`: why that extraction failed, a scoring fault like any other."""
    model_id = policy.model.id
    if not policy.config.scoring:
        return Verdict(policy.rules.decide(facts_of(message, None)), None, model_id, "scoring off")
    try:
        if text_error is not None:
            raise text_error
        result = score(policy, message, text)
    except Exception as e:  # any model fault: the message must still be decided, never bounced
        error = f"{type(e).__name__}: {e}"
        if policy.config.on_error == "tempfail":
            decision = Decision(Action.TEMPFAIL, ON_ERROR_RULE, None, f"scoring failed: {error}")
            return Verdict(decision, None, model_id, error)
        # Rules still apply to what is known (sender, headers, size); probability rules cannot match.
        return Verdict(policy.rules.decide(facts_of(message, None)), None, model_id, error)
    return Verdict(policy.rules.decide(facts_of(message, result.probability)), result, model_id)


@dataclass(frozen=True, slots=True)
class Shadow:
    """What the shadow model would have done with a message: a value, never acted on."""

    model_id: str
    decision: Decision
    probability: float

    @property
    def action(self) -> Action:
        return self.decision.action


def shadow(policy: Policy, message: Message, text: str) -> Shadow | None:
    """The shadow model's decision on `message` (its model text already made for the live
    model: only the second graph run and the rules are extra); None without a shadow model.
    Raises what the model raises, as `score` does."""
    if policy.shadow is None:
        return None
    result = policy.shadow.score(text)
    if not (0.0 <= result.probability <= 1.0) or math.isnan(result.probability):
        raise ValueError(f"shadow model returned probability {result.probability!r}, expected 0..1")
    decision = policy.rules.decide(facts_of(message, result.probability))
    return Shadow(policy.shadow.id, decision, result.probability)
