"""Before-queue proxy, end to end: the client waits while milter decides, so it can be refused.

client -> Postfix smtpd (smtpd_proxy_filter) -> milter -> Postfix smtpd :reinject -> Dovecot.
"""

from __future__ import annotations

import smtplib

import pytest

from e2e.mailsys import Installation, addr, assert_marked, make_message, milter_log_line, one, send, smtp_code

pytestmark = pytest.mark.e2e


def test_reject_gives_the_client_5xx_and_nothing_is_delivered(mail_system: Installation) -> None:
    user = "bq-reject"
    postfix = mail_system.before
    rejected = make_message(addr(user), "reject me", "Policy says no.\n", route="reject")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(postfix.smtp_port, rejected, addr(user))
    assert 500 <= refused.value.smtp_code < 600, refused.value
    # A later message to the same mailbox arrives; the rejected one never does, and Postfix
    # never queued it (no queue file, nothing to retry or bounce).
    accepted = make_message(addr(user), "accept me", "Policy says yes.\n", route="ham")
    send(postfix.smtp_port, accepted, addr(user))
    d = one(mail_system, user)
    assert d.header("Message-ID") == accepted["Message-ID"]
    assert postfix.queue() == []
    log = postfix.log_text()
    assert "proxy-reject: END-OF-MESSAGE" in log, log[-2000:]
    assert str(rejected["Message-ID"]) not in log  # cleanup never saw it


@pytest.mark.parametrize(("route", "folder", "flags"), [("spam", "Junk", ""), ("borderline", "INBOX", "F")])
def test_accepted_mail_is_marked_and_filed(
    mail_system: Installation, route: str, folder: str, flags: str
) -> None:
    user = f"bq-{route}"
    msg = make_message(addr(user), route, f"A {route} message.\n", route=route)
    send(mail_system.before.smtp_port, msg, addr(user), source="127.0.0.2", helo="bq-client.example.org")
    d = one(mail_system, user)
    assert (d.folder, d.flags) == (folder, flags)
    assert_marked(d)
    line = milter_log_line(mail_system.before_milter, str(msg["Message-ID"]))
    assert "client=127.0.0.2" in line, line


def test_milter_down_gives_the_client_4xx(mail_system: Installation) -> None:
    """Before the queue there is no queue to wait in: the client is told to retry, nothing is lost."""
    user = "bq-down"
    milter = mail_system.before_milter
    msg = make_message(addr(user), "try later", "Retry me.\n", route="ham")
    milter.stop()
    try:
        with pytest.raises(smtplib.SMTPException) as refused:
            send(mail_system.before.smtp_port, msg, addr(user))
        assert 400 <= smtp_code(refused.value) < 500, refused.value
    finally:
        milter.start()
    send(mail_system.before.smtp_port, msg, addr(user))  # the client's retry
    assert one(mail_system, user).header("Message-ID") == msg["Message-ID"]
