"""The milter protocol, end to end: Postfix's smtpd asks milter during the client's own SMTP
session (smtpd_milters, the shipped postfix/milter.main.cf) and queues the message once.

client -> Postfix smtpd <-milter protocol-> `milter serve --protocol milter` ; Postfix -> Dovecot.

There is no reinjection listener and no second queue pass: Postfix adds the X-Spam-* headers
milter asks for, removes the forged ones it names, and gives the client milter's verdict at the
end of DATA. This module starts its own Postfix and milter (the session's Dovecot delivers).
"""

from __future__ import annotations

import email.policy
import re
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage

import pytest
import yaml

from e2e.mailsys import (
    DOMAIN,
    X_SPAM_HEADERS,
    Delivered,
    Installation,
    Milter,
    Postfix,
    addr,
    assert_marked,
    configure_milter,
    make_message,
    milter_log_line,
    one,
    rules_text,
    run,
    send,
    smtp_code,
    wait_until,
)
from e2e.test_after_queue import (
    HAM_TEXT,
    SPAM_TEXT,
    assert_8bit_passes,
    assert_9mb_passes,
    assert_smtputf8_passes,
    expected_place,
)

pytestmark = pytest.mark.e2e

# Routes this module forces besides the harness's (spam, borderline, ham, reject): the actions
# that only the milter protocol turns into Postfix's own doing (hold queue, 451, discard).
EXTRA_ROUTES = ("quarantine", "tempfail", "discard")


@dataclass
class MilterProtocol:
    postfix: Postfix
    milter: Milter
    mail: Installation

    def mailbox_messages(self, user: str) -> list[Delivered]:
        return self.mail.mailbox(user).messages()


def rules_for_milter_protocol() -> str:
    base = yaml.safe_load(rules_text(before_queue=True))
    extra = [
        {"name": f"e2e-force-{route}", "if": {"header": {"X-E2E-Route": f"^{route}$"}}, "action": route}
        for route in EXTRA_ROUTES
    ]
    return yaml.safe_dump({**base, "rules": extra + base["rules"]}, sort_keys=False)


@pytest.fixture(scope="module")
def mp(mail_system: Installation) -> Iterator[MilterProtocol]:
    """A Postfix configured by postfix/milter.main.cf and `milter serve --protocol milter`."""
    root = mail_system.root
    postfix = Postfix(root / "postfix-milter", "milter", mail_system.dovecot.lmtp_socket)
    milter = Milter(root, "milter", None, root / "rules-milter.yaml")
    milter.rules.write_text(rules_for_milter_protocol())
    configure_milter(postfix, milter.port)
    milter.start()
    try:
        postfix.start()
        try:
            yield MilterProtocol(postfix, milter, mail_system)
        finally:
            postfix.stop()
    finally:
        milter.stop()


def queue_id_of(postfix: Postfix, message_id: str) -> str:
    """The queue ID Postfix's cleanup logged for the message with this Message-ID."""
    pattern = re.compile(rf"\]: ([0-9A-F]+): message-id={re.escape(message_id)}$", re.MULTILINE)
    return wait_until(  # type: ignore[no-any-return]
        lambda: (m := pattern.search(postfix.log_text())) and m.group(1),
        10,
        f"Postfix's queue ID for {message_id}",
    )


def x_spam_fields(d: Delivered) -> list[str]:
    """The names of all X-Spam-* fields in the delivered copy, as often as they occur."""
    return [name for name in d.message if name.lower().startswith("x-spam-")]


# ---------------------------------------------------------------------------------------------
# filing


@pytest.mark.parametrize(
    ("route", "folder", "flagged", "action"),
    [
        ("ham", "INBOX", False, "deliver"),
        ("spam", "Junk", False, "spam_folder"),
        ("borderline", "INBOX", True, "flag"),
    ],
)
def test_route_lands_in_its_folder(
    mp: MilterProtocol, route: str, folder: str, flagged: bool, action: str
) -> None:
    """ham -> INBOX, spam -> Junk, borderline -> INBOX flagged: Postfix adds milter's headers,
    Dovecot's shipped Sieve script files by them."""
    user = f"mp-route-{route}"
    msg = make_message(addr(user), route, f"A {route} message.\n", route=route)
    send(mp.postfix.smtp_port, msg, addr(user), source="127.0.0.2")
    d = one(mp.mail, user)
    assert (d.folder, "F" in d.flags) == (folder, flagged)
    assert_marked(d)
    assert d.header("X-Spam-Action") == action
    assert d.header("X-Spam-Flag") == ("YES" if action == "spam_folder" else "NO")
    status = d.header("X-Spam-Status") or ""
    assert f"rule=e2e-force-{route}" in status and "score=" in status
    assert (d.header("X-Spam-Flag") == "YES") == status.startswith("Yes")
    # One queue pass: one Received line by Postfix (the after-queue path adds two).
    received = d.message.get_all("Received") or []
    assert sum(f"by mx-{mp.postfix.name}.{DOMAIN}" in r for r in received) == 1, received


def test_real_model_scores_and_the_folder_follows_the_score(mp: MilterProtocol) -> None:
    """No forced route: the shipped model scores, the shipped rules decide, Sieve files it."""
    placed = {}
    for kind, subject, text in (
        ("ham", "Minutes from Tuesday", HAM_TEXT),
        ("spam", "WINNER!!! Claim your $1,000,000 prize NOW", SPAM_TEXT),
    ):
        user = f"mp-model-{kind}"
        send(mp.postfix.smtp_port, make_message(addr(user), subject, text), addr(user), source="127.0.0.2")
        d = one(mp.mail, user)
        assert_marked(d)
        p = float(d.header("X-Spam-Score") or "nan")
        assert 0.0 <= p <= 1.0
        assert (d.folder, "F" in d.flags) == expected_place(p), f"{kind}: p={p} in {d.folder} {d.flags}"
        assert re.search(r"rule=(spam|suspicious|default)\b", d.header("X-Spam-Status") or "")
        placed[kind] = p
    assert placed["spam"] >= 0.90 > 0.50 > placed["ham"], placed


def test_forged_verdict_is_removed(mp: MilterProtocol) -> None:
    """A sender's own X-Spam-* fields (folded ones, repeated ones, any case) are deleted by
    Postfix on milter's word: only milter's five remain, exactly one X-Spam-Flag, and the Sieve
    script is not steered."""
    user = "mp-forged"
    msg = make_message(addr(user), "trust me", "Nothing to see.\n", route="ham")
    msg["X-Spam-Flag"] = "YES"
    msg["X-Spam-Action"] = "spam_folder"
    msg["X-Spam-Level"] = "**********"
    more_forged = (
        b"X-Spam-Status: Yes, score=1.000 required=0.90\r\n\trule=forged model=none\r\nx-spam-flag: YES\r\n"
    )
    raw = msg.as_bytes(policy=email.policy.SMTP).replace(b"X-Spam-Level:", more_forged + b"X-Spam-Level:")
    assert more_forged in raw
    send(mp.postfix.smtp_port, raw, addr(user), source="127.0.0.2")
    d = one(mp.mail, user)
    assert (d.folder, d.flags) == ("INBOX", "")
    assert_marked(d)
    assert sorted(x_spam_fields(d)) == sorted(X_SPAM_HEADERS), x_spam_fields(d)
    assert d.header("X-Spam-Action") == "deliver" and d.header("X-Spam-Flag") == "NO"
    assert "forged" not in (d.header("X-Spam-Status") or "")
    assert len(re.findall(rb"(?im)^x-spam-flag:", d.raw)) == 1
    assert b"rule=forged" not in d.raw and b"**********" not in d.raw


# ---------------------------------------------------------------------------------------------
# verdicts Postfix gives the client


def test_reject_rule_gives_550_at_end_of_data_and_nothing_is_delivered(mp: MilterProtocol) -> None:
    user = "mp-reject"
    rejected = make_message(addr(user), "reject me", "Policy says no.\n", route="reject")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mp.postfix.smtp_port, rejected, addr(user))
    assert refused.value.smtp_code == 550, refused.value
    assert b"5.7.1 Message rejected as spam by rule e2e-force-reject" in refused.value.smtp_error
    # A later message to the same mailbox arrives; the rejected one never does, and Postfix
    # did not queue it (nothing to retry or bounce).
    accepted = make_message(addr(user), "accept me", "Policy says yes.\n", route="ham")
    send(mp.postfix.smtp_port, accepted, addr(user))
    d = one(mp.mail, user)
    assert d.header("Message-ID") == accepted["Message-ID"]
    assert "milter-reject: END-OF-MESSAGE" in mp.postfix.log_text()
    wait_until(lambda: mp.postfix.queue() == [], 30, "Postfix's queue to empty")
    line = milter_log_line(mp.milter, str(rejected["Message-ID"]))
    assert "action=reject" in line and "rule=e2e-force-reject" in line, line


def test_tempfail_rule_gives_451_at_end_of_data(mp: MilterProtocol) -> None:
    user = "mp-tempfail"
    msg = make_message(addr(user), "later", "Not now.\n", route="tempfail")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mp.postfix.smtp_port, msg, addr(user))
    assert refused.value.smtp_code == 451, refused.value
    assert refused.value.smtp_error.startswith(b"4.7.1 "), refused.value
    assert mp.mailbox_messages(user) == []


def test_quarantine_rule_puts_the_message_on_hold(mp: MilterProtocol) -> None:
    """Postfix's hold queue is the quarantine: the client got 250, nothing is delivered until an
    admin releases it (postsuper -H), and then it arrives marked."""
    user = "mp-quarantine"
    msg = make_message(addr(user), "hold me", "Look at me first.\n", route="quarantine")
    send(mp.postfix.smtp_port, msg, addr(user))
    [held] = wait_until(
        lambda: [q for q in mp.postfix.queue() if q.get("queue_name") == "hold"], 30, "a held message"
    )
    assert held["queue_id"] == queue_id_of(mp.postfix, str(msg["Message-ID"]))
    assert mp.mailbox_messages(user) == []
    conf = str(mp.postfix.config_dir)
    run(["postsuper", "-c", conf, "-H", str(held["queue_id"])])
    mp.postfix.flush()
    d = one(mp.mail, user)
    assert d.header("Message-ID") == msg["Message-ID"]
    assert_marked(d)
    assert d.header("X-Spam-Action") == "quarantine"
    wait_until(lambda: mp.postfix.queue() == [], 30, "Postfix's queue to empty")


def test_discard_rule_accepts_and_drops(mp: MilterProtocol) -> None:
    user = "mp-discard"
    msg = make_message(addr(user), "drop me", "Into the void.\n", route="discard")
    assert send(mp.postfix.smtp_port, msg, addr(user)) == {}  # the client was told 250
    line = milter_log_line(mp.milter, str(msg["Message-ID"]))
    assert "action=discard" in line, line
    wait_until(lambda: "milter-discard: END-OF-MESSAGE" in mp.postfix.log_text(), 10, "Postfix's discard")
    # A message after it arrives; the discarded one never does.
    after = make_message(addr(user), "keep me", "Still here.\n", route="ham")
    send(mp.postfix.smtp_port, after, addr(user))
    assert one(mp.mail, user).header("Message-ID") == after["Message-ID"]


# ---------------------------------------------------------------------------------------------
# milter down or failing: Postfix's milter_default_action = tempfail


def test_milter_down_gives_the_client_4xx_and_a_resend_is_delivered(mp: MilterProtocol) -> None:
    """Postfix cannot reach milter when the client connects, so it answers 451 4.7.1 from MAIL
    FROM on (milter_default_action = tempfail). The message was never accepted: the SMTP
    client keeps it and retries, as a sending MTA does after any 4xx; nothing is queued here."""
    user = "mp-down"
    msg = make_message(addr(user), "try later", "Retry me.\n", route="ham")
    mp.milter.stop()
    try:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send(mp.postfix.smtp_port, msg, addr(user))
        assert smtp_code(refused.value) == 451, refused.value
        assert refused.value.smtp_error.startswith(b"4.7.1 "), refused.value
        assert mp.postfix.queue() == []
    finally:
        mp.milter.start()
    send(mp.postfix.smtp_port, msg, addr(user))  # the client's retry
    d = one(mp.mail, user)
    assert d.header("Message-ID") == msg["Message-ID"]
    assert_marked(d)


def test_milter_dying_mid_message_gives_4xx_at_end_of_data(mp: MilterProtocol) -> None:
    """milter crashes (SIGKILL) in the middle of a transaction Postfix already opened with it:
    Postfix cannot hand the content over, answers 451 at the end of DATA and queues nothing
    (milter_default_action = tempfail). The SMTP client keeps the message; its resend, once
    milter is back, is delivered."""
    user = "mp-crash"
    msg = make_message(addr(user), "crash", "Retry me after the crash.\n", route="ham")
    proc = mp.milter.proc
    assert proc is not None
    try:
        with smtplib.SMTP("127.0.0.1", mp.postfix.smtp_port, timeout=60) as s:
            s.ehlo("crash.example.org")
            assert s.mail("sender@example.org")[0] == 250  # milter has seen CONNECT, HELO and MAIL
            assert s.rcpt(addr(user))[0] == 250
            proc.kill()
            proc.wait(10)
            # DATA itself gets 354 (milter negotiated no DATA step); the end of the content, which
            # Postfix cannot hand to milter any more, gets the 4xx.
            code, reply = s.data(msg.as_bytes(policy=email.policy.SMTP))
            assert code == 451 and reply.startswith(b"4.7.1 "), (code, reply)
    finally:
        mp.milter.stop()  # reaps the killed process
        mp.milter.start()
    assert mp.mailbox_messages(user) == []
    assert mp.postfix.queue() == []
    send(mp.postfix.smtp_port, msg, addr(user))  # the client's retry
    d = one(mp.mail, user)
    assert d.header("Message-ID") == msg["Message-ID"]
    assert_marked(d)
    wait_until(lambda: mp.postfix.queue() == [], 30, "Postfix's queue to empty")


# ---------------------------------------------------------------------------------------------
# the log line


def test_log_line_has_the_client_address_and_the_queue_id(mp: MilterProtocol) -> None:
    """The client Postfix reports at connect time and the queue ID from macro `i`."""
    user = "mp-log"
    msg = make_message(addr(user), "who am I", "Where am I from?\n", route="ham")
    send(mp.postfix.smtp_port, msg, addr(user), source="127.0.0.2", helo="mp-probe.example.org")
    one(mp.mail, user)
    line = milter_log_line(mp.milter, str(msg["Message-ID"]))
    assert "client=127.0.0.2" in line, line
    assert "helo=mp-probe.example.org" in line, line
    assert f"queue_id={queue_id_of(mp.postfix, str(msg['Message-ID']))} " in line, line
    assert "from=<sender@example.org> rcpts=1 " in line, line
    assert "action=deliver" in line, line


# ---------------------------------------------------------------------------------------------
# content that must pass


def test_8bit_message_passes_intact(mp: MilterProtocol) -> None:
    d = assert_8bit_passes(mp.postfix, mp.mail, "mp-8bit")
    assert "From: Jörg Müller <sender@example.org>".encode() in d.raw  # headers added, nothing else changed


def test_smtputf8_message_passes_intact(mp: MilterProtocol) -> None:
    d = assert_smtputf8_passes(mp.postfix)
    assert d.header("X-Spam-Action") == "deliver"


def test_9mb_message_passes_intact(mp: MilterProtocol) -> None:
    assert_9mb_passes(mp.postfix, mp.mail, "mp-large")


# ---------------------------------------------------------------------------------------------
# local submission: non_smtpd_milters = $smtpd_milters


def sendmail(postfix: Postfix, msg: EmailMessage, to: str, sender: str) -> None:
    """Submit as a local program does: Postfix's sendmail(1) -> maildrop -> pickup -> cleanup."""
    proc = subprocess.run(
        ["sendmail", "-C", str(postfix.config_dir), "-f", sender, "-i", "--", to],
        input=msg.as_bytes(), capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_local_submission_is_marked_and_filed(mp: MilterProtocol) -> None:
    """cleanup runs sendmail(1) mail past the same milter, in a pretended SMTP session."""
    user = "mp-local"
    msg = make_message(addr(user), "from cron", "A local report.\n", route="spam")
    sendmail(mp.postfix, msg, addr(user), sender=addr("mp-local-sender"))
    d = one(mp.mail, user)
    assert (d.folder, d.flags) == ("Junk", "")
    assert_marked(d)
    assert d.header("X-Spam-Action") == "spam_folder"
    assert "client=localhost[127.0.0.1]" in milter_log_line(mp.milter, str(msg["Message-ID"]))


def test_local_submission_rejected_bounces_to_its_sender(mp: MilterProtocol) -> None:
    """No SMTP client to answer: cleanup bounces what a `reject` rule refuses."""
    user, sender = "mp-local-reject", "mp-local-reject-sender"
    msg = make_message(addr(user), "no", "Refused locally.\n", route="reject")
    sendmail(mp.postfix, msg, addr(user), sender=addr(sender))
    notice = one(mp.mail, sender)
    assert "Message rejected as spam by rule e2e-force-reject" in notice.raw.decode("utf-8", "replace")
    assert mp.mailbox_messages(user) == []


def test_local_submission_waits_in_the_maildrop_while_milter_is_down(mp: MilterProtocol) -> None:
    """milter down: pickup cannot get the message past cleanup and leaves it in the maildrop;
    once milter is back, the next pickup run delivers it, filtered."""
    user, sender = "mp-local-down", "mp-local-down-sender"
    msg = make_message(addr(user), "wait", "Deliver me later.\n", route="ham")
    maildrop = mp.postfix.root / "queue" / "maildrop"
    refused = (
        "milter-reject: CONNECT from localhost[127.0.0.1]: 4.7.1 Service unavailable - try again later; "
        f"from=<{addr(sender)}>"
    )
    mp.milter.stop()
    try:
        sendmail(mp.postfix, msg, addr(user), sender=addr(sender))
        wait_until(lambda: refused in mp.postfix.log_text(), 30, "cleanup to refuse the message")
        assert len(list(maildrop.iterdir())) == 1
        assert mp.mailbox_messages(user) == []
    finally:
        mp.milter.start()
    mp.postfix.flush()  # postqueue -f also wakes pickup up
    d = one(mp.mail, user)
    assert d.header("Message-ID") == msg["Message-ID"]
    assert_marked(d)
    assert list(maildrop.iterdir()) == []
