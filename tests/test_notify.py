"""sd_notify against a real datagram socket the test owns, as systemd would hold it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from milter.notify import Notifier, monotonic_usec, status_text


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(5)

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending(self) -> int:
        self.sock.setblocking(False)
        n = 0
        try:
            while True:
                self.sock.recv(4096)
                n += 1
        except BlockingIOError:
            return n
        finally:
            self.sock.settimeout(5)


@pytest.fixture
def systemd_path() -> Iterator[FakeSystemd]:
    # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="notify") as d:
        fake = FakeSystemd(os.path.join(d, "notify.sock"))
        yield fake
        fake.sock.close()


@pytest.fixture
def systemd_abstract() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@milter-test-{os.getpid()}-{time.monotonic_ns()}")
    yield fake
    fake.sock.close()


def test_ready_with_status(systemd_path: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": systemd_path.env_value})
    assert n.enabled
    assert n.ready(status_text("spam-2026-01", 3))
    assert systemd_path.receive() == {"READY": "1", "STATUS": "model spam-2026-01, 3 rules"}
    n.close()


def test_abstract_namespace(systemd_abstract: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": systemd_abstract.env_value})
    assert n.stopping()
    assert systemd_abstract.receive() == {"STOPPING": "1", "STATUS": "stopping: draining sessions"}
    n.close()


def test_reload_cycle_carries_monotonic_usec(systemd_path: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": systemd_path.env_value})
    before = monotonic_usec()
    n.reloading()
    msg = systemd_path.receive()
    after = monotonic_usec()
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    # The same clock systemd reads: CLOCK_MONOTONIC, in microseconds.
    assert abs(int(msg["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 5_000_000
    n.ready(status_text("m2", 1, "reload refused: rules/x.yaml:3: bad"))
    assert systemd_path.receive() == {
        "READY": "1",
        "STATUS": "model m2, 1 rule; reload refused: rules/x.yaml:3: bad",
    }
    n.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready("x")
    assert not n.watchdog()
    assert n.watchdog_interval is None


def test_missing_socket_is_logged_once_not_raised(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    with caplog.at_level(logging.WARNING, logger="milter.notify"):
        assert not n.ready()
        assert not n.watchdog()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "absent.sock" in warnings[0]
    n.close()


def test_unsupported_address_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="milter.notify"):
        n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert "vsock:2:1234" in caplog.text


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    pid = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}).watchdog_interval == 15.0
    # WATCHDOG_PID names another process: the watchdog is not ours to feed.
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval is None


def test_watchdog_pings_from_the_event_loop(systemd_path: FakeSystemd) -> None:
    # WATCHDOG_USEC=100 ms: a ping every 50 ms, for as long as the task runs on the loop.
    n = Notifier({"NOTIFY_SOCKET": systemd_path.env_value, "WATCHDOG_USEC": "100000"})

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        systemd_path.sock.setblocking(False)
        task = asyncio.create_task(n.run_watchdog())
        pings = [await asyncio.wait_for(loop.sock_recv(systemd_path.sock, 4096), 10) for _ in range(3)]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pings

    assert asyncio.run(run()) == [b"WATCHDOG=1"] * 3
    # The task is cancelled and awaited: nothing can ping any more. A ping sent between the
    # third read and the cancel may still be queued; a datagram is queued when sent, so no
    # later one is on its way.
    assert systemd_path.pending() <= 1
    n.close()


def test_watchdog_off_returns_at_once(systemd_path: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": systemd_path.env_value})
    asyncio.run(asyncio.wait_for(n.run_watchdog(), 1))
    assert systemd_path.pending() == 0
    n.close()


def test_status_text() -> None:
    assert status_text("a", 1) == "model a, 1 rule"
    assert status_text("a", 0) == "model a, 0 rules"


def test_a_systemd_that_does_not_read_never_blocks_the_sender(systemd_path: FakeSystemd) -> None:
    # A datagram socket's queue holds a few messages (net.unix.max_dgram_qlen, 10 by default);
    # a blocking send beyond that would stall the event loop until systemd reads.
    n = Notifier({"NOTIFY_SOCKET": systemd_path.env_value})
    sender = threading.Thread(target=lambda: [n.status(f"message {i}") for i in range(50)])
    sender.start()
    sender.join(30)  # a hang detector, not a speed limit: a blocking send never returns
    assert not sender.is_alive(), "Notifier.send blocked on a full socket"
    got = [systemd_path.receive()["STATUS"] for _ in range(50)]
    assert got == [f"message {i}" for i in range(50)]  # all of them, in order
    n.close()
    assert systemd_path.pending() == 0


def test_close_flushes_the_backlog(systemd_path: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": systemd_path.env_value})
    for i in range(30):
        n.status(f"s{i}")
    reader = threading.Thread(target=lambda: [systemd_path.receive() for _ in range(30)])
    reader.start()
    n.stopping()
    n.close(timeout=30)
    reader.join(30)
    assert systemd_path.receive()["STOPPING"] == "1"
