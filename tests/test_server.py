"""The daemon as a process: start-up checks, signals, draining, logs; and reload in process."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL_PATH, ROOT, RULES_PATH, flight_ids, free_port, sigterm_with_messages_in_flight

from milter.config import NextHop


def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"milter exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("milter did not start listening")


def milter(
    *args: str, env: dict[str, str] | None = None, stderr: Any = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "milter", "serve", "--no-watch", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group: signals can go to it and its workers
    )


def message(i: int) -> bytes:
    return (
        f"From: sender{i}@example.org\r\nTo: bob@example.net\r\nSubject: in flight {i}\r\n"
        f"Message-ID: <flight-{i}@example.org>\r\n\r\nMessage number {i}, sent while milter stops.\r\n"
    ).encode()


def test_sigterm_while_50_sessions_are_in_flight_loses_none(sink_factory: Any, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with sink_factory(data_delay=1.5) as sink, log.open("wb") as stderr:
        proc = milter(
            "--listen", f"127.0.0.1:{port}", "--next-hop", sink.url,
            "--quarantine", str(tmp_path / "q"), "--drain-timeout", "30",
            "--text-workers", "1",  # the worker path too: workers ignore SIGTERM, the daemon drains
            stderr=stderr,
        )  # fmt: skip
        try:
            wait_port(port, proc)
            idle = smtplib.SMTP("127.0.0.1", port, timeout=30)  # connected, between transactions
            idle.ehlo("idle.test")
            flight = [(f"sender{i}@example.org", message(i)) for i in range(50)]
            results = sigterm_with_messages_in_flight(port, sink, proc, flight)
            code, _ = idle.noop()
            idle.close()
            assert code == 421  # told the service is going away, not left hanging
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # Every message in flight was let finish: each client got 250, the next hop has each once.
    assert results == {i: {} for i in range(50)}
    assert flight_ids(sink) == list(range(50))
    text = log.read_text()
    assert "stopping: draining sessions" in text and "stopped" in text
    assert "text worker" not in text  # the workers ignored SIGTERM and served to the end


def test_bad_rules_file_fails_start_with_its_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: spam\n    if: {probabilty: {min: 0.9}}\n    action: spam_folder\n")
    proc = milter("--listen", f"127.0.0.1:{free_port()}", "--rules", str(rules))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"{rules}:3:" in err.decode() and "probability" in err.decode()


def test_a_model_slower_than_the_configured_limit_is_refused_at_start(tmp_path: Path) -> None:
    proc = milter(
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--next-hop",
        f"maildir:{tmp_path / 'md'}",
        "--max-ms-per-message",
        "0.000001",
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "spam.onnx" in err.decode() and "per message" in err.decode()


def test_bad_config_exits_2_naming_file_line_and_form(tmp_path: Path) -> None:
    config = tmp_path / "milter.yaml"
    config.write_text("listen: 127.0.0.1:10025\nnext_hop: smtp:/nowhere\n")
    proc = milter("--config", str(config))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"{config}:2: next_hop:" in err.decode() and "smtp://HOST:PORT" in err.decode()
    proc = milter("--listen", "localhost")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--listen: expected HOST:PORT" in err.decode()


def test_port_in_use_fails_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = milter("--listen", f"127.0.0.1:{port}", "--next-hop", f"maildir:{tmp_path / 'md'}")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "cannot start" in err.decode()


def test_journald_lines_have_levels_and_no_timestamps(tmp_path: Path) -> None:
    port = free_port()
    proc = milter(
        "--listen", f"127.0.0.1:{port}", "--next-hop", f"maildir:{tmp_path / 'md'}",
        "--rules", str(RULES_PATH), "--model", str(MODEL_PATH), "--text-workers", "0",
        env={"INVOCATION_ID": "0123456789abcdef"},
    )  # fmt: skip
    try:
        wait_port(port, proc)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.org", ["b@example.net"], message(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert proc.returncode == 0
    assert all(line.startswith("<") for line in lines), lines
    [line] = [line for line in lines if "message_id=" in line]
    assert line.startswith("<6>message_id=<flight-1@example.org> client=127.0.0.1 ")
    assert " rcpts=1 " in line and " action=deliver " in line and " ms=" in line


def test_json_log_line(tmp_path: Path) -> None:
    import json

    port = free_port()
    proc = milter(
        "--listen", f"127.0.0.1:{port}", "--next-hop", f"maildir:{tmp_path / 'md'}",
        "--log-format", "json", "--text-workers", "0",
    )  # fmt: skip
    try:
        wait_port(port, proc)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.org", ["b@example.net"], message(2))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    records = [json.loads(line) for line in err.decode().splitlines()]
    [entry] = [r for r in records if r["logger"] == "milter.message"]
    assert entry["message_id"] == "<flight-2@example.org>" and entry["from"] == "<a@example.org>"
    assert entry["rcpts"] == 1 and entry["action"] == "deliver" and isinstance(entry["probability"], float)
    assert entry["reply"].startswith("250 ") and entry["ms"] > 0


def test_reload_swaps_the_policy(config_for: Any, serve: Any, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_PATH.read_text())
    config = config_for(rules=rules)
    with serve(config) as running:
        before = running.daemon.policy
        rules.write_text("rules:\n  - {name: hold-all, action: tempfail}\n")
        running.call(running.daemon.reload)
        deadline = time.monotonic() + 10
        while running.daemon.policy is before and time.monotonic() < deadline:
            time.sleep(0.02)
        with (
            smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client,
            pytest.raises(smtplib.SMTPDataError) as e,
        ):
            client.sendmail("a@example.org", ["b@example.net"], message(3))
        assert e.value.smtp_code == 451
        # A broken file never goes live: the last good policy keeps serving.
        current = running.daemon.policy
        reloader = running.daemon.reloader
        done = reloader.reloads
        rules.write_text("rules: [oops\n")
        running.call(running.daemon.reload)
        deadline = time.monotonic() + 30
        while reloader.reloads == done and time.monotonic() < deadline:  # the reload has run ...
            time.sleep(0.02)
        assert reloader.reloads == done + 1
        assert [r.kind for r in reloader.last.refused] == ["rules"]  # ... and refused the file
        assert running.daemon.policy is current


def test_text_workers_give_the_same_verdicts(
    config_for: Any, serve: Any, banded: Any, tmp_path: Path
) -> None:
    from milter.rules import Action

    with serve(config_for(text_workers=2)) as running:
        assert running.daemon.filter is not None and running.daemon.filter.texts is not None
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            for action in (Action.SPAM_FOLDER, Action.FLAG, Action.DELIVER):
                client.sendmail("a@example.org", ["b@example.net"], banded[action].raw)
    maildir = tmp_path / "Maildir"
    p = banded[Action.SPAM_FOLDER].probability
    [junk] = (maildir / ".Junk" / "new").glob("*")
    assert f"X-Spam-Score: {p:.3f}\n".encode() in junk.read_bytes()
    assert len(list((maildir / "cur").glob("*:2,F"))) == 1 and len(list((maildir / "new").glob("*"))) == 1


def test_a_dead_text_worker_costs_only_time(config_for: Any, serve: Any, tmp_path: Path) -> None:
    with serve(config_for(text_workers=1)) as running:
        texts = running.daemon.filter.texts
        [worker] = texts._workers
        worker.process.kill()  # a worker dies (OOM killer, a bug): mail must not notice
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            for i in range(3):
                assert client.sendmail("a@example.org", ["b@example.net"], message(10 + i)) == {}
        deadline = time.monotonic() + 10
        while (not texts._workers or texts._workers[0] is worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert texts._workers and texts._workers[0] is not worker and texts._workers[0].alive
    delivered = list((tmp_path / "Maildir" / "new").glob("*"))
    assert len(delivered) == 3
    assert all(b"X-Spam-Score: unscored" not in f.read_bytes() for f in delivered)  # scored in process


def test_a_hung_text_worker_is_killed_and_the_message_delivered_unscored(
    config_for: Any, serve: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(config_for(text_workers=1)) as running:
        texts = running.daemon.filter.texts
        texts.timeout = 0.5
        [worker] = texts._workers
        os.kill(worker.process.pid, signal.SIGSTOP)  # stuck: alive, silent
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            assert client.sendmail("a@example.org", ["b@example.net"], message(20)) == {}
            assert texts._workers and texts._workers[0] is not worker and texts._workers[0].alive
            assert worker.process.returncode is not None  # the stuck one was killed, not left behind
            assert client.sendmail("a@example.org", ["b@example.net"], message(21)) == {}
    delivered = sorted((tmp_path / "Maildir" / "new").glob("*"), key=lambda f: f.stat().st_mtime)
    assert len(delivered) == 2
    first, second = (f.read_bytes() for f in delivered)
    assert b"X-Spam-Score: unscored" in first  # on_error: deliver (the default)
    assert b"X-Spam-Score: unscored" not in second  # the new worker scores again
    assert "gave no answer in 0.5 s; killing it" in caplog.text


def test_listen_on_ipv6(config_for: Any, serve: Any) -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6; the daemon must still be tested on [::1]")
    config = config_for(listen_host="::1", next_hop=NextHop("maildir", path=Path("/nonexistent-unused")))
    with serve(config) as running, smtplib.SMTP("::1", running.port, timeout=30) as client:
        assert client.noop()[0] == 250


def test_metrics_count_messages_and_sessions(config_for: Any, serve: Any, banded: Any) -> None:
    from milter.metrics import Metrics
    from milter.rules import Action

    metrics = Metrics()
    with serve(config_for(), metrics=metrics) as running:
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            assert metrics.registry.get_sample_value("milter_sessions_open") == 1
            for action in (Action.SPAM_FOLDER, Action.DELIVER, Action.DELIVER):
                client.sendmail("a@example.org", ["b@example.net"], banded[action].raw)
        deadline = time.monotonic() + 5
        while metrics.registry.get_sample_value("milter_sessions_open") != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    sample = metrics.registry.get_sample_value
    assert sample("milter_messages_total", {"action": "spam_folder", "rule": "spam"}) == 1
    assert sample("milter_messages_total", {"action": "deliver", "rule": "default"}) == 2
    assert sample("milter_score_count") == 3 and sample("milter_relay_seconds_count") == 3
    assert sample("milter_sessions_open") == 0


def test_default_text_workers() -> None:
    from milter.workers import default_workers

    assert [default_workers(n) for n in (1, 2, 3, 4, 8, 64)] == [0, 0, 2, 3, 4, 4]
