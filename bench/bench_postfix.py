#!/usr/bin/env python3
"""Real mail through a real Postfix and Dovecot: is every message filed once, where its score
says, and how many messages per second does the whole path take with and without the filter?

    sudo .venv/bin/python bench/bench_postfix.py [--n 1000] [--conc 8] [--per-conn 10]

One run, one machine, the same messages and the same Postfix + Dovecot set-up three (or more)
times, in this order:

  alone      Postfix -> Dovecot LMTP (+ the shipped Sieve script): no content filter
  reference  Postfix -> the bare aiosmtpd relay of ../shared/bench/smtp-load.py -> Postfix -> Dovecot
  milter     Postfix -> `milter serve` (shipped model and rules) -> Postfix -> Dovecot; with
             --mode milter: Postfix <-> `milter serve --protocol milter`, Postfix -> Dovecot
  NAME       with --variant 'NAME=FLAGS': milter again with more `milter serve` flags, e.g.
             --variant 'tw0=--text-workers 0' or --variant 'w2=--workers 2'; {lmtp} in FLAGS
             is Dovecot's LMTP socket: --variant 'direct=--next-hop lmtp:{lmtp}' has milter
             deliver straight to Dovecot instead of back to Postfix (one queue pass, but no
             Postfix routing, aliases or virtual maps after the filter)
Each line also gives the CPU time per message of Postfix (its master and every child), Dovecot
(likewise) and the filter (the daemon and its children), read from /proc: unlike msg/s on a
machine shared with other work, these hardly depend on what else runs; their sum gives the
rate the whole path would reach on the machine's cores with nothing else running.

With --mode before-queue both filters sit where the shipped postfix/before-queue.master.cf puts
them (smtpd_proxy_filter: the client's smtpd hands each message to the filter before queueing
it, so there is one queue pass instead of two). With --mode milter, milter (and every
--variant) runs as `milter serve --protocol milter` behind the shipped postfix/milter.main.cf
(smtpd_milters: Postfix's smtpd asks milter during the SMTP session, adds the headers itself and
queues the message once; no reinjection listener), while alone and reference stay exactly as in
after-queue mode: the reference is the bare relay as the content filter, the yardstick the
issue names (a relay cannot speak the milter protocol), whichever way milter is plugged in.
Otherwise Postfix is configured by the shipped postfix/after-queue.* snippets (templated in
ports only, exactly as tests/e2e does; the reference relay sits on the filter's port), Dovecot
by the shipped dovecot/ fragments. Messages are N corpus files (MILTER_CORPUS, default /work/corpus;
ham and spam of both corpora, shuffled with a fixed seed), each with one added first header
`X-Bench-Id: i` so it can be found again; they are sent over SMTP by C concurrent clients,
P messages per connection. The clock runs from the first connection to the moment the last
message is in a Maildir. Then every Maildir file is read back: each id must be there exactly
once; for milter, in the folder its X-Spam-Score puts it under the shipped rules and the
shipped Sieve script, and that score must be the one `milter score` gives the same bytes
offline. Needs root (it starts Postfix and Dovecot); prints one line per set-up and a
summary; exit status 1 if any message was lost, duplicated or misfiled.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import aiosmtplib  # noqa: E402
from mailsys import (  # noqa: E402
    DOMAIN,
    Dovecot,
    Mailbox,
    Milter,
    Postfix,
    configure_after_queue,
    configure_before_queue,
    configure_milter,
    configure_unfiltered,
    free_port,
    port_open,
    tail,
    wait_until,
)

SMTP_LOAD = REPO.parent / "shared" / "bench" / "smtp-load.py"
SPAM_FOLDER_AT, FLAG_AT = 0.90, 0.50  # rules/default.yaml
ID_HEADER = b"X-Bench-Id"
# Clients connect from here, not from 127.0.0.1: Postfix rewrites the headers of mail from its
# own addresses (local_header_rewrite_clients), and this is to be mail from outside.
REMOTE_CLIENT = "127.0.0.2"
LINE_END = re.compile(rb"\r\n|\n|\r")
ID_RE = re.compile(rb"^X-Bench-Id: (\d+)\r?$", re.M)


# How the filters sit in Postfix, by --mode, for the first line of the output.
FILTERS = {
    "after-queue": "after-queue",
    "before-queue": "before-queue",
    "milter": "milter by the milter protocol (smtpd_milters), reference after-queue",
}


def reference_relay_source() -> str:
    """The REFERENCE relay program, read out of smtp-load.py (which runs when imported)."""
    tree = ast.parse(SMTP_LOAD.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "REFERENCE":
            assert isinstance(node.value, ast.Constant)
            return str(node.value.value)
    raise SystemExit(f"{SMTP_LOAD}: no REFERENCE relay found")


@dataclass
class Relay:
    """The bare reference relay as a content filter: listens on `port`, relays to `next_hop_port`."""

    root: Path
    next_hop_port: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "reference.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", reference_relay_source(), str(self.port), str(self.next_hop_port)],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_until(lambda: port_open(self.port), 30, "the reference relay")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


def pick_messages(corpus: Path, n: int) -> list[tuple[str, Path]]:
    files = []
    for name in ("trec07p-early", "spamassassin"):
        for label in ("ham", "spam"):
            folder = corpus / name / label
            if not folder.is_dir():
                raise SystemExit(f"no corpus folder {folder} (set MILTER_CORPUS)")
            files += [(label, p) for p in sorted(folder.iterdir())]
    random.Random(7).shuffle(files)
    return files[:n]


def as_sent(raw: bytes) -> bytes:
    """A corpus file as it goes over SMTP, so that `milter score` can be given the same bytes:
    without the mbox `From ` separator line that starts the TREC files (sent as is, it is no
    header, and Postfix takes the whole message for body), and with every line end, bare CRs
    included, made CRLF as the SMTP client does."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return LINE_END.sub(b"\r\n", raw)


async def inject(
    port: int, to: str, messages: list[bytes], conc: int, per_conn: int, accepted_at: dict[int, float]
) -> tuple[int, list[str]]:
    """Send every message; returns (accepted, errors); accepted_at[i]: when Postfix said 250."""
    queue = list(range(len(messages)))
    accepted = 0
    errors: list[str] = []

    async def client() -> None:
        nonlocal accepted
        while queue:
            batch = [queue.pop() for _ in range(min(per_conn, len(queue)))]
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1",
                port=port,
                timeout=120,
                start_tls=False,
                source_address=(REMOTE_CLIENT, 0),
            )
            try:
                await smtp.connect()
                for i in batch:
                    try:
                        await smtp.sendmail("bench@example.org", [to], messages[i])
                        accepted_at[i] = time.time()
                        accepted += 1
                    except aiosmtplib.SMTPException as e:
                        errors.append(f"message {i}: {e}")
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError) as e:
                errors.append(f"connection: {e}")

    await asyncio.gather(*(client() for _ in range(conc)))
    return accepted, errors


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants, and of children it has reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def tree_cpu_by_name(pid: int) -> dict[str, float]:
    """CPU seconds of each live process in the tree, summed by program name (Postfix's children
    are named by their service: smtpd, cleanup, qmgr, smtp, lmtp, ...); what exited children
    spent is under "(exited)"."""
    tick = os.sysconf("SC_CLK_TCK")
    by: dict[str, float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            name, rest = Path(f"/proc/{p}/stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            fields = rest.split()
            by[name] = by.get(name, 0.0) + sum(int(x) for x in fields[11:13]) / tick
            by["(exited)"] = by.get("(exited)", 0.0) + sum(int(x) for x in fields[13:15]) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return by


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def pid_of(pid_file: Path) -> int:
    return int(pid_file.read_text().split()[0])


def count_files(box: Mailbox) -> int:
    n = 0
    for folder in [box.root, *(p for p in box.root.glob(".*") if p.is_dir())]:
        for sub in ("new", "cur"):
            d = folder / sub
            if d.is_dir():
                n += sum(1 for _ in os.scandir(d))
    return n


@dataclass
class Result:
    name: str
    sent: int
    accepted: int
    delivered: int
    seconds: float
    inject_seconds: float
    errors: list[str]
    problems: list[str]
    mismatches: list[str]
    folders: dict[str, int]
    latency_ms: list[float]
    filter_cpu: float | None = None  # CPU seconds of the filter's processes during the run
    postfix_cpu: float = 0.0  # ... of Postfix's master and all its children
    dovecot_cpu: float = 0.0  # ... of Dovecot's master and all its children (LMTP, Sieve, auth)
    by_process: dict[str, float] = field(default_factory=dict)  # Postfix's and Dovecot's, by name

    def breakdown(self) -> str:
        """Where Postfix's and Dovecot's CPU went, per message, largest first."""
        parts = sorted(self.by_process.items(), key=lambda kv: -kv[1])
        return "CPU ms/msg by process: " + ", ".join(
            f"{k} {1000 * v / self.sent:.2f}" for k, v in parts if 1000 * v / self.sent >= 0.05
        )

    @property
    def idle_rate(self) -> float:
        """Messages per second the path's CPU cost allows on all cores with nothing else running."""
        return 1000 * (os.cpu_count() or 1) / self.cpu_ms

    @property
    def disagreements(self) -> int:
        return sum("a real disagreement" in m for m in self.mismatches)

    @property
    def cpu_ms(self) -> float:
        return 1000 * (self.postfix_cpu + self.dovecot_cpu + (self.filter_cpu or 0.0)) / self.sent

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        lat = sorted(self.latency_ms)
        p50 = lat[len(lat) // 2] if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        folders = ", ".join(f"{k} {v}" for k, v in sorted(self.folders.items()))
        return (
            f"{self.name:10s} {self.delivered}/{self.sent} delivered in {self.seconds:.1f} s = "
            f"{self.rate:.0f} msg/s (accepted by Postfix in {self.inject_seconds:.1f} s); "
            f"accepted->mailbox p50 {p50:.0f} ms, p99 {p99:.0f} ms; {folders}; "
            + f"CPU ms/msg: Postfix {1000 * self.postfix_cpu / self.sent:.1f}, "
            f"Dovecot {1000 * self.dovecot_cpu / self.sent:.1f}, "
            + (f"filter {1000 * self.filter_cpu / self.sent:.1f}, " if self.filter_cpu is not None else "")
            + f"all {self.cpu_ms:.1f} (= {self.idle_rate:.0f} msg/s on idle cores); "
            + f"{len(self.errors)} SMTP errors, {len(self.problems)} lost/duplicated/misfiled"
            + (f", {self.disagreements} scored unlike `milter score`" if self.disagreements else "")
            + (
                f", {len(self.mismatches) - self.disagreements} rewritten by Postfix before the filter"
                if len(self.mismatches) > self.disagreements
                else ""
            )
        )


def expected_place(p: float) -> tuple[str, bool]:
    if p >= SPAM_FOLDER_AT:
        return "Junk", False
    if p >= FLAG_AT:
        return "INBOX", True
    return "INBOX", False


def offline_scores(messages: list[bytes], work: Path) -> tuple[dict[int, float], str]:
    """`milter score --json` on the same bytes as sent: the score each message should carry."""
    folder = work / "offline"
    folder.mkdir()
    for i, raw in enumerate(messages):
        (folder / f"{i:05d}").write_bytes(raw)
    records = score_files([folder], work / "model" / "spam.onnx", "--rules", str(work / "rules.yaml"))
    scores = {int(Path(rec["file"]).name): float(rec["probability"]) for rec in records}
    return scores, ", ".join(sorted({rec["model"] for rec in records}))


def audit(
    box: Mailbox, n: int, sent_at: dict[int, float], scored: bool, offline: dict[int, float], model: Path
) -> tuple:
    """Every id exactly once; for scored runs in the folder its score says, with the offline score."""
    seen: dict[int, list] = {}
    folders: dict[str, int] = {}
    latency = []
    problems = []
    mismatches = []
    for d in box.messages():
        m = ID_RE.search(d.raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0])
        if not m:
            problems.append(f"{d.path}: no {ID_HEADER.decode()} header")
            continue
        i = int(m.group(1))
        seen.setdefault(i, []).append(d)
        key = d.folder + (" flagged" if "F" in d.flags else "")
        folders[key] = folders.get(key, 0) + 1
        if i in sent_at:
            latency.append(1000 * (d.path.stat().st_mtime - sent_at[i]))
        if scored:
            score = d.header("X-Spam-Score")
            if score is None:
                problems.append(f"id {i}: no X-Spam-Score")
                continue
            p = float(score)
            if (d.folder, "F" in d.flags) != expected_place(p):
                problems.append(f"id {i}: score {p} but in {d.folder} flags={d.flags!r}")
            if i in offline and abs(offline[i] - p) > 0.0015:  # header has 3 decimals
                mismatches.append((i, p, d.path))
    for i in range(n):
        copies = len(seen.get(i, []))
        if copies != 1:
            problems.append(f"id {i}: delivered {copies} times")
    return folders, latency, problems, explain_mismatches(mismatches, offline, model)


def explain_mismatches(
    found: list[tuple[int, float, Path]], offline: dict[int, float], model: Path
) -> list[str]:
    """A score unlike the offline one is a fault only if milter scored other bytes than it got.

    Postfix's cleanup rewrites some broken messages before the filter sees them (a header line
    with no colon ends the header block: cleanup inserts the blank line), so the message milter
    scored is not the one sent. The delivered copy is what milter received plus headers added
    after it (X-Spam-*, which message->text ignores, and Received/Delivered-To, likewise): if
    `milter score` gives that copy the score in its header, milter scored what it was given.
    """
    if not found:
        return []
    rescored = {
        rec["file"]: float(rec["probability"]) for rec in score_files([path for _, _, path in found], model)
    }
    out = []
    for i, p, path in found:
        again = rescored.get(str(path))
        if again is not None and abs(again - p) <= 0.0015:
            why = f"the delivered copy scores {again:.4f} too: Postfix rewrote it before milter"
        else:
            why = "a real disagreement"
        out.append(
            f"id {i}: X-Spam-Score {p} but `milter score` says {offline[i]:.4f} on the bytes sent; {why}"
        )
    return out


def score_files(paths: list[Path], model: Path, *options: str) -> list[dict[str, Any]]:
    """`milter score --json` with `model` on files and directories: a record per scored file."""
    out = subprocess.run(
        [sys.executable, "-m", "milter", "score", "--json", "--model", str(model), *options,
         *map(str, paths)],
        capture_output=True, text=True, check=False, cwd=REPO,
    ).stdout  # fmt: skip
    return [rec for rec in map(json.loads, out.splitlines()) if "probability" in rec]


def run_setup(
    name: str, work: Path, dovecot: Dovecot, messages: list[bytes], args: argparse.Namespace,
    filter_kind: str | None, milter_args: tuple[str, ...] = (), offline: dict[int, float] | None = None,
) -> Result:  # fmt: skip
    postfix = Postfix(work / f"postfix-{name}", name, dovecot.lmtp_socket)
    flt: Milter | Relay | None = None
    # --mode milter applies to milter only: the reference relay speaks SMTP and stays an
    # after-queue content filter.
    milter_protocol = args.mode == "milter" and filter_kind == "milter"
    if filter_kind == "milter":
        # The model and rules copied at the start: the shipped ones may change while we run.
        pinned = ("--model", str(work / "model" / "spam.onnx"), *milter_args)
        if milter_protocol:  # no next hop: Postfix queues and delivers the message itself
            flt = Milter(work, "milter", None, work / "rules.yaml", pinned, name=name)
        else:
            flt = Milter(work, args.mode, postfix.reinject_port, work / "rules.yaml", pinned, name=name)
    elif filter_kind == "reference":
        flt = Relay(work, postfix.reinject_port)
    if flt is None:
        configure_unfiltered(postfix)
    elif milter_protocol:
        configure_milter(postfix, flt.port)
    elif args.mode == "before-queue":
        configure_before_queue(postfix, flt.port)
    else:
        configure_after_queue(postfix, flt.port)
    user = f"bench-{name}"
    box = dovecot.mailbox(user)
    try:
        if flt is not None:
            flt.start()
        postfix.start()
        # Warm-up: processes forked, model loaded, mailbox created.
        warm = [messages[i] for i in range(min(50, len(messages)))]
        taken, _ = asyncio.run(
            inject(postfix.smtp_port, f"warmup-{name}@{DOMAIN}", warm, args.conc, args.per_conn, {})
        )
        # Only what was accepted can arrive: a before-queue filter may refuse some (the reference
        # relay, aiosmtpd as it comes, answers 500 to a line over 1,000 bytes).
        wait_until(lambda: count_files(dovecot.mailbox(f"warmup-{name}")) >= taken, 300, "warm-up", 0.2)

        sent_at: dict[int, float] = {}
        filter_pid = flt.proc.pid if flt is not None and flt.proc is not None else None
        postfix_pid, dovecot_pid = (
            pid_of(postfix.root / "queue/pid/master.pid"),
            pid_of(dovecot.root / "run/master.pid"),
        )
        cpu0 = tree_cpu_seconds(filter_pid) if filter_pid else 0.0
        postfix0, dovecot0 = tree_cpu_seconds(postfix_pid), tree_cpu_seconds(dovecot_pid)
        by0 = {f"postfix/{k}": v for k, v in tree_cpu_by_name(postfix_pid).items()}
        by0 |= {f"dovecot/{k}": v for k, v in tree_cpu_by_name(dovecot_pid).items()}
        t0 = time.time()
        accepted, errors = asyncio.run(
            inject(postfix.smtp_port, f"{user}@{DOMAIN}", messages, args.conc, args.per_conn, sent_at)
        )
        t_inject = time.time() - t0
        deadline = time.time() + args.timeout
        while count_files(box) < accepted and time.time() < deadline:
            time.sleep(0.05)
        t_done = time.time()
        filter_cpu = tree_cpu_seconds(filter_pid) - cpu0 if filter_pid else None
        postfix_cpu = tree_cpu_seconds(postfix_pid) - postfix0
        dovecot_cpu = tree_cpu_seconds(dovecot_pid) - dovecot0
        by1 = {f"postfix/{k}": v for k, v in tree_cpu_by_name(postfix_pid).items()}
        by1 |= {f"dovecot/{k}": v for k, v in tree_cpu_by_name(dovecot_pid).items()}
        # The clock stops at the newest delivered file's mtime (not our polling moment).
        files = box.messages()
        last = max((d.path.stat().st_mtime for d in files), default=t_done)
        seconds = last - t0
        folders, latency, problems, mismatches = audit(
            box, len(messages), sent_at, filter_kind == "milter", offline or {}, work / "model" / "spam.onnx"
        )
        stuck = postfix.queue()
        if stuck:
            problems.append(f"{len(stuck)} message(s) still in Postfix's queue")
        return Result(
            name, len(messages), accepted, len(files), seconds, t_inject,
            errors, problems, mismatches, folders, latency, filter_cpu, postfix_cpu, dovecot_cpu,
            cpu_delta(by0, by1),
        )  # fmt: skip
    except Exception:
        for log in (postfix.maillog, dovecot.log, getattr(flt, "log", work / "reference.log")):
            print(f"--- {log}\n{tail(Path(log), 30)}", file=sys.stderr)
        raise
    finally:
        postfix.stop()
        if flt is not None:
            flt.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="messages per set-up (default 1000)")
    ap.add_argument("--conc", type=int, default=8, help="concurrent SMTP clients (default 8)")
    ap.add_argument("--per-conn", type=int, default=10, help="messages per connection (default 10)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for delivery")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also run milter with these flags",
    )
    ap.add_argument("--only", nargs="+", help="run only these set-ups (alone, reference, milter)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the set-ups this many times, alternating, and give the milter/reference "
        "ratio of each round and their median (on a shared machine one round says little)",
    )
    ap.add_argument(
        "--mode",
        choices=("after-queue", "before-queue", "milter"),
        default="after-queue",
        help="how the filters sit in Postfix: the shipped after-queue content_filter snippets "
        "(default) or the shipped before-queue smtpd_proxy_filter ones, for both filters; or "
        "milter: milter (and --variant ones) through the milter protocol (shipped "
        "postfix/milter.main.cf, smtpd_milters), the reference as in after-queue mode",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_postfix: needs root (it starts Postfix and Dovecot)")

    corpus = Path(os.environ.get("MILTER_CORPUS", "/work/corpus"))
    picked = pick_messages(corpus, args.n)
    messages = [ID_HEADER + b": %d\r\n" % i + as_sent(p.read_bytes()) for i, (_, p) in enumerate(picked)]
    labels = [label for label, _ in picked]
    print(
        f"bench_postfix: {len(messages)} corpus messages "
        f"({labels.count('ham')} ham, {labels.count('spam')} spam, "
        f"{sum(map(len, messages)) / 1e6:.1f} MB), {args.conc} clients x {args.per_conn} per connection, "
        f"filters {FILTERS[args.mode]}; "
        f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, load {os.getloadavg()[0]:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="milter-bench-"))
    os.chmod(work, 0o755)
    dovecot = Dovecot(work / "dovecot")
    results = []
    ratios: list[float] = []
    (work / "model").mkdir()
    shutil.copy(REPO / "model" / "spam.onnx", work / "model" / "spam.onnx")
    shutil.copy(REPO / "rules" / "default.yaml", work / "rules.yaml")
    try:
        offline, model = offline_scores(messages, work)
        print(f"model {model} (copied from model/spam.onnx), rules/default.yaml", flush=True)
        dovecot.start()
        setups: list[tuple[str, str | None, tuple[str, ...]]] = [
            ("alone", None, ()),
            ("reference", "reference", ()),
            ("milter", "milter", ()),
        ]
        for variant in args.variant:
            vname, _, flags = variant.partition("=")
            flags = flags.replace("{lmtp}", str(dovecot.lmtp_socket))
            setups.append((vname, "milter", tuple(shlex.split(flags))))
        for k in range(1, args.rounds + 1):
            for name, kind, extra in setups:
                if args.only and name not in args.only:
                    continue
                label = f"{name}-r{k}" if args.rounds > 1 else name
                r = run_setup(label, work, dovecot, messages, args, kind, extra, offline)
                results.append(r)
                print(r.line(), flush=True)
                print(f"    {r.breakdown()}", flush=True)
                for p in r.problems[:10] + r.errors[:10] + r.mismatches[:10]:
                    print(f"    {p}")
    finally:
        dovecot.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for k in range(1, args.rounds + 1):
        suffix = f"-r{k}" if args.rounds > 1 else ""
        by = {r.name.removesuffix(suffix): r for r in results if r.name.endswith(suffix)}
        if "reference" in by and "milter" in by:
            ratios.append(by["milter"].rate / by["reference"].rate)
            print(
                f"round {k}: milter/reference = {ratios[-1]:.2f} "
                f"({by['milter'].rate:.0f} vs {by['reference'].rate:.0f} msg/s; target >= 1.3); "
                f"by CPU {by['reference'].cpu_ms / by['milter'].cpu_ms:.2f}"
            )
        if "alone" in by and "milter" in by:
            print(f"round {k}: milter/alone = {by['milter'].rate / by['alone'].rate:.2f}")
    if len(ratios) > 1:
        print(
            f"milter/reference over {len(ratios)} rounds: median {statistics.median(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
        )
    bad = any(r.problems or r.errors or r.disagreements or r.delivered != r.sent for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
