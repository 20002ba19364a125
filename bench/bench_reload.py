#!/usr/bin/env python3
"""Live reload under load: rule edits and model swaps while mail flows through `milter serve`.

    .venv/bin/python bench/bench_reload.py [--mail DIR...] [--rules-edits 100] [--model-swaps 20]
                                           [--reloads 1000] [--conc 8] [--per-conn 10]

What it does, in one run, against a real `milter serve` (a subprocess, its own event loop) in
front of a sink that records every message it receives:

1. warm-up: steady SMTP load (the load loop of ../shared/bench/smtp-load.py, run continuously)
   for --warmup seconds;
2. swaps: the same load while --rules-edits rule edits and --model-swaps model swaps are made,
   valid and invalid, written in place, by copy (cp) and by rename (plus two removals of the
   active model, which must fall back to the previous valid one). Each rules version names its
   rules `<name>_v<k>` and each model variant has its own id, so the X-Spam-Status header at the
   sink (`rule=... model=...`) says which policy scored each message. Checked: zero failed or
   tempfailed sessions; every accepted message arrived once with exactly one X-Spam-Status whose
   (rules version, model) pair was live together at some point; each valid change was seen at the
   sink within 2 s; no invalid version was ever seen. The changes come in blocks of --block, each
   followed by --quiet-window seconds without changes under the same load: p50/p99 latency of
   messages in flight while changes were made and went live vs in those quiet windows (taken in
   between, so that other work on a shared machine weighs on both alike);
3. memory: --reloads reloads (each a new rules version and a real model load: two model files
   made newest in turn by touching them, then SIGHUP), waiting for systemd's READY=1 (the bench
   owns NOTIFY_SOCKET) naming the expected model; the server's RSS along the way.

Prints one line per figure and `RESULT: PASS|FAIL` last (exit status 0/1). Needs the train extra
(onnx) to make model variants from --model.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import onnx
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
STATUS = re.compile(rb"^X-Spam-Status:(.*?)\r?\n(?![ \t])", re.M | re.S | re.I)
RULE_MODEL = re.compile(r"rule=(\S+)\s+model=(\S+)")


# --- messages --------------------------------------------------------------------------------------


def postfix_lines(m: bytes) -> bytes:
    """CRLF line ends, lines over 998 bytes broken, as Postfix's smtp client sends them."""
    out = []
    for line in m.replace(b"\r\n", b"\n").split(b"\n"):
        while len(line) > 998:
            out.append(line[:998])
            line = b" " + line[998:]
        out.append(line)
    return b"\r\n".join(out)


def corpus_messages(dirs: list[str], n: int) -> list[bytes]:
    files = []
    for d in dirs:
        for sub in ("ham", "spam"):
            p = Path(d, sub)
            if p.is_dir():
                files += [str(f) for f in p.iterdir()]
    random.Random(7).shuffle(files)
    # TREC files start with an mbox "From " line, which SMTP never carries: drop it, as the
    # mbox reader that delivered them to Postfix would.
    return [postfix_lines(re.sub(rb"\AFrom [^\n]*\n", b"", Path(f).read_bytes())) for f in files[:n]]


# --- the sink --------------------------------------------------------------------------------------


@dataclass
class Received:
    seq: int
    at: float
    statuses: list[str]


class Sink:
    """The next hop: accepts everything, records the X-Spam-Status of each message."""

    def __init__(self) -> None:
        self.got: list[Received] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        data: bytes = envelope.original_content or envelope.content  # type: ignore[attr-defined]
        head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        seq_m = re.search(rb"^X-Bench-Seq: (\d+)", head, re.M)
        statuses = [" ".join(s.decode(errors="replace").split()) for s in STATUS.findall(head)]
        with self.lock:
            self.got.append(Received(int(seq_m.group(1)) if seq_m else -1, time.monotonic(), statuses))
        return "250 2.0.0 Ok: queued"

    def seen_since(self, since: float, predicate: Callable[[str, str], bool]) -> float | None:
        """Arrival time of the first message since `since` whose (rule, model) fits."""
        with self.lock:
            start = bisect.bisect_left(self.got, since, key=lambda r: r.at)
            got = self.got[start:]
        for r in got:
            if r.statuses:
                m = RULE_MODEL.search(r.statuses[0])
                if m and predicate(m.group(1), m.group(2)):
                    return r.at
        return None


# --- the load --------------------------------------------------------------------------------------


@dataclass
class Load:
    msgs: list[bytes]
    port: int
    conc: int
    per_conn: int
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    failures: list[str] = field(default_factory=list)
    accepted: set[int] = field(default_factory=set)
    seq: int = 0
    stop: bool = False

    async def run(self) -> None:
        async def worker() -> None:
            while not self.stop:
                c = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=60)
                try:
                    await c.connect()
                    for _ in range(self.per_conn):
                        if self.stop:
                            break
                        self.seq += 1
                        seq = self.seq
                        msg = b"X-Bench-Seq: %d\r\n" % seq + self.msgs[seq % len(self.msgs)]
                        t = time.perf_counter()
                        try:
                            await c.sendmail("sender@example.org", ["user@example.com"], msg)
                            self.latencies.append((time.monotonic(), time.perf_counter() - t))
                            self.accepted.add(seq)
                        except aiosmtplib.SMTPException as e:
                            self.failures.append(f"{type(e).__name__}: {e}")
                    await c.quit()
                except (aiosmtplib.SMTPException, OSError) as e:
                    self.failures.append(f"session: {type(e).__name__}: {e}")

        await asyncio.gather(*(worker() for _ in range(self.conc)))


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


# --- systemd's side ----------------------------------------------------------------------------------


class Systemd:
    """The NOTIFY_SOCKET the server talks to, read all the time as systemd does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            msg = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.messages.append((time.monotonic(), msg))
            self.queue.put_nowait(msg)

    async def next(self, predicate: Callable[[dict[str, str]], bool], timeout: float) -> dict[str, str]:
        """The next notification (from now on) that fits `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no matching notification")
            msg = await asyncio.wait_for(self.queue.get(), remaining)
            if predicate(msg):
                return msg

    def drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def hwm_kib(pid: int) -> int:
    return rss_kib(pid, "VmHWM")


# --- files ---------------------------------------------------------------------------------------------

RULES = """\
version: 1
rules:
  - name: spam_v{k}
    if: {{probability: {{min: {hi}}}}}
    action: spam_folder
  - name: suspicious_v{k}
    if: {{probability: {{min: 0.50}}}}
    action: flag
  - name: default_v{k}
    action: deliver
"""

BAD_RULES = [
    ("syntax", "version: 1\nrules:\n  - name: broken_v{k}\n    if: {{probability: {{min: 0.9}}\n"),
    ("reject-after-queue", RULES.replace("spam_folder", "reject")),
    ("unknown-key", RULES.replace("action: flag", "action: flag\n    colour: red")),
    ("bomb", 'version: 1\na: &a ["x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\n'
             "rules: [*b,*b,*b,*b,*b,*b,*b,*b]\n# bad_v{k}\n"),
    ("huge", None),
]  # fmt: skip


def variant(model: bytes, name: str, **meta: str) -> bytes:
    proto = onnx.load_from_string(model)
    props = {p.key: p.value for p in proto.metadata_props} | {"milter.bench_variant": name} | meta
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    out: bytes = proto.SerializeToString()
    return out


def model_id(data: bytes) -> str:
    from milter.model import model_id_of

    return model_id_of(data)


def place(path: Path, data: bytes, how: str, staging: Path) -> None:
    """Write `data` to `path` in place, by copy (cp) or by rename."""
    if how == "in place":
        with path.open("r+b" if path.exists() else "wb") as f:
            f.truncate(0)
            f.write(data)
    elif how == "cp":
        src = staging / f"staged-{time.monotonic_ns()}"
        src.write_bytes(data)
        shutil.copyfile(src, path)
        src.unlink()
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.rename(path)


# --- the run -------------------------------------------------------------------------------------------


@dataclass
class Models:
    """What the model directory holds and which model should be serving (the selection rule)."""

    dir: Path
    files: dict[str, tuple[bool, str]] = field(default_factory=dict)  # name -> (valid, id)
    active: tuple[str, str] = ("", "")  # (file, id) serving

    def newest_valid(self) -> tuple[str, str] | None:
        best = None
        for name, (valid, mid) in self.files.items():
            if valid:
                key = (os.stat(self.dir / name).st_mtime_ns, name)
                if best is None or key > best[0]:
                    best = (key, (name, mid))
        return best[1] if best else None


async def run(a: argparse.Namespace) -> bool:
    ok = True

    def check(cond: bool, text: str) -> None:
        nonlocal ok
        ok = ok and cond
        print(f"{'ok  ' if cond else 'FAIL'} {text}", flush=True)

    base_model = Path(a.model).read_bytes()
    msgs = corpus_messages(a.mail, a.n)
    work = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    rules_dir, model_dir, staging = work / "rules", work / "model", work / "staging"
    for d in (rules_dir, model_dir, staging):
        d.mkdir()
    rules_path = rules_dir / "default.yaml"
    rules_path.write_text(RULES.format(k=0, hi="0.90"))
    models = Models(model_dir)
    # Model variants are made before the load starts: making one takes the bench's own CPU.
    prepared = {k: variant(base_model, f"m{k}") for k in range(a.model_swaps + 1)}
    future = {
        k: variant(base_model, f"m{k}", **{"milter.text_version": "999"}) for k in range(a.model_swaps + 1)
    }
    first = prepared[0]
    (model_dir / "m0.onnx").write_bytes(first)
    models.files["m0.onnx"] = (True, model_id(first))
    models.active = ("m0.onnx", model_id(first))

    sink = Sink()
    sink_port, port = free_port(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port, data_size_limit=0)
    controller.start()
    systemd = Systemd(str(work / "notify"))
    cmd = a.cmd.format(
        python=sys.executable, port=port, sink=sink_port, rules=rules_path, model=model_dir
    ).split()
    env = dict(os.environ, NOTIFY_SOCKET=systemd.path, PYTHONPATH=str(ROOT))
    log_path = work / "serve.log"
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_path.open("w"), env=env, cwd=work)
    print(f"machine: {os.cpu_count()} cores; {' '.join(cmd)}; log {log_path}", flush=True)
    systemd.start()
    try:
        await systemd.next(lambda m: m.get("READY") == "1", 60)
        print(
            f"started: {systemd.messages[-1][1].get('STATUS', '')}; RSS {rss_kib(server.pid) / 1024:.0f} MiB"
        )

        # 1. warm-up
        load = Load(msgs, port, a.conc, a.per_conn)
        task = asyncio.create_task(load.run())
        await asyncio.sleep(a.warmup)
        load.stop = True
        await task
        warm = [s for _, s in load.latencies]
        print(
            f"warm-up: {len(warm)} messages in {a.warmup:.0f} s ({len(warm) / a.warmup:.0f} msg/s), "
            f"p50 {1000 * percentile(warm, 0.5):.1f} ms, p99 {1000 * percentile(warm, 0.99):.1f} ms; "
            f"RSS {rss_kib(server.pid) / 1024:.0f} MiB"
        )
        warmup_failures = len(load.failures)

        # 2. swaps under load
        live_pairs: set[tuple[str, str]] = {("0", models.active[1])}
        rules_version = "0"
        invalid_rules: set[str] = set()
        invalid_models: set[str] = set()
        delays: dict[str, list[float]] = {"rules": [], "model": []}
        late: list[str] = []
        load2 = Load(msgs, port, a.conc, a.per_conn, seq=10_000_000)
        task = asyncio.create_task(load2.run())
        swap_start = block_start = time.monotonic()
        windows: list[tuple[float, float]] = []  # while changes were being made and going live
        rss_blocks: list[int] = []
        methods = ["in place", "cp", "rename"]
        rng = random.Random(11)
        n_changes = a.rules_edits + a.model_swaps
        model_every = max(1, n_changes // max(1, a.model_swaps))
        m_done = r_done = 0
        removals = 0
        for i in range(n_changes):
            is_model = (
                i % model_every == model_every - 1 and m_done < a.model_swaps
            ) or r_done >= a.rules_edits
            if is_model:
                m_done += 1
                k = m_done
                j = m_done // 4
                how = methods[(j + j // 3) % 3 if m_done % 4 == 0 else m_done % 3]
                valid = m_done % 4 != 0
                if not valid:
                    kind = ["truncated", "not-onnx", "text-version"][(m_done // 4) % 3]
                    if kind == "truncated":
                        data = base_model[: len(base_model) // 2]
                    elif kind == "not-onnx":
                        data = os.urandom(4096)
                    else:
                        data = future[k]
                    # In place means over the active model: the model in memory must keep serving.
                    name = models.active[0] if how == "in place" else f"m{k}.onnx"
                    mid = model_id(data)
                    invalid_models.add(mid)
                    await asyncio.to_thread(place, model_dir / name, data, how, staging)
                    models.files[name] = (False, mid)
                    await asyncio.sleep(a.invalid_wait)
                    print(f"  model {k}: invalid ({kind}, {how}) -> still {models.active[1]}", flush=True)
                    continue
                if m_done in (6, 14) and removals < 2 and len([v for v, _ in models.files.values() if v]) > 1:
                    # Remove the active model: the previous valid one takes over.
                    removals += 1
                    del models.files[models.active[0]]
                    t0 = time.monotonic()
                    await asyncio.to_thread((model_dir / models.active[0]).unlink)
                    fallback = models.newest_valid()
                    assert fallback is not None
                    models.active = fallback
                    what = f"model removal -> {fallback[1]}"
                else:
                    data = prepared[k]
                    mid = model_id(data)
                    name = models.active[0] if how == "in place" else f"m{k}.onnx"
                    t0 = time.monotonic()
                    await asyncio.to_thread(place, model_dir / name, data, how, staging)
                    t0 = time.monotonic()
                    models.files[name] = (True, mid)
                    models.active = (name, mid)
                    what = f"model {k} ({how}) -> {mid}"
                target_model = models.active[1]
                live_pairs.add((rules_version, target_model))
                when = await wait_seen(sink, t0, lambda r, m, tm=target_model: m == tm, a.live_timeout)
                kind_key = "model"
            else:
                r_done += 1
                k = r_done
                how = methods[(r_done // 5 if r_done % 5 == 0 else r_done) % 3]
                valid = r_done % 5 != 0
                if not valid:
                    kind, template = BAD_RULES[(r_done // 5) % len(BAD_RULES)]
                    path = rules_path
                    if template is None:  # 100 MB (sparse): refused from its size alone
                        huge = staging / "huge.yaml"
                        with huge.open("wb") as f:
                            f.write(RULES.format(k=k, hi="0.90").encode())
                            f.truncate(100 * 1024 * 1024)
                        if how == "in place":
                            await asyncio.to_thread(os.truncate, path, 100 * 1024 * 1024)
                        elif how == "cp":
                            await asyncio.to_thread(shutil.copyfile, huge, path)
                        else:
                            await asyncio.to_thread(os.rename, huge, path)
                        huge.unlink(missing_ok=True)
                    else:
                        text = template.format(k=k, hi="0.90")
                        await asyncio.to_thread(place, path, text.encode(), how, staging)
                    invalid_rules.add(str(k))
                    await asyncio.sleep(a.invalid_wait)
                    print(f"  rules {k}: invalid ({kind}, {how}) -> still v{rules_version}", flush=True)
                    continue
                hi = f"{rng.choice([0.85, 0.9, 0.95]):.2f}"
                t0 = time.monotonic()
                await asyncio.to_thread(place, rules_path, RULES.format(k=k, hi=hi).encode(), how, staging)
                t0 = time.monotonic()
                rules_version = str(k)
                live_pairs.add((rules_version, models.active[1]))
                target = f"_v{k}"
                when = await wait_seen(sink, t0, lambda r, m, t=target: r.endswith(t), a.live_timeout)
                kind_key = "rules"
                what = f"rules {k} ({how})"
            if when is None:
                late.append(what)
                print(f"  {what}: NOT seen within {a.live_timeout} s", flush=True)
            else:
                delays[kind_key].append(when - t0)
                if when - t0 > 2.0:
                    late.append(what)
                if is_model or k % 20 == 0:
                    print(f"  {what}: live after {1000 * (when - t0):.0f} ms", flush=True)
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            if (i + 1) % a.block == 0 or i == n_changes - 1:
                # A quiet window under the same load: the "without swaps" figures, measured in
                # between, so that other work on the machine weighs on both alike.
                windows.append((block_start, time.monotonic() + 0.5))
                rss_blocks.append(rss_kib(server.pid))
                await asyncio.sleep(a.quiet_window)
                block_start = time.monotonic()
        swap_secs = time.monotonic() - swap_start
        load2.stop = True
        await task
        await asyncio.sleep(0.5)  # the last messages reach the sink
        swap_lat, quiet_lat = [], []
        for end, secs in load2.latencies:
            start = end - secs
            busy = any(start < w_end and end > w_start for w_start, w_end in windows)
            (swap_lat if busy else quiet_lat).append(secs)
        busy_secs = sum(w_end - w_start for w_start, w_end in windows)
        quiet_secs = swap_secs - busy_secs
        for name, lat, secs in (
            ("without swaps", quiet_lat, quiet_secs),
            ("during swaps", swap_lat, busy_secs),
        ):
            if not lat or secs <= 0:
                continue
            print(
                f"{name}: {len(lat)} messages in {secs:.0f} s ({len(lat) / secs:.0f} msg/s), "
                f"p50 {1000 * percentile(lat, 0.5):.1f} ms, p99 {1000 * percentile(lat, 0.99):.1f} ms"
            )
        print(
            f"  {a.rules_edits} rule edits + {a.model_swaps} model swaps in {len(windows)} blocks, "
            f"each followed by {a.quiet_window:.0f} s without changes; "
            f"RSS {rss_kib(server.pid) / 1024:.0f} MiB, peak {hwm_kib(server.pid) / 1024:.0f} MiB"
        )
        print(f"  RSS after each block: {', '.join(f'{kib / 1024:.0f}' for kib in rss_blocks)} MiB")
        for kind_key, ds in delays.items():
            if ds:
                print(
                    f"  {kind_key} changes live after: median {1000 * percentile(ds, 0.5):.0f} ms, "
                    f"max {1000 * max(ds):.0f} ms ({len(ds)} valid changes)"
                )
        check(warmup_failures == 0 and not load2.failures,
              f"failed or tempfailed: {warmup_failures + len(load2.failures)}"
              + (f" (first: {load2.failures[:3]})" if load2.failures else ""))  # fmt: skip
        check(not late, f"valid changes live within 2 s: {len(late)} late {late[:5]}")

        # Every message: one X-Spam-Status, from a (rules, model) pair that was live together.
        with sink.lock:
            got = [r for r in sink.got if r.seq >= 10_000_000]
        by_seq: dict[int, int] = {}
        bad_count = bad_pair = invalid_seen = 0
        bad_examples: list[str] = []
        for r in got:
            by_seq[r.seq] = by_seq.get(r.seq, 0) + 1
            m = RULE_MODEL.search(r.statuses[0]) if len(r.statuses) == 1 else None
            if not m:
                bad_count += 1
                bad_examples.append(f"seq {r.seq}: {r.statuses}")
                continue
            version = m.group(1).rpartition("_v")[2]
            if version in invalid_rules or m.group(2) in invalid_models:
                invalid_seen += 1
            elif (version, m.group(2)) not in live_pairs:
                bad_pair += 1
        accepted = load2.accepted
        missing = len(accepted - by_seq.keys())
        dupes = sum(1 for n in by_seq.values() if n > 1)
        check(missing == 0 and dupes == 0, f"every accepted message arrived once: {len(accepted)} accepted, "
              f"{missing} missing, {dupes} duplicated")  # fmt: skip
        check(
            bad_count == 0,
            f"one X-Spam-Status with rule= and model=: {bad_count} messages without {bad_examples[:3]}",
        )
        check(bad_pair == 0, f"scored by one whole policy (a live rules+model pair): {bad_pair} mixed")
        check(invalid_seen == 0, f"invalid versions never live: {invalid_seen} messages scored by one "
              f"({len(invalid_rules)} invalid rules, {len(invalid_models)} invalid models)")  # fmt: skip
        p99_base, p99_swap = percentile(quiet_lat, 0.99), percentile(swap_lat, 0.99)
        print(f"p99 latency: {1000 * p99_base:.1f} ms without swaps, {1000 * p99_swap:.1f} ms during swaps "
              f"({p99_swap / p99_base:.2f}x)")  # fmt: skip

        # 3. memory over many reloads
        if a.reloads:
            ab = [model_dir / "mem-a.onnx", model_dir / "mem-b.onnx"]
            ids = []
            for p, name in zip(ab, ("mem-a", "mem-b"), strict=True):
                data = variant(base_model, name)
                p.write_bytes(data)
                ids.append(model_id(data))
            samples: list[tuple[int, int]] = [(0, rss_kib(server.pid))]
            systemd.drain()
            t0 = time.monotonic()
            loads = []
            for i in range(1, a.reloads + 1):
                j = i % 2
                os.utime(ab[j])  # newest now: a real load of this model
                rules_path.write_text(RULES.format(k=f"mem{i}", hi="0.90"))
                server.send_signal(signal.SIGHUP)
                t = time.monotonic()
                await systemd.next(
                    lambda m, want=ids[j]: m.get("READY") == "1" and f"model {want}," in m.get("STATUS", ""),
                    30,
                )
                loads.append(time.monotonic() - t)
                if i in (10, 100, 250, 500, 750) or i == a.reloads:
                    samples.append((i, rss_kib(server.pid)))
            secs = time.monotonic() - t0
            print(f"memory over {a.reloads} reloads (rules + model each) in {secs:.0f} s, "
                  f"median reload {1000 * percentile(loads, 0.5):.0f} ms:")  # fmt: skip
            print("  " + ", ".join(f"{i}: {kib / 1024:.1f} MiB" for i, kib in samples))
            after10 = dict(samples).get(10, samples[0][1])
            growth = (samples[-1][1] - after10) / 1024
            check(growth < 10, f"RSS growth from reload 10 to {a.reloads}: {growth:+.1f} MiB")
        check(server.poll() is None, "server still running")
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        controller.stop()
        if systemd.task is not None:
            systemd.task.cancel()
        systemd.sock.close()
        refused = sum(1 for line in log_path.read_text().splitlines() if "refused" in line)
        print(f"server log: {refused} 'refused' lines ({log_path})")
        if ok and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return ok


async def wait_seen(
    sink: Sink, since: float, predicate: Callable[[str, str], bool], timeout: float
) -> float | None:
    deadline = since + timeout
    while time.monotonic() < deadline:
        when = sink.seen_since(since, predicate)
        if when is not None:
            return when
        await asyncio.sleep(0.01)
    return None


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpus = os.environ.get("MILTER_CORPUS", "/work/corpus")
    ap.add_argument("--mail", nargs="+", default=[f"{corpus}/spamassassin", f"{corpus}/trec07p-early"])
    ap.add_argument("--n", type=int, default=2000, help="distinct messages to cycle through")
    ap.add_argument("--model", default=str(ROOT / "model" / "spam.onnx"), help="base of the model variants")
    ap.add_argument("--rules-edits", type=int, default=100)
    ap.add_argument("--model-swaps", type=int, default=20)
    ap.add_argument("--reloads", type=int, default=1000, help="for the memory figure (0: skip)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before any change")
    ap.add_argument("--block", type=int, default=10, help="changes between two quiet windows")
    ap.add_argument("--quiet-window", type=float, default=6.0, help="seconds without changes after a block")
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--per-conn", type=int, default=10)
    ap.add_argument("--invalid-wait", type=float, default=1.5, help="seconds to watch an invalid change")
    ap.add_argument("--live-timeout", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument(
        "--cmd",
        default="{python} -m milter serve --listen 127.0.0.1:{port} --next-hop smtp://127.0.0.1:{sink} "
        "--rules {rules} --model {model}",
    )
    a = ap.parse_args()
    ok = asyncio.run(run(a))
    print(f"RESULT: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
