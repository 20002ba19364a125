#!/usr/bin/env python3
"""What shadow scoring costs per message: milter.scan.scan with and without a shadow model.

The text is made once for both models, so the extra is the shadow's graph run, the rules on its
probability and the counting. Both ways are timed on the same corpus messages, alternating in
rounds (the machine is shared: the median of the per-round differences), the shadow a copy of
the shipped model under another id (a site model has the same graph and nearly the same
vocabulary, so the same cost).

    bench/bench_shadow.py [--corpus DIR] [--messages N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from milter.config import Config  # noqa: E402
from milter.message import Message  # noqa: E402
from milter.metrics import Metrics  # noqa: E402
from milter.model import load_model, model_from_bytes  # noqa: E402
from milter.paths import SHIPPED_MODEL, SHIPPED_RULES  # noqa: E402
from milter.policy import Policy  # noqa: E402
from milter.rules import Ruleset  # noqa: E402
from milter.scan import scan  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=ROOT / ".cache/corpus")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    files = sorted((args.corpus / "modern").glob("*/*.eml"))
    random.Random(0).shuffle(files)
    messages = [Message(f.read_bytes()) for f in files[: args.messages]]
    config = Config(rules=SHIPPED_RULES, model=SHIPPED_MODEL, text_workers=0)
    rules = Ruleset.load(SHIPPED_RULES)
    live = load_model(SHIPPED_MODEL)
    data = SHIPPED_MODEL.read_bytes()
    shadow = model_from_bytes(data, "shadow.onnx")
    plain, shadowed = Policy(config, live, rules), Policy(config, live, rules, shadow)
    metrics = Metrics()

    async def run(policy: Policy) -> float:
        started = time.perf_counter()
        for message in messages:
            await scan(policy, message, None, metrics)
        return (time.perf_counter() - started) / len(messages)

    async def rounds() -> tuple[list[float], list[float]]:
        await run(plain)
        await run(shadowed)  # warm both
        without, with_shadow = [], []
        for _ in range(args.rounds):
            without.append(await run(plain))
            with_shadow.append(await run(shadowed))
        return without, with_shadow

    without, with_shadow = asyncio.run(rounds())
    extra = statistics.median(b - a for a, b in zip(without, with_shadow, strict=True))
    print(f"{len(messages)} modern corpus messages, {args.rounds} alternating rounds")
    print(f"scan without shadow: {statistics.median(without) * 1e6:.0f} us/message (median of rounds)")
    print(f"scan with shadow:    {statistics.median(with_shadow) * 1e6:.0f} us/message")
    print(f"shadow scoring costs {extra * 1e6:.1f} us/message (median of per-round differences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
