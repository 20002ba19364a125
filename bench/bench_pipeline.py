#!/usr/bin/env python3
"""Where a message's time goes in `milter serve`, and what the proxy costs alone.

Part 1, in process, per message of real mail (median and mean, microseconds):
  parse   the header parse the rules and the log line use (Message.headers)
  text    message -> model text (milter.text.message_text)
  score   the ONNX model on that text
  decide  facts + the first matching rule
  mark    X-Spam-* headers written into the bytes
  evaluate  parse + text + score + decide as the daemon runs them (milter.policy.evaluate)

Part 2, over real sockets: a sink next hop (aiosmtpd, as in ../shared/bench/smtp-load.py) in its
own process, the system under test in its own, and a client sending the same mail, for: the
reference relay of smtp-load.py, `milter serve --no-scoring` (the proxy alone), `milter serve`
as shipped, and with one text worker (`--text-workers 1`). Printed: msg/s, latency, and CPU time
per message (from /proc) of the system (and its text workers), the sink and the client, and peak
RSS. On a shared machine msg/s moves with whatever else runs; CPU ms per message much less, and
2000 / (the sum) is the rate two idle cores would give.

  .venv/bin/python bench/bench_pipeline.py [--mail DIR...] [--n 1000] [--conc 8] [--per-conn 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SINK = r"""
import sys, signal
from aiosmtpd.controller import Controller
class H:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: queued"
c = Controller(H(), hostname="127.0.0.1", port=int(sys.argv[1]), data_size_limit=0); c.start()
signal.sigwait({signal.SIGTERM, signal.SIGINT}); c.stop()
"""


REFERENCE = r"""
import sys, signal, aiosmtplib
from aiosmtpd.controller import Controller
nh = int(sys.argv[2])
class Relay:
    async def handle_DATA(self, server, session, envelope):
        try:
            await aiosmtplib.send(envelope.original_content or envelope.content, sender=envelope.mail_from,
                                  recipients=envelope.rcpt_tos, hostname="127.0.0.1", port=nh)
        except Exception as e:
            return "451 4.3.0 next hop failed"
        return "250 2.0.0 Ok"
c = Controller(Relay(), hostname="127.0.0.1", port=int(sys.argv[1]), data_size_limit=0); c.start()
signal.sigwait({signal.SIGTERM, signal.SIGINT}); c.stop()
"""


def corpus_messages(dirs: list[str], n: int) -> list[bytes]:
    files: list[Path] = []
    for d in dirs:
        for sub in ("ham", "spam"):
            p = Path(d) / sub
            if p.is_dir():
                files += sorted(p.iterdir())
    random.Random(7).shuffle(files)
    return [f.read_bytes() for f in files[:n]]


def crlf(message: bytes) -> bytes:
    """As Postfix's smtp client sends it: CRLF line ends, lines over 998 bytes broken."""
    out = []
    for line in message.replace(b"\r\n", b"\n").split(b"\n"):
        while len(line) > 998:
            out.append(line[:998])
            line = b" " + line[998:]
        out.append(line)
    return b"\r\n".join(out)


def stages(messages: list[bytes]) -> None:
    from milter.config import Config
    from milter.mark import mark
    from milter.message import Envelope, Message
    from milter.model import load_model
    from milter.policy import Policy, evaluate
    from milter.reload import model_candidates
    from milter.rules import Ruleset, facts_of
    from milter.text import message_text

    config = Config()
    model_path = config.model if config.model.is_file() else model_candidates(config.model)[0]
    model = load_model(model_path)
    rules = Ruleset.load(config.rules)
    policy = Policy(config, model, rules)
    envelope = Envelope("sender@example.org", ("user@example.com",), "192.0.2.1")
    timings: dict[str, list[float]] = {
        k: [] for k in ("parse", "text", "score", "decide", "mark", "evaluate")
    }
    clock = time.perf_counter
    for raw in messages:
        message = Message(raw, envelope)
        t0 = clock()
        message.headers  # noqa: B018 - the parse is what is timed
        t1 = clock()
        text = message_text(raw)
        t2 = clock()
        score = model.score(text)
        t3 = clock()
        rules.decide(facts_of(message, score.probability))
        t4 = clock()
        verdict = evaluate(policy, Message(raw, envelope))
        t5 = clock()
        mark(raw, verdict)
        t6 = clock()
        for key, seconds in zip(
            ("parse", "text", "score", "decide", "evaluate", "mark"),
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5),
            strict=True,
        ):
            timings[key].append(seconds * 1e6)
    print(
        f"stages over {len(messages)} messages (mean size {statistics.mean(map(len, messages)):.0f} B), µs:"
    )
    for key, values in timings.items():
        values.sort()
        p99 = values[int(len(values) * 0.99)]
        print(
            f"  {key:9s} median {statistics.median(values):8.1f}  mean {statistics.mean(values):8.1f}"
            f"  p99 {p99:8.1f}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 60) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def children_cpu_seconds(pid: int) -> float:
    """CPU of the running children of `pid` (milter's text workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def load(port: int, messages: list[bytes], conc: int, per_conn: int) -> tuple[float, list[float], int]:
    import aiosmtplib

    queue = list(range(len(messages)))
    latencies: list[float] = []
    failed = 0

    async def worker() -> None:
        nonlocal failed
        while queue:
            batch = [queue.pop() for _ in range(min(per_conn, len(queue)))]
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
            try:
                await client.connect()
                for i in batch:
                    t = time.perf_counter()
                    try:
                        await client.sendmail("sender@example.org", ["user@example.com"], messages[i])
                        latencies.append(time.perf_counter() - t)
                    except aiosmtplib.SMTPException:
                        failed += 1
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                failed += len(batch)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return time.perf_counter() - t0, sorted(latencies), failed


def relay(messages: list[bytes], args: argparse.Namespace, label: str) -> None:
    """One system in front of a fresh sink: `label` is reference, proxy or scoring."""
    sink_port, port = free_port(), free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)])
    cmd = [
        sys.executable, "-m", "milter", "serve", "--no-watch",
        "--listen", f"127.0.0.1:{port}", "--next-hop", f"smtp://127.0.0.1:{sink_port}",
    ]  # fmt: skip
    if label == "reference":
        cmd = [sys.executable, "-c", REFERENCE, str(port), str(sink_port)]
    if label == "proxy":
        cmd.append("--no-scoring")
    if label == "workers":
        cmd += ["--text-workers", "1"]
    log = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=log)
    try:
        if not (wait_port(sink_port, sink) and wait_port(port, proc)):
            print("could not start the sink or milter")
            return
        asyncio.run(load(port, messages[:200], args.conc, args.per_conn))  # warm-up
        cpu0, sink0, own0 = cpu_seconds(proc.pid), cpu_seconds(sink.pid), time.process_time()
        workers0 = children_cpu_seconds(proc.pid)
        seconds, latencies, failed = asyncio.run(load(port, messages, args.conc, args.per_conn))
        ok = max(len(latencies), 1)
        cpu = 1000 * (cpu_seconds(proc.pid) - cpu0) / ok
        workers = 1000 * (children_cpu_seconds(proc.pid) - workers0) / ok
        sink_cpu = 1000 * (cpu_seconds(sink.pid) - sink0) / ok
        client_cpu = 1000 * (time.process_time() - own0) / ok
        name = {
            "reference": "reference relay",
            "proxy": "milter --no-scoring",
            "scoring": "milter",
            "workers": "milter, 1 text worker",
        }[label]
        p50, p99 = 1000 * latencies[len(latencies) // 2], 1000 * latencies[int(len(latencies) * 0.99)]
        rate = len(latencies) / seconds
        rss = peak_rss_mib(proc.pid)
        worker_rss = [peak_rss_mib(child) for child in children(proc.pid)]
        print(
            f"  {name:20s} {len(latencies)}/{len(messages)} ok, {failed} failed, {rate:4.0f} msg/s,"
            f" p50 {p50:5.1f} ms, p99 {p99:5.1f} ms; CPU ms/msg: system {cpu:.2f} (+ workers {workers:.2f}),"
            f" sink {sink_cpu:.2f}, client {client_cpu:.2f}; peak RSS {rss:.0f} MiB"
            + (f" (workers {', '.join(f'{w:.0f}' for w in worker_rss)} MiB)" if worker_rss else "")
        )
    finally:
        proc.terminate()
        proc.wait(30)
        sink.terminate()
        sink.wait(10)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpus = os.environ.get("MILTER_CORPUS", "/work/corpus")
    ap.add_argument("--mail", nargs="+", default=[f"{corpus}/trec07p-early", f"{corpus}/spamassassin"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--per-conn", type=int, default=10)
    ap.add_argument("--skip-stages", action="store_true")
    ap.add_argument("--skip-relay", action="store_true")
    args = ap.parse_args()
    messages = corpus_messages(args.mail, args.n)
    from milter.config import Config
    from milter.model import load_model
    from milter.reload import model_candidates

    model_dir = Config().model
    model_id = load_model(model_dir if model_dir.is_file() else model_candidates(model_dir)[0]).id
    load = os.getloadavg()[0]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores (load {load:.1f}),"
        f" python {sys.version.split()[0]}, model {model_id}"
    )
    if not args.skip_stages:
        stages(messages)
    if not args.skip_relay:
        wire = [crlf(m) for m in messages]
        print(f"relay, {args.conc} clients x {args.per_conn} messages per connection:")
        for label in ("reference", "proxy", "scoring", "workers"):
            relay(wire, args, label)


if __name__ == "__main__":
    main()
