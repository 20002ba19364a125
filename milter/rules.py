"""The rules: an ordered table turning a probability and message facts into an action.

(Skeleton contract; the loader and matcher are filled in by the rules work.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from milter.message import Message


class Action(enum.StrEnum):
    DELIVER = "deliver"
    FLAG = "flag"
    SPAM_FOLDER = "spam_folder"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything a rule may look at; built without I/O from a Message and its Score."""

    probability: float | None  # None: the message could not be scored
    mail_from: str
    rcpt_tos: tuple[str, ...]
    client_address: str | None
    size: int
    headers: tuple[tuple[str, str], ...]  # (name, unfolded value), in message order


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    rule: str  # the name of the rule that matched
    required: float | None = None  # the probability threshold of that rule, for X-Spam-Status
    reason: str = ""  # for `rules test`: why this rule matched


def facts_of(message: Message, probability: float | None) -> Facts:
    """The facts rules look at, from a message and its probability (None: unscored)."""
    headers = tuple((name, " ".join(str(value).split())) for name, value in message.headers.items())
    env = message.envelope
    return Facts(
        probability=probability,
        mail_from=env.mail_from,
        rcpt_tos=env.rcpt_tos,
        client_address=env.client_address,
        size=message.size,
        headers=headers,
    )
