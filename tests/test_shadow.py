"""Shadow scoring: a candidate beside the live model scores every message, never changes what
happens to it, and its disagreements are logged and counted; `milter promote` makes it live
through the daemon's reload. The candidate is a real site model (`milter retrain` on a store
filled by `milter learn`), the live one the shipped model."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL_PATH, RULES_PATH, RaisingScorer, free_port, make_config, running_daemon
from site_mail import corpus_files, milter, newsletter, site_store

from milter.message import Message
from milter.metrics import Metrics
from milter.model import Model, load_model
from milter.policy import Policy
from milter.rules import Ruleset, facts_of
from milter.scan import scan
from milter.text import message_text


@pytest.fixture(scope="module")
def site_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    root = tmp_path_factory.mktemp("shadow-site")
    store = site_store(root)
    done = milter("retrain", "--store", str(store), "--out", str(root / "site.onnx"))
    assert done.returncode == 0, done.stderr
    return load_model(root / "site.onnx")


def mail() -> list[bytes]:
    """The site's mail: its newsletter (never taught), spam and list mail."""
    raws = [newsletter(i) for i in range(1, 60, 2)]
    raws += [f.read_bytes() for f in corpus_files("spam", "industrypack-devel.lists.sourceforge.net", 20, 60)]
    raws += [f.read_bytes() for f in corpus_files("ham", "samba-technical.lists.samba.org", 20, 40)]
    return raws


def test_shadow_never_changes_an_action_and_counts_disagreements(
    site_model: Model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    rules = Ruleset.load(config.rules)
    live = load_model(MODEL_PATH)
    plain, shadowed = Policy(config, live, rules), Policy(config, live, rules, site_model)
    metrics = Metrics()
    raws = mail()
    disagree = 0
    with caplog.at_level(logging.INFO, logger="milter.scan"):
        for raw in raws:
            message = Message(raw)
            alone = asyncio.run(scan(plain, message, None, None))
            beside = asyncio.run(scan(shadowed, message, None, metrics))
            assert beside == alone  # the same decision, score and model: the shadow acts on nothing
            would = rules.decide(facts_of(message, site_model.score(message_text(raw)).probability))
            disagree += would.action != alone.action
    sample = metrics.registry.get_sample_value
    assert disagree >= 5  # the shipped model junks the newsletter; the site model delivers it
    assert sample("milter_shadow_disagreements_total") == disagree
    counted = sum(
        sample("milter_shadow_messages_total", {"action": a, "live_action": b}) or 0
        for a in ("deliver", "flag", "spam_folder")
        for b in ("deliver", "flag", "spam_folder")
    )
    assert counted == len(raws)
    assert sample("milter_shadow_messages_total", {"action": "deliver", "live_action": "spam_folder"})
    assert sample("milter_shadow_agreement_ratio") == pytest.approx(1 - disagree / len(raws))
    assert sample("milter_shadow_model_info", {"model_id": site_model.id}) == 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shadow: model")]
    assert len(lines) == disagree
    assert f"shadow: model {site_model.id} would have taken deliver" in lines[0]
    assert f"where {live.id} took spam_folder" in lines[0]


def test_a_failing_shadow_changes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    rules = Ruleset.load(config.rules)
    live = load_model(MODEL_PATH)
    metrics = Metrics()
    for raw in mail()[:10]:
        message = Message(raw)
        alone = asyncio.run(scan(Policy(config, live, rules), message, None, None))
        assert (
            asyncio.run(scan(Policy(config, live, rules, RaisingScorer()), message, None, metrics)) == alone
        )
    assert metrics.registry.get_sample_value("milter_shadow_errors_total") == 10
    assert (
        metrics.registry.get_sample_value(
            "milter_shadow_messages_total", {"action": "deliver", "live_action": "deliver"}
        )
        is None
    )


def reload(running: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(running.daemon.reloader.reload(), running.loop).result(60)


def test_retrain_to_shadow_then_promote_through_the_daemons_reload(tmp_path: Path) -> None:
    models, shadow = tmp_path / "model", tmp_path / "shadow"
    models.mkdir()
    shadow.mkdir()
    shutil.copy(MODEL_PATH, models / "spam.onnx")
    store = site_store(tmp_path)
    config_file = tmp_path / "milter.yaml"
    config_file.write_text(f"model: {models}\nshadow_model: {shadow}\nfeedback_store: {store}\n")
    config = make_config(tmp_path, model=models, shadow_model=shadow)
    maildir = tmp_path / "Maildir"
    metrics = Metrics()
    with running_daemon(config, metrics=metrics) as running:
        assert running.daemon.policy.shadow is None
        done = milter("retrain", "--config", str(config_file), "--to", "shadow")
        assert done.returncode == 0, done.stderr
        [candidate] = shadow.glob("*.onnx")
        report = reload(running)
        assert "shadow" in report.changed
        site_id = running.daemon.policy.shadow.id
        assert candidate.name == f"site-{site_id.removeprefix('spam-')}.onnx"
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            client.sendmail("news@northwind-outfitters.example", ["user@example.net"], newsletter(1))
        assert len(list((maildir / ".Junk" / "new").glob("*"))) == 1  # the live model's action
        assert metrics.registry.get_sample_value("milter_shadow_disagreements_total") == 1

        done = milter("promote", "--config", str(config_file))
        assert done.returncode == 0, done.stderr
        assert f"promoted {site_id}" in done.stdout
        assert list(shadow.iterdir()) == [] and (models / candidate.name).is_file()
        report = reload(running)
        assert {"model", "shadow"} <= report.changed
        assert running.daemon.policy.model.id == site_id and running.daemon.policy.shadow is None
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            client.sendmail("news@northwind-outfitters.example", ["user@example.net"], newsletter(3))
        assert len(list((maildir / "new").glob("*"))) == 1  # the site model delivers it
        assert len(list((maildir / ".Junk" / "new").glob("*"))) == 1

    # Undo: the site model's file removed, the shipped model serves again.
    (models / candidate.name).unlink()
    with running_daemon(config) as running:
        assert running.daemon.policy.model.id == load_model(MODEL_PATH).id


def test_promote_refuses_a_bad_file_and_copies_nothing(tmp_path: Path) -> None:
    models = tmp_path / "model"
    models.mkdir()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    config_file = tmp_path / "milter.yaml"
    config_file.write_text(f"model: {models}\n")
    done = milter("promote", "--config", str(config_file), str(bad))
    assert done.returncode == 1 and "not a loadable ONNX model" in done.stderr
    assert list(models.iterdir()) == []
    done = milter("promote", "--config", str(config_file))
    assert done.returncode == 2 and "no shadow_model" in done.stderr


class Log:
    """A daemon's standard error, read by a thread: wait for a line, never for a time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stderr is not None
        self.stream = proc.stderr
        self.reader = threading.Thread(
            target=lambda: [self.lines.put(line) for line in self.stream], daemon=True
        )
        self.reader.start()

    def close(self) -> None:
        """After the process exited: the reader has met the end of the stream."""
        self.reader.join(30)
        self.stream.close()

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in the daemon's log:\n{''.join(self.seen)}")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_the_running_daemon_picks_up_the_timers_candidate_by_itself(tmp_path: Path) -> None:
    """`milter serve` as a real process, watching its directories: `milter retrain --to shadow`
    (what milter-retrain.service runs) and `milter promote` take effect with no signal sent."""
    models, shadow, state = tmp_path / "model", tmp_path / "shadow", tmp_path / "lib"
    for directory in (models, shadow, state):
        directory.mkdir()
    shutil.copy(MODEL_PATH, models / "spam.onnx")
    store = site_store(tmp_path)
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "milter.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nmetrics: 127.0.0.1:{metrics_port}\nmodel: {models}\n"
        f"shadow_model: {shadow}\nfeedback_store: {store}\nretrain_state: {state / 'retrain.json'}\n"
        f"rules: {RULES_PATH}\nnext_hop: maildir:{tmp_path / 'Maildir'}\ntext_workers: 0\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "milter", "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    log = Log(proc)
    maildir = tmp_path / "Maildir"
    try:
        log.wait_for("listening on")
        done = milter("retrain", "--config", str(config), "--to", "shadow")
        assert done.returncode == 0, done.stderr
        line = log.wait_for("now serving shadow model")
        assert "(scores, never acts)" in line
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("news@northwind-outfitters.example", ["user@example.net"], newsletter(1))
        assert len(list((maildir / ".Junk" / "new").glob("*"))) == 1
        log.wait_for("shadow: model")  # the disagreement, logged
        seen = scrape(metrics_port)
        assert seen["milter_shadow_disagreements_total"] == 1
        assert seen['milter_shadow_messages_total{action="deliver",live_action="spam_folder"}'] == 1
        assert seen['milter_retrain_runs_total{result="written"}'] == 1
        assert seen["milter_retrain_last_passed"] == 1

        done = milter("promote", "--config", str(config))
        assert done.returncode == 0, done.stderr
        log.wait_for("now serving model")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("news@northwind-outfitters.example", ["user@example.net"], newsletter(3))
        assert len(list((maildir / "new").glob("*"))) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == 0


def test_check_config_shows_the_shadow_model_the_daemon_would_score_with(
    site_model: Model, tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    config = tmp_path / "milter.yaml"
    config.write_text(f"shadow_model: {shadow}\n")
    done = milter("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f"{shadow}: no shadow model (the daemon scores without one): no .onnx file" in done.stdout
    (shadow / "broken.onnx").write_bytes(b"not a model")
    shutil.copy(site_model.path, shadow / "site.onnx")
    done = milter("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f"{shadow / 'site.onnx'}: ok: shadow model {site_model.id}" in done.stdout
    assert "milter.base_model" in done.stdout
