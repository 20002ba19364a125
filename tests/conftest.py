"""Shared fixtures: the real shipped model and rules, a real SMTP/LMTP next hop, a running daemon.

Nothing here is a mock: the next hop is an aiosmtpd server on a real socket, the daemon is
milter's own, on its own event loop in a thread, and the model is model/spam.onnx.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP

from milter.config import Config, NextHop
from milter.model import Model, Score, load_model
from milter.rules import Action, Ruleset
from milter.server import Daemon

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = ROOT / "model" / "spam.onnx"
RULES_PATH = ROOT / "rules" / "default.yaml"


@pytest.fixture(scope="session")
def model() -> Model:
    """The shipped model, loaded once."""
    return load_model(MODEL_PATH)


@pytest.fixture(scope="session")
def rules() -> Ruleset:
    return Ruleset.load(RULES_PATH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- mail the real model puts in each band ---------------------------------------------------------

_HAM_BODY = "Hi Bob,\r\n\r\nare we still on for lunch on Friday? I can book the usual place for 12:30.\r\n"
_SPAMMY = (
    "Click here for your special offer.",
    "Save money now.",
    "Cheap pills without prescription.",
    "You have won a prize.",
    "Limited time only!",
    "Order today and get free shipping.",
    "Lowest prices guaranteed.",
    "Act now, this offer expires soon.",
    "Earn $5000 a week from home.",
    "100% satisfaction guaranteed.",
    "Buy viagra online.",
    "Best deals on watches.",
    "Dear friend, reply to claim your money.",
)


def graded_message(k: int, extra_headers: bytes = b"") -> bytes:
    """A personal note with the first `k` spam phrases appended: more phrases, higher score."""
    body = _HAM_BODY + "\r\n".join(_SPAMMY[:k])
    return (
        b"From: Alice Example <alice@example.org>\r\nTo: bob@example.net\r\n"
        b"Subject: lunch on friday?\r\nMessage-ID: <graded-%d@example.org>\r\n"
        % k
        + extra_headers
        + b"\r\n"
        + body.encode()
        + b"\r\nAlice\r\n"
    )


@dataclass(frozen=True)
class Banded:
    raw: bytes
    probability: float


@pytest.fixture(scope="session")
def banded(model: Model, rules: Ruleset) -> dict[Action, Banded]:
    """For deliver, flag and spam_folder: a message the real model and shipped rules send there.

    Chosen by scoring, not hard-coded, so a retrained model still finds one of each."""
    from milter.message import Envelope, Message
    from milter.rules import facts_of

    found: dict[Action, Banded] = {}
    for k in range(len(_SPAMMY) + 1):
        raw = graded_message(k)
        p = model.score_message(raw).probability
        action = rules.decide(facts_of(Message(raw, Envelope("a@example.org", ("b@example.net",))), p)).action
        found.setdefault(action, Banded(raw, p))
    wanted = {Action.DELIVER, Action.FLAG, Action.SPAM_FOLDER}
    assert wanted <= found.keys(), f"the model put no graded message in {wanted - found.keys()}"
    return found


# --- a real next hop ------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    xforward: list[str]


@dataclass
class SinkHandler:
    """A next hop that records what it took. Recipients starting with `refuse` get 550,
    `busy` 450; with `lmtp_fail`, LMTP DATA fails for those recipients only."""

    received: list[Received] = field(default_factory=list)
    refuse_mail_from: str | None = None
    lmtp_fail: frozenset[str] = frozenset()
    data_reply: str = "250 2.0.0 Ok: queued as SINK"
    xforward_seen: list[str] = field(default_factory=list)
    lmtp: bool = False
    data_delay: float = 0.0  # seconds to wait before answering DATA: keeps messages in flight
    data_started: int = 0
    dsn: bool = True  # announce DSN (as Postfix's smtpd does) and record the DSN parameters
    dsn_seen: list[str] = field(default_factory=list)  # "MAIL RET=HDRS", "RCPT <b@x> NOTIFY=..."

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        dsn = ["250-DSN"] if self.dsn else []
        # aiosmtpd reads commands in order from one stream: pipelining works, as in Postfix.
        extra = ["250-PIPELINING", *dsn, "250-XFORWARD NAME ADDR PROTO HELO IDENT"]
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.refuse_mail_from is not None and address == self.refuse_mail_from:
            return "553 5.7.1 Sender refused by the next hop"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("refuse"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such user"
        if address.startswith("busy"):
            return f"450 4.2.1 <{address}>: Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started += 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
                list(self.xforward_seen),
            )
        )
        if self.lmtp:
            return "\r\n".join(
                f"452 4.2.2 <{r}>: Mailbox full" if r in self.lmtp_fail else f"250 2.0.0 <{r}> Saved"
                for r in envelope.rcpt_tos
            )
        return self.data_reply


class _XforwardSMTP(AiosmtpdSMTP):
    """aiosmtpd with XFORWARD announced and recorded, as Postfix's reinjection smtpd does."""

    async def smtp_XFORWARD(self, arg: str) -> None:
        self.event_handler.xforward_seen.append(arg)
        await self.push("250 2.0.0 Ok")

    # aiosmtpd refuses DSN parameters (555): a DSN sink records them, as sent, and takes them off.
    async def smtp_MAIL(self, arg: str) -> None:
        await super().smtp_MAIL(self._record_dsn("MAIL", arg, ("RET", "ENVID")))

    async def smtp_RCPT(self, arg: str) -> None:
        await super().smtp_RCPT(self._record_dsn("RCPT", arg, ("NOTIFY", "ORCPT")))

    def _record_dsn(self, verb: str, arg: str, keywords: tuple[str, ...]) -> str:
        if not (arg and self.event_handler.dsn):
            return arg
        words = arg.split()
        dsn = [w for w in words[1:] if w.split("=")[0].upper() in keywords]
        if dsn:
            who = f" {words[0].partition(':')[2]}" if verb == "RCPT" else ""
            self.event_handler.dsn_seen.append(f"{verb}{who} {' '.join(dsn)}")
        return " ".join(w for w in words if w not in dsn)


class _SinkController(Controller):
    def __init__(self, handler: SinkHandler, port: int, lmtp: bool) -> None:
        self.lmtp = lmtp
        super().__init__(handler, hostname="127.0.0.1", port=port, data_size_limit=0, ready_timeout=10)

    def factory(self) -> AiosmtpdSMTP:
        if self.lmtp:
            return LMTP(self.handler, data_size_limit=0, enable_SMTPUTF8=True, hostname="sink")
        return _XforwardSMTP(self.handler, data_size_limit=0, enable_SMTPUTF8=True, hostname="sink")


@dataclass
class Sink:
    handler: SinkHandler
    port: int
    controller: _SinkController

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    @property
    def url(self) -> str:
        return f"{'lmtp' if self.handler.lmtp else 'smtp'}://127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_sink(lmtp: bool = False, **options: Any) -> Iterator[Sink]:
    handler = SinkHandler(lmtp=lmtp, **options)
    port = free_port()
    controller = _SinkController(handler, port, lmtp)
    controller.start()
    try:
        yield Sink(handler, port, controller)
    finally:
        if controller._thread is not None:  # a test may have stopped it (next hop down)
            controller.stop()


def sigterm_with_messages_in_flight(
    port: int, sink: Sink, proc: subprocess.Popen[bytes], messages: list[tuple[str, bytes]]
) -> dict[int, object]:
    """Send each (sender, message) on its own connection; once all are at the next hop's DATA
    (the sink must delay it), SIGTERM the whole process group, as systemd stops a unit; wait for
    every client and for the process, which must exit 0. Returns sendmail's result (or the
    exception) per message index."""
    results: dict[int, object] = {}

    def send(i: int) -> None:
        client = smtplib.SMTP("127.0.0.1", port, timeout=60)
        try:
            results[i] = client.sendmail(messages[i][0], ["bob@example.net"], messages[i][1])
        except (smtplib.SMTPException, OSError) as e:
            results[i] = e
        finally:
            client.close()  # no QUIT: after its reply the server may have said 421 and closed

    n = len(messages)
    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while sink.handler.data_started < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.handler.data_started == n, f"the {n} messages never were in flight together"
    os.killpg(proc.pid, signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert proc.wait(60) == 0
    return results


def flight_ids(sink: Sink) -> list[int]:
    """The numbers of the <flight-N@...> Message-IDs the sink received, sorted."""
    return sorted(int(r.data.split(b"<flight-")[1].split(b"@")[0]) for r in sink.received)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with running_sink() as s:
        yield s


# --- the daemon, in process ----------------------------------------------------------------------


@dataclass
class Running:
    daemon: Daemon
    loop: asyncio.AbstractEventLoop
    port: int

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the daemon's loop thread and return its result."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(10)
        return box[0]


def make_config(tmp_path: Path, **changes: Any) -> Config:
    """A config for tests: a free port, the shipped rules and model, files under tmp_path."""
    base = Config(
        listen_port=free_port(),
        rules=RULES_PATH,
        model=MODEL_PATH,
        next_hop=NextHop("maildir", path=tmp_path / "Maildir"),
        quarantine=tmp_path / "quarantine",
        hostname="milter.test",
        next_hop_timeout=5.0,
        text_workers=0,
    )
    return dataclasses.replace(base, **changes)


@contextlib.contextmanager
def running_daemon(config: Config, **options: Any) -> Iterator[Running]:
    """`milter serve` on its own event loop in a thread, for smtplib clients in the test."""
    loop = asyncio.new_event_loop()
    daemon = Daemon(config, watch=False, **options)
    thread = threading.Thread(target=loop.run_forever, name="milter-test-loop", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(daemon.start(), loop).result(30)
        yield Running(daemon, loop, daemon.port)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(daemon.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture
def config_for(tmp_path: Path) -> Callable[..., Config]:
    """`config_for(**changes)`: a test Config (free port, shipped rules and model, tmp dirs)."""
    return lambda **changes: make_config(tmp_path, **changes)


@pytest.fixture
def serve() -> Callable[..., contextlib.AbstractContextManager[Running]]:
    """`with serve(config) as running:` the daemon on a real port (running.port)."""
    return running_daemon


@pytest.fixture
def sink_factory() -> Callable[..., contextlib.AbstractContextManager[Sink]]:
    """`with sink_factory(lmtp=False, **SinkHandler options) as sink:` a real next hop."""
    return running_sink


# --- faults the real parts cannot be made to produce ------------------------------------------


class RaisingScorer:
    """A model that fails on every message: a fault the real model cannot be made to produce."""

    id = "broken-model"

    def score(self, text: str) -> Score:
        raise RuntimeError("onnxruntime exploded")


class RaisingRules:
    """Rules that raise: an unexpected bug inside a session."""

    def decide(self, facts: Any) -> Any:
        raise KeyError("bug")


def swap_policy(running: Any, **parts: Any) -> None:
    running.call(lambda: running.daemon._swap(dataclasses.replace(running.daemon.policy, **parts)))
