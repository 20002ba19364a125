"""The operator console: a third face beside SMTP and milter, for people, over HTTP.

Served by the daemon itself (the single daemon, or the supervisor of `--workers N`: one console
for all workers), from aiohttp on the daemon's event loop, with Jinja2 templates. What it shows
comes from below: the history database every worker writes (milter.history), the quarantine
Maildir (milter.quarantine), Postfix's hold queue in milter mode (`postqueue -j`), and the
feedback store of `milter learn` (milter.feedback) for teaching. docs/console.md describes the
pages, the JSON API and the security model (milter.console.auth).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from milter.config import Config, format_address
from milter.console.app import STATE, make_app
from milter.console.auth import Auth
from milter.delivery import NextHop, next_hop_from_url
from milter.history import History, HistoryError
from milter.password import read_password_file
from milter.quarantine import Quarantine

log = logging.getLogger("milter.console")

__all__ = ["Console"]


class Console:
    """The console of one daemon: `await start()`, then `await stop()`."""

    def __init__(self, config: Config, *, hop: NextHop | None = None) -> None:
        assert config.console is not None
        self.config = config
        self.host, self.port = config.console
        self._hop = hop
        self._runner: web.AppRunner | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.state: dict[str, object] = {}

    @property
    def url(self) -> str:
        return f"http://{format_address(self.host, self.port)}/"

    async def start(self) -> None:
        """Listen; OSError if the port is taken, MilterError for an unusable history or password file."""
        config = self.config
        users = read_password_file(config.console_password_file) if config.console_password_file else None
        loop = asyncio.get_running_loop()
        try:
            history = await loop.run_in_executor(None, History, config.history)
        except HistoryError as e:
            from milter.errors import MilterError

            raise MilterError(str(e)) from None
        hop = None
        if config.protocol == "smtp":
            hop = self._hop or next_hop_from_url(
                config.next_hop, timeout=config.next_hop_timeout, hostname=config.hostname
            )
        quarantine = Quarantine(config.quarantine)
        app = make_app(config, Auth(users), history, quarantine, hop)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True, backlog=64)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            history.close()
            where = format_address(self.host, self.port)
            raise OSError(e.errno, f"console on {where}: {e.strerror or e}") from None
        self._runner = runner
        log.info(
            "console on %s (%s)",
            self.url,
            "password required" if users else "no password: loopback only",
        )
        if hop is not None:
            self._recovery = asyncio.create_task(app[STATE].recover(), name="milter-console-recovery")

    async def stop(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            self._recovery = None
        if self._runner is not None:
            app = self._runner.app
            await self._runner.cleanup()
            self._runner = None
            state = app[STATE]
            if state.hop is not None and state.hop is not self._hop:
                await state.hop.close()
            state.history.close()
