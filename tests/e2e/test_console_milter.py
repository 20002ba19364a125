"""The console in milter mode, end to end: a real Postfix puts a message on hold at milter's
word; the console shows Postfix's hold queue read-only (postqueue -j) and the history, and says
how to release (postsuper -H), which then delivers the message through Dovecot."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.mailsys import (
    Installation,
    Milter,
    Postfix,
    addr,
    configure_milter,
    free_port,
    make_message,
    one,
    run,
    send,
    wait_until,
)
from e2e.test_milter_protocol import rules_for_milter_protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from consoleutil import Api

pytestmark = pytest.mark.e2e


@dataclass
class ConsoleMilter:
    postfix: Postfix
    milter: Milter
    mail: Installation
    api: Api


@pytest.fixture(scope="module")
def cm(mail_system: Installation) -> Iterator[ConsoleMilter]:
    root = mail_system.root
    postfix = Postfix(root / "postfix-console", "console", mail_system.dovecot.lmtp_socket)
    console_port = free_port()
    settings = root / "milter-console-settings.yaml"
    settings.write_text(
        f"quarantine: quarantine-console\nlog_format: text\nconsole: 127.0.0.1:{console_port}\n"
        f"history: {root / 'console-history.sqlite3'}\npostfix_config_dir: {postfix.config_dir}\n"
    )
    # The last --config wins: the harness's own file, plus the console's settings.
    milter = Milter(
        root, "milter", None, root / "rules-console.yaml", args=("--config", str(settings)), name="console"
    )
    milter.rules.write_text(rules_for_milter_protocol())
    configure_milter(postfix, milter.port)
    milter.start()
    try:
        postfix.start()
        try:
            yield ConsoleMilter(postfix, milter, mail_system, Api(f"http://127.0.0.1:{console_port}"))
        finally:
            postfix.stop()
    finally:
        milter.stop()


def test_hold_queue_shown_read_only_and_released_with_postsuper(cm: ConsoleMilter) -> None:
    user = "console-hold"
    msg = make_message(addr(user), "hold me for the console", "Look at me first.\n", route="quarantine")
    send(cm.postfix.smtp_port, msg, addr(user))
    held = wait_until(lambda: cm.api.get("/api/quarantine"), 30, "the held message in the console")
    (entry,) = held
    assert entry["recipients"] == [addr(user)] and entry["state"] == "hold"
    conf = str(cm.postfix.config_dir)
    assert entry["release"] == f"postsuper -c {conf} -H {entry['id']}"
    (decision,) = wait_until(
        lambda: [e for e in cm.api.get("/api/history") if e["message_id"] == msg["Message-ID"]],
        30,
        "the decision",
    )
    assert decision["action"] == "quarantine" and decision["quarantine"] == entry["id"]
    assert decision["protocol"] == "milter" and decision["features"]
    status, body = cm.api.post(f"/api/quarantine/{entry['id']}/release")
    assert status == 409 and "postsuper -H" in body["error"]  # read-only: Postfix holds it
    status, page, _ = cm.api.request("GET", "/quarantine")
    assert status == 200 and f"postsuper -c {conf} -H QUEUE_ID" in page and entry["id"] in page
    run(["postsuper", "-c", conf, "-H", entry["id"]])
    cm.postfix.flush()
    assert one(cm.mail, user).header("Message-ID") == msg["Message-ID"]
    wait_until(lambda: cm.api.get("/api/quarantine") == [], 30, "the hold queue to empty")
