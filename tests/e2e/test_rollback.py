"""docs/install.md's roll-back, step by step, on a Postfix of its own: no message is left behind.

After-queue: mail queued for milter while milter is gone keeps its filter in the queue file;
removing the filter from main.cf and requeueing (`postsuper -r ALL`) must deliver it unfiltered,
and removing the master.cf entries (`postconf -MX`) must leave a configuration `postfix check`
accepts. As a Postfix milter: the document's commands, Postfix first and then milter, must never
refuse a sender, and leave no milter setting behind.
"""

from __future__ import annotations

import pytest
from install_doc import block_after, commands, section

from e2e.mailsys import (
    Installation,
    Milter,
    Postfix,
    addr,
    configure_after_queue,
    configure_milter,
    free_port,
    make_message,
    one,
    rules_text,
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


def test_roll_back_of_the_milter_set_up_refuses_no_sender(mail_system: Installation) -> None:
    root = mail_system.root
    postfix = Postfix(root / "postfix-rollback-milter", "rollback-milter", mail_system.dovecot.lmtp_socket)
    milter = Milter(root, "milter", None, root / "rules-rollback-milter.yaml", name="rollback-milter")
    milter.rules.write_text(rules_text(before_queue=True))
    configure_milter(postfix, milter.port)
    milter.start()
    try:
        postfix.start()
        try:
            sent = {}
            for when in ("before", "during", "after"):
                user = f"rbm-{when}"
                if when == "during":
                    # Step 1, as written (on this instance's configuration), while milter runs.
                    step = block_after(section("8. Roll back"), "**As a Postfix milter**")
                    for argv in commands(step):
                        assert argv[0] in ("postconf", "postfix"), argv
                        out = postfix.root / "postfix.out" if argv[0] == "postfix" else None
                        run([argv[0], "-c", str(postfix.config_dir), *argv[1:]], output=out)
                    wait(lambda: " reload -- " in postfix.log_text(), 30, "Postfix's master to reload")
                if when == "after":
                    milter.stop()  # step 2: systemctl disable --now milter
                # A refusal would raise here: every sender is answered 250 throughout.
                send(
                    postfix.smtp_port,
                    make_message(addr(user), when, f"Sent {when}.\n", route="ham"),
                    addr(user),
                )
                sent[when] = one(mail_system, user)
            assert sent["before"].header("X-Spam-Action") == "deliver"  # filtered by milter
            assert sent["after"].header("X-Spam-Action") is None  # Postfix alone
            settings = run(["postconf", "-c", str(postfix.config_dir), "-n"]).splitlines()
            names = {line.split(" = ")[0] for line in settings}
            assert not {n for n in names if n.endswith("_milters") or n.startswith("milter_")}, settings
            run(["postfix", "-c", str(postfix.config_dir), "check"])
            assert postfix.queue() == []
        finally:
            postfix.stop()
    finally:
        milter.stop()
