"""Learning from the users, end to end: mail delivered through Postfix, milter and Dovecot, then
moved by an IMAP client; Dovecot's imapsieve (the shipped dovecot/90-milter-imapsieve.conf, the
two Sieve scripts and the milter-learn wrapper) runs `milter learn` as the mail user, and the
store (a setgid directory of a group the mail user gets only through mail_access_groups, as
docs/learning.md sets it up) holds what was taught.

The moves are synchronous: Dovecot runs the Sieve script, and so the pipe, before it answers the
MOVE. A move that must teach nothing is followed by one that teaches, in the same session; once
that one is in the store the first one's script has long finished.
"""

from __future__ import annotations

import contextlib
import imaplib
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.mailsys import (
    DELIVERY_TIMEOUT,
    DOVECOT_SNIPPETS,
    FEEDBACK_GROUP,
    Delivered,
    Installation,
    _gid,
    addr,
    assert_marked,
    make_message,
    run,
    send,
    wait_until,
)
from milter.feedback import DB_NAME

pytestmark = pytest.mark.e2e


def deliver(mail: Installation, user: str, route: str, count: int = 1) -> list[tuple[str, Delivered]]:
    """`count` messages on `route` (ham: INBOX, spam: Junk) through the after-queue Postfix and
    milter into `user`'s mailbox: (Message-ID, the delivered copy) of each."""
    ids = []
    for n in range(count):
        msg = make_message(
            addr(user), f"learning {route} {n}", f"A {route} message, number {n}.", route=route
        )
        send(mail.after.smtp_port, msg, addr(user))
        ids.append(str(msg["Message-ID"]))
    delivered = mail.mailbox(user).wait(count)
    by_id = {d.header("Message-ID"): d for d in delivered}
    return [(message_id, by_id[message_id]) for message_id in ids]


@contextlib.contextmanager
def imap(mail: Installation, user: str) -> Iterator[imaplib.IMAP4]:
    client = imaplib.IMAP4("127.0.0.1", mail.dovecot.imap_port, timeout=30)
    try:
        assert client.login(user, "any password")[0] == "OK"  # the test passdb takes any
        yield client
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


def move(client: imaplib.IMAP4, message_id: str, source: str, target: str) -> None:
    """Move the message with this Message-ID from `source` to `target`, as a mail client does."""
    assert client.select(source)[0] == "OK"
    status, found = client.uid("SEARCH", "HEADER", "Message-ID", f'"{message_id}"')
    uids = found[0].split() if status == "OK" and found[0] else []
    assert len(uids) == 1, f"{message_id} in {source}: expected one message, found UIDs {uids}"
    status, reply = client.uid("MOVE", uids[0].decode(), target)
    assert status == "OK", f"MOVE {message_id} {source} -> {target}: {status} {reply}"


def create(client: imaplib.IMAP4, *folders: str) -> None:
    for folder in folders:
        status, reply = client.create(folder)
        assert status == "OK" or b"ALREADYEXISTS" in reply[0], reply


def taught(mail: Installation, message_id: str) -> tuple[str, str | None, bytes] | None:
    """(label, user, raw) the store holds for this Message-ID, or None."""
    path = mail.dovecot.feedback_store / DB_NAME
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        row = conn.execute(
            "SELECT label, user, raw FROM messages WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1], bytes(row[2]))


def wait_taught(mail: Installation, message_id: str, label: str) -> tuple[str, str | None, bytes]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (row := taught(mail, message_id)) is not None and row[0] == label and row,
        DELIVERY_TIMEOUT,
        f"{message_id} in the feedback store as {label}",
    )


def folder_of(mail: Installation, user: str, message_id: str) -> list[str]:
    return [d.folder for d in mail.mailbox(user).messages() if d.header("Message-ID") == message_id]


def body(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]


def test_moving_into_junk_teaches_spam_without_milters_headers(mail_system: Installation) -> None:
    user = "learn-into-junk"
    [(message_id, delivered)] = deliver(mail_system, user, "ham")
    assert delivered.folder == "INBOX"
    assert_marked(delivered)  # the copy the user moves carries milter's verdict
    with imap(mail_system, user) as client:
        create(client, "Junk")
        move(client, message_id, "INBOX", "Junk")
    _, who, raw = wait_taught(mail_system, message_id, "spam")
    assert who == user  # imap.user, passed on by the Sieve script
    assert b"x-spam-" not in raw.lower()  # taken off: the model must not learn its own verdict
    assert body(raw) == body(delivered.raw)
    assert f"Message-ID: {message_id}".encode() in raw
    assert folder_of(mail_system, user, message_id) == ["Junk"]  # learning kept the move as it was
    # Written by the mail user through the directory's group (mail_access_groups), shared by mode.
    info = (mail_system.dovecot.feedback_store / DB_NAME).stat()
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (_gid(FEEDBACK_GROUP), 0o660)


def test_moving_out_of_junk_teaches_ham(mail_system: Installation) -> None:
    user = "learn-out-of-junk"
    [(message_id, delivered)] = deliver(mail_system, user, "spam")
    assert delivered.folder == "Junk"
    with imap(mail_system, user) as client:
        move(client, message_id, "Junk", "INBOX")
    _, who, raw = wait_taught(mail_system, message_id, "ham")
    assert who == user and b"x-spam-" not in raw.lower()
    assert folder_of(mail_system, user, message_id) == ["INBOX"]


def test_moving_back_out_of_junk_relabels(mail_system: Installation) -> None:
    """The user moved it to Junk, then changed their mind: one message in the store, ham."""
    user = "learn-mind-changed"
    [(message_id, _)] = deliver(mail_system, user, "ham")
    with imap(mail_system, user) as client:
        create(client, "Junk")
        move(client, message_id, "INBOX", "Junk")
        wait_taught(mail_system, message_id, "spam")
        move(client, message_id, "Junk", "INBOX")
    wait_taught(mail_system, message_id, "ham")
    path = mail_system.dovecot.feedback_store / DB_NAME
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        assert conn.execute(
            "SELECT count(*) FROM messages WHERE message_id = ?", (message_id,)
        ).fetchone() == (1,)


def test_moving_from_junk_to_trash_teaches_nothing(mail_system: Installation) -> None:
    user = "learn-trash"
    (trashed, _), (rescued, _) = deliver(mail_system, user, "spam", count=2)
    with imap(mail_system, user) as client:
        create(client, "Trash")
        move(client, trashed, "Junk", "Trash")
        move(client, rescued, "Junk", "INBOX")  # after the Trash move, in the same session
    wait_taught(mail_system, rescued, "ham")
    assert taught(mail_system, trashed) is None
    assert folder_of(mail_system, user, trashed) == ["Trash"]


def test_a_failure_to_learn_is_logged_and_the_move_goes_through(mail_system: Installation) -> None:
    user = "learn-broken"
    [(message_id, _)] = deliver(mail_system, user, "ham")
    store = mail_system.dovecot.feedback_store
    away = store.with_name("feedback.away")
    store.rename(away)  # `milter learn` finds no store: exit 1
    try:
        with imap(mail_system, user) as client:
            create(client, "Junk")
            move(client, message_id, "INBOX", "Junk")
    finally:
        away.rename(store)
    assert folder_of(mail_system, user, message_id) == ["Junk"]
    line = wait_until(
        lambda: next(
            (ln for ln in mail_system.dovecot.log.read_text().splitlines() if f"user '{user}'" in ln), None
        ),
        10,
        "milter-learn's line in Dovecot's log",
    )
    assert (
        f"milter-learn: spam from user '{user}' not learned: milter learn exited 1: milter learn: {store}"
        in line
    )
    assert taught(mail_system, message_id) is None


def test_the_scripts_compile_with_sievec(mail_system: Installation, tmp_path: Path) -> None:
    """docs/learning.md compiles them with sievec once the .conf is in place (it enables the
    imapsieve and pipe extensions): with this Dovecot's configuration, that works."""
    for name in ("milter-learn-spam.sieve", "milter-learn-ham.sieve"):
        run(
            [
                "sievec",
                "-c",
                str(mail_system.dovecot.conf),
                str(DOVECOT_SNIPPETS / name),
                str(tmp_path / "out.svbin"),
            ]
        )
        assert (tmp_path / "out.svbin").stat().st_size > 0
