"""Model text in worker processes: the daemon's one heavy step, moved off the event loop's core.

Per message, `message_text` (MIME decoding, HTML parsing, tokenising) costs about as much CPU as
all the SMTP work on both sides together, and it is pure Python: it holds the GIL, so a thread
would only take turns with the event loop. It is also a pure function of the raw bytes, with no
state that a reload changes (the model and the rules stay in the daemon), which makes it the
part worth moving to other cores. The model itself (~0.2 ms) runs in the daemon.

Each worker is `python -m milter.workers`, fed over its stdin/stdout with length-prefixed frames
and answering in order: one write and one read per message on each side, no threads in the
daemon (concurrent.futures' process pool was measured: its feeder and manager threads cost the
event loop more CPU than half the text extraction they saved).

A worker that dies or fails costs nothing but time: `text()` returns None and the daemon
extracts the text itself; the worker is started again. A worker that hangs (message->text is
capped to milliseconds, so a silent worker is stuck, not busy) is killed after TEXT_TIMEOUT and
replaced, and that message is a scoring fault (`TextTimeout`: delivered unscored, or deferred,
as the config's on_error says), not extracted again in the daemon, where it might hang the loop.
Workers ignore SIGTERM/SIGINT (systemd signals the whole cgroup): the daemon drains its sessions
first, then closes their stdin.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
from typing import BinaryIO

from milter import signals
from milter.text import message_text

log = logging.getLogger("milter.workers")
_HEADER = 4
_OK, _FAILED = b"\x00", b"\x01"
TEXT_TIMEOUT = 30.0  # seconds; message->text takes milliseconds even for a 30 MB message


class TextTimeout(Exception):
    """A text worker did not answer in time (it was killed and replaced)."""


def default_workers(cores: int | None = None) -> int:
    """None on one or two cores, else one per core but the event loop's, at most 4.

    Measured (docs/benchmarks.md): handing a message to a worker and back costs CPU of its own,
    so it only pays where the event loop's core is the bottleneck. On two cores the second one
    is busy anyway (Postfix, Dovecot, the sending clients): there, text in the daemon used less
    CPU in all and gave the same or better msg/s.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return 0 if cores <= 2 else min(4, cores - 1)


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pending: collections.deque[asyncio.Future[str | None]] = collections.deque()
        self.reader = asyncio.ensure_future(self._read_replies())
        self.alive = True

    async def _read_replies(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                size = int.from_bytes(await stdout.readexactly(_HEADER), "big")
                body = await stdout.readexactly(size)
                future = self.pending.popleft()
                if not future.done():
                    text = body[1:].decode("utf-8", "surrogatepass") if body[:1] == _OK else None
                    future.set_result(text)
        except (asyncio.IncompleteReadError, OSError, IndexError):
            pass
        finally:
            self.alive = False
            while self.pending:
                future = self.pending.popleft()
                if not future.done():
                    future.set_result(None)

    def submit(self, raw: bytes) -> asyncio.Future[str | None]:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        stdin = self.process.stdin
        if not self.alive or stdin is None or stdin.is_closing():
            future.set_result(None)
            return future
        self.pending.append(future)
        stdin.write(len(raw).to_bytes(_HEADER, "big") + raw)
        return future

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class TextWorkers:
    """A few processes computing `message_text` for the daemon."""

    def __init__(self, processes: int, timeout: float = TEXT_TIMEOUT) -> None:
        if processes < 1:
            raise ValueError("TextWorkers needs at least one process")
        self.processes = processes
        self.timeout = timeout
        self._workers: list[_Worker] = []
        self._closed = False

    async def start(self) -> None:
        """Start the workers and wait until each has imported its code and answered once."""
        self._workers = [await self._spawn() for _ in range(self.processes)]
        await asyncio.gather(*(w.submit(b"") for w in self._workers))

    async def _spawn(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "milter.workers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return _Worker(process)

    async def text(self, raw: bytes) -> str | None:
        """The model text of `raw`, or None if no worker could give it (the caller computes it)."""
        if self._closed or not self._workers:
            return None
        worker = min(self._workers, key=lambda w: len(w.pending))
        if not worker.alive:
            await self._replace(worker)
            return None
        stdin = worker.process.stdin
        future = worker.submit(raw)
        try:
            async with asyncio.timeout(self.timeout):
                if stdin is not None and len(raw) > 65536:
                    with contextlib.suppress(OSError):
                        await stdin.drain()
                return await asyncio.shield(future)
        except TimeoutError:
            log.error("text worker %d gave no answer in %g s; killing it", worker.process.pid, self.timeout)
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            await self._replace(worker)
            raise TextTimeout(f"no model text within {self.timeout:g} s (text worker killed)") from None

    async def _replace(self, worker: _Worker) -> None:
        if worker not in self._workers or self._closed:
            return
        self._workers.remove(worker)
        log.error(
            "text worker %d exited (%s); starting another", worker.process.pid, worker.process.returncode
        )
        with contextlib.suppress(Exception):
            await worker.close()
        try:
            self._workers.append(await self._spawn())
        except OSError as e:
            log.error("cannot start a text worker: %s; extracting text in the daemon", e)

    async def close(self) -> None:
        self._closed = True
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def worker_main() -> None:
    """A worker: frames of raw bytes in, frames of model text out, until stdin closes."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    signals.load_tables()  # before the first message, not during it
    while True:
        header = _read_exact(stdin, _HEADER)
        if header is None:
            return
        raw = _read_exact(stdin, int.from_bytes(header, "big"))
        if raw is None:
            return
        try:
            reply = _OK + message_text(raw).encode("utf-8", "surrogatepass")
        except Exception:  # message_text never raises; if it ever does, the daemon retries in-process
            reply = _FAILED
        stdout.write(len(reply).to_bytes(_HEADER, "big") + reply)
        stdout.flush()


if __name__ == "__main__":
    worker_main()
