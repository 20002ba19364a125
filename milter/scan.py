"""Scanning one message in the daemon: its text (in a text worker when there are any), the
policy's verdict, and the metrics of that decision. Both front-ends (milter.smtp and
milter.milter_protocol) scan through here; what they do with the verdict is theirs.

With a shadow model in the policy (config shadow_model), the same text is scored by it too,
after the verdict is made: what it would have done is logged where it differs and counted, and
never changes the verdict."""

from __future__ import annotations

import logging
import time

from milter.message import Message
from milter.metrics import Metrics
from milter.policy import Policy, Verdict, evaluate, shadow
from milter.text import message_text
from milter.workers import TextTimeout, TextWorkers

log = logging.getLogger(__name__)


async def scan(
    policy: Policy, message: Message, texts: TextWorkers | None, metrics: Metrics | None
) -> Verdict:
    """The verdict on `message`; never raises for a scoring fault (see policy.evaluate)."""
    started = time.perf_counter()
    text: str | None = None
    text_error: Exception | None = None
    if policy.config.scoring:
        if texts is not None:
            try:
                text = await texts.text(message.raw)
            except TextTimeout as e:  # a scoring fault like any other: the policy's on_error decides
                text_error = e
        elif policy.shadow is not None:
            try:  # made once here, for both models
                text = message_text(message.raw)
            except Exception as e:  # as evaluate would have met it: a scoring fault
                text_error = e
    verdict = evaluate(policy, message, text, text_error)
    if metrics is not None:
        metrics.message_decided(
            verdict.action.value, verdict.decision.rule, verdict.probability, time.perf_counter() - started
        )
    if policy.shadow is not None and text is not None and verdict.score is not None:
        compare_shadow(policy, message, text, verdict, metrics)
    return verdict


def compare_shadow(
    policy: Policy, message: Message, text: str, verdict: Verdict, metrics: Metrics | None
) -> None:
    """Score `message` with the shadow model, count it and log a disagreement; never raises."""
    try:
        would = shadow(policy, message, text)
    except Exception as e:  # a broken shadow must not touch the mail
        log.warning("shadow: scoring failed: %s: %s", type(e).__name__, e)
        if metrics is not None:
            metrics.shadow_failed()
        return
    if would is None:
        return
    agree = would.action == verdict.action
    if metrics is not None:
        metrics.shadow_scored(would.model_id, would.action.value, verdict.action.value, agree)
    if not agree:
        log.info(
            "shadow: model %s would have taken %s (p=%.4f, rule %s) where %s took %s (p=%.4f); message-id %s",
            would.model_id,
            would.action.value,
            would.probability,
            would.decision.rule,
            verdict.model_id,
            verdict.action.value,
            verdict.probability if verdict.probability is not None else float("nan"),
            message.message_id or "(none)",
        )
