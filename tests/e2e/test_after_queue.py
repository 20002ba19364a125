"""After-queue content filter, end to end: client -> Postfix -> milter -> Postfix -> Dovecot.

Each test sends with swaks or smtplib to the private Postfix's public port and reads the
result back from the recipient's Maildir on disk, as Dovecot's LMTP and the shipped Sieve
script left it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from e2e.mailsys import (
    DOMAIN,
    UTF8_DOMAIN,
    Delivered,
    Installation,
    Postfix,
    addr,
    assert_marked,
    make_message,
    milter_log_line,
    one,
    send,
    wait_until,
)

pytestmark = pytest.mark.e2e

# The shipped rules' thresholds (rules/default.yaml), for the model's own path.
SPAM_FOLDER_AT, FLAG_AT = 0.90, 0.50


def expected_place(probability: float) -> tuple[str, bool]:
    """(folder, flagged) for a probability under the shipped rules and the shipped Sieve script."""
    if probability >= SPAM_FOLDER_AT:
        return "Junk", False
    if probability >= FLAG_AT:
        return "INBOX", True
    return "INBOX", False


def swaks(port: int, to: str, headers: dict[str, str], body: str, source: str = "127.0.0.1") -> str:
    cmd = ["swaks", "--server", f"127.0.0.1:{port}", "--local-interface", source, "--to", to,
           "--from", "sender@example.org", "--helo", "swaks.example.org", "--body", body]  # fmt: skip
    for name, value in headers.items():
        cmd += ["--add-header", f"{name}: {value}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, f"swaks failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize(
    ("route", "folder", "flagged", "action"),
    [
        ("ham", "INBOX", False, "deliver"),
        ("spam", "Junk", False, "spam_folder"),
        ("borderline", "INBOX", True, "flag"),
    ],
)
def test_route_lands_in_its_folder(
    mail_system: Installation, route: str, folder: str, flagged: bool, action: str
) -> None:
    """ham -> INBOX, spam -> Junk, borderline -> INBOX flagged, through the real programs."""
    user = f"aq-route-{route}"
    out = swaks(mail_system.after.smtp_port, addr(user), {"X-E2E-Route": route}, f"A {route} message.")
    assert "250 2.0.0 Ok: queued" in out
    d = one(mail_system, user)
    assert (d.folder, "F" in d.flags) == (folder, flagged)
    assert_marked(d)
    assert d.header("X-Spam-Action") == action
    assert d.header("X-Spam-Flag") == ("YES" if action == "spam_folder" else "NO")
    status = d.header("X-Spam-Status") or ""
    assert f"rule=e2e-force-{route}" in status and "score=" in status
    assert (d.header("X-Spam-Flag") == "YES") == status.startswith("Yes")


def test_forged_verdict_is_replaced(mail_system: Installation) -> None:
    """A sender's own X-Spam-* headers cannot steer the Sieve script: milter replaces them."""
    user = "aq-forged"
    msg = make_message(addr(user), "trust me", "Nothing to see.\n", route="ham")
    msg["X-Spam-Action"] = "spam_folder"
    msg["X-Spam-Flag"] = "YES"
    send(mail_system.after.smtp_port, msg, addr(user))
    d = one(mail_system, user)
    assert (d.folder, d.flags) == ("INBOX", "")
    assert_marked(d)
    assert d.header("X-Spam-Action") == "deliver" and d.header("X-Spam-Flag") == "NO"


HAM_TEXT = """\
Hi Anna,

thanks for sending the minutes from Tuesday's meeting. I have gone through the budget table and
the numbers for the second quarter look right to me; the only thing I would change is the date
of the review, which should be the 14th rather than the 12th, since Mark is away that week.

Could you also attach the slides from the workshop when you send the final version round?

Best regards,
Peter
"""

SPAM_TEXT = """\
CONGRATULATIONS!!! You have been selected as the WINNER of our $1,000,000 cash prize draw!

To claim your prize click here now: http://claim-prize-now.example.biz/winner?id=88231
Act now, this offer expires in 24 hours! 100% FREE, no purchase necessary, risk free!
Cheap V1AGRA and C1ALIS, best prices online, order now and save 80%!!!
Make money fast working from home, earn $5000 a week guaranteed. Unsubscribe here.
"""


def test_real_model_scores_and_the_folder_follows_the_score(mail_system: Installation) -> None:
    """No forced route: the shipped model scores, the shipped rules decide, Sieve files it."""
    placed = {}
    for kind, subject, text in (
        ("ham", "Minutes from Tuesday", HAM_TEXT),
        ("spam", "WINNER!!! Claim your $1,000,000 prize NOW", SPAM_TEXT),
    ):
        user = f"aq-model-{kind}"
        send(mail_system.after.smtp_port, make_message(addr(user), subject, text), addr(user))
        d = one(mail_system, user)
        assert_marked(d)
        p = float(d.header("X-Spam-Score") or "nan")
        assert 0.0 <= p <= 1.0
        assert (d.folder, "F" in d.flags) == expected_place(p), f"{kind}: p={p} in {d.folder} {d.flags}"
        assert re.search(r"rule=(spam|suspicious|default)\b", d.header("X-Spam-Status") or "")
        placed[kind] = p
    assert placed["spam"] >= SPAM_FOLDER_AT > FLAG_AT > placed["ham"], placed


def corpus_sample(per_label: int) -> list[tuple[str, Path]]:
    root = Path(os.environ.get("MILTER_CORPUS", "/work/corpus"))
    picked = []
    for corpus in ("spamassassin", "trec07p-early"):
        for label in ("ham", "spam"):
            folder = root / corpus / label
            assert folder.is_dir(), f"no corpus at {folder} (set MILTER_CORPUS)"
            picked += [(label, p) for p in sorted(folder.iterdir())[:per_label]]
    return picked


def test_corpus_mail_is_filed_by_its_score(mail_system: Installation) -> None:
    """Real mail from the corpus, each to its own mailbox: every one delivered once, where its score says."""
    sample = corpus_sample(per_label=3)
    for i, (_label, path) in enumerate(sample):
        raw = path.read_bytes()
        if raw.startswith(b"From "):  # TREC's mbox separator line is no header: an MTA drops it
            raw = raw.split(b"\n", 1)[1]
        # From outside (not one of Postfix's own addresses): Postfix leaves the headers alone.
        send(mail_system.after.smtp_port, raw, addr(f"aq-corpus-{i}"), source="127.0.0.2")
    scores = {}
    for i, (label, path) in enumerate(sample):
        d = one(mail_system, f"aq-corpus-{i}")
        assert_marked(d)
        p = float(d.header("X-Spam-Score") or "nan")
        assert (d.folder, "F" in d.flags) == expected_place(p), f"{path}: p={p} in {d.folder} {d.flags}"
        scores[path.name] = (label, p)
    # The model is not asked to be perfect here (docs/model.md measures it), only to be the model.
    ham = [p for label, p in scores.values() if label == "ham"]
    spam = [p for label, p in scores.values() if label == "spam"]
    assert sum(spam) / len(spam) > sum(ham) / len(ham), scores


def test_xforward_client_reaches_milter_and_the_queue(mail_system: Installation) -> None:
    """The client address and HELO Postfix saw reach milter's log line and the reinjected message."""
    user = "aq-xforward"
    msg = make_message(addr(user), "xforward", "Where am I from?\n", route="ham")
    send(mail_system.after.smtp_port, msg, addr(user), source="127.0.0.2", helo="xforward-probe.example.org")
    d = one(mail_system, user)
    line = milter_log_line(mail_system.after_milter, str(msg["Message-ID"]))
    # Postfix itself connects to milter from 127.0.0.1; 127.0.0.2 can only come from XFORWARD.
    assert "client=127.0.0.2" in line, line
    assert "helo=xforward-probe.example.org" in line, line
    received = d.message.get_all("Received") or []
    assert any("xforward-probe.example.org" in r and "127.0.0.2" in r for r in received), received


def test_milter_down_keeps_mail_queued_until_it_is_back(mail_system: Installation) -> None:
    """Nothing lost: with milter stopped the message waits in Postfix's deferred queue."""
    user = "aq-deferred"
    milter, postfix = mail_system.after_milter, mail_system.after
    msg = make_message(addr(user), "while you were out", "Deliver me later.\n", route="ham")
    milter.stop()
    try:
        send(postfix.smtp_port, msg, addr(user))  # Postfix accepts: it queues first

        def deferred() -> list[dict[str, object]]:
            return [q for q in postfix.queue() if q.get("queue_name") == "deferred"]

        [queued] = wait_until(deferred, 30, "the message in Postfix's deferred queue")
        reasons = " ".join(str(r.get("delay_reason", "")) for r in queued["recipients"])  # type: ignore[attr-defined]
        assert f"127.0.0.1]:{milter.port}" in reasons, reasons
        assert mail_system.mailbox(user).messages() == []
    finally:
        milter.start()
    postfix.flush()
    d = one(mail_system, user)
    assert d.header("Message-ID") == msg["Message-ID"]
    assert_marked(d)
    wait_until(lambda: postfix.queue() == [], 30, "Postfix's queue to empty")


def utf8_message(to: str, subject: str, body: str) -> bytes:
    """Raw UTF-8 in the headers (RFC 6532, no encoded words) and an 8-bit body."""
    return (
        "From: Jörg Müller <sender@example.org>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <utf8-{time.time_ns()}@example.org>\r\n"
        "X-E2E-Route: ham\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n" + body.replace("\n", "\r\n")
    ).encode()


SUBJECT_UTF8 = "Grüße aus Köln — 東京 🎉"
BODY_UTF8 = "Schöne Grüße, naïve café, 日本語のテキスト.\n"


# --- content that must pass, whichever way milter is plugged in (test_milter_protocol too) ------


def assert_8bit_passes(postfix: Postfix, mail: Installation, user: str) -> Delivered:
    """8BITMIME, raw UTF-8 headers, no SMTPUTF8 asked: through milter and Sieve byte for byte."""
    send(postfix.smtp_port, utf8_message(addr(user), SUBJECT_UTF8, BODY_UTF8), addr(user),
         mail_options=("BODY=8BITMIME",))  # fmt: skip
    d = one(mail, user)
    assert_marked(d)
    assert f"Subject: {SUBJECT_UTF8}".encode() in d.raw
    assert BODY_UTF8.encode() in d.raw.replace(b"\r\n", b"\n")
    return d


def assert_smtputf8_passes(postfix: Postfix) -> Delivered:
    """SMTPUTF8 with UTF-8 addresses: exactly one more message in Postfix's virtual mailbox.

    Delivered by Postfix's virtual(8): Dovecot 2.3's LMTP does not offer SMTPUTF8, and Postfix
    (with or without milter) bounces mail that needs it rather than deliver it there.
    """
    to = f"jörg.müller@{UTF8_DOMAIN}"
    before = len(postfix.virtual_mailbox.messages())
    send(postfix.smtp_port, utf8_message(to, SUBJECT_UTF8, BODY_UTF8), to, sender="søren@example.org",
         mail_options=("SMTPUTF8", "BODY=8BITMIME"))  # fmt: skip
    delivered = postfix.virtual_mailbox.wait(before + 1)
    assert len(delivered) == before + 1
    d = delivered[-1]
    assert_marked(d)
    assert f"Subject: {SUBJECT_UTF8}".encode() in d.raw
    assert BODY_UTF8.encode() in d.raw.replace(b"\r\n", b"\n")
    assert f"Delivered-To: {to}".encode() in d.raw
    assert "Return-Path: <søren@example.org>".encode() in d.raw
    return d


def assert_9mb_passes(postfix: Postfix, mail: Installation, user: str) -> Delivered:
    """Under Postfix's 10,240,000-byte default limit; the attachment survives byte for byte."""
    payload = os.urandom(6_700_000)  # ~9.0 MB once base64-encoded
    msg: EmailMessage = make_message(addr(user), "the big one", "See attachment.\n", route="ham")
    msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename="big.bin")
    raw = msg.as_bytes()
    assert 9_000_000 <= len(raw) < 10_000_000, len(raw)
    send(postfix.smtp_port, raw, addr(user))
    d = one(mail, user)
    assert_marked(d)
    [part] = [p for p in d.message.iter_attachments()]
    got = part.get_payload(decode=True)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert base64.b64encode(payload)[:76] in d.raw
    return d


def test_dsn_requests_pass_through_milter_to_the_final_delivery(mail_system: Installation) -> None:
    """NOTIFY=SUCCESS is answered where the mail is finally delivered (Dovecot's LMTP, which
    takes no DSN itself, so Postfix reports "relayed" there), not at milter's hop, which is
    where Postfix answers when a content filter does not take DSN; the sender's ENVID and ORCPT
    come back, carried through both Postfix passes and milter."""
    user, sender = "aq-dsn", "aq-dsn-sender"
    msg = make_message(addr(user), "dsn", "Tell me when it is there.\n", route="ham")
    send(mail_system.after.smtp_port, msg, addr(user), sender=addr(sender),
         mail_options=("RET=HDRS", "ENVID=e2e-Envid+2B1"),
         rcpt_options=("NOTIFY=SUCCESS", f"ORCPT=rfc822;Original+40{DOMAIN}"))  # fmt: skip
    one(mail_system, user)
    notice = one(mail_system, sender).raw.decode("utf-8", "replace")
    report = notice[notice.index("Content-Type: message/delivery-status") :]
    assert re.search(r"^Original-Envelope-Id: e2e-Envid\+1$", report, re.MULTILINE), report  # xtext decoded
    assert re.search(rf"^Original-Recipient: rfc822; ?Original@{DOMAIN}$", report, re.MULTILINE | re.I), (
        report
    )
    diagnostic = report[report.index("Diagnostic-Code:") :].split("\n\n")[0]
    assert "Saved" in diagnostic and "queued as" not in diagnostic, (
        diagnostic
    )  # Dovecot's reply, not milter's


def test_8bit_message_passes_intact(mail_system: Installation) -> None:
    assert_8bit_passes(mail_system.after, mail_system, "aq-8bit")


def test_smtputf8_message_passes_intact(mail_system: Installation) -> None:
    d = assert_smtputf8_passes(mail_system.after)
    assert d.header("X-Spam-Action") == "deliver"


def test_9mb_message_passes_intact(mail_system: Installation) -> None:
    assert_9mb_passes(mail_system.after, mail_system, "aq-large")
