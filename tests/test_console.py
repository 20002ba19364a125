"""The operator console over real HTTP: the JSON API, the history, the quarantine, teaching,
and its security (password, sessions, CSRF, rate limits). The daemon is milter's own, the next
hop a real aiosmtpd server, the history a real SQLite file."""

from __future__ import annotations

import contextlib
import os
import smtplib
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL_PATH, ROOT, Sink, free_port, running_daemon, running_sink
from consoleutil import Api, hold_rules, message, wait_for

from milter.config import Config, NextHop
from milter.feedback import Store
from milter.history import HistoryWriter, connect
from milter.message import Envelope, Message
from milter.outcome import decided
from milter.password import read_password_file, verify
from milter.quarantine import RELEASED, RELEASING, HeldEnvelope, NotHeld, Quarantine, split_envelope

PASSWORD = "correct horse battery"


@contextlib.contextmanager
def console_daemon(config: Config) -> Iterator[Api]:
    """The daemon with its console; the Api's `running` is the daemon (conftest.Running)."""
    with running_daemon(config) as running:
        assert config.console is not None
        api = Api(f"http://127.0.0.1:{config.console[1]}")
        api.running = running
        yield api


def console_config(config_for: Any, tmp_path: Path, sink: Sink, **changes: Any) -> Config:
    feedback = tmp_path / "feedback"
    feedback.mkdir(exist_ok=True)
    options: dict[str, Any] = {
        "next_hop": NextHop("smtp", "127.0.0.1", sink.port),
        "rules": hold_rules(tmp_path),
        "console": ("127.0.0.1", free_port()),
        "history": tmp_path / "history.sqlite3",
        "feedback_store": feedback,
    }
    options.update(changes)
    config: Config = config_for(**options)
    return config


def send(port: int, raw: bytes, rcpts: tuple[str, ...] = ("bob@example.net",), **options: Any) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.sendmail("alice@example.org", list(rcpts), raw, **options) == {}


def held_ids(api: Api) -> list[str]:
    return [h["id"] for h in api.get("/api/quarantine")]


# --- the config: who may run without a password ---------------------------------------------


def serve_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "milter", "serve", "--no-watch", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.10", "[::]", "mail.example.org"])
def test_console_off_loopback_without_password_refuses_to_start(tmp_path: Path, address: str) -> None:
    result = serve_cli("--listen", f"127.0.0.1:{free_port()}", "--console", f"{address}:8025", cwd=tmp_path)
    assert result.returncode == 2
    assert "not a loopback address, and the console has no password" in result.stderr
    assert "console_password_file" in result.stderr and "milter console-password" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_console_port_in_use_is_a_start_failure(tmp_path: Path, workers: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_cli(
            "--listen", f"127.0.0.1:{free_port()}", "--console", f"127.0.0.1:{port}", "--workers", workers,
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot start: [Errno 98] console on 127.0.0.1:{port}: " in result.stderr


def test_console_with_a_broken_password_file_refuses_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "console.passwd"
    bad.write_text("admin:plaintext-password\n")
    config = tmp_path / "milter.yaml"
    config.write_text(f"console: 0.0.0.0:8025\nconsole_password_file: {bad}\n")
    result = serve_cli("--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad}:1: expected NAME:scrypt$N$r$p$SALT$HASH" in result.stderr


def test_console_password_writes_a_salted_scrypt_hash_only(tmp_path: Path) -> None:
    path = tmp_path / "console.passwd"

    def run(*args: str, password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "milter", "console-password", *args, str(path)],
            input=password + "\n", capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip

    assert run(password=PASSWORD).returncode == 0
    assert run("--user", "alice", password="another secret").returncode == 0
    short = run("--user", "bob", password="short")
    assert short.returncode == 2 and "at least 8" in short.stderr
    text = path.read_text()
    assert PASSWORD not in text and "another secret" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = read_password_file(path)
    assert sorted(users) == ["admin", "alice"]
    assert verify(PASSWORD, users["admin"]) and not verify(PASSWORD, users["alice"])
    assert users["admin"].salt != users["alice"].salt and users["admin"].n >= 2**14


# --- the history ---------------------------------------------------------------------------------


def test_a_message_appears_in_the_history_with_its_score(config_for: Any, tmp_path: Path, sink: Sink) -> None:
    config = console_config(config_for, tmp_path, sink)
    spammy = message("cheap pills", "Click here for your special offer. Buy viagra online. Cheap pills.\r\n")
    with console_daemon(config) as api:
        send(config.listen_port, message("lunch on friday?", mid="<lunch@example.org>"))
        send(config.listen_port, spammy, ("carol@example.net", "dave@example.net"))
        entries = wait_for(lambda: len(got := api.get("/api/history?limit=10")) == 2 and got, "two decisions")
        newest, lunch = entries
        for entry in entries:
            assert {"message_id", "action", "probability", "rule", "time"} <= entry.keys()
            assert entry["features"] and entry["model"] and entry["reply"].startswith("250")
        assert lunch["message_id"] == "<lunch@example.org>" and lunch["subject"] == "lunch on friday?"
        assert newest["recipients"] == ["carol@example.net", "dave@example.net"]
        assert 0 <= lunch["probability"] < newest["probability"] <= 1
        assert lunch["time"].endswith("Z") and lunch["sender"] == "alice@example.org"
        assert [e["subject"] for e in api.get("/api/history?subject=PILLS")] == ["cheap pills"]
        assert [e["subject"] for e in api.get(f"/api/history?action={lunch['action']}")][
            -1
        ] == "lunch on friday?"
        assert api.get("/api/history?sender=nobody@") == []
        assert len(api.get("/api/history?limit=1")) == 1
        assert api.get(f"/api/history?since={lunch['timestamp'] + 3600}") == []
        stats = api.get("/api/stats")
        assert stats["last_hour"]["messages"] == 2 and sum(stats["per_minute"]["messages"]) == 2
        assert (
            stats["latency_ms"]["p50"] is not None
            and stats["latency_ms"]["p99"] >= stats["latency_ms"]["p50"]
        )
        assert stats["model"]["id"] == newest["model"] and stats["rules"]["count"] == 4
        assert stats["workers"] == {**stats["workers"], "configured": 1, "up": 1}


def test_reloads_and_refusals_reach_the_overview(config_for: Any, tmp_path: Path, sink: Sink) -> None:
    config = console_config(config_for, tmp_path, sink)
    with console_daemon(config) as api:
        running = api.running
        assert config.rules.read_text().startswith("rules:")
        config.rules.write_text("rules:\n  - {name: broken, action: explode}\n")
        running.call(running.daemon.reload)
        events = wait_for(lambda: api.get("/api/stats")["events"], "the refusal in the overview")
        (refused,) = events
        assert refused["kind"] == "refused" and "explode" in refused["text"] and refused["worker"] == 0
        config.rules.write_text("rules:\n  - {name: everything, action: deliver}\n")
        running.call(running.daemon.reload)
        stats = wait_for(lambda: (s := api.get("/api/stats"))["rules"]["count"] == 1 and s, "the reload")
        assert stats["events"][0]["kind"] == "reload" and "rules" in stats["events"][0]["text"]
        status, _, headers = api.request("GET", "/api/history")
        assert status == 200 and headers["X-CSRF-Token"] == api.csrf()


def test_history_keeps_max_rows_and_drops_rather_than_waits(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    writer = HistoryWriter(path, max_rows=100, raw_rows=10)
    writer.start()
    for i in range(250):
        raw = message(f"subject {i}")
        writer.record(decided(Message(raw, Envelope("a@example.org", ("b@example.net",))), None, {}, "smtp"))
    writer.close()
    conn = connect(path)
    assert conn.execute("SELECT count(*), min(subject), max(id) FROM decisions").fetchone()[0] == 100
    subjects = {row[0] for row in conn.execute("SELECT subject FROM decisions")}
    assert subjects == {f"subject {i}" for i in range(150, 250)}  # the newest
    assert conn.execute("SELECT count(*) FROM raw").fetchone()[0] == 10
    assert conn.execute("SELECT state FROM workers").fetchone()[0] == "stopped"
    # A writer that cannot keep up (here: not running at all) drops and counts; record never waits.
    stuck = HistoryWriter(tmp_path / "other.sqlite3", queue_size=3)
    # Ten records return with no writer to drain the queue (a put that waited would never return):
    # three queued, seven dropped and counted.
    for _ in range(10):
        stuck.record(decided(Message(message("x")), None, {}, "smtp"))
    assert stuck.dropped == 7


# --- the quarantine ------------------------------------------------------------------------------


def test_quarantined_message_is_viewed_released_once_with_its_envelope(
    config_for: Any, tmp_path: Path, sink: Sink
) -> None:
    config = console_config(config_for, tmp_path, sink)
    raw = message("hold: <script>alert(1)</script>", mid="<held-1@example.org>")
    with console_daemon(config) as api:
        send(config.listen_port, raw, ("bob@example.net", "eve@example.net"),
             mail_options=["RET=HDRS", "ENVID=held-1"], rcpt_options=["NOTIFY=FAILURE"])  # fmt: skip
        assert sink.received == []  # quarantined, not delivered
        (held,) = api.get("/api/quarantine")
        assert held["sender"] == "alice@example.org" and held["recipients"] == [
            "bob@example.net",
            "eve@example.net",
        ]
        assert held["rule"] == "hold-for-review" and held["subject"] == "hold: <script>alert(1)</script>"
        shown = api.get(f"/api/quarantine/{held['id']}")
        assert ["Message-ID", "<held-1@example.org>"] in shown["headers"]
        assert "see you on Friday" in shown["parts"][0]["text"]
        # No CSRF token, or a wrong one: refused, nothing released.
        status, body, _ = api.request("POST", f"/api/quarantine/{held['id']}/release")
        assert status == 403 and "CSRF" in body["error"]
        status, _, _ = api.request(
            "POST", f"/api/quarantine/{held['id']}/release", headers={"X-CSRF-Token": "x"}
        )
        assert status == 403 and sink.received == [] and held_ids(api) == [held["id"]]
        status, result = api.post(f"/api/quarantine/{held['id']}/release")
        assert status == 200 and result["released"] is True and result["by"] == "console@127.0.0.1"
        (got,) = sink.received
        assert got.mail_from == "alice@example.org" and got.rcpt_tos == ["bob@example.net", "eve@example.net"]
        # The release's own transaction (the message's first one was aborted at the next hop).
        assert sink.handler.dsn_seen[-3:] == [
            "MAIL RET=HDRS ENVID=held-1",
            "RCPT <bob@example.net> NOTIFY=FAILURE",
            "RCPT <eve@example.net> NOTIFY=FAILURE",
        ]
        assert got.data.startswith(b"X-Milter-Released: by console@127.0.0.1 on ")
        assert b"X-Spam-Action: deliver" in got.data and b"rule=released" in got.data
        assert b"X-Spam-Action: quarantine" not in got.data and b"X-Milter-Envelope" not in got.data
        assert got.data.endswith(b"see you on Friday.\r\n\r\nAlice\r\n")
        # Once: gone from the quarantine, a second release finds nothing.
        assert held_ids(api) == []
        status, _ = api.post(f"/api/quarantine/{held['id']}/release")
        assert status == 404 and len(sink.received) == 1
        (entry,) = wait_for(lambda: api.get("/api/history?action=quarantine"), "the decision in the history")
        assert entry["quarantine"] == held["id"] and entry["status"] == "released"
        (action,) = [a for a in api.get("/api/actions") if a["action"] == "release"]
        assert action["user"] == "console@127.0.0.1" and action["result"].startswith("released: 250")
    released = list((config.quarantine / RELEASED / "cur").iterdir())
    assert [p.name.split(":")[0] for p in released] == [held["id"]]


def test_deleted_message_is_gone(config_for: Any, tmp_path: Path, sink: Sink) -> None:
    config = console_config(config_for, tmp_path, sink)
    with console_daemon(config) as api:
        send(config.listen_port, message("hold this one"))
        (held,) = held_ids(api)
        status, _, _ = api.request("POST", f"/quarantine/{held}/delete", form={"csrf_token": "wrong"})
        assert status == 403 and held_ids(api) == [held]
        status, result = api.post(f"/api/quarantine/{held}/delete")
        assert status == 200 and result == {"id": held, "deleted": True, "by": "console@127.0.0.1"}
        assert held_ids(api) == [] and list((config.quarantine / "new").iterdir()) == []
        assert api.request("GET", f"/api/quarantine/{held}")[0] == 404
        assert api.post(f"/api/quarantine/{held}/delete")[0] == 404
        assert api.post(f"/api/quarantine/{held}/release")[0] == 404
    assert sink.received == []


async def _interrupted_release(quarantine: Quarantine, sink: Sink) -> list[Any]:
    from milter.delivery import next_hop_from_url

    hop = next_hop_from_url(sink.url)
    try:
        return await quarantine.recover(hop)
    finally:
        await hop.close()


def test_a_release_cut_off_by_a_crash_is_finished_never_lost(tmp_path: Path) -> None:
    import asyncio

    quarantine = Quarantine(tmp_path / "quarantine")
    envelope = HeldEnvelope("alice@example.org", (), (("bob@example.net", ()),), rule="hold-for-review")
    held = asyncio.run(quarantine.store(message("hold me"), envelope))
    # What release() does before it hands the message over; then the process died.
    releasing = tmp_path / "quarantine" / RELEASING
    for sub in ("cur", "new", "tmp"):
        (releasing / sub).mkdir(parents=True)
    os.rename(quarantine.find(held)[0], releasing / "cur" / f"{held}:2,")
    assert [h.state for h in quarantine.listing()] == ["releasing"]
    with running_sink() as sink:
        (result,) = asyncio.run(_interrupted_release(quarantine, sink))
        assert result.ok and result.id == held
        (got,) = sink.received
        assert got.rcpt_tos == ["bob@example.net"] and b"X-Milter-Released: by recovery" in got.data
    assert quarantine.listing() == []
    with pytest.raises(NotHeld):
        quarantine.find(held)


def test_only_the_first_field_is_the_envelope() -> None:
    forged = b"X-Milter-Envelope: eyJ2IjoxfQ==\nSubject: hi\n\nbody\n"
    envelope = HeldEnvelope("a@example.org", ("BODY=8BITMIME",), (("b@example.net", ("NOTIFY=NEVER",)),))
    from milter.quarantine import envelope_field

    stored = envelope_field(envelope) + b"Subject: hi\nX-Milter-Envelope: forged\n\nbody\n"
    got, rest = split_envelope(stored)
    assert got == envelope and rest == b"Subject: hi\nX-Milter-Envelope: forged\n\nbody\n"
    assert split_envelope(b"Subject: hi\n" + forged) == (None, b"Subject: hi\n" + forged)
    assert split_envelope(forged)[0] is None  # not a whole envelope: ignored


# --- teaching --------------------------------------------------------------------------------------


def test_teach_puts_history_and_quarantined_messages_in_the_feedback_store(
    config_for: Any, tmp_path: Path, sink: Sink
) -> None:
    config = console_config(config_for, tmp_path, sink)
    with console_daemon(config) as api:
        send(config.listen_port, message("a newsletter", mid="<news@example.org>"))
        send(config.listen_port, message("hold: invoice", mid="<invoice@example.org>"))
        entries = wait_for(
            lambda: len(api.get("/api/history")) == 2 and api.get("/api/history"), "two decisions"
        )
        news = next(e for e in entries if e["message_id"] == "<news@example.org>")
        status, taught = api.post(f"/api/history/{news['id']}/teach", {"label": "spam"})
        assert status == 200 and taught["outcome"] == "learned"
        (held,) = held_ids(api)
        status, taught = api.post(f"/api/quarantine/{held}/teach", {"label": "ham"})
        assert status == 200 and taught["outcome"] == "learned"
        assert api.post(f"/api/history/{news['id']}/teach", {"label": "spam"})[1]["outcome"] == "known"
        assert api.post(f"/api/history/{news['id']}/teach", {"label": "maybe"})[0] == 400
    with Store(config.feedback_store) as store:
        stats = store.stats()
    assert stats.labels["spam"].messages == 1 and stats.labels["ham"].messages == 1
    assert [(u.user, u.spam, u.ham) for u in stats.users] == [("console@127.0.0.1", 1, 1)]
    db = sqlite3.connect(config.feedback_store / "feedback.sqlite3")
    kept = [row[0] for row in db.execute("SELECT raw FROM messages")]
    assert all(b"X-Spam-" not in raw and b"X-Milter-Envelope" not in raw for raw in kept)


# --- security -----------------------------------------------------------------------------------


def test_login_required_with_a_password_and_rate_limited(config_for: Any, tmp_path: Path, sink: Sink) -> None:
    from milter.password import write_password_file

    passwords = tmp_path / "console.passwd"
    write_password_file(passwords, "admin", PASSWORD)
    # Bound to every address, not loopback: the password is what lets anyone in.
    port = free_port()
    config = console_config(
        config_for, tmp_path, sink, console=("0.0.0.0", port), console_password_file=passwords
    )
    with console_daemon(config) as api:
        for path in ("/api/history", "/api/stats", "/api/quarantine", "/api/csrf"):
            status, body, _ = api.request("GET", path)
            assert status == 401 and "login required" in body["error"]
        status, _, headers = api.request("GET", "/")
        assert status == 303 and headers["Location"] == "/login"
        status, body, _ = api.request("POST", "/api/quarantine/x/delete", headers={"X-CSRF-Token": "x"})
        assert status == 401
        assert api.login("admin", "wrong password") == 303
        assert api.request("GET", "/api/stats")[0] == 401
        assert api.login("admin", PASSWORD) == 303
        assert api.get("/api/stats")["workers"]["up"] == 1
        token = api.csrf()
        assert token != Api(api.base).request("GET", "/api/csrf")[0]  # another client: no token for it
        status, _, _ = api.request("POST", "/api/quarantine/none/delete")
        assert status == 403
        assert api.post("/api/quarantine/none/delete")[0] == 404
        # Rate limit: five failures from one address, then 429 even for the right password.
        other = Api(api.base)
        for _ in range(4):
            assert other.login("admin", "guess") == 303
        assert other.login("nobody", "guess") == 303
        assert other.login("admin", PASSWORD) == 429
        logins = [a for a in api.get("/api/actions?limit=100") if a["action"] == "login"]
        assert [a["result"] for a in logins].count("failed") == 6 and logins[-1]["result"] == "failed"


def test_without_a_password_only_an_address_names_the_console(
    config_for: Any, tmp_path: Path, sink: Sink
) -> None:
    config = console_config(config_for, tmp_path, sink)
    with console_daemon(config) as api:
        assert config.console is not None
        port = config.console[1]
        assert api.request("GET", "/api/stats", headers={"Host": f"rebound.example:{port}"})[0] == 421
        status, _, _ = api.request("GET", "/api/stats", headers={"Host": f"localhost:{port}"})
        assert status == 200
        status, _page, headers = api.request("GET", "/")
        assert status == 200 and "script-src" not in headers["Content-Security-Policy"]
        assert "default-src 'none'" in headers["Content-Security-Policy"]


# --- one console for the whole daemon: --workers N, and the milter protocol ---------------------


def test_one_console_shows_every_worker_and_releases_through_it(tmp_path: Path) -> None:
    import signal

    port, console_port = free_port(), free_port()
    config = tmp_path / "milter.yaml"
    config.write_text(
        f"history: {tmp_path / 'history.sqlite3'}\nquarantine: {tmp_path / 'quarantine'}\n"
        f"feedback_store: {tmp_path}\nrules: {hold_rules(tmp_path)}\nmodel: {MODEL_PATH}\n"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "milter", "serve", "--config", str(config), "--workers", "2", "--no-watch",
             "--listen", f"127.0.0.1:{port}", "--next-hop", f"maildir:{tmp_path / 'Maildir'}",
             "--console", f"127.0.0.1:{console_port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        api = Api(f"http://127.0.0.1:{console_port}")

        def both_up() -> bool:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                return bool(api.get("/api/stats")["workers"]["up"] == 2)
            return False

        wait_for(both_up, "two workers up in the console", 60)
        # One connection per message: the kernel spreads connections over the two workers.
        for i in range(20):
            send(port, message(f"{'hold: ' if i == 0 else ''}note {i}"))
        entries = wait_for(
            lambda: len(api.get("/api/history")) == 20 and api.get("/api/history"), "20 decisions"
        )
        assert {e["worker"] for e in entries} == {0, 1}  # 2 x 0.5**20 that it is not so
        stats = api.get("/api/stats")
        assert stats["workers"]["configured"] == 2 and stats["last_hour"]["messages"] == 20
        assert sorted(w["worker"] for w in stats["workers"]["list"]) == [0, 1]
        (held,) = held_ids(api)
        status, result = api.post(f"/api/quarantine/{held}/release")
        assert status == 200 and result["released"]
        delivered = [p.read_bytes() for p in (tmp_path / "Maildir" / "new").iterdir()]
        assert sum(b"Subject: hold: note 0" in d for d in delivered) == 1
        assert len(delivered) + len(list((tmp_path / "Maildir" / "cur").iterdir())) == 20
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    conn = connect(tmp_path / "history.sqlite3")
    assert [row[0] for row in conn.execute("SELECT state FROM workers")] == ["stopped", "stopped"]


def test_milter_protocol_decisions_reach_the_history(config_for: Any, tmp_path: Path, sink: Sink) -> None:
    from test_milter_protocol import Client

    config = console_config(
        config_for, tmp_path, sink, protocol="milter", mode="before-queue",
        postfix_config_dir=tmp_path / "no-postfix-here",
    )  # fmt: skip
    with console_daemon(config) as api:
        client = Client(config.listen_port)
        try:
            client.negotiate()
            held_headers = [(b"Subject", b"hold: in the milter"), (b"Message-ID", b"<m1@example.org>")]
            client.message(held_headers, b"x\r\n", queue_id="4HOLD1")
            assert (b"q", b"milter rule hold-for-review\0") in client.replies_until_final()
            client.message([(b"Subject", b"hello"), (b"Message-ID", b"<m2@example.org>")], b"hi\r\n")
            client.replies_until_final()
        finally:
            client.close()
        entries = wait_for(
            lambda: len(api.get("/api/history")) == 2 and api.get("/api/history"), "two decisions"
        )
        hello, held = entries
        assert held["protocol"] == "milter" and held["message_id"] == "<m1@example.org>"
        assert (
            held["action"] == "quarantine" and held["quarantine"] == "4HOLD1" and held["queue_id"] == "4HOLD1"
        )
        assert hello["action"] == "deliver" and hello["features"]
        # The hold queue is Postfix's: read through postqueue (here there is no Postfix: said so).
        status, body, _ = api.request("GET", "/api/quarantine")
        assert status == 503 and "postqueue" in body["error"]
        status, body = api.post("/api/quarantine/4HOLD1/release")
        assert status == 409 and "postsuper -H" in body["error"]
