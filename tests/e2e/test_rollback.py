"""docs/install.md's roll-back, step by step, on a Postfix of its own: no message is left behind.

Mail queued for milter while milter is gone keeps its filter in the queue file; removing the
filter from main.cf and requeueing (`postsuper -r ALL`) must deliver it unfiltered, and removing
the master.cf entries (`postconf -MX`) must leave a configuration `postfix check` accepts.
"""

from __future__ import annotations

import pytest

from e2e.mailsys import (
    Installation,
    Postfix,
    addr,
    configure_after_queue,
    free_port,
    make_message,
    one,
    run,
    send,
)
from e2e.mailsys import wait_until as wait

pytestmark = pytest.mark.e2e


def test_roll_back_delivers_what_waited_for_milter(mail_system: Installation) -> None:
    postfix = Postfix(mail_system.root / "postfix-rollback", "rollback", mail_system.dovecot.lmtp_socket)
    configure_after_queue(postfix, filter_port=free_port())  # nothing listens there: milter is gone
    user = "rb-waiting"
    postfix.start()
    try:
        send(postfix.smtp_port, make_message(addr(user), "stuck", "Waiting for milter.\n"), addr(user))
        wait(
            lambda: [q for q in postfix.queue() if q.get("queue_name") == "deferred"],
            30,
            "a deferred message",
        )
        conf = str(postfix.config_dir)
        run(["postconf", "-c", conf, "-X", "content_filter", "receive_override_options"])
        run(["postfix", "-c", conf, "reload"], output=postfix.root / "postfix.out")
        run(["postsuper", "-c", conf, "-r", "ALL"])
        postfix.flush()
        d = one(mail_system, user)
        assert d.folder == "INBOX" and d.header("X-Spam-Action") is None  # delivered, unfiltered
        run(["postconf", "-c", conf, "-MX", "milter-scan/unix", f"127.0.0.1:{postfix.reinject_port}/inet"])
        master_cf = (postfix.config_dir / "master.cf").read_text()
        assert "milter-scan" not in master_cf and f"127.0.0.1:{postfix.reinject_port}" not in master_cf
        run(["postfix", "-c", conf, "check"])
        run(["postfix", "-c", conf, "reload"], output=postfix.root / "postfix.out")
        assert postfix.queue() == []
    finally:
        postfix.stop()
