#!/usr/bin/env python3
"""Never lose mail, under every fault: a fault campaign against `milter serve`.

    sudo .venv/bin/python bench/bench_faults.py [--messages 100000] [--seed 14] [--clients 16]
    sudo .venv/bin/python bench/bench_faults.py --short            # the suite's form (3,000)
    sudo .venv/bin/python bench/bench_faults.py --protocol milter  # through a real Postfix

What runs: `milter serve --workers 2` (the shipped model and rules, plus one rule that sends
messages with `X-Campaign-Route: quarantine` to the quarantine), in front of a next hop written
here (an SMTP server on asyncio that records every message it takes), with the quarantine
Maildir on a small tmpfs of its own. Clients (raw asyncio streams, MAIL/RCPT/DATA pipelined,
20 messages a connection) send every message until they get 250, as Postfix would: a 4xx, a
connection lost or no reply means "try again later" (after 0.2 to 1 s here). About 1 in 100
messages is instead cut off by its client half-way through DATA, and never sent again.

Meanwhile faults fire on a schedule drawn from --seed (which faults, how long each lasts, the
gaps between them; the wall clock decides the rest): milter SIGKILLed whole (supervisor and
workers), one worker SIGKILLed, SIGTERM with sessions stuck at a hanging next hop (the drain
runs out of time and cuts them), the next hop refusing connections, hanging, resetting the
connection in the middle of DATA, closing after the message before its reply, hanging after
the message, the quarantine's disk full and read-only, and floods of reloads (SIGHUP with
rules files rewritten in between, bad ones mixed in). The last 30% of the messages run without
kills or SIGTERMs (the other faults go on), so one incarnation of each worker serves them: its
RSS and open file descriptors, sampled every second, must stay flat.

At the end, from the next hop's and the quarantine's records and the clients' own:
  lost          a message the client got 250 for that is nowhere: must be 0
  half          a copy that is not the whole message as sent: must be 0
  cut delivered a message cut mid-DATA found anywhere: must be 0
  doubled       two copies from one attempt (milter relaying twice): must be 0
  5xx           a permanent refusal (the rules here never refuse): must be 0
  duplicates    copies beyond the first, each from an attempt whose client did not get 250
                (the next hop took it, the reply was lost: a fault between its 250 and
                ours): counted, by what lost the reply; SMTP cannot avoid them
and RSS and fds flat. Exit status 1 if any of these fails. Needs root (the tmpfs; Postfix).

--protocol milter runs the same clients and checks through a real Postfix (smtpd_milters, the
shipped postfix/milter.main.cf) that queues the mail and delivers it to the same recording
next hop; milter is killed, SIGTERMed and reloaded, workers killed, clients cut mid-DATA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules" / "default.yaml"
MODEL = REPO / "model" / "spam.onnx"
ID_RE = re.compile(rb"^X-Campaign-Id: (\d+)\r?$", re.M)
ATTEMPT_RE = re.compile(rb"^X-Campaign-Attempt: (\d+)\r?$", re.M)
LINE_END = re.compile(rb"\r\n|\r|\n")
PER_CONNECTION = 20


# --- the messages -------------------------------------------------------------------------------


def message(i: int, attempt: int, quarantine: bool) -> bytes:
    """Message `i` as sent at `attempt`: deterministic, so every copy can be checked whole."""
    route = b"X-Campaign-Route: quarantine\r\n" if quarantine else b""
    lines = b"".join(
        b"line %d of message %d: the quick brown fox jumps over the lazy dog\r\n" % (k, i) for k in range(8)
    )
    return (
        b"From: Sender %d <sender%d@example.org>\r\nTo: <rcpt@example.net>\r\nSubject: campaign %d\r\n"
        b"Message-ID: <campaign-%d@example.org>\r\nDate: Wed, 2 Dec 2026 00:00:00 +0000\r\n"
        b"X-Campaign-Id: %d\r\nX-Campaign-Attempt: %d\r\n%s\r\n"
        b"Hello,\r\n\r\n.a line starting with a dot\r\n%s..\r\n-- \r\nend of message %d\r\n"
        % (i, i % 97, i, i, i, attempt, route, lines, i)
    )


def split(raw: bytes) -> tuple[set[bytes], bytes]:
    """(header lines, body) of a message, CRLF or LF."""
    raw = LINE_END.sub(b"\r\n", raw)
    head, _, body = raw.partition(b"\r\n\r\n")
    return set(head.split(b"\r\n")), body


def whole(copy: bytes, sent: bytes) -> bool:
    """Is `copy` (what a next hop holds) message `sent` whole: every header line it was sent
    with (others may be added: milter's X-Spam-*, Postfix's Received) and the same body?"""
    copy_head, copy_body = split(copy)
    sent_head, sent_body = split(sent)
    return sent_head <= copy_head and copy_body == sent_body


def dot_stuffed(data: bytes) -> bytes:
    data = data if not data.startswith(b".") else b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


# --- the next hop -------------------------------------------------------------------------------


@dataclass
class Copy:
    id: int
    attempt: int
    whole: bool
    where: str  # "next hop" or "quarantine"
    reply: str  # what the next hop did after taking it: "250", "closed", "hung"
    during: str = "none"  # the fault firing when it took it


@dataclass
class Sink:
    """An SMTP server that records each message it takes; `mode` makes it misbehave."""

    expected: dict[int, bool]  # id -> routed to quarantine (to rebuild what was sent)
    mode: str = "ok"  # ok, refuse, hang, reset-mid-data, close-after-data, hang-after-data
    fault: str = "none"  # the campaign's fault firing now, for the records
    copies: list[Copy] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    calm: asyncio.Event = field(default_factory=asyncio.Event)  # set while not hanging

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(
            self.serve, "127.0.0.1", port or self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.calm.set()

    async def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode in ("hang", "hang-after-data"):
            self.calm.clear()
        else:
            self.calm.set()
        if mode == "refuse":  # as a next hop that went down: no listener, connections gone
            assert self.server is not None
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
        elif self.server is not None and not self.server.is_serving():
            await self.start(self.port)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        rcpts = 0

        async def say(text: bytes) -> None:
            if self.mode == "hang":
                await self.calm.wait()
            writer.write(text + b"\r\n")
            await writer.drain()

        try:
            await say(b"220 sink ESMTP")
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"LHLO"):
                    await say(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000")
                elif verb == b"HELO":
                    await say(b"250 sink")
                elif verb == b"MAIL":
                    rcpts = 0
                    await say(b"250 2.1.0 Ok")
                elif verb == b"RCPT":
                    rcpts += 1
                    await say(b"250 2.1.5 Ok")
                elif verb == b"DATA":
                    await say(b"354 End data with <CR><LF>.<CR><LF>")
                    if not await self._take(reader, writer):
                        return
                elif verb in (b"RSET", b"NOOP"):
                    await say(b"250 2.0.0 Ok")
                elif verb == b"QUIT":
                    await say(b"221 2.0.0 Bye")
                    return
                else:
                    await say(b"502 5.5.2 Error: command not recognized")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _take(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one message after 354; record it; reply (or not, by mode). False: connection over."""
        data = bytearray()
        while not (data.endswith(b"\r\n.\r\n") or data == b".\r\n"):
            piece = await reader.readline()
            if not piece:
                return False  # no final dot: the next hop keeps nothing
            data += piece
            if self.mode == "reset-mid-data" and len(data) > 200:
                writer.transport.abort()
                return False
        raw = bytes(data[:-3])
        raw = (raw[1:] if raw.startswith(b".") else raw).replace(b"\r\n.", b"\r\n")
        mode = self.mode
        reply = {"close-after-data": "closed", "hang-after-data": "hung"}.get(mode, "250")
        self.copies.append(self.identify(raw, "next hop", reply))
        if mode == "close-after-data":
            writer.transport.abort()
            return False
        if mode == "hang-after-data":
            await self.calm.wait()  # milter has given up on this connection long before
            writer.transport.abort()
            return False
        if self.mode == "hang":  # the message is taken, its reply withheld
            self.copies[-1] = dataclasses.replace(self.copies[-1], reply="hung")
            await self.calm.wait()
        writer.write(b"250 2.0.0 Ok: queued\r\n")
        await writer.drain()
        return True

    def identify(self, raw: bytes, where: str, reply: str) -> Copy:
        found, attempt = ID_RE.search(raw), ATTEMPT_RE.search(raw)
        if found is None or attempt is None:
            return Copy(-1, -1, False, where, reply)
        i, a = int(found[1]), int(attempt[1])
        ok = i in self.expected and whole(raw, message(i, a, self.expected[i]))
        return Copy(i, a, ok, where, reply, self.fault)


# --- the clients --------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the clients know: every attempt's outcome."""

    outcome: dict[tuple[int, int], str] = field(default_factory=dict)  # (id, attempt) -> result
    during: dict[tuple[int, int], str] = field(default_factory=dict)  # the fault firing at that result
    accepted: set[int] = field(default_factory=set)
    cut: set[int] = field(default_factory=set)
    results: Counter[str] = field(default_factory=Counter)


def replies(reader: asyncio.StreamReader) -> Callable[[], Awaitable[bytes]]:
    """A reader of whole SMTP replies (their last line) from `reader`."""

    async def reply() -> bytes:
        while True:
            line = await asyncio.wait_for(reader.readline(), 60)
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            if line[3:4] != b"-":
                return line

    return reply


class Clients:
    def __init__(
        self, port: int, ids: list[int], cut: set[int], quarantined: dict[int, bool], n: int, held: int
    ) -> None:
        """`held`: how many of the last `ids` wait for `release()` (the soak's messages)."""
        self.fault = "none"  # the fault firing now (the campaign sets it)
        self.port = port
        self.queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        first, self.held = ids[: len(ids) - held], ids[len(ids) - held :]
        for i in first:
            self.queue.put_nowait((i, 1))
        self.first_phase = len(first)
        self.resolved_count = 0
        self.cut_ids = cut
        self.quarantined = quarantined
        self.n = n
        self.ledger = Ledger()
        self.open = len(ids)  # messages not yet accepted (or cut)
        self.done = asyncio.Event()
        self.attempts = 0

    def release(self) -> None:
        for i in self.held:
            self.queue.put_nowait((i, 1))
        self.held = []

    def resolved(self, i: int) -> None:
        self.resolved_count += 1
        self.open -= 1
        if self.open == 0:
            self.done.set()

    def retry_later(self, i: int, attempt: int) -> None:
        self.ledger.during[(i, attempt)] = self.fault
        loop = asyncio.get_running_loop()
        loop.call_later(random.uniform(0.2, 1.0), self.queue.put_nowait, (i, attempt + 1))

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.client()) for _ in range(self.n)]
        await self.done.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def client(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 10)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)  # milter is down: come back (a bench may pace itself)
                continue
            try:
                await self.session(reader, writer)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                pass  # the connection is gone: the message in hand is queued again
            except Exception as e:  # a fault of the bench: said, and the client goes on
                print(f"client: unexpected {e!r}", file=sys.stderr)
            finally:
                writer.transport.abort()

    async def stalled(self, i: int, attempt: int, go: asyncio.Event) -> None:
        """Message `i` from a client that stalls half-way through DATA until `go`."""
        key = (i, attempt)
        self.attempts += 1
        self.ledger.outcome[key] = "lost before the end of data"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 10)
        except (OSError, TimeoutError):
            self.retry_later(i, attempt)
            return
        try:
            reply = replies(reader)
            assert (await reply()).startswith(b"220")
            writer.write(b"EHLO client.example.org\r\nMAIL FROM:<sender@example.org>\r\n")
            writer.write(b"RCPT TO:<rcpt@example.net>\r\nDATA\r\n")
            for expected in (b"250", b"250", b"250", b"354"):
                if not (await reply()).startswith(expected):
                    self.retry_later(i, attempt)
                    return
            wire = dot_stuffed(message(i, attempt, self.quarantined[i]))
            writer.write(wire[: len(wire) // 2])
            await go.wait()
            writer.write(wire[len(wire) // 2 :])
            self.ledger.outcome[key] = "lost after the end of data"
            final = await reply()
        except Exception:  # whatever it was, the message is not lost to the count: again later
            self.ledger.results["no reply"] += 1
            self.retry_later(i, attempt)
            return
        finally:
            writer.transport.abort()
        self.settle(i, attempt, final[:3].decode())

    def settle(self, i: int, attempt: int, code: str) -> None:
        self.ledger.results[code] += 1
        self.ledger.outcome[(i, attempt)] = code
        if code.startswith("2"):
            self.ledger.accepted.add(i)
            self.resolved(i)
        elif code.startswith("4"):
            self.retry_later(i, attempt)
        else:  # a 5xx: the message is refused for good (nothing here should be)
            self.resolved(i)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply = replies(reader)

        if not (await reply()).startswith(b"220"):
            return
        writer.write(b"EHLO client.example.org\r\n")
        if not (await reply()).startswith(b"250"):
            return
        for _ in range(PER_CONNECTION):
            i, attempt = await self.queue.get()
            key = (i, attempt)
            self.attempts += 1
            self.ledger.outcome[key] = "lost before the end of data"  # until we know better
            try:
                writer.write(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n")
                mail, rcpt, data = await reply(), await reply(), await reply()
                if not (mail.startswith(b"250") and rcpt.startswith(b"250") and data.startswith(b"354")):
                    first = next(r for r in (mail, rcpt, data) if not r.startswith((b"250", b"354")))
                    self.ledger.outcome[key] = first[:1].decode() + "xx before DATA"
                    self.ledger.results[first[:3].decode()] += 1
                    if data.startswith(b"354"):
                        writer.write(b".\r\n")  # end the empty message and go on
                        await reply()
                    writer.write(b"RSET\r\n")
                    await reply()
                    self.retry_later(i, attempt)
                    continue
                raw = message(i, attempt, self.quarantined[i])
                if i in self.cut_ids:
                    writer.write(dot_stuffed(raw)[: len(raw) // 2])  # half the message, then gone
                    await writer.drain()
                    self.ledger.outcome[key] = "cut mid-DATA"
                    self.ledger.cut.add(i)
                    self.ledger.results["cut"] += 1
                    self.resolved(i)
                    return
                writer.write(dot_stuffed(raw))
                self.ledger.outcome[key] = "lost after the end of data"
                final = await reply()
            except Exception:  # the connection is gone (or the bench failed): again later
                self.ledger.results["no reply"] += 1
                self.retry_later(i, attempt)
                raise
            self.settle(i, attempt, final[:3].decode())
        writer.write(b"QUIT\r\n")
        await reply()


# --- milter -------------------------------------------------------------------------------------


@dataclass
class MilterProcess:
    args: list[str]
    log: Path
    workers: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "milter", "serve", *self.args],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=die_with_parent,
            )  # fmt: skip

    async def ready(self, since: int) -> None:
        """Wait for the start-up that began when the log was `since` bytes long."""
        marker = "all workers ready" if self.workers > 1 else "listening on"
        deadline = time.monotonic() + 120
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SystemExit(f"milter exited {self.proc.returncode} at start:\n{tail(self.log)}")
            with self.log.open("rb") as f:
                f.seek(since)
                if marker.encode() in f.read():
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"milter did not start:\n{tail(self.log)}")
            await asyncio.sleep(0.05)

    async def restart(self) -> None:
        since = self.log.stat().st_size if self.log.exists() else 0
        self.start()
        await self.ready(since)

    def pids(self) -> list[int]:
        """The supervisor and its workers."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *map(int, children)]

    def worker_pids(self) -> list[int]:
        return self.pids()[1:]

    def kill_all(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None:
            await asyncio.sleep(0.05)
        # Workers of a supervisor that exited: gone too (they drain and exit on their own).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 0)
            while True:
                os.killpg(self.proc.pid, 0)
                await asyncio.sleep(0.05)
        return self.proc.returncode


def die_with_parent() -> None:
    """In the child: SIGTERM when the campaign dies (PR_SET_PDEATHSIG), however it dies, so no
    milter is left behind holding its port (its workers follow it the same way)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return str(e)


def rules_text(variant: int) -> str:
    """The shipped rules with the campaign's quarantine rule first; `variant` changes a comment."""
    shipped = RULES.read_text()
    head, sep, rest = shipped.partition("rules:\n")
    assert sep, f"{RULES}: expected a 'rules:' list"
    rule = (
        f"  # campaign variant {variant}\n"
        "  - name: campaign-quarantine\n    if: {header: {X-Campaign-Route: '^quarantine$'}}\n"
        "    action: quarantine\n"
    )
    return head + sep + rule + rest


AFTER_QUEUE_REJECT = "rules:\n  - {name: x, action: reject}\n"
BAD_RULES = [
    "rules: [oops\n",  # broken YAML
    "rules:\n  - {name: x, action: explode}\n",  # an unknown action
    "rules:\n  - {name: x, action: deliver, surprise: 1}\n",  # an unknown key
    "",  # empty
]


# --- samples of the daemon ----------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    pid: int
    rss_kb: int
    fds: int


def sample(pids: list[int], t: float) -> list[Sample]:
    out = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M)[1])  # type: ignore[index]
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, TypeError):
            continue
        out.append(Sample(t, pid, rss, fds))
    return out


# --- the disk -----------------------------------------------------------------------------------


@dataclass
class Disk:
    """A tmpfs of its own for the quarantine: filled up, or remounted read-only, on cue."""

    mount: Path
    size_mb: int
    filler: Path = field(init=False)

    def __post_init__(self) -> None:
        self.filler = self.mount / "filler"

    def setup(self) -> None:
        self.mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs", str(self.mount)],
            check=True,
        )

    def fill(self) -> None:
        """Write until the disk says ENOSPC (unbuffered: a buffered file would raise it again
        on close), in big pieces and then in small ones, so not one block is left."""
        for name, piece in (("filler", 1 << 16), ("filler2", 512)):
            try:
                fd = os.open(self.mount / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                continue
            try:
                chunk = b"\0" * piece
                while True:
                    os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
            finally:
                os.close(fd)

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)
        (self.mount / "filler2").unlink(missing_ok=True)

    def read_only(self, on: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.mount)], check=True)

    def teardown(self) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], check=False)


# --- the campaign -------------------------------------------------------------------------------

KILL_FAULTS = ("kill-milter", "kill-worker", "sigterm-drain")
DISK_FAULTS = ("disk-full", "disk-read-only")  # the quarantine's: not in --protocol milter (Postfix holds)
OTHER_FAULTS = (
    "hop-refuse", "hop-hang", "hop-reset-mid-data", "hop-close-after-data", "hop-hang-after-data",
    "disk-full", "disk-read-only", "reload-flood",
)  # fmt: skip


@dataclass
class Fault:
    kind: str
    start: float
    seconds: float
    note: str = ""


@dataclass
class Campaign:
    args: argparse.Namespace
    work: Path
    rng: random.Random
    faults: list[Fault] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    soak_from: float | None = None  # seconds from the start
    queued_at_end: int = 0  # --protocol milter: messages Postfix still held at the end
    milter: MilterProcess | None = None
    idle_start: list[Sample] = field(default_factory=list)  # the workers before any client
    idle_end: list[Sample] = field(default_factory=list)  # the workers once all is done
    milter_port: int = 0
    t0: float = 0.0

    async def run(self) -> int:
        a = self.args
        n = a.messages
        ids = list(range(n))
        cut = {i for i in ids if self.rng.random() < a.cut_share}
        quarantined = {i: self.rng.random() < a.quarantine_share for i in ids}
        sink = Sink(quarantined)
        await sink.start()
        disk = Disk(self.work / "qfs", max(16, int(n * a.quarantine_share * 2.5 / 1024) + 16))
        disk.setup()
        postfix = None
        try:
            if a.protocol == "milter":
                postfix = self.postfix(sink)
            return await self._run(ids, cut, quarantined, sink, disk, postfix)
        finally:
            if self.milter is not None and self.milter.proc is not None and self.milter.proc.poll() is None:
                self.milter.kill_all()  # a campaign that failed leaves nothing running
            if postfix is not None:
                postfix.stop()
            disk.teardown()

    def postfix(self, sink: Sink) -> Any:
        """A private Postfix with the shipped milter.main.cf (tests/e2e/mailsys.py builds it)
        relaying everything to the sink; retries and timeouts short, so a campaign ends."""
        sys.path.insert(0, str(REPO / "tests" / "e2e"))
        from mailsys import Postfix, configure_milter

        self.milter_port = free_port()
        os.chmod(self.work, 0o755)
        postfix = Postfix(self.work / "postfix", "faults", self.work / "no-lmtp")
        configure_milter(postfix, self.milter_port)
        with (postfix.config_dir / "main.cf").open("a") as f:
            f.write(
                f"\n# The campaign: every message to the recording next hop, retried soon.\n"
                f"relayhost = [127.0.0.1]:{sink.port}\nsmtp_tls_security_level = none\n"
                "minimal_backoff_time = 2s\nmaximal_backoff_time = 4s\nqueue_run_delay = 2s\n"
                "smtp_connect_timeout = 5s\nsmtp_helo_timeout = 5s\nsmtp_mail_timeout = 5s\n"
                "smtp_rcpt_timeout = 5s\nsmtp_data_init_timeout = 5s\nsmtp_data_xfer_timeout = 10s\n"
                "smtp_data_done_timeout = 5s\nmilter_connect_timeout = 5s\n"
                "smtp_destination_concurrency_limit = 8\ndefault_process_limit = 200\n"
            )
        return postfix

    async def _run(
        self,
        ids: list[int],
        cut: set[int],
        quarantined: dict[int, bool],
        sink: Sink,
        disk: Disk,
        postfix: Any,
    ) -> int:
        a = self.args
        milter_mode = postfix is not None
        port = self.milter_port if milter_mode else free_port()
        rules = self.work / "rules" / "campaign.yaml"
        rules.parent.mkdir()
        rules.write_text(rules_text(0))
        quarantine = disk.mount / "quarantine"
        log = self.work / "milter.log"
        face = (
            ["--protocol", "milter"] if milter_mode
            else ["--next-hop", f"smtp://127.0.0.1:{sink.port}", "--mode", "after-queue"]
        )  # fmt: skip
        milter = MilterProcess(
            [
                "--workers", str(a.workers), "--listen", f"127.0.0.1:{port}", *face,
                "--quarantine", str(quarantine), "--rules", str(rules), "--model", str(MODEL),
                "--next-hop-timeout", str(a.next_hop_timeout), "--drain-timeout", str(a.drain_timeout),
                "--text-workers", "0", "--log-format", "text", "--max-sessions", "500",
            ],
            log, a.workers,
        )  # fmt: skip
        self.milter = milter
        started = time.monotonic()
        await milter.restart()
        # Idle, before any client: what a fresh worker holds (RSS, fds), to compare with at the end.
        self.idle_start = sample(milter.worker_pids(), 0.0)
        if milter_mode:
            postfix.start()
        client_port = postfix.smtp_port if milter_mode else port
        clients = Clients(client_port, ids, cut, quarantined, a.clients, held=int(len(ids) * 0.3))
        normal = len(ids) - len(cut)
        run = asyncio.create_task(clients.run())
        faults = asyncio.create_task(self.fault_loop(milter, sink, disk, rules, clients))
        sampler = asyncio.create_task(self.sample_loop(milter, started))
        progress = asyncio.create_task(self.progress(clients, normal, started))
        try:
            await asyncio.wait({run, faults}, return_when=asyncio.FIRST_COMPLETED)
            if faults.done():  # the campaign's own failure: stop, never spin on a fault left on
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                faults.result()
                raise SystemExit("the fault loop ended")
        finally:
            for task in (faults, sampler, progress):
                task.cancel()
            await asyncio.gather(faults, sampler, progress, return_exceptions=True)
        elapsed = time.monotonic() - started
        # Everything calm again, then milter stops cleanly and the records are read.
        await sink.set_mode("ok")
        with contextlib.suppress(subprocess.CalledProcessError):
            disk.read_only(False)
        disk.unfill()
        if milter_mode:  # what Postfix still holds is on its way to the next hop: let it arrive
            deadline = time.monotonic() + 300
            while postfix.queue() and time.monotonic() < deadline:
                postfix.flush()
                await asyncio.sleep(1)
            self.queued_at_end = len(postfix.queue())
        # Idle again: every client gone, the next-hop connections reaped (idle 5 s): a worker
        # that served the soak must hold no more file descriptors than a fresh one did.
        await asyncio.sleep(7)
        self.idle_end = sample(milter.worker_pids(), time.monotonic() - started)
        code = await milter.terminate()
        copies = list(sink.copies)
        leftovers = 0
        for sub in ("new", "cur"):
            for f in sorted((quarantine / sub).glob("*")) if (quarantine / sub).is_dir() else []:
                copies.append(sink.identify(f.read_bytes(), "quarantine", "250"))
        if (quarantine / "tmp").is_dir():
            leftovers = len(list((quarantine / "tmp").iterdir()))
        return self.report(clients, copies, cut, elapsed, code, leftovers, milter, log)

    async def progress(self, clients: Clients, normal: int, started: float) -> None:
        while True:
            await asyncio.sleep(30)
            done = len(clients.ledger.accepted)
            print(
                f"  {time.monotonic() - started:6.0f} s: {done}/{normal} accepted, "
                f"{clients.attempts} attempts, {len(self.faults)} faults",
                flush=True,
            )

    async def sample_loop(self, milter: MilterProcess, started: float) -> None:
        self.t0 = started
        while True:
            self.samples += sample(milter.pids(), time.monotonic() - started)
            await asyncio.sleep(0.2)

    async def fault_loop(
        self, milter: MilterProcess, sink: Sink, disk: Disk, rules: Path, clients: Clients
    ) -> None:
        a = self.args
        rng = self.rng
        # Every kind in turn, in an order drawn anew for each round; the first round puts the
        # kills first, so even a short run has each kind before its soak begins.
        others = [k for k in OTHER_FAULTS if a.protocol == "smtp" or k not in DISK_FAULTS]
        order = rng.sample(KILL_FAULTS, len(KILL_FAULTS)) + rng.sample(others, len(others))
        first_round = len(order)
        fired = 0
        while True:
            await asyncio.sleep(rng.uniform(a.gap / 2, a.gap * 1.5))
            # The soak: once every kind has fired and the first 70% of the messages are through,
            # the last 30% go, and no more kills or SIGTERMs (one incarnation serves them all).
            soaking = self.soak_from is not None
            if not soaking and fired >= first_round and clients.resolved_count >= clients.first_phase:
                self.soak_from = time.monotonic() - self.t0
                soaking = True
                clients.release()
            if soaking:
                order = [k for k in order if k not in KILL_FAULTS]
            if not order:
                kinds = others if soaking else [*KILL_FAULTS, *others]
                order = rng.sample(kinds, len(kinds))
            kind = order.pop(0)
            hold = rng.uniform(a.hold / 2, a.hold * 1.5)
            if kind in ("hop-hang", "hop-hang-after-data"):
                hold += a.next_hop_timeout  # past milter's patience
            started = time.monotonic()
            clients.fault = sink.fault = kind
            try:
                note = await self.fire(kind, hold, milter, sink, disk, rules, rng, clients)
            finally:
                clients.fault = sink.fault = "none"
            self.faults.append(Fault(kind, started, time.monotonic() - started, note))
            fired += 1

    async def fire(
        self,
        kind: str,
        hold: float,
        milter: MilterProcess,
        sink: Sink,
        disk: Disk,
        rules: Path,
        rng: random.Random,
        clients: Clients,
    ) -> str:
        if kind == "kill-milter":
            milter.kill_all()
            await asyncio.sleep(hold)
            await milter.restart()
        elif kind == "kill-worker":
            workers = milter.worker_pids()
            if not workers:
                return "no worker to kill"
            victim = rng.choice(workers)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            await asyncio.sleep(hold)
        elif kind == "sigterm-drain" and self.args.protocol == "milter":
            # Postfix's sessions stalled half-way through DATA hold milter's connections in a
            # message: the drain waits for them, runs out, and cuts them; Postfix tempfails them.
            go = asyncio.Event()
            taken = [clients.queue.get_nowait() for _ in range(min(3, clients.queue.qsize()))]
            stalled = [asyncio.create_task(clients.stalled(i, att, go)) for i, att in taken]
            await asyncio.sleep(0.5)
            code = await milter.terminate()
            go.set()
            await milter.restart()
            await asyncio.gather(*stalled, return_exceptions=True)
            return f"exit {code}, {len(stalled)} stalled sessions"
        elif kind == "sigterm-drain":
            await sink.set_mode("hang")  # sessions in flight wait at the next hop: the drain runs out
            await asyncio.sleep(0.3)
            code = await milter.terminate()
            await sink.set_mode("ok")
            await milter.restart()
            return f"exit {code}"
        elif kind.startswith("hop-"):
            await sink.set_mode(kind.removeprefix("hop-"))
            await asyncio.sleep(hold)
            await sink.set_mode("ok")
        elif kind == "disk-full":
            disk.fill()
            await asyncio.sleep(hold)
            disk.unfill()
        elif kind == "disk-read-only":
            disk.read_only(True)
            await asyncio.sleep(hold)
            disk.read_only(False)
        elif kind == "reload-flood":
            count, bad = rng.randint(5, 20), 0
            for k in range(count):
                if rng.random() < 0.4:
                    # `reject` is refused after-queue only: before-queue (the milter protocol) it is
                    # a valid policy, and would refuse mail on purpose.
                    bad_files = [*BAD_RULES, *([AFTER_QUEUE_REJECT] if self.args.protocol == "smtp" else [])]
                    rules.write_text(rng.choice(bad_files))
                    bad += 1
                else:
                    rules.write_text(rules_text(k + 1))
                if milter.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        milter.proc.send_signal(signal.SIGHUP)
                await asyncio.sleep(rng.uniform(0.0, 0.1))
            rules.write_text(rules_text(count + 1))  # the flood ends with a good file
            if milter.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    milter.proc.send_signal(signal.SIGHUP)
            return f"{count + 1} reloads, {bad} bad"
        return ""

    def report(
        self, clients: Clients, copies: list[Copy], cut: set[int], elapsed: float, code: int,
        leftovers: int, milter: MilterProcess, log: Path,
    ) -> int:  # fmt: skip
        ledger = clients.ledger
        by_id: dict[int, list[Copy]] = defaultdict(list)
        for c in copies:
            by_id[c.id].append(c)
        unknown = len(by_id.pop(-1, []))
        # Lost: a 250 whose attempt is nowhere (a copy of another attempt would not excuse it).
        held = {(c.id, c.attempt) for c in copies}
        lost = sorted(
            key for key, outcome in ledger.outcome.items() if outcome.startswith("2") and key not in held
        )
        half = [c for c in copies if not c.whole]
        cut_found = sorted(i for i in ledger.cut if by_id.get(i))
        doubled: list[tuple[int, int]] = []
        duplicates: Counter[str] = Counter()
        unexplained = []
        hop_did = {"closed": "next hop closed before its reply", "hung": "next hop withheld its reply"}
        for i, found in by_id.items():
            seen: dict[int, Copy] = {}
            for c in found:  # in the order they were taken
                outcome = ledger.outcome.get((i, c.attempt), "never sent")
                earlier = seen.get(c.attempt)
                seen.setdefault(c.attempt, c)
                if earlier is None and outcome.startswith("2"):
                    continue  # the copy the client's 250 stands for
                if earlier is not None:
                    # One attempt twice: only a queueing MTA delivers again, and only after the
                    # next hop lost its reply (milter itself never sends a message twice).
                    if self.args.protocol == "milter" and earlier.reply in hop_did:
                        duplicates[f"Postfix delivered it again: the {hop_did[earlier.reply]}"] += 1
                    else:
                        doubled.append((i, c.attempt))
                    continue
                if outcome.startswith("4") or outcome.startswith("lost after"):
                    client = "client got 451" if outcome.startswith("4") else "client got no reply"
                    how = hop_did.get(c.reply, f"{c.where} took it")
                    during = c.during if c.during != "none" else ledger.during.get((i, c.attempt), "none")
                    duplicates[f"{how}, {client} (fault firing then: {during})"] += 1
                else:
                    unexplained.append((i, c.attempt, outcome))
        refused = sum(v for k, v in ledger.results.items() if k.startswith("5"))
        kinds = Counter(f.kind for f in self.faults)
        log_text = log.read_text(errors="replace")
        reload_refusals = log_text.count("reload: refused")
        tracebacks = log_text.count("Traceback")
        flat = self.flatness()

        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        machine = f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs"
        print(f"\nfault campaign ({self.args.protocol}): {machine}, Python {platform.python_version()}, "
              f"{when}, seed {self.args.seed}")  # fmt: skip
        print(f"  messages {self.args.messages:,} ({len(cut):,} of them cut mid-DATA by their client), "
              f"{clients.attempts:,} attempts, {elapsed:.0f} s")  # fmt: skip
        print("  replies: " + ", ".join(f"{k} {v:,}" for k, v in sorted(ledger.results.items())))
        print(f"  faults: {len(self.faults)}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        print(f"  clients cut mid-DATA {len(ledger.cut)}; milter started {milter.starts} times")
        print(f"  reloads refused (bad files): {reload_refusals}; tracebacks in milter's log: {tracebacks}")
        milter_lines = [ln for ln in log_text.splitlines() if " reply=" in ln]
        print(f"  milter's message lines: {len(milter_lines):,}")
        print(f"  accepted {len(ledger.accepted):,}: lost {len(lost)}, delivered half {len(half)}, "
              f"cut but delivered {len(cut_found)}, doubled by milter {len(doubled)}, 5xx {refused}, "
              f"unexplained copies {len(unexplained)}, unknown copies {unknown}")  # fmt: skip
        print(f"  duplicates {sum(duplicates.values())}:")
        for why, count in duplicates.most_common():
            print(f"    {count:5d}  {why}")
        print(
            f"  quarantine leftovers in tmp/ (a write cut off by a fault; readers ignore them): {leftovers}"
        )
        print(
            f"  milter's last exit status {code}"
            + (f"; left in Postfix's queue {self.queued_at_end}" if self.args.protocol == "milter" else "")
        )
        print(f"  {flat[0]}")
        failed = bool(
            lost
            or half
            or cut_found
            or doubled
            or refused
            or unexplained
            or unknown
            or self.queued_at_end
            or code != 0
            or not flat[1]
        )
        if lost:
            print(f"  LOST: {lost[:20]}")
        if half:
            print(f"  HALF: {[(c.id, c.attempt, c.where) for c in half[:20]]}")
        if unexplained:
            print(f"  UNEXPLAINED: {unexplained[:20]}")
        if self.args.json:
            Path(self.args.json).write_text(json.dumps({
                "messages": self.args.messages, "cut": len(cut), "attempts": clients.attempts,
                "seconds": round(elapsed, 1), "replies": dict(ledger.results), "faults": dict(kinds),
                "accepted": len(ledger.accepted), "lost": len(lost), "half": len(half),
                "cut_delivered": len(cut_found), "doubled": len(doubled), "refused_5xx": refused,
                "duplicates": dict(duplicates), "leftovers": leftovers, "flat": flat[0],
                "reload_refusals": reload_refusals, "starts": milter.starts, "flat_ok": flat[1],
            }, indent=1))  # fmt: skip
        print(
            "  RESULT: " + ("FAILED" if failed else "every accepted message delivered, none half, none lost")
        )
        return 1 if failed else 0

    def flatness(self) -> tuple[str, bool]:
        """RSS and fds of each process that served the whole soak (no kills, the other faults
        on): the highest sample of its first third against the highest of its last third, so a
        leak shows and the noise of sessions coming and going does not."""
        if self.soak_from is None or not self.samples:
            return "RSS/fds: the soak phase was not reached", False
        end = max(s.t for s in self.samples)
        by_pid: dict[int, list[Sample]] = defaultdict(list)
        for s in self.samples:
            if s.t >= self.soak_from:
                by_pid[s.pid].append(s)
        lines, ok = [], True
        for pid, series in sorted(by_pid.items()):
            if series[0].t > self.soak_from + 5 or series[-1].t < end - 5 or len(series) < 9:
                continue  # not there for the whole soak
            third = len(series) // 3
            first, last = series[:third], series[-third:]
            rss0, rss1 = max(s.rss_kb for s in first), max(s.rss_kb for s in last)
            fd0, fd1 = max(s.fds for s in first), max(s.fds for s in last)
            # fds come and go with sessions and next-hop connections: judged idle, below.
            grew = rss1 - rss0 > max(20_000, rss0 // 10)
            ok = ok and not grew
            grown = " GREW" if grew else ""
            lines.append(
                f"pid {pid}: RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MB, fds {fd0} -> {fd1}{grown}"
            )
        if not lines:
            spans = {pid: (round(v[0].t), round(v[-1].t), len(v)) for pid, v in by_pid.items()}
            return (
                f"RSS/fds: no process served the whole soak ({self.soak_from:.0f} s to {end:.0f} s: {spans})",
                False,
            )
        soak = end - self.soak_from
        text = f"RSS/fds over the {soak:.0f} s soak (max of first third -> max of last third): " + "; ".join(
            lines
        )
        # Idle at the end against idle at the start: the same count of descriptors, or one
        # leaked with some fault; RSS within the bound above.
        fresh_fds = max((s.fds for s in self.idle_start), default=0)
        fresh_rss = max((s.rss_kb for s in self.idle_start), default=0)
        for s in self.idle_end:
            leaked = s.fds > fresh_fds + 2 or s.rss_kb - fresh_rss > max(20_000, fresh_rss // 10)
            ok = ok and not leaked
            text += (
                f"; idle at the end, pid {s.pid}: fds {s.fds} (a fresh worker: {fresh_fds}), "
                f"RSS {s.rss_kb / 1024:.0f} MB (fresh: {fresh_rss / 1024:.0f}){' LEAKED' if leaked else ''}"
            )
        if not self.idle_end:
            return text + "; no worker to sample at the end", False
        return text, ok


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--short", action="store_true", help="the suite's form: 3,000 messages, faults every ~1 s")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gap", type=float, default=3.0, help="mean seconds between faults")
    p.add_argument("--hold", type=float, default=1.2, help="mean seconds a fault lasts")
    p.add_argument("--next-hop-timeout", type=float, default=3.0, help="milter's --next-hop-timeout")
    p.add_argument("--drain-timeout", type=float, default=2.0, help="milter's --drain-timeout")
    p.add_argument("--cut-share", type=float, default=0.01)
    p.add_argument("--quarantine-share", type=float, default=0.05)
    p.add_argument(
        "--protocol", choices=("smtp", "milter"), default="smtp",
        help="milter: clients -> a real Postfix <-milter protocol-> milter; Postfix -> next hop",
    )  # fmt: skip
    p.add_argument("--json", help="write the counts here too")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    if args.short:
        args.messages, args.gap, args.hold = min(args.messages, 3000), 0.3, 0.5
        args.next_hop_timeout, args.drain_timeout = 1.0, 0.5
    if args.protocol == "milter":
        # Postfix queues: nothing is quarantined (it would sit in its hold queue), and its own
        # timeouts to the next hop (5 s here) decide how long a hanging next hop must hang.
        args.quarantine_share, args.next_hop_timeout = 0.0, 5.0
    if os.geteuid() != 0:
        print("bench_faults needs root (a tmpfs for the quarantine's disk faults)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="milter-faults-"))
    try:
        campaign = Campaign(args, work, random.Random(args.seed))
        return asyncio.run(campaign.run())
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
