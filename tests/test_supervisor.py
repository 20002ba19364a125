"""`milter serve --workers N`: real processes on one SO_REUSEPORT port, a real next hop, and a
NOTIFY_SOCKET the test owns (it sees who sent each datagram: SO_PASSCRED)."""

from __future__ import annotations

import logging
import os
import re
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL_PATH, ROOT, RULES_PATH, flight_ids, free_port, sigterm_with_messages_in_flight

from milter.config import Config
from milter.supervisor import WorkerTag, backoff, check_port_free, combined_status, worker_config

_UCRED = struct.Struct("iII")


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket recording (sender pid, lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[tuple[int, list[str]]] = []

    def poll(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except TimeoutError:
                return
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            self.received.append((pid, data.decode().split("\n")))
            self.sock.settimeout(0.01)

    def wait_for(self, line: str, after: int = 0, seconds: float = 30) -> int:
        """Index of the first datagram from `after` on that has `line`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for i, (_, lines) in enumerate(self.received[after:], after):
                if line in lines:
                    return i
            self.sock.settimeout(0.2)
            self.poll()
        raise AssertionError(f"no {line} on NOTIFY_SOCKET; got {self.received}")

    def lines(self, key: str) -> list[tuple[int, str]]:
        return [(pid, line) for pid, lines in self.received for line in lines if line.startswith(key)]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.sock.close()


def start(
    *args: str, log: Path, env: dict[str, str] | None = None, workers: str = "2", watch: bool = False
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "milter", "serve", "--workers", workers, *args]
    with log.open("ab") as stderr:
        return subprocess.Popen(
            argv if watch else [*argv, "--no-watch"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def start_with_rules(
    sink: Any, tmp_path: Path, env: dict[str, str]
) -> tuple[Path, int, Path, subprocess.Popen[bytes]]:
    """Two workers in front of `sink` on a free port, with a copy of the shipped rules the test
    may edit: (rules file, port, log, process)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_PATH.read_text())
    port, log = free_port(), tmp_path / "serve.log"
    proc = start(
        "--listen", f"127.0.0.1:{port}", "--next-hop", sink.url, "--rules", str(rules),
        "--model", str(MODEL_PATH), "--quarantine", str(tmp_path / "q"), log=log, env=env,
    )  # fmt: skip
    return rules, port, log, proc


def free_pair() -> int:
    """A port that is free, and the one after it too (metrics of workers 0 and 1)."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def wait_log(log: Path, pattern: str, count: int = 1, seconds: float = 30) -> list[re.Match[str]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = list(re.finditer(pattern, log.read_text()))
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not {count} times in the log:\n{log.read_text()}")


def message(tag: str, i: int) -> bytes:
    return (
        f"From: a@example.org\r\nTo: b@example.net\r\nSubject: {tag} {i}\r\n"
        f"Message-ID: <{tag}-{i}@example.org>\r\n\r\nHello, message {tag} {i}.\r\n"
    ).encode()


def send_each_on_its_own_connection(port: int, tag: str, n: int) -> None:
    for i in range(n):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            assert client.sendmail("a@example.org", ["b@example.net"], message(tag, i)) == {}


def workers_by_message(log: Path, tag: str) -> dict[str, int]:
    """Message-ID -> the worker whose log line has it."""
    pattern = rf"message_id=<({tag}-\d+)@example.org>.* worker=(\d)"
    return {m[1]: int(m[2]) for m in re.finditer(pattern, log.read_text())}


def rule_of(data: bytes) -> str:
    found = re.search(rb"X-Spam-Status: .*?rule=([\w-]+)", data, re.S)
    assert found is not None, data[:300]
    return found[1].decode()


def stopped(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_two_workers_share_the_port_reload_as_one_and_a_killed_one_comes_back(
    sink: Any, notify: NotifySocket, tmp_path: Path
) -> None:
    rules, port, log, proc = start_with_rules(
        sink, tmp_path, {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    )
    try:
        ready = notify.wait_for("READY=1")
        pids = {int(m[1]): int(m[2]) for m in wait_log(log, r"worker (\d) started \(pid (\d+)\)", 2)}
        assert sorted(pids) == [0, 1]
        for pid in pids.values():  # only the supervisor may talk to systemd
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [e for e in environ if e.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]
        [(_, status)] = [
            (p, x) for p, lines in notify.received[ready : ready + 1] for x in lines if "STATUS" in x
        ]
        assert status.startswith("STATUS=2 workers: model ") and ", 3 rules" in status

        # Connections land in both workers; every message reaches the next hop.
        send_each_on_its_own_connection(port, "spread", 30)
        assert len(sink.received) == 30
        wait_log(log, r"message_id=<spread-29@", 1)
        assert set(workers_by_message(log, "spread").values()) == {0, 1}
        assert {rule_of(r.data) for r in sink.received} == {"default"}

        # A bad rules file is refused by every worker; the old rules keep serving in all.
        rules.write_text("rules:\n  - name: oops\n    if: {probabilty: {min: 0.5}}\n    action: flag\n")
        mark = len(notify.received)
        os.kill(proc.pid, signal.SIGHUP)
        done = notify.wait_for("READY=1", notify.wait_for("RELOADING=1", mark))
        refusals = wait_log(log, r"worker=(\d) .*rules.yaml:3:", 2)
        assert {m[1] for m in refusals} == {"0", "1"}
        assert any("refused" in line for line in notify.received[done][1])

        # A good one goes live in every worker.
        rules.write_text("rules:\n  - {name: all-flagged, action: flag}\n")
        mark = len(notify.received)
        os.kill(proc.pid, signal.SIGHUP)
        notify.wait_for("READY=1", notify.wait_for("RELOADING=1", mark))
        before = len(sink.received)
        send_each_on_its_own_connection(port, "after", 30)
        assert {rule_of(r.data) for r in sink.received[before:]} == {"all-flagged"}
        wait_log(log, r"message_id=<after-29@", 1)
        assert set(workers_by_message(log, "after").values()) == {0, 1}

        # A worker killed (OOM killer, a bug) is logged and started again; mail flows meanwhile.
        os.kill(pids[1], signal.SIGKILL)
        wait_log(log, rf"worker 1 \(pid {pids[1]}\) was killed by SIGKILL")
        send_each_on_its_own_connection(port, "meanwhile", 5)
        [restart] = wait_log(log, r"worker 1 started \(pid (\d+)\)", 2)[1:]
        assert int(restart[1]) != pids[1]
        wait_log(log, rf"worker 1 \(pid {restart[1]}\) ready")

        # The watchdog: WATCHDOG=1 once every worker's loop has pinged within the interval, which
        # a loaded machine may take a while to see (waited for, not assumed to have happened).
        notify.wait_for("WATCHDOG=1", seconds=60)

        # SIGTERM to the supervisor alone reaches the workers; it exits 0 after them.
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stopped(proc)
    notify.poll()
    assert {pid for pid, _ in notify.received} == {proc.pid}  # all from the supervisor
    assert [line for _, line in notify.lines("READY=1")].count("READY=1") == 3  # start + 2 reloads
    assert notify.lines("WATCHDOG=1") and notify.lines("STOPPING=1")
    assert len(sink.received) == 65
    text = log.read_text()
    assert len(re.findall(r"worker=\d stopped", text)) == 2 and text.rstrip().endswith("stopped")


def test_sighup_while_the_workers_start_reaches_them_once_they_are_ready(
    sink: Any, notify: NotifySocket, tmp_path: Path
) -> None:
    """`systemctl reload` (or an admin's kill -HUP) while the workers are still loading: none
    dies of it (a worker does not handle SIGHUP before its daemon runs), and each reloads once
    it is ready, so a file changed during start-up is live in all of them."""
    rules, port, log, proc = start_with_rules(sink, tmp_path, {"NOTIFY_SOCKET": str(notify.path)})
    try:
        pids = [int(m[1]) for m in wait_log(log, r"worker \d started \(pid (\d+)\)", 2)]
        # Held where they are (seconds before either can be ready: each still loads the model),
        # so the SIGHUP surely finds both starting: the path under test.
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        rules.write_text("rules:\n  - {name: changed-at-start, action: flag}\n")
        os.kill(proc.pid, signal.SIGHUP)
        wait_log(log, r"reload: forwarding SIGHUP to the workers", 1)
        assert "ready" not in log.read_text()  # no worker was ready when the SIGHUP came
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        notify.wait_for("READY=1")
        reloads = wait_log(log, r"worker=(\d) reload: (?:now serving|nothing changed)", 2)
        assert {m[1] for m in reloads} == {"0", "1"}
        assert proc.poll() is None and "was killed by SIGHUP" not in log.read_text()
        send_each_on_its_own_connection(port, "hup", 20)
        assert {rule_of(r.data) for r in sink.received} == {"changed-at-start"}
        wait_log(log, r"message_id=<hup-19@", 1)
        assert set(workers_by_message(log, "hup").values()) == {0, 1}
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stopped(proc)


def test_sigterm_to_the_whole_group_with_sessions_in_flight_loses_none(
    sink_factory: Any, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    with sink_factory(data_delay=1.5) as sink:
        proc = start(
            "--listen", f"127.0.0.1:{port}", "--next-hop", sink.url, "--quarantine", str(tmp_path / "q"),
            log=log,
        )  # fmt: skip
        try:
            wait_log(log, "all workers ready")
            flight = [("a@example.org", message("flight", i)) for i in range(30)]
            results = sigterm_with_messages_in_flight(port, sink, proc, flight)
        finally:
            stopped(proc)
    assert results == {i: {} for i in range(30)}
    assert flight_ids(sink) == list(range(30))
    assert set(workers_by_message(log, "flight").values()) == {0, 1}  # both were draining
    assert "was killed" not in log.read_text() and "exited with" not in log.read_text()


def test_each_worker_watches_the_files_and_serves_its_own_metrics(
    sink: Any, notify: NotifySocket, tmp_path: Path
) -> None:
    import urllib.request

    rules = tmp_path / "rules" / "rules.yaml"
    rules.parent.mkdir()
    rules.write_text(RULES_PATH.read_text())
    port, metrics, log = free_port(), free_pair(), tmp_path / "serve.log"
    proc = start(
        "--listen", f"127.0.0.1:{port}", "--next-hop", sink.url, "--rules", str(rules),
        "--metrics", f"127.0.0.1:{metrics}", "--quarantine", str(tmp_path / "q"), log=log, watch=True,
        env={"NOTIFY_SOCKET": str(notify.path)},
    )  # fmt: skip
    try:
        notify.wait_for("READY=1")
        # No SIGHUP: each worker sees the edits in the directory it watches. A rule after a
        # catch-all is refused by both ...
        mark = len(notify.received)
        rules.write_text("rules:\n  - {name: held, action: tempfail}\n  - {name: other, action: deliver}\n")
        notify.wait_for("READY=1", notify.wait_for("RELOADING=1", mark))
        refusals = wait_log(log, r"worker=(\d) reload: refused rules file .*rules.yaml:3: rule \"other\"", 2)
        assert {m[1] for m in refusals} == {"0", "1"}
        # ... and a good edit goes live in both.
        mark = len(notify.received)
        rules.write_text("rules:\n  - {name: held, action: tempfail}\n")
        notify.wait_for("READY=1", notify.wait_for("RELOADING=1", mark))
        wait_log(log, r"worker=(\d) reload: now serving 1 rules", 2)
        for worker in (0, 1):  # worker I on the metrics port + I; the supervisor serves none
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics + worker}/metrics", timeout=10) as r:
                assert "milter_rules 1.0" in r.read().decode()
        refused = 0
        for i in range(20):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                with pytest.raises(smtplib.SMTPDataError) as e:
                    client.sendmail("a@example.org", ["b@example.net"], message("held", i))
                refused += e.value.smtp_code == 451
        assert refused == 20 and not sink.received
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        stopped(proc)
    lines = re.findall(r"worker=(\d) metrics on http://127.0.0.1:(\d+)", log.read_text())
    assert sorted(lines) == [("0", str(metrics)), ("1", str(metrics + 1))]


def test_start_up_failures_say_what_a_single_daemon_says(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: spam\n    if: {probabilty: {min: 0.9}}\n    action: spam_folder\n")
    outcomes = {}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for workers in ("1", "2"):
            log = tmp_path / f"w{workers}.log"
            bad_rules = start(
                "--listen", f"127.0.0.1:{free_port()}", "--rules", str(rules), log=log, workers=workers
            )
            in_use = start("--listen", f"127.0.0.1:{busy}", "--next-hop", f"maildir:{tmp_path}/md", log=log,
                           workers=workers)  # fmt: skip
            outcomes[workers] = (bad_rules.wait(60), in_use.wait(60), log.read_text())
    for workers in ("1", "2"):
        bad_code, busy_code, text = outcomes[workers]
        assert (bad_code, busy_code) == (1, 1)
        assert "worker 0 started" not in text  # the supervisor checked first
    errors = {
        w: sorted(re.findall(r"error milter\.\w+: (cannot start: .*)", o[2])) for w, o in outcomes.items()
    }
    assert errors["1"] == errors["2"] and len(errors["2"]) == 2
    assert any(f"{rules}:3:" in e and "probability" in e for e in errors["2"])
    assert any("address already in use" in e for e in errors["2"])

    for bad, expected in (("0", "--workers: 0 is out of range"), ("many", "--workers: expected a number")):
        proc = subprocess.run(
            [sys.executable, "-m", "milter", "serve", "--workers", bad],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == 2 and expected in proc.stderr.decode()


# --- the parts, in process -----------------------------------------------------------------------


def test_combined_status() -> None:
    same = "model spam-1, 3 rules"
    assert combined_status([same, same], 2, 2) == "2 workers: model spam-1, 3 rules"
    assert combined_status([same, ""], 1, 2) == "1 of 2 workers up: model spam-1, 3 rules"
    mixed = combined_status([same, "model spam-2, 3 rules"], 2, 2)
    assert mixed == "2 workers: [0] model spam-1, 3 rules; [1] model spam-2, 3 rules"


def test_backoff_doubles_up_to_a_limit() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff(50) == 30.0


def test_worker_config_gives_each_worker_its_metrics_port() -> None:
    config = Config(metrics=("127.0.0.1", 9125), workers=3)
    assert [worker_config(config, i).metrics for i in range(3)] == [("127.0.0.1", 9125 + i) for i in range(3)]
    assert worker_config(config, 1).workers == 1 and worker_config(config, 1).text_workers == 0
    assert worker_config(Config(text_workers=2, workers=2), 0).text_workers == 2  # asked for: kept


def test_worker_tag_marks_every_line() -> None:
    from milter.logs import TextFormatter

    formatter, tag = TextFormatter(journald=True), WorkerTag(3)
    plain = logging.LogRecord("milter.server", logging.INFO, "x", 1, "listening on %s", ("a:1",), None)
    fields = logging.LogRecord("milter.message", logging.INFO, "x", 1, "message", None, None)
    fields.fields = {"message_id": "<m@x>", "action": "deliver"}
    assert tag.filter(plain) and tag.filter(fields)
    assert formatter.format(plain) == "<6>worker=3 listening on a:1"
    assert formatter.format(fields) == "<6>message_id=<m@x> action=deliver worker=3"


def test_port_check_sees_a_reuseport_listener() -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError, match="address already in use"):
            check_port_free("127.0.0.1", other.getsockname()[1])
    check_port_free("127.0.0.1", free_port())
