"""What a decided message was, told the same way by every face (SMTP, milter, console).

The faces turn a verdict into their own replies; what they share lives here, below all of
them: the reply texts milter makes up for a policy decision or its own fault, and the fields of
a decision, which are the per-message log line and the console's history row alike. No face
imports another.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from milter.message import Envelope, Message
from milter.policy import Verdict

INTERNAL_ERROR: Final = "451 4.3.0 Internal error; try again later"
POLICY_TEMPFAIL: Final = "451 4.7.1 Message deferred by rule {rule}; try again later"
POLICY_REJECT: Final = "550 5.7.1 Message rejected as spam by rule {rule}"


def log_fields(message: Message) -> dict[str, object]:
    """The message's side of a decision: who sent what, as Postfix handed it over."""
    env = message.envelope
    client = env.client_address
    if env.client_name and client:
        client = f"{env.client_name}[{client}]"
    return {
        "queue_id": env.queue_id,
        "message_id": message.message_id,
        "client": client,
        "helo": env.helo,
        "from": f"<{env.mail_from}>",
        "rcpts": len(env.rcpt_tos),
        "size": message.size,
    }


def verdict_fields(verdict: Verdict) -> dict[str, object]:
    """The policy's side of a decision: probability, rule, action, model."""
    p = verdict.probability
    return {
        "probability": round(p, 4) if p is not None else "unscored",
        "rule": verdict.decision.rule,
        "action": verdict.action.value,
        "model": verdict.model_id,
        "error": verdict.error if verdict.error != "scoring off" else None,
    }


@dataclass(frozen=True, slots=True)
class Decided:
    """One decided message as the history keeps it: the log line's fields and what a log line
    leaves out (the recipients, the features, the message itself for teaching).

    Built on the hot path from values at hand, without copying or parsing: the history writer
    (milter.history) reads the Subject and serializes off the event loop.
    """

    time: float  # Unix time of the decision
    fields: Mapping[str, object]  # the log line: log_fields + verdict_fields + reply, ms, ...
    envelope: Envelope
    raw: bytes  # the message as received
    features: tuple[tuple[str, float], ...]  # what pushed the score, strongest first
    protocol: str  # "smtp" or "milter"
    quarantine: str | None = None  # where it is held: a quarantine id, or Postfix's queue id


class Recorder(Protocol):
    """Where decisions go besides the log (milter.history.HistoryWriter); must never block."""

    def record(self, decided: Decided) -> None: ...


def decided(
    message: Message,
    verdict: Verdict | None,
    fields: Mapping[str, object],
    protocol: str,
    quarantine: str | None = None,
) -> Decided:
    """The record of one decision (verdict None: the message was never scored, e.g. the next
    hop went away before DATA; `fields` then say why)."""
    features = verdict.score.features if verdict is not None and verdict.score is not None else ()
    return Decided(time.time(), fields, message.envelope, message.raw, features, protocol, quarantine)
