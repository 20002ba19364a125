"""`milter serve`: run the SMTP proxy."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from milter.config import DEFAULT_CONFIG_PATH, LOG_FORMATS, MODES, ON_ERROR, PROTOCOLS, load_config
from milter.errors import ConfigError

DESCRIPTION = f"""\
Run the spam filter: an SMTP proxy that scores each message with the ONNX model, decides with
the rules, marks it with X-Spam-* headers and hands it to the next hop. It answers 250 only after
the next hop accepted the message; a next hop that is down, slow or failing gets the client a
4xx, so the sending MTA keeps the mail and retries.

With no config file and no flags it runs on the embedded default: listening on 127.0.0.1:10025,
scoring with the shipped model/ and rules/default.yaml, delivering into ./Maildir (a Maildir++
tree: INBOX, .Junk for spam_folder, the F flag for flag) in the working directory.

Settings come from the config file ({DEFAULT_CONFIG_PATH} unless --config names another; an
absent default file means built-in defaults), then from the flags, which win. The config file
is YAML with the keys below (flag --next-hop is key next_hop, and so on); relative paths in it
are relative to the file's directory. Everything is checked before the port is opened: an error
names the file, the line and the expected form, and the exit status is 2.

With --protocol milter it speaks the Sendmail milter protocol instead (Postfix's smtpd_milters,
postfix/milter.main.cf): Postfix hands each message over during its own SMTP session, applies
the verdict (adds the X-Spam-* headers, removes forged ones, rejects, holds, discards) and
queues the message once itself; there is no next hop. Postfix's milter_default_action =
tempfail gives the client a 4xx whenever milter is down or breaks off, so nothing is lost.
The mode is then before-queue (rules may reject); mode after-queue beside it is refused.
"""

EPILOG = """\
next hops (--next-hop):
  smtp://HOST:PORT     SMTP, e.g. Postfix's reinjection listener smtp://127.0.0.1:10026
  lmtp://HOST:PORT     LMTP over TCP (Dovecot), one reply per recipient
  lmtp:/PATH.sock      LMTP over a Unix socket
  maildir:PATH         a local Maildir++ tree (the default: maildir:Maildir)
  Each client RCPT is passed to the next hop as it comes, so a recipient the next hop refuses
  is refused to the client with the next hop's own code.

actions (from the rules):
  deliver, flag, spam_folder   marked and handed on (Maildir: INBOX, INBOX with flag F, .Junk;
                               SMTP/LMTP: the X-Spam-* headers carry it to Sieve)
  quarantine                   kept in the quarantine Maildir (--quarantine), not delivered
  discard                      accepted and dropped (only when a rule says so explicitly)
  tempfail                     451: the client retries later
  reject                       550 (before-queue mode and --protocol milter only)
  With --protocol milter: quarantine is Postfix's hold queue (postqueue -p; postsuper -H
  releases), tempfail and reject are Postfix's reply to the client at end of DATA, and a fault
  inside milter is a tempfail.

signals:
  SIGHUP        reload rules and model (also done on file changes); a bad file never goes live.
                The config file is read at start only: restart to change ports, next hop, ...
  SIGTERM/INT   stop accepting, let transactions in flight finish (--drain-timeout), exit 0

workers (--workers N, N > 1):
  The process started becomes a supervisor: it checks the config, rules and model as above,
  then runs N worker processes, each a whole filter listening on the same address with
  SO_REUSEPORT (the kernel spreads connections over them). It forwards SIGHUP and SIGTERM to
  all of them, starts a worker that dies again (after 0.5 s, up to 30 s while it keeps dying),
  and alone speaks to systemd (READY once all workers listen). Worker log lines carry
  worker=INDEX (0 to N-1); the supervisor logs each index's pid. With --metrics HOST:PORT,
  worker I serves its metrics on PORT+I; the supervisor serves none. Text workers default to
  none per worker. Each worker keeps its own next-hop connections open: let the next hop
  take N times as many (Postfix's reinjection listener: maxproc N x that of milter-scan).

console (--console HOST:PORT, config key console):
  A web console served by the daemon (by the supervisor with --workers: one for all workers):
  throughput and actions over time, latency, the model and rules serving, the history of
  decisions with the features behind each score, the quarantine (view, release, delete; in
  milter mode Postfix's hold queue, read-only) and teaching (the feedback store of milter
  learn), and a JSON API under /api/. With it on, every decision is also kept in the history
  database (config key history, default ./history.sqlite3, the newest history_max_rows). A
  loopback address may go without a password; any other needs console_password_file (made
  by `milter console-password FILE`), else milter serve exits 2. See docs/console.md.

exit status:
  0  stopped by a signal
  1  could not start (rules or model unusable, port in use)
  2  configuration error (also: a console on a non-loopback address without a password)

examples:
  milter serve
  milter serve --listen [::1]:10025 --next-hop smtp://127.0.0.1:10026
  milter serve --config /etc/milter/milter.yaml --log-format json
  milter serve --workers auto --next-hop smtp://127.0.0.1:10026
  milter serve --protocol milter --listen 127.0.0.1:10025   (smtpd_milters = inet:127.0.0.1:10025)
  milter serve --console 127.0.0.1:8025                     (then open http://127.0.0.1:8025/)
  swaks --server 127.0.0.1:10025 --to me@example.com --body 'hello'
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the SMTP proxy (the daemon)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--config", metavar="PATH", help=f"the config file (default: {DEFAULT_CONFIG_PATH} if it exists)")
    add("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:10025; [::1]:10025)")
    add("--next-hop", metavar="URL", help="where accepted mail goes (default maildir:Maildir); see below")
    add("--rules", metavar="PATH", help="the rules file (default: the shipped rules/default.yaml)")
    add(
        "--model",
        metavar="PATH",
        help="a .onnx model, or a directory: its newest valid .onnx (default: the shipped model/)",
    )
    add("--mode", choices=MODES, help="after-queue content_filter (default) or before-queue proxy")
    add(
        "--protocol",
        choices=PROTOCOLS,
        help="smtp: an SMTP proxy handing mail to --next-hop (default); milter: Postfix's "
        "smtpd_milters (mode before-queue, no next hop); see above",
    )
    add(
        "--on-error",
        choices=ON_ERROR,
        help="when scoring a message fails: deliver it marked unscored (default) or tempfail (451)",
    )
    add(
        "--max-message-size",
        metavar="BYTES",
        help="largest message accepted, announced as SIZE (default 10240000, Postfix's default)",
    )
    add("--timeout", metavar="SECONDS", help="idle time allowed between client commands (default 300)")
    add("--next-hop-timeout", metavar="SECONDS", help="time allowed per next-hop step (default 120)")
    add("--max-sessions", metavar="N", help="concurrent client sessions; more get 421 (default 100)")
    add("--drain-timeout", metavar="SECONDS", help="on SIGTERM, time for sessions to finish (default 30)")
    add(
        "--max-ms-per-message",
        metavar="MS",
        help="refuse a model (at start and on reload) slower than this per message (default 50)",
    )
    add("--quarantine", metavar="PATH", help="Maildir for quarantined mail (default ./quarantine)")
    add(
        "--log-format",
        choices=LOG_FORMATS,
        help="one line per message as key=value text (default) or JSON; no timestamps under systemd",
    )
    add("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there (off by default)")
    add(
        "--console",
        metavar="HOST:PORT",
        help="serve the operator console there (off by default; docs/console.md); an address "
        "other than loopback needs console_password_file",
    )
    add(
        "--console-password-file",
        metavar="PATH",
        help="the console's users and password hashes, made by `milter console-password PATH`",
    )
    add("--subject-tag", metavar="TAG", help="prefix the Subject of spam, e.g. '[SPAM]' (off: breaks DKIM)")
    add(
        "--hostname",
        metavar="NAME",
        help="name in the greeting and EHLO (default [127.0.0.1]; never Postfix's $myhostname, or "
        "Postfix sees a mail loop)",
    )
    add(
        "--no-scoring",
        dest="scoring",
        action="store_const",
        const=False,
        help="proxy only: deliver every message unscored (for measuring the proxy alone)",
    )
    add(
        "--text-workers",
        metavar="N",
        help="processes that extract message text for the model, beside the daemon's own "
        "(default: none on 1-2 cores, else one per core but one, at most 4; 0: all in the daemon)",
    )
    add(
        "--workers",
        metavar="N",
        help="serving processes sharing the port, or auto: one per core (default 1: this process "
        "alone); see below",
    )
    add(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="do not watch the rules and model directories (SIGHUP still reloads)",
    )
    parser.set_defaults(func=run)


OVERRIDES = (
    "listen",
    "next_hop",
    "rules",
    "model",
    "mode",
    "protocol",
    "on_error",
    "max_message_size",
    "timeout",
    "next_hop_timeout",
    "max_sessions",
    "drain_timeout",
    "max_ms_per_message",
    "quarantine",
    "log_format",
    "metrics",
    "subject_tag",
    "hostname",
    "scoring",
    "text_workers",
    "workers",
    "console",
    "console_password_file",
)


def run(args: argparse.Namespace) -> int:
    from milter.logs import setup_logging

    overrides = {key: getattr(args, key, None) for key in OVERRIDES}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"milter serve: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_format)
    if config.workers > 1:
        from milter.supervisor import run as run_supervisor

        return run_supervisor(config, watch=args.watch)
    from milter.server import run as run_server

    return run_server(config, watch=args.watch)
