"""The e2e harness: a private Postfix + Dovecot + milter, started once per session, torn down after.

What runs (all on 127.0.0.1, free ports, everything under one temporary directory):

    client --smtp--> Postfix "after"  --milter-scan--> milter (after-queue)  --smtp--> Postfix :reinject
    client --smtp--> Postfix "before" --proxy-------> milter (before-queue) --smtp--> Postfix :reinject
    client --smtp--> Postfix "milter" <--milter protocol--> milter (--protocol milter); queued once
                     (test_milter_protocol.py starts this pair for its module, not the session)
    Postfix --lmtp (unix socket)--> Dovecot --shipped Sieve script--> Maildir per recipient
    IMAP client --imap--> Dovecot --shipped imapsieve scripts, a move into or out of Junk-->
                          milter-learn --> `milter learn` --> the feedback store (test_learning.py)

Postfix and Dovecot are configured the way docs/install.md configures a Debian box: a small base
config standing in for the box's own, plus the SHIPPED snippets from postfix/ and dovecot/, read
from the repository at start-up and templated only in the ports and paths (every replacement is
checked to hit, so a changed snippet fails loudly here instead of being silently not tested).

Each test delivers to its own recipient, so each has its own Maildir (Dovecot's static userdb
takes the local part as the user name). Log files of all three programs are attached to the
report of a failing test.

Needs root (Postfix's master and Dovecot start as root and drop privileges) and the Debian
packages listed in notes/ci-needs.txt.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
POSTFIX_SNIPPETS = REPO / "postfix"
DOVECOT_SNIPPETS = REPO / "dovecot"
DOMAIN = "example.test"
UTF8_DOMAIN = "utf8.example.test"
MAIL_UID = "nobody"  # Dovecot delivers as this user; any non-root account would do
MAIL_GID = "nogroup"
# The feedback store's group (docs/learning.md's milter-feedback): a group the mail user is not
# in, so only Dovecot's mail_access_groups lets `milter learn` write the store.
FEEDBACK_GROUP = "mail"
START_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 60.0

# Log files of the running programs, by name, for the failure report.
LOGS: dict[str, Path] = {}
# The Postfix instances running now (a module's own too): where mail still on its way can be.
RUNNING_POSTFIX: list[Postfix] = []


# ---------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll predicate() until it returns something truthy; fail naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def run(cmd: list[str], output: Path | None = None) -> str:
    """Run a command, failing with its output if it exits non-zero; return its stdout.

    A command that leaves a daemon behind (`postfix start`, `dovecot`) must write to a file
    (`output`), not to our pipes: the daemon keeps them open and we would wait for it forever.
    """
    if output is None:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        out = proc.stdout + proc.stderr
    else:
        with output.open("a+") as f:
            start = f.tell()
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, check=False, timeout=120)
            f.seek(start)
            out = f.read()
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out}")
    return proc.stdout if output is None else out


def render(path: Path, replacements: dict[str, str]) -> str:
    """A shipped snippet with ports/paths replaced; each replacement must hit at least once."""
    text = path.read_text()
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"{path}: expected to find {old!r} to template it; did the snippet change?")
        text = text.replace(old, new)
    return text


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


# ---------------------------------------------------------------------------------------------
# Dovecot


@dataclass
class Dovecot:
    root: Path
    conf: Path = field(init=False)
    lmtp_socket: Path = field(init=False)
    log: Path = field(init=False)
    imap_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.conf = self.root / "dovecot.conf"
        # Outside base_dir, as in a real set-up (there: inside Postfix's spool).
        self.lmtp_socket = self.root / "lmtp" / "dovecot-lmtp"
        self.log = self.root / "dovecot.log"

    @property
    def feedback_store(self) -> Path:
        """The store `milter learn` writes when a user moves mail into or out of Junk."""
        return self.root / "feedback"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    def start(self) -> None:
        uid, gid = pwd.getpwnam(MAIL_UID).pw_uid, _gid(MAIL_GID)
        for sub in ("run", "state", "conf.d", "lmtp"):
            (self.root / sub).mkdir(parents=True)
        for sub in ("mail", "sievebin"):  # written by the delivering user
            (self.root / sub).mkdir()
            os.chown(self.root / sub, uid, gid)
        conf_d = self.root / "conf.d"
        # The shipped fragments, as an admin drops them into /etc/dovecot/conf.d/.
        (conf_d / "20-lmtp-postfix.conf").write_text(
            render(
                DOVECOT_SNIPPETS / "20-lmtp-postfix.conf",
                {"/var/spool/postfix/private/dovecot-lmtp": str(self.lmtp_socket)},
            )
        )
        # The shipped script is used in place; its compiled form goes to a directory of ours
        # (bindir) instead of next to the script in the repository.
        script = DOVECOT_SNIPPETS / "milter.sieve"
        (conf_d / "90-milter-sieve.conf").write_text(
            render(
                DOVECOT_SNIPPETS / "90-milter-sieve.conf",
                {
                    "sieve_before = /etc/dovecot/sieve/milter.sieve": (
                        f"sieve_before = file:{script};bindir={self.root / 'sievebin'}"
                    )
                },
            )
        )
        self._configure_learning(conf_d)
        # The "box's own" configuration: a private instance, static users, one Maildir each.
        self.conf.write_text(
            f"""\
base_dir = {self.root}/run
state_dir = {self.root}/state
instance_name = milter-e2e-{self.root.name}
protocols = lmtp imap
log_path = {self.log}
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
postmaster_address = postmaster@{DOMAIN}
auth_username_format = %Ln
mail_location = maildir:~/Maildir
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={MAIL_UID} gid={MAIL_GID} home={self.mail_root}/%n allow_all_users=yes
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
}}
!include {conf_d}/20-lmtp-postfix.conf
!include {conf_d}/90-milter-sieve.conf
!include {conf_d}/90-milter-imapsieve.conf
"""
        )
        LOGS["dovecot.log"] = self.log
        out = run(["dovecot", "-c", str(self.conf)], output=self.root / "dovecot.out")
        # doveconf reports deprecated or misplaced settings as warnings and starts anyway.
        assert "Warning" not in out and "Error" not in out, f"Dovecot at start:\n{out}"
        wait_until(self.lmtp_socket.exists, START_TIMEOUT, f"Dovecot's LMTP socket {self.lmtp_socket}")
        wait_until(lambda: port_open(self.imap_port), START_TIMEOUT, f"Dovecot's IMAP on {self.imap_port}")

    def _configure_learning(self, conf_d: Path) -> None:
        """The shipped imapsieve set-up (dovecot/90-milter-imapsieve.conf, the two scripts, the
        milter-learn wrapper) and the store directory as docs/learning.md makes it: group write
        and setgid, for a group the mail user gets only through mail_access_groups."""
        store = self.feedback_store
        store.mkdir()
        os.chown(store, 0, _gid(FEEDBACK_GROUP))
        os.chmod(store, 0o2770)
        config = self.root / "milter-learn.yaml"  # /etc/milter/milter.yaml, as far as learn reads it
        config.write_text(f"feedback_store: {store}\n")
        # The virtual environment's command (not resolved: its python is a link into the base).
        milter = Path(os.path.abspath(sys.executable)).parent / "milter"
        assert milter.is_file(), f"{milter}: expected the milter command beside {sys.executable}"
        # Dovecot runs the wrapper, and so milter, as the mail user, which must be able to: a
        # virtual environment made from a Python under a directory only root may enter cannot.
        run(["runuser", "-u", MAIL_UID, "--", str(milter), "--version"])
        pipe_dir = self.root / "sieve-pipe"
        pipe_dir.mkdir()
        wrapper = pipe_dir / "milter-learn"
        wrapper.write_text(
            render(
                DOVECOT_SNIPPETS / "milter-learn",
                {
                    "MILTER=/opt/milter/bin/milter": f"MILTER={milter}",
                    "CONFIG=/etc/milter/milter.yaml": f"CONFIG={config}",
                },
            )
        )
        wrapper.chmod(0o755)
        bindir = self.root / "sievebin"
        (conf_d / "90-milter-imapsieve.conf").write_text(
            render(
                DOVECOT_SNIPPETS / "90-milter-imapsieve.conf",
                {
                    "mail_access_groups = milter-feedback": f"mail_access_groups = {FEEDBACK_GROUP}",
                    "sieve_pipe_bin_dir = /etc/dovecot/sieve-pipe": f"sieve_pipe_bin_dir = {pipe_dir}",
                    "file:/etc/dovecot/sieve/milter-learn-spam.sieve": (
                        f"file:{DOVECOT_SNIPPETS / 'milter-learn-spam.sieve'};bindir={bindir}"
                    ),
                    "file:/etc/dovecot/sieve/milter-learn-ham.sieve": (
                        f"file:{DOVECOT_SNIPPETS / 'milter-learn-ham.sieve'};bindir={bindir}"
                    ),
                },
            )
        )

    def stop(self) -> None:
        subprocess.run(["dovecot", "-c", str(self.conf), "stop"], capture_output=True, check=False)
        pid_file = self.root / "run" / "master.pid"
        wait_until(lambda: not _alive(pid_file), START_TIMEOUT, "Dovecot to stop")

    def mailbox(self, user: str) -> Mailbox:
        return Mailbox(self.mail_root / user / "Maildir")


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


@dataclass(frozen=True)
class Delivered:
    folder: str  # "INBOX" or the IMAP name, e.g. "Junk"
    path: Path
    flags: str  # Maildir info flags, e.g. "F" for \Flagged, "" for none
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    def header(self, name: str) -> str | None:
        value = self.message[name]
        return None if value is None else str(value)


@dataclass(frozen=True)
class Mailbox:
    """One user's Maildir++ tree as Dovecot writes it: INBOX at the top, folders as .Name."""

    root: Path

    def messages(self) -> list[Delivered]:
        found = []
        if not self.root.exists():
            return []
        folders = [("INBOX", self.root)] + [
            (p.name[1:], p) for p in sorted(self.root.iterdir()) if p.is_dir() and p.name.startswith(".")
        ]
        for name, folder in folders:
            for sub in ("new", "cur"):
                d = folder / sub
                if not d.is_dir():
                    continue
                for f in sorted(d.iterdir()):
                    flags = f.name.split(":2,", 1)[1] if ":2," in f.name else ""
                    found.append(Delivered(name, f, flags, f.read_bytes()))
        return found

    def wait(self, count: int = 1, timeout: float = DELIVERY_TIMEOUT) -> list[Delivered]:
        """Wait until at least `count` messages are in the mailbox; return them all."""
        return wait_until(  # type: ignore[no-any-return]
            lambda: (m := self.messages()) and len(m) >= count and m,
            timeout,
            f"{count} message(s) in {self.root}",
            interval=0.1,
        )


# ---------------------------------------------------------------------------------------------
# Postfix


BASE_MASTER_CF = """\
# The base services of a Debian master.cf, unchrooted (the private instance has no chroot
# tree); the filter's entries are appended from the shipped snippets below.
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class Postfix:
    """A private Postfix instance: its own config, queue and data directories and ports."""

    root: Path
    name: str
    lmtp_socket: Path
    smtp_port: int = field(default_factory=free_port)
    reinject_port: int = field(default_factory=free_port)

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def configure(self, main_extra: str, master_extra: str, smtp_listener_in_base: bool) -> None:
        for sub in ("etc", "queue", "data"):
            (self.root / sub).mkdir(parents=True)
        shutil.chown(self.root / "data", "postfix")
        (self.root / "vmail").mkdir()
        shutil.chown(self.root / "vmail", MAIL_UID, MAIL_GID)
        (self.config_dir / "main.cf").write_text(
            f"""\
# The box's own settings (a private instance standing in for /etc/postfix/main.cf).
compatibility_level = 3.6
queue_directory = {self.root}/queue
data_directory = {self.root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx-{self.name}.{DOMAIN}
mydomain = {DOMAIN}
myorigin = $mydomain
mydestination = {DOMAIN}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP
biff = no
alias_maps =
alias_database =
local_recipient_maps =
local_transport = lmtp:unix:{self.lmtp_socket}
# A second domain delivered by Postfix's own virtual(8) into one Maildir: Dovecot 2.3's LMTP
# does not offer SMTPUTF8, so mail that needs it (UTF-8 addresses or headers, SMTPUTF8
# requested) can only be delivered to a store that does not ask.
virtual_mailbox_domains = {UTF8_DOMAIN}
virtual_mailbox_base = {self.root}
virtual_mailbox_maps = static:vmail/
virtual_uid_maps = static:{pwd.getpwnam(MAIL_UID).pw_uid}
virtual_gid_maps = static:{_gid(MAIL_GID)}
maillog_file = {self.maillog}
maillog_file_prefixes = {self.root}
# Tests push many messages from one client address quickly.
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0

{main_extra}"""
        )
        listener = f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd\n" if smtp_listener_in_base else ""
        (self.config_dir / "master.cf").write_text(BASE_MASTER_CF + listener + "\n" + master_extra)

    def start(self) -> None:
        LOGS[f"postfix-{self.name}.maillog"] = self.maillog
        run(["postfix", "-c", str(self.config_dir), "check"])
        run(["postfix", "-c", str(self.config_dir), "start"], output=self.root / "postfix.out")
        master_cf = (self.config_dir / "master.cf").read_text()
        listeners = [self.smtp_port] + [self.reinject_port] * (f":{self.reinject_port} inet" in master_cf)
        for port in listeners:
            wait_until(lambda p=port: port_open(p), START_TIMEOUT, f"Postfix {self.name} on port {port}")
        # `postfix check` and the daemons log what they dislike in the config as warnings.
        warnings = [line for line in self.log_text().splitlines() if "warning:" in line]
        assert not warnings, f"Postfix {self.name} at start:\n" + "\n".join(warnings)
        RUNNING_POSTFIX.append(self)

    def stop(self) -> None:
        if self in RUNNING_POSTFIX:
            RUNNING_POSTFIX.remove(self)
        subprocess.run(["postfix", "-c", str(self.config_dir), "stop"], capture_output=True, check=False)
        pid_file = self.root / "queue" / "pid" / "master.pid"
        wait_until(lambda: not _alive(pid_file), START_TIMEOUT, f"Postfix {self.name} to stop")

    def queue(self) -> list[dict[str, object]]:
        """The queue as `postqueue -j` reports it: one dict per message."""
        out = run(["postqueue", "-c", str(self.config_dir), "-j"])
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        run(["postqueue", "-c", str(self.config_dir), "-f"])

    def log_text(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    @property
    def virtual_mailbox(self) -> Mailbox:
        """The Maildir virtual(8) delivers the UTF8_DOMAIN to."""
        return Mailbox(self.root / "vmail")


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# milter


@dataclass
class Milter:
    """`milter serve` as a child process, restartable (the tests stop it on purpose).

    Mode "milter" is `milter serve --protocol milter`: Postfix's smtpd talks to it as one of its
    smtpd_milters and queues and delivers the message itself, so there is no next hop (pass
    next_hop_port=None) and no --mode (the milter protocol is before-queue by nature).
    """

    root: Path
    mode: str  # "after-queue", "before-queue" or "milter"
    next_hop_port: int | None
    rules: Path
    args: tuple[str, ...] = ()  # more `milter serve` flags
    name: str = ""  # for its log and config file names; default: the mode
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / f"milter-{self.name or self.mode}.log"

    def command(self) -> list[str]:
        how = ["--protocol", "milter"] if self.mode == "milter" else ["--mode", self.mode]
        if self.next_hop_port is not None:
            how += ["--next-hop", f"smtp://127.0.0.1:{self.next_hop_port}"]
        return [
            sys.executable, "-m", "milter", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            *how,
            "--rules", str(self.rules),
            "--config", str(self.config),
            *self.args,
        ]  # fmt: skip

    @property
    def config(self) -> Path:
        return self.root / f"milter-{self.name or self.mode}.yaml"

    def start(self) -> None:
        LOGS[self.log.name] = self.log
        # Flags name what the test varies; the file holds the rest, as on an installed box.
        self.config.write_text(f"quarantine: quarantine-{self.name or self.mode}\nlog_format: text\n")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"milter exited {proc.returncode} at start:\n{tail(self.log)}")
            return port_open(self.port)

        wait_until(up, START_TIMEOUT, f"milter ({self.mode}) on {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# Rules for the tests: a header the test sets forces a route, so routing through Postfix,
# milter and Sieve is checked deterministically; messages without it take the real model's
# path through the shipped default rules, which follow the forced ones unchanged.
FORCED_ROUTES = {"spam": "spam_folder", "borderline": "flag", "ham": "deliver"}


def rules_text(before_queue: bool) -> str:
    routes = dict(FORCED_ROUTES, **({"reject": "reject"} if before_queue else {}))
    forced = [
        {"name": f"e2e-force-{route}", "if": {"header": {"X-E2E-Route": f"^{route}$"}}, "action": action}
        for route, action in routes.items()
    ]
    shipped = yaml.safe_load((REPO / "rules" / "default.yaml").read_text())
    return yaml.safe_dump({**shipped, "rules": forced + shipped["rules"]}, sort_keys=False)


def configure_after_queue(postfix: Postfix, filter_port: int) -> None:
    """The box's Postfix plus the shipped after-queue snippets, filter on `filter_port`."""
    postfix.configure(
        main_extra=render(
            POSTFIX_SNIPPETS / "after-queue.main.cf",
            {"[127.0.0.1]:10025": f"[127.0.0.1]:{filter_port}"},
        ),
        master_extra=render(
            POSTFIX_SNIPPETS / "after-queue.master.cf",
            {"127.0.0.1:10026 inet": f"127.0.0.1:{postfix.reinject_port} inet"},
        ),
        smtp_listener_in_base=True,
    )


def configure_before_queue(postfix: Postfix, filter_port: int) -> None:
    """The box's Postfix with its smtp listener replaced by the shipped before-queue entries."""
    postfix.configure(
        main_extra="",
        master_extra=render(
            POSTFIX_SNIPPETS / "before-queue.master.cf",
            {
                "smtp      inet": f"127.0.0.1:{postfix.smtp_port} inet",
                "proxy_filter=127.0.0.1:10025": f"proxy_filter=127.0.0.1:{filter_port}",
                "127.0.0.1:10026 inet": f"127.0.0.1:{postfix.reinject_port} inet",
            },
        ),
        smtp_listener_in_base=False,
    )


def configure_milter(postfix: Postfix, filter_port: int) -> None:
    """The box's Postfix plus the shipped milter-protocol lines (smtpd_milters): no master.cf
    entries, no reinjection listener; the message is queued once, after milter's verdict."""
    postfix.configure(
        main_extra=render(
            POSTFIX_SNIPPETS / "milter.main.cf",
            {"inet:127.0.0.1:10025": f"inet:127.0.0.1:{filter_port}"},
        ),
        master_extra="",
        smtp_listener_in_base=True,
    )


def configure_unfiltered(postfix: Postfix) -> None:
    """The box's Postfix as it was before milter: no filter (the benchmark's baseline)."""
    postfix.configure(main_extra="", master_extra="", smtp_listener_in_base=True)


# ---------------------------------------------------------------------------------------------
# the session's installation


@dataclass
class Installation:
    root: Path
    dovecot: Dovecot
    after: Postfix
    after_milter: Milter
    before: Postfix
    before_milter: Milter

    def mailbox(self, user: str) -> Mailbox:
        return self.dovecot.mailbox(user)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the e2e tests start Postfix and Dovecot and need root (CI runs as root)", pytrace=False)


@pytest.fixture(scope="session")
def mail_system() -> Iterator[Installation]:  # used through tests/e2e/conftest.py
    """Dovecot, two Postfix instances (one per filter mode) and a milter for each."""
    _require_root()
    root = Path(tempfile.mkdtemp(prefix="milter-e2e-"))
    os.chmod(root, 0o755)  # the postfix and mail users must reach sockets and Maildirs below
    started: list[object] = []
    try:
        dovecot = Dovecot(root / "dovecot")
        started.append(dovecot)
        dovecot.start()

        # After-queue: content_filter to milter, milter back to the reinjection listener.
        after = Postfix(root / "postfix-after", "after", dovecot.lmtp_socket)
        after_milter = Milter(root, "after-queue", after.reinject_port, root / "rules-after-queue.yaml")
        after_milter.rules.write_text(rules_text(before_queue=False))
        configure_after_queue(after, after_milter.port)

        # Before-queue: the public smtpd proxies to milter, milter relays to the listener.
        before = Postfix(root / "postfix-before", "before", dovecot.lmtp_socket)
        before_milter = Milter(root, "before-queue", before.reinject_port, root / "rules-before-queue.yaml")
        before_milter.rules.write_text(rules_text(before_queue=True))
        configure_before_queue(before, before_milter.port)

        for thing in (after_milter, before_milter, after, before):
            started.append(thing)
            thing.start()
        yield Installation(root, dovecot, after, after_milter, before, before_milter)
    finally:
        for thing in reversed(started):
            try:
                thing.stop()  # type: ignore[attr-defined]
            except Exception as exc:  # stop the others all the same
                print(f"e2e: stopping {thing.__class__.__name__} failed: {exc}", file=sys.stderr)
        LOGS.clear()
        if os.environ.get("MILTER_E2E_KEEP"):
            print(f"e2e: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# sending


_counter = 0


def make_message(
    to: str, subject: str, body: str, route: str | None = None, extra: dict[str, str] | None = None
) -> EmailMessage:
    """A plain message with a unique Message-ID; `route` sets the header the test rules force on."""
    global _counter
    _counter += 1
    msg = EmailMessage()
    msg["From"] = "Sender <sender@example.org>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = f"<e2e-{os.getpid()}-{_counter}-{time.time_ns()}@example.org>"
    if route is not None:
        msg["X-E2E-Route"] = route
    for name, value in (extra or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg


def send(
    port: int,
    msg: EmailMessage | bytes,
    to: str,
    sender: str = "sender@example.org",
    source: str = "127.0.0.1",
    helo: str = "client.example.org",
    mail_options: tuple[str, ...] = (),
    rcpt_options: tuple[str, ...] = (),
) -> dict[str, tuple[int, bytes]]:
    """Send over SMTP to Postfix; raises smtplib errors the way a client would see them."""
    raw = msg if isinstance(msg, bytes) else msg.as_bytes(policy=email.policy.SMTP)
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, source_address=(source, 0), timeout=60) as s:
        return s.sendmail(sender, [to], raw, mail_options=list(mail_options), rcpt_options=list(rcpt_options))


# ---------------------------------------------------------------------------------------------
# reading back

X_SPAM_HEADERS = ("X-Spam-Flag", "X-Spam-Status", "X-Spam-Score", "X-Spam-Action", "X-Spam-Report")


def addr(user: str) -> str:
    return f"{user}@{DOMAIN}"


def on_its_way(address: str) -> list[str]:
    """Where mail for `address` still is in a Postfix queue (but the hold queue, which keeps it
    until an admin releases it): "instance/queue" per message."""
    return [
        f"{postfix.name}/{entry['queue_name']}"
        for postfix in RUNNING_POSTFIX
        for entry in postfix.queue()
        if entry["queue_name"] != "hold"
        and any(r.get("address") == address for r in entry.get("recipients", []))  # type: ignore[attr-defined]
    ]


def one(mail: Installation, user: str) -> Delivered:
    """The single message delivered to `user`; fails if there are more (a duplicate).

    A duplicate can only come from a Postfix queue (milter answers its client only after the
    next hop has the message): once no queue holds mail for the user, the mailbox is final."""
    mail.mailbox(user).wait(1)
    wait_until(lambda: not on_its_way(addr(user)), DELIVERY_TIMEOUT, f"no mail for {user} left in a queue")
    got = mail.mailbox(user).messages()
    assert len(got) == 1, f"{user}: expected exactly one message, found {[(d.folder, d.path) for d in got]}"
    return got[0]


def assert_marked(d: Delivered) -> None:
    """milter's five X-Spam-* headers, each exactly once."""
    for name in X_SPAM_HEADERS:
        values = d.message.get_all(name) or []
        assert len(values) == 1, f"{name}: expected one header, found {values}"


def milter_log_line(milter: Milter, message_id: str) -> str:
    """milter's one log line for the message with this Message-ID."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: next((ln for ln in milter.log_text().splitlines() if message_id in ln), None),
        10,
        f"milter's log line for {message_id}",
    )


def smtp_code(exc: smtplib.SMTPException) -> int:
    """The reply code a client saw, whichever command smtplib raised it at."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return min(code for code, _ in exc.recipients.values())
    raise AssertionError(f"no SMTP reply code in {exc!r}")
