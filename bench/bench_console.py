#!/usr/bin/env python3
"""What the console costs the mail: `milter serve` with the console off and on, same load.

The method of ../shared/bench/smtp-load.py (an aiosmtpd sink next hop in its own process, the
system under test in its own, a client of `--conc` connections sending `--per-conn` messages
each, a warm-up of 200 first), run for `milter serve` without and with `--console` (which also
turns on the history: every decision written to SQLite by the writer thread), alternately for
`--rounds` rounds in one run, so both see the same machine. Printed per round: msg/s, latency
and milter's CPU time per message (from /proc: all its threads, the history writer's too) of
each, then the median ratios on/off (the target: msg/s at least 0.95), and how many decisions
the history kept and dropped (dropped: its queue was full, the reply did not wait). On a shared
machine msg/s moves with whatever else runs; CPU per message much less.

  .venv/bin/python bench/bench_console.py [--mail DIR...] [--n 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_pipeline import corpus_messages, cpu_seconds, crlf, free_port, load, wait_port

ROOT = Path(__file__).resolve().parent.parent
SINK = r"""
import sys, signal
from aiosmtpd.controller import Controller
class H:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: queued"
c = Controller(H(), hostname="127.0.0.1", port=int(sys.argv[1]), data_size_limit=0); c.start()
signal.sigwait({signal.SIGTERM, signal.SIGINT}); c.stop()
"""


def measure(
    console: bool, sink: int, msgs: list[bytes], args: argparse.Namespace, work: Path
) -> tuple[float, float]:
    port = free_port()
    history = work / "history.sqlite3"
    cmd = [
        str(ROOT / ".venv" / "bin" / "milter"), "serve", "--no-watch",
        "--listen", f"127.0.0.1:{port}", "--next-hop", f"smtp://127.0.0.1:{sink}",
        "--quarantine", str(work / "quarantine"),
    ]  # fmt: skip
    if console:
        cmd += ["--console", f"127.0.0.1:{free_port()}"]
    log = (work / f"serve-{'on' if console else 'off'}.log").open("ab")
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=log)
    try:
        if not wait_port(port, proc):
            raise SystemExit(f"milter serve did not start: see {log.name} in {work}")
        asyncio.run(load(port, msgs[:200], args.conc, args.per_conn))  # warm-up
        cpu_before = cpu_seconds(proc.pid)
        seconds, latencies, fails = asyncio.run(load(port, msgs, args.conc, args.per_conn))
        cpu_ms = (cpu_seconds(proc.pid) - cpu_before) * 1000 / len(msgs)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    rate = len(latencies) / seconds
    p50 = 1000 * latencies[len(latencies) // 2]
    p99 = 1000 * latencies[int(len(latencies) * 0.99)]
    extra = ""
    if console:
        conn = sqlite3.connect(history)
        kept = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
        dropped = conn.execute("SELECT total(dropped) FROM workers").fetchone()[0]
        conn.close()
        history.unlink()
        extra = f", history kept {kept} of {len(msgs) + 200} (warm-up included), dropped {int(dropped)}"
    print(
        f"  console {'on ' if console else 'off'}: {len(latencies)}/{len(msgs)} accepted, {fails} failed, "
        f"{rate:.0f} msg/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, milter CPU {cpu_ms:.2f} ms/msg{extra}",
        flush=True,
    )
    return rate, cpu_ms


def main() -> None:
    default_corpus = os.environ.get("MILTER_CORPUS", str(ROOT / ".cache" / "corpus"))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mail", nargs="+", default=[str(Path(default_corpus) / "modern")])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--conc", type=int, default=8)
    parser.add_argument("--per-conn", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    msgs = [crlf(m) for m in corpus_messages(args.mail, args.n)]
    if not msgs:
        raise SystemExit(f"no messages under {args.mail} (ham/ and spam/ folders expected)")
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)])
    ratios, cpu_ratios = [], []
    try:
        assert wait_port(sink_port, sink), "the sink did not start"
        with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
            for round_ in range(1, args.rounds + 1):
                print(f"round {round_} ({len(msgs)} messages, {args.conc} connections):", flush=True)
                # Alternate which goes first, so neither always runs on a warmer machine.
                order = (False, True) if round_ % 2 else (True, False)
                got = {console: measure(console, sink_port, msgs, args, Path(tmp)) for console in order}
                ratios.append(got[True][0] / got[False][0])
                cpu_ratios.append(got[True][1] / got[False][1])
    finally:
        sink.terminate()
        sink.wait(10)
    for what, values in (("msg/s", ratios), ("milter CPU per message", cpu_ratios)):
        each = ", ".join(f"{r:.3f}" for r in values)
        print(f"{what}, console on/off = {statistics.median(values):.3f} (median of {each})")


if __name__ == "__main__":
    main()
