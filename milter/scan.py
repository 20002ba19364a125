"""Scanning one message in the daemon: its text (in a text worker when there are any), the
policy's verdict, and the metrics of that decision. Both front-ends (milter.smtp and
milter.milter_protocol) scan through here; what they do with the verdict is theirs."""

from __future__ import annotations

import time

from milter.message import Message
from milter.metrics import Metrics
from milter.policy import Policy, Verdict, evaluate
from milter.workers import TextTimeout, TextWorkers


async def scan(
    policy: Policy, message: Message, texts: TextWorkers | None, metrics: Metrics | None
) -> Verdict:
    """The verdict on `message`; never raises for a scoring fault (see policy.evaluate)."""
    started = time.perf_counter()
    text, text_error = None, None
    if texts is not None and policy.config.scoring:
        try:
            text = await texts.text(message.raw)
        except TextTimeout as e:  # a scoring fault like any other: the policy's on_error decides
            text_error = e
    verdict = evaluate(policy, message, text, text_error)
    if metrics is not None:
        metrics.message_decided(
            verdict.action.value, verdict.decision.rule, verdict.probability, time.perf_counter() - started
        )
    return verdict
