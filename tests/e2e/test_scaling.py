"""docs/scaling.md's several filter hosts: Postfix's content_filter names a list of next hops
(Postfix >= 3.5) and moves on to the next one when a filter is down, losing nothing."""

from __future__ import annotations

import pytest

from e2e.mailsys import (
    Installation,
    Milter,
    Postfix,
    addr,
    assert_marked,
    configure_after_queue,
    free_port,
    make_message,
    milter_log_line,
    send,
)

pytestmark = pytest.mark.e2e


def test_next_filter_host_takes_over_when_one_is_down(mail_system: Installation) -> None:
    root = mail_system.root
    postfix = Postfix(root / "postfix-scaling", "scaling", mail_system.dovecot.lmtp_socket)
    down = free_port()  # the first filter host: nothing listens
    up = Milter(root, "after-queue", postfix.reinject_port, mail_system.after_milter.rules, name="scaling")
    configure_after_queue(postfix, filter_port=down)
    main_cf = postfix.config_dir / "main.cf"
    one_host = f"content_filter = milter-scan:[127.0.0.1]:{down}\n"
    assert one_host in main_cf.read_text()
    main_cf.write_text(
        main_cf.read_text().replace(
            one_host, f"content_filter = milter-scan:[127.0.0.1]:{down}, [127.0.0.1]:{up.port}\n"
        )
    )
    user = "scale-failover"
    up.start()
    try:
        postfix.start()
        try:
            msgs = [
                make_message(addr(user), f"failover {i}", "Any host will do.\n", route="ham")
                for i in range(3)
            ]
            for msg in msgs:
                send(postfix.smtp_port, msg, addr(user), source="127.0.0.2")
            got = mail_system.mailbox(user).wait(3)
            assert sorted(d.header("Message-ID") for d in got) == sorted(str(m["Message-ID"]) for m in msgs)
            for d in got:
                assert_marked(d)
            for msg in msgs:
                assert "client=127.0.0.2" in milter_log_line(up, str(msg["Message-ID"]))
            log = postfix.log_text()
            assert f"connect to 127.0.0.1[127.0.0.1]:{down}: Connection refused" in log
            assert f"relay=127.0.0.1[127.0.0.1]:{up.port}" in log
        finally:
            postfix.stop()
    finally:
        up.stop()
