"""The daemon's life: start -> serve -> drain and stop.

Start-up fails fast: the rules and the model are loaded and checked before the port is opened,
so a bad file is an error on the terminal (or in `systemctl status`), not a 451 on every message.
Then the SMTP server runs on the event loop (uvloop when installed); SIGHUP (`systemctl reload`)
and changes in the rules and model directories rebuild the policy off the loop and swap one
reference (milter.reload); a message in flight keeps the policy it started with.

SIGTERM / SIGINT: stop accepting, tell idle sessions 421, let sessions in a transaction finish
(bounded by drain_timeout; one still running then is cut off before its 250, so the client keeps
the message and retries), close the next-hop connections, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from milter import signals
from milter.config import Config
from milter.delivery import next_hop_from_url
from milter.errors import MilterError
from milter.history import HistoryError, HistoryWriter
from milter.metrics import Metrics, start_metrics_server
from milter.milter_protocol import MilterService
from milter.model import Model
from milter.notify import Notifier, status_text
from milter.policy import Policy
from milter.quarantine import Quarantine
from milter.reload import PolicyLoader, Reloader, ReloadReport, rule_count
from milter.rules import Ruleset
from milter.smtp import Filter, smtp_factory
from milter.workers import TextWorkers, default_workers

log = logging.getLogger("milter.server")


class Drainable(Protocol):
    """A client session as shutdown sees it (milter.smtp.FilterSMTP, milter_protocol.MilterConnection)."""

    def close_if_idle(self) -> bool: ...

    def _close(self) -> None: ...


class Daemon:
    """One running filter: `await start()`, then `await stop()` (or `run()` for both)."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        watch: bool = True,
        reuse_port: bool = False,
        worker: int | None = None,
    ) -> None:
        self.config = config
        # With the console on (config.console), every decision also goes to the history; the
        # console itself is served here unless this is one of several workers (`worker` set):
        # then the supervisor serves it, one for all of them.
        self.worker = worker
        self.history: HistoryWriter | None = None
        self.console: Any = None
        # SO_REUSEPORT: several worker processes (milter.supervisor) listen on one port and the
        # kernel spreads connections over them.
        self.reuse_port = reuse_port
        self._reload_requested = False  # a SIGHUP before the Reloader was running
        self.metrics = metrics
        self.notifier = notifier or Notifier()
        self.watch = watch

        def make_policy(rules: Ruleset, model: Model, shadow: Model | None = None) -> Policy:
            return Policy(config, model, rules, shadow)

        self.loader: PolicyLoader[Policy] = PolicyLoader(
            config.rules,
            config.model,
            make_policy,
            mode=config.mode,
            max_seconds_per_message=config.max_ms_per_message / 1000,
            shadow_path=config.shadow_model,
        )
        self.filter: Filter | MilterService | None = None
        self.reloader: Reloader[Policy] | None = None
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        """The port listened on (the real one when the config asked for port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def policy(self) -> Policy:
        assert self.filter is not None
        return self.filter.policy

    async def start(self) -> None:
        """Load the policy (raising RulesError/ModelError), then listen. OSError if the port is taken."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        policy = await loop.run_in_executor(None, self.loader.initial)
        # message->text's tables (Public Suffix List, confusables, brands) load here, not on the
        # first message.
        await loop.run_in_executor(None, signals.load_tables)
        config = self.config
        workers = config.text_workers if config.text_workers is not None else default_workers()
        texts = TextWorkers(workers) if workers > 0 and config.scoring else None
        if texts is not None:
            await texts.start()
        if config.console is not None:
            history = HistoryWriter(
                config.history,
                worker=self.worker or 0,
                protocol=config.protocol,
                max_rows=config.history_max_rows,
                raw_rows=config.history_messages,
                on_drop=self.metrics.history_dropped.inc if self.metrics is not None else None,
            )
            try:
                await loop.run_in_executor(None, history.start)
            except HistoryError as e:
                if texts is not None:
                    await texts.close()
                raise MilterError(str(e)) from None
            self.history = history
        reuse_port, backlog = self.reuse_port or None, max(128, config.max_sessions)
        try:
            if config.protocol == "milter":
                service = MilterService(config, policy, self.metrics, texts, recorder=self.history)
                self.filter = service
                next_hop = "none (milter protocol: Postfix queues the mail itself)"
                self._server = await asyncio.start_server(
                    service.serve, config.listen_host, config.listen_port,
                    reuse_address=True, reuse_port=reuse_port, backlog=backlog,
                )  # fmt: skip
            else:
                hop = next_hop_from_url(
                    config.next_hop, timeout=config.next_hop_timeout, hostname=config.hostname
                )
                next_hop = str(hop)
                self.filter = Filter(
                    config,
                    policy,
                    hop,
                    Quarantine(config.quarantine),
                    self.metrics,
                    texts,
                    recorder=self.history,
                )
                self._server = await loop.create_server(
                    smtp_factory(self.filter, config, loop), config.listen_host, config.listen_port,
                    reuse_address=True, reuse_port=reuse_port, backlog=backlog,
                )  # fmt: skip
        except OSError:
            if texts is not None:
                await texts.close()
            if self.history is not None:
                await loop.run_in_executor(None, self.history.close)
            raise
        self.reloader = Reloader(
            self.loader,
            self._swap,
            metrics=self.metrics,
            notifier=self.notifier,
            watch=self.watch,
            on_report=self._reported if self.history is not None else None,
        )
        await self.reloader.start()
        if self._reload_requested:  # the files may have changed after the loader read them
            self.reloader.request()
        model_id, rules = policy.model.id, self.loader.rules.active
        count = rule_count(rules) if rules is not None else 0
        if self.metrics is not None:
            self.metrics.policy_active(model_id, self.loader.models.load_seconds, count)
        if self.history is not None:
            now = time.time()
            self.history.status(
                model_id=model_id,
                model_loaded=now,
                model_load_seconds=self.loader.models.load_seconds,
                rules=count,
                rules_loaded=now,
            )
        if config.console is not None and self.worker is None:
            await self._start_console()
        log.info(
            "listening on %s (%s), next hop %s, mode %s, model %s, %d rules (ready in %.2f s)",
            config.listen if config.listen_port else f"{config.listen_host}:{self.port}",
            config.protocol,
            next_hop,
            config.mode,
            model_id,
            count,
            time.perf_counter() - started,
        )
        self.notifier.ready(status_text(model_id, count))

    async def _start_console(self) -> None:
        from milter.console import Console

        console = Console(self.config)
        try:
            await console.start()
        except (OSError, MilterError):
            await self.stop()
            raise
        self.console = console

    def _reported(self, report: ReloadReport) -> None:
        """A reload's outcome, for the console: what serves now, and what was refused."""
        assert self.history is not None
        now = time.time()
        if report.swapped and "model" in report.changed:
            self.history.status(
                model_id=report.model_id, model_loaded=now, model_load_seconds=self.loader.models.load_seconds
            )
        if report.swapped and "rules" in report.changed:
            self.history.status(rules=report.rule_count, rules_loaded=now)
        if report.swapped:
            self.history.event("reload", f"now serving {', '.join(sorted(report.changed))}: model "
                               f"{report.model_id}, {report.rule_count} rules")  # fmt: skip
        for refusal in report.refused:
            self.history.event("refused", refusal.log_line())
        if report.error is not None:
            self.history.event("error", f"reload failed: {report.error}")

    def _swap(self, policy: Policy) -> None:
        """Called on the loop by the Reloader with each new policy: one reference, swapped."""
        assert self.filter is not None
        self.filter.policy = policy

    def reload(self) -> None:
        """Rebuild the policy off the loop and swap it in if it is valid (SIGHUP)."""
        if self.reloader is not None:
            self.reloader.request()
        else:
            self._reload_requested = True

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop accepting, drain the sessions in flight (bounded), release everything."""
        self.notifier.stopping()
        if self._server is not None:
            self._server.close()
        handler = self.filter
        if handler is not None:
            handler.draining = True
            deadline = time.monotonic() + self.config.drain_timeout
            sessions: Collection[Drainable] = handler.sessions
            while sessions:
                for session in list(sessions):
                    session.close_if_idle()
                if not sessions or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.02)
            if sessions:
                log.warning(
                    "drain timeout (%g s): closing %d sessions still in a transaction; "
                    "their clients got no 250 and keep the mail",
                    self.config.drain_timeout,
                    len(sessions),
                )
                for session in list(sessions):
                    session._close()
            if isinstance(handler, Filter):
                await asyncio.sleep(0)  # let connection_lost run and schedule next-hop aborts
                await handler.wait_pending()
                await handler.hop.close()
            if handler.texts is not None:
                await handler.texts.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self.reloader is not None:
            await self.reloader.stop()
        if self.console is not None:
            await self.console.stop()
            self.console = None
        if self.history is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.history.close)
            self.history = None
        log.info("stopped")


async def serve(
    config: Config,
    *,
    watch: bool = True,
    notifier: Notifier | None = None,
    reuse_port: bool = False,
    worker: int | None = None,
) -> int:
    """Run the daemon until SIGTERM/SIGINT; the process exit code.

    `notifier`: where READY/STATUS/WATCHDOG go (default: systemd's $NOTIFY_SOCKET; a worker of
    milter.supervisor tells its supervisor instead). `reuse_port`: listen with SO_REUSEPORT.
    """
    loop = asyncio.get_running_loop()
    metrics = Metrics(retrain_state=config.retrain_state) if config.metrics is not None else None
    notifier = notifier if notifier is not None else Notifier()
    daemon = Daemon(
        config, metrics=metrics, notifier=notifier, watch=watch, reuse_port=reuse_port, worker=worker
    )
    metrics_server = None
    # Signals are handled from before start-up's end (the READY notification), so whoever
    # heard READY may signal at once: a supervisor forwarding SIGHUP must not kill a worker.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
    except (MilterError, OSError) as e:
        log.error("cannot start: %s", e)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        notifier.close()
        return 1
    if metrics is not None and config.metrics is not None:
        metrics_server = start_metrics_server(metrics, *config.metrics)
        log.info("metrics on %s", metrics_server.url)
    watchdog = asyncio.create_task(notifier.run_watchdog())
    try:
        await daemon.wait_stopped()
        log.info("stopping: draining sessions (at most %g s)", config.drain_timeout)
        await daemon.stop()
    finally:
        watchdog.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        if metrics_server is not None:
            metrics_server.close()
        notifier.close()
    return 0


def run(
    config: Config,
    *,
    watch: bool = True,
    notifier: Notifier | None = None,
    reuse_port: bool = False,
    worker: int | None = None,
) -> int:
    """`serve` on uvloop when it is installed (faster sockets), else asyncio's own loop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; a plain loop still works
        factory = None
    runner_args: dict[str, Any] = {"loop_factory": factory} if factory is not None else {}
    with asyncio.Runner(**runner_args) as runner:
        return runner.run(serve(config, watch=watch, notifier=notifier, reuse_port=reuse_port, worker=worker))
