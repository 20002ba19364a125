"""A next hop written by hand on a real socket, for the faults aiosmtpd cannot be made to commit:
holding a reply, closing after the message before its reply, closing in the middle of DATA.

It speaks SMTP (or LMTP) one command at a time, in order, as Postfix's smtpd does with pipelined
commands, and records every command of every connection, the message as it came on the wire
(dot-stuffed, up to and with the final dot) and as stored (un-stuffed).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stored:
    mail_from: bytes
    rcpts: tuple[bytes, ...]
    data: bytes  # un-stuffed, without the final dot
    wire: bytes  # as sent after 354, the final ".\r\n" included
    delivered_to: tuple[bytes, ...]  # LMTP: the recipients that got 250 after DATA


@dataclass
class Connection:
    commands: list[bytes] = field(default_factory=list)
    ended_by_peer: bool = False  # the client (milter) closed it, or it reset


@dataclass
class ScriptedHop:
    lmtp: bool = False
    # None, or one of: "hold-rcpt" (RCPT's reply waits for `release`), "hold-data" (DATA's 354
    # waits), "close-after-data" (store the message, close before the reply), "hang-after-data"
    # (store it, never reply), "close-mid-data" (close after part of the message: nothing stored)
    fault: str | None = None
    lmtp_fail: frozenset[bytes] = frozenset()  # LMTP: these recipients get 452 after DATA
    connections: list[Connection] = field(default_factory=list)
    stored: list[Stored] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"{'lmtp' if self.lmtp else 'smtp'}://127.0.0.1:{self.port}"

    def commands(self) -> list[bytes]:
        return [c for conn in self.connections for c in conn.commands]

    def verbs(self) -> list[bytes]:
        return [c[:4].upper() for c in self.commands()]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection()
        self.connections.append(conn)
        mail: bytes | None = None
        rcpts: list[bytes] = []

        async def say(*lines: bytes) -> None:
            writer.write(b"".join(line + b"\r\n" for line in lines))
            await writer.drain()

        try:
            await say(b"220 hop ESMTP")
            while True:
                line = await reader.readline()
                if not line:
                    conn.ended_by_peer = True
                    return
                command = line.rstrip(b"\r\n")
                conn.commands.append(command)
                verb = command[:4].upper()
                if verb in (b"EHLO", b"LHLO"):
                    await say(b"250-hop", b"250-PIPELINING", b"250 8BITMIME")
                elif verb == b"MAIL":
                    mail, rcpts = command[10:], []
                    await say(b"250 2.1.0 Ok")
                elif verb == b"RCPT":
                    if self.fault == "hold-rcpt":
                        await asyncio.to_thread(self.release.wait)
                    rcpts.append(command[8:].strip(b"<>"))
                    await say(b"250 2.1.5 Ok")
                elif verb == b"RSET":
                    mail, rcpts = None, []
                    await say(b"250 2.0.0 Ok")
                elif verb == b"DATA":
                    if self.fault == "hold-data":
                        await asyncio.to_thread(self.release.wait)
                    await say(b"354 go ahead")
                    wire = b""
                    while not (wire == b".\r\n" or wire.endswith(b"\r\n.\r\n")):
                        piece = await reader.readline()
                        if not piece:
                            conn.ended_by_peer = True
                            return  # a message without its final dot: nothing stored
                        wire += piece
                        if self.fault == "close-mid-data" and len(wire) > 40:
                            return
                    data = wire[:-3]
                    data = data[1:] if data.startswith(b".") else data
                    data = data.replace(b"\r\n.", b"\r\n")
                    failed = [r for r in rcpts if r in self.lmtp_fail] if self.lmtp else []
                    delivered = tuple(r for r in rcpts if r not in failed)
                    assert mail is not None
                    self.stored.append(Stored(mail, tuple(rcpts), data, wire, delivered))
                    if self.fault == "close-after-data":
                        return
                    if self.fault == "hang-after-data":
                        await asyncio.to_thread(self.release.wait)
                        return
                    if self.lmtp:
                        await say(*(b"452 4.2.2 full" if r in failed else b"250 2.0.0 Saved" for r in rcpts))
                    else:
                        await say(b"250 2.0.0 Ok: queued")
                    mail, rcpts = None, []
                elif verb == b"QUIT":
                    await say(b"221 2.0.0 Bye")
                    return
                else:
                    await say(b"502 5.5.2 Error: command not recognized")
        except ConnectionError:
            conn.ended_by_peer = True
        finally:
            writer.close()

    def start(self) -> None:
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self._stop.wait()
            server.close()  # asyncio.run then cancels the connections' tasks

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="scripted-hop", daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self.release.set()  # nothing waits for ever
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


@contextlib.contextmanager
def scripted_hop(**options: Any) -> Iterator[ScriptedHop]:
    hop = ScriptedHop(**options)
    hop.start()
    try:
        yield hop
    finally:
        hop.stop()


def wait_for(condition: Callable[[], object], what: str, seconds: float = 30) -> None:
    """Poll `condition` until it holds; fail naming `what` (a hang detector, not a timing)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
