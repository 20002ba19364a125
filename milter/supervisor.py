"""`milter serve --workers N`: N serving processes on one port, and the parent that keeps them.

One asyncio process uses one core. With `workers: N` (N > 1) the `milter serve` process becomes
a supervisor: it checks the config, rules and model exactly as a single daemon does (same
messages, same exit codes), then starts N workers, `python -m milter.supervisor`, each a whole
daemon (milter.server) listening on the same address with SO_REUSEPORT: the kernel spreads new
connections over their sockets. Workers share nothing but the port and the files; each loads
the model and the rules and watches their directories itself.

The supervisor owns everything systemd sees:

- $NOTIFY_SOCKET: workers run without it (and without WATCHDOG_USEC) and send their sd_notify
  lines (READY, RELOADING, STATUS, WATCHDOG) to a datagram socket of the supervisor instead,
  which knows each sender by its kernel credentials (SO_PASSCRED). systemd hears READY=1 once,
  when every worker listens with a model; STATUS= with the model id, rule count and workers;
  RELOADING=1 ... READY=1 around reloads, until every worker has answered; WATCHDOG=1 only
  while every worker is up and its own event loop pings (so a stuck or crash-looping worker
  gets the service restarted, as a stuck single daemon does); STOPPING=1.
- Signals: SIGHUP is forwarded to every worker (each reloads, validating the files itself: the
  same bytes give the same verdict, so a bad file is refused by all and a good one goes live in
  all). SIGTERM/SIGINT is forwarded as SIGTERM; each worker drains its sessions and exits, and
  the supervisor exits 0 once all have. systemd signals the whole cgroup, so workers get SIGTERM
  directly too: a second SIGTERM changes nothing.
- Workers that die: a worker that exits while the service runs is logged and started again,
  after 0.5 s, doubling up to 30 s while it keeps failing; the other workers serve meanwhile.
  Connections already queued on the dead worker's socket are reset by the kernel (the client
  retries: nothing was accepted from it).
- Workers get SIGTERM if the supervisor itself dies (PR_SET_PDEATHSIG), so none is left behind
  holding the port.

Logs: every line of a worker carries `worker=N` (its index, 0 to N-1, which stays the same
across restarts): first on plain lines, as a field of each message line (text and JSON). The
supervisor logs which pid each index has. Metrics: each worker serves its own endpoint, on the
metrics port plus its index; the supervisor serves none (docs/scaling.md).

The console (`console: HOST:PORT`): one, served by the supervisor; every worker writes its
decisions, status and reloads to the one history database it reads (milter.history).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import secrets
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

from milter.config import Config
from milter.errors import MilterError
from milter.notify import Notifier

log = logging.getLogger("milter.supervisor")

FIRST_BACKOFF = 0.5  # seconds before a dead worker is started again ...
MAX_BACKOFF = 30.0  # ... doubling while it keeps dying, up to this
STABLE_AFTER = 60.0  # a worker that served this long starts the backoff again from the first
STOP_MARGIN = 15.0  # seconds past drain_timeout before workers still running are killed
# Environment of the service that is for the supervisor alone (sd_notify, socket activation).
PRIVATE_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid

State = Literal["starting", "ready", "reloading", "stopping", "down"]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process gets from its supervisor (pickled over its stdin)."""

    config: Config
    index: int
    watch: bool
    notify: str  # the supervisor's datagram socket, `@name`
    watchdog_usec: int | None
    parent: int  # the supervisor's pid


def worker_config(config: Config, index: int) -> Config:
    """The config of worker `index`: its own metrics port; text workers only when asked for.

    Text workers default to none beside several workers: the workers already use the cores.
    """
    changes: dict[str, object] = {"workers": 1}
    if config.metrics is not None:
        changes["metrics"] = (config.metrics[0], config.metrics[1] + index)
    if config.text_workers is None:
        changes["text_workers"] = 0
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def backoff(failures: int) -> float:
    """Seconds to wait before starting a worker that died `failures` times in a row (>= 1)."""
    return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, failures - 1)))


def combined_status(statuses: list[str], up: int, total: int, note: str = "") -> str:
    """The STATUS= line for the service from the workers' own STATUS lines (one line).

    `2 workers: model spam-1, 3 rules`; workers that disagree (a reload going round, or a
    restarted worker that read newer files) are each named: `2 workers: [0] ...; [1] ...`.
    """
    head = f"{total} workers" if up == total else f"{up} of {total} workers up"
    distinct = [s for s in dict.fromkeys(statuses) if s]
    if len(distinct) == 1:
        text = f"{head}: {distinct[0]}"
    elif distinct:
        text = f"{head}: " + "; ".join(f"[{i}] {s}" for i, s in enumerate(statuses) if s)
    else:
        text = head
    return f"{text}; {note}" if note else text


@dataclass(eq=False)
class Worker:
    """One worker slot: index, current process, and what it last told the supervisor."""

    index: int
    process: asyncio.subprocess.Process | None = None
    state: State = "down"
    status: str = ""
    last_heard: float = 0.0
    started: float = 0.0
    failures: int = 0
    hup_pending: bool = False  # SIGHUP forwarded, its READY=1 not back yet
    hup_when_ready: bool = False  # SIGHUP while it started: it may have read the files before
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Starts, watches, signals and restarts the workers; speaks to systemd for all of them."""

    def __init__(self, config: Config, *, watch: bool = True, notifier: Notifier | None = None) -> None:
        self.config = config
        self.watch = watch
        self.notifier = notifier if notifier is not None else Notifier()
        self.workers = [Worker(i) for i in range(config.workers)]
        self._address = f"@milter-supervisor-{os.getpid()}-{secrets.token_hex(8)}"
        self._sock: socket.socket | None = None
        self._stopping = False
        self._stop = asyncio.Event()
        self._all_ready = asyncio.Event()
        self._start_failed: str | None = None
        self._ready_sent = False
        self._reloading_sent = False
        self._last_status = ""

    # --- start-up ---------------------------------------------------------------------------

    async def run(self) -> int:
        """The supervisor's life; its exit code (1: could not start, 0: stopped by a signal)."""
        try:
            self.validate()  # on this thread: nothing else runs yet, and its memory is given back
        except (MilterError, OSError) as e:
            log.error("cannot start: %s", e)
            self.notifier.close()
            return 1
        release_memory()
        console = None
        if self.config.console is not None:
            from milter.console import Console

            console = Console(self.config)
            try:
                await console.start()
            except (MilterError, OSError) as e:
                log.error("cannot start: %s", e)
                self.notifier.close()
                return 1
        try:
            return await self._serve()
        finally:
            if console is not None:
                await console.stop()

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._open_socket()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        watchdog = asyncio.create_task(self._watchdog())
        try:
            for worker in self.workers:
                worker.task = asyncio.create_task(self._keep(worker), name=f"milter-worker-{worker.index}")
            ready = asyncio.create_task(self._all_ready.wait())
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({ready, stop}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if self._start_failed is not None:
                log.error("cannot start: %s", self._start_failed)
                await self._stop_workers()
                return 1
            await stop
            await self._stop_workers()
            log.info("stopped")
            return 0
        finally:
            watchdog.cancel()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if self._sock is not None:
                loop.remove_reader(self._sock.fileno())
                self._sock.close()
            self.notifier.close()

    def validate(self) -> None:
        """What a single daemon checks before it listens: rules, model, and the port being free.

        Raises RulesError/ModelError/OSError with the single daemon's messages.
        """
        from milter.policy import Policy
        from milter.reload import PolicyLoader

        config = self.config
        loader: PolicyLoader[Policy] = PolicyLoader(
            config.rules,
            config.model,
            lambda rules, model: Policy(config, model, rules),
            mode=config.mode,
            max_seconds_per_message=config.max_ms_per_message / 1000,
        )
        loader.initial()
        check_port_free(config.listen_host, config.listen_port)

    def _open_socket(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(b"\0" + self._address[1:].encode())
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)

    # --- the workers ------------------------------------------------------------------------

    async def _keep(self, worker: Worker) -> None:
        """Run worker `index` until the service stops, starting it again when it dies."""
        while not self._stopping:
            code = await self._run_worker(worker)
            if self._stopping:
                return
            what = describe_exit(code)
            if not self._ready_sent:
                # Not one message served yet: a worker that cannot start is a service that cannot.
                self._start_failed = f"worker {worker.index} {what} before it was ready"
                self._stop.set()
                return
            served = time.monotonic() - worker.started
            worker.failures = 1 if served >= STABLE_AFTER else worker.failures + 1
            delay = backoff(worker.failures)
            log.error(
                "worker %d (pid %s) %s after %.1f s; starting it again in %g s; the other workers serve",
                worker.index, worker.pid, what, served, delay,
            )  # fmt: skip
            self._update()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_worker(self, worker: Worker) -> int:
        """Start one worker process and wait for it to exit; its exit status (-N: signal N)."""
        spec = WorkerSpec(
            config=worker_config(self.config, worker.index),
            index=worker.index,
            watch=self.watch,
            notify=self._address,
            watchdog_usec=self._watchdog_usec(),
            parent=os.getpid(),
        )
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENVIRONMENT}
        worker.state, worker.status, worker.hup_pending, worker.hup_when_ready = "starting", "", False, False
        worker.started = worker.last_heard = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "milter.supervisor",
                "worker",
                str(worker.index),
                stdin=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as e:
            log.error("cannot start worker %d: %s", worker.index, e)
            worker.state = "down"
            return 127
        worker.process = process
        log.info("worker %d started (pid %d)", worker.index, process.pid)
        assert process.stdin is not None
        try:
            process.stdin.write(pickle.dumps(spec))
            await process.stdin.drain()
            process.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died already: its exit status says why
        code = await process.wait()
        worker.state = "down"
        return code

    def _watchdog_usec(self) -> int | None:
        interval = self.notifier.watchdog_interval if self.notifier.enabled else None
        return int(interval * 2 * 1_000_000) if interval is not None else None

    # --- what workers say -------------------------------------------------------------------

    def _receive(self) -> None:
        """Datagrams from workers: sd_notify lines, the sender known by its credentials."""
        assert self._sock is not None
        while True:
            try:
                data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("reading the workers' notifications: %s", e)
                break
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            worker = next((w for w in self.workers if pid is not None and w.pid == pid and w.running), None)
            if worker is None:
                continue  # not one of ours (anyone on this host can send to the socket)
            self._heard(worker, data.decode("utf-8", "replace"))
        self._update()

    def _heard(self, worker: Worker, text: str) -> None:
        worker.last_heard = time.monotonic()
        fields = dict(line.partition("=")[::2] for line in text.split("\n") if "=" in line)
        if "STATUS" in fields:
            worker.status = fields["STATUS"]
        if fields.get("STOPPING") == "1":
            worker.state = "stopping"
        elif fields.get("RELOADING") == "1":
            worker.state = "reloading"
        elif fields.get("READY") == "1":
            starting = worker.state == "starting"
            if starting:
                log.info("worker %d (pid %s) ready", worker.index, worker.pid)
            worker.state, worker.hup_pending = "ready", False
            if starting and worker.hup_when_ready:
                self._forward_hup(worker)

    def _update(self) -> None:
        """Tell systemd what changed: READY once, RELOADING/READY around reloads, STATUS."""
        up = [w for w in self.workers if w.running and w.state in ("ready", "reloading")]
        status = combined_status([w.status for w in self.workers], len(up), len(self.workers))
        if self._stopping:
            return
        if not self._ready_sent:
            if len(up) == len(self.workers):
                self._ready_sent = True
                self._last_status = status
                log.info("all workers ready: %s", status)
                self.notifier.ready(status)
                self._all_ready.set()
            return
        reloading = any(w.state == "reloading" or w.hup_pending for w in up)
        if reloading and not self._reloading_sent:
            self._reloading_sent = True
            self.notifier.reloading(f"reloading; {status}")
        elif not reloading and self._reloading_sent:
            self._reloading_sent = False
            self._last_status = status
            self.notifier.ready(status)
        elif not reloading and status != self._last_status:
            self._last_status = status
            self.notifier.status(status)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 while every worker runs and its own loop pinged within WATCHDOG_USEC."""
        interval = self.notifier.watchdog_interval
        if interval is None or not self.notifier.enabled:
            return
        while True:
            now = time.monotonic()
            if all(
                w.running and w.state in ("ready", "reloading") and now - w.last_heard <= 2 * interval
                for w in self.workers
            ):
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    # --- signals ----------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: every serving worker reloads (one that is starting reads the files anyway)."""
        log.info("reload: forwarding SIGHUP to the workers")
        for worker in self.workers:
            if worker.running and worker.state in ("ready", "reloading"):
                self._forward_hup(worker)
            elif worker.running and worker.state == "starting":
                # Not before it handles SIGHUP (it would die of it): once it says READY.
                worker.hup_when_ready = True
        self._update()

    def _forward_hup(self, worker: Worker) -> None:
        worker.hup_pending, worker.hup_when_ready = True, False
        if worker.process is not None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGHUP)

    def request_stop(self) -> None:
        self._stop.set()

    async def _stop_workers(self) -> None:
        """SIGTERM to every worker (they drain), then wait; kill what outlives the drain."""
        self._stopping = True
        self.notifier.stopping()
        log.info(
            "stopping: %d workers drain their sessions (at most %g s)",
            len(self.workers),
            self.config.drain_timeout,
        )
        for worker in self.workers:
            if worker.running and worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        tasks = [w.task for w in self.workers if w.task is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.config.drain_timeout + STOP_MARGIN)
        for worker in self.workers:
            if worker.running and worker.process is not None:
                log.error("worker %d (pid %d) did not stop; killing it", worker.index, worker.process.pid)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        if late:
            await asyncio.wait(late, timeout=10)


def release_memory() -> None:
    """Give the model the supervisor loaded to check it back to the system (glibc keeps freed
    heap otherwise): measured 48 -> 36 MB anonymous memory, most of the rest is imports."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def check_port_free(host: str, port: int) -> None:
    """OSError (worded as asyncio words it for a single daemon) if something listens there.

    Workers bind with SO_REUSEPORT, which would share the port with another process of the same
    user instead of failing; a bind without it fails if any socket is bound there. Bound only,
    never listening: no connection can arrive on this probe.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"error while attempting to bind on address {address!r}: {(e.strerror or '').lower()}",
                ) from None


def run(config: Config, *, watch: bool = True) -> int:
    """`milter serve` with config.workers > 1: the supervisor, on asyncio's own loop."""
    return asyncio.run(Supervisor(config, watch=watch).run())


# --- in the worker ---------------------------------------------------------------------------


class WorkerTag(logging.Filter):
    """Puts `worker=N` on every line: a field of message lines, a prefix of the others."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        if fields is not None:
            record.fields = {**fields, "worker": self.index}
        elif not getattr(record, "worker_tagged", False):
            record.msg = f"worker={self.index} {record.msg}"
            record.worker_tagged = True
        return True


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the supervisor dies (PR_SET_PDEATHSIG): drain and go, port freed."""
    import ctypes

    pr_set_pdeathsig = 1  # <sys/prctl.h>
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> int:
    """A worker: `python -m milter.supervisor worker INDEX` (the arguments are for ps), its
    WorkerSpec pickled on stdin."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the daemon handles it (after start-up)
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
    _die_with_parent(spec.parent)
    from milter.logs import setup_logging
    from milter.server import run as run_server

    handler = setup_logging(spec.config.log_format)
    handler.addFilter(WorkerTag(spec.index))
    environ = {"NOTIFY_SOCKET": spec.notify}
    if spec.watchdog_usec is not None:
        environ["WATCHDOG_USEC"] = str(spec.watchdog_usec)
    return run_server(
        spec.config, watch=spec.watch, notifier=Notifier(environ), reuse_port=True, worker=spec.index
    )


if __name__ == "__main__":
    sys.exit(worker_main())
