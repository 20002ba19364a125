"""systemd's notify protocol (sd_notify(3)), spoken directly: one datagram per state change.

Under `Type=notify` (or `notify-reload`) systemd passes a datagram socket in $NOTIFY_SOCKET (a
path, or `@name` for the abstract namespace) and waits for `READY=1` before it calls the service
started. The daemon tells it:

- `READY=1` once it listens with a model and rules (`ready`);
- `RELOADING=1` with `MONOTONIC_USEC=` when a reload starts, `READY=1` when it ends, whether the
  new policy went live or was refused (`reloading`, `ready`);
- `STATUS=` a line `systemctl status` shows: the model id and rule count (`status_text`);
- `WATCHDOG=1` every WATCHDOG_USEC/2 when `WatchdogSec=` is set and WATCHDOG_PID (if any) is us;
  sent from the event loop (`run_watchdog`), so a stuck loop stops the pings and systemd
  restarts the service;
- `STOPPING=1` when shutdown starts (`stopping`).

Without $NOTIFY_SOCKET (not under systemd, or `Type=simple`) every call does nothing, so the
daemon calls them unconditionally. A send that fails is logged once and never raised: losing a
status line must never stop mail. Nor may a slow reader: sends never block (a datagram that does
not fit in the socket's queue waits in a backlog that a helper thread sends, in order).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

MAX_BACKLOG = 100  # notifications kept while systemd does not read; the oldest go first


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd expects in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def status_text(model_id: str, rule_count: int, note: str = "") -> str:
    """The STATUS= line: `model spam-2026-01, 3 rules` (+ `; note`)."""
    text = f"model {model_id}, {rule_count} rule{'s' if rule_count != 1 else ''}"
    note = " ".join(note.split())  # one line: STATUS= ends at the newline
    return f"{text}; {note}" if note else text


def _address(value: str) -> str | bytes:
    """The socket address of a NOTIFY_SOCKET value: `@name` is abstract (a leading NUL byte)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET (read from `environ`, default os.environ)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._failed = False
        # The event loop must never block on systemd: a datagram that does not fit now goes to
        # a backlog that a short-lived thread sends in order.
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._backlog: collections.deque[bytes] = collections.deque()
        self._sender: threading.Thread | None = None
        value = env.get("NOTIFY_SOCKET", "")
        self._name = value
        if value.startswith(("/", "@")):
            self._address = _address(value)
        elif value:
            # vsock: and others exist for VMs; milter runs on the host it filters for.
            log.warning("NOTIFY_SOCKET=%s is not a path or @abstract name; not notifying systemd", value)
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` lines in one datagram, in order, never blocking the caller.

        True if sent or queued behind earlier ones; False if disabled or the socket is unusable.
        """
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        with self._lock:
            if not self._backlog:
                try:
                    self._socket().sendto(payload, socket.MSG_DONTWAIT, self._address)
                except BlockingIOError:
                    pass  # systemd's queue is full: the sender thread waits for room
                except OSError as e:
                    self._warn(e)
                    return False
                else:
                    self._failed = False
                    return True
            if len(self._backlog) >= MAX_BACKLOG:
                dropped = self._backlog.popleft()
                log.warning("systemd is not reading NOTIFY_SOCKET; dropped %r", dropped[:40])
            self._backlog.append(payload)
            if self._sender is None:
                self._sender = threading.Thread(target=self._drain, name="milter-notify", daemon=True)
                self._sender.start()
        return True

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        return self._sock

    def _warn(self, e: OSError) -> None:
        if not self._failed:  # once: a missing socket would otherwise log on every ping
            log.warning("cannot notify systemd at NOTIFY_SOCKET=%s: %s", self._name, e)
            self._failed = True

    def _drain(self) -> None:
        """The sender thread: blocking sends of the backlog, oldest first, then it ends."""
        while True:
            with self._lock:
                if not self._backlog or self._address is None:
                    self._sender = None
                    self._drained.notify_all()
                    return
                payload, sock, address = self._backlog[0], self._socket(), self._address
            try:
                sock.sendto(payload, address)  # blocks until systemd reads: off the event loop
            except OSError as e:
                with self._lock:
                    self._warn(e)
            with self._lock:
                if self._backlog and self._backlog[0] is payload:
                    self._backlog.popleft()

    def ready(self, status: str | None = None) -> bool:
        """Serving: after start-up, and after each reload (applied or refused)."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self, status: str = "reloading") -> bool:
        """A reload began; `ready()` must follow when it is over."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping: draining sessions") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping the watchdog every WATCHDOG_USEC/2 until cancelled; returns at once if it is off.

        Runs as a task on the daemon's event loop, so the pings stop if the loop does.
        """
        if self.watchdog_interval is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_interval)

    def close(self, timeout: float = 1.0) -> None:
        """Send what is still queued (waiting at most `timeout` seconds), then close the socket."""
        with self._lock:
            if self._sender is not None:
                self._drained.wait_for(lambda: self._sender is None, timeout)
            if self._backlog:
                log.warning("systemd did not read %d notification(s) before exit", len(self._backlog))
                self._backlog.clear()
            if self._sock is not None and self._sender is None:
                self._sock.close()
                self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if not for us."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # meant for another process (e.g. our parent)
        except ValueError:
            log.warning("WATCHDOG_PID=%s is not a process id; ignoring the watchdog", pid)
            return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%s is not a number of microseconds; ignoring the watchdog", usec)
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000
