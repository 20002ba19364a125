"""Maildir++ delivery: the embedded next hop for running without Postfix, and the quarantine.

Layout (Maildir++, as Dovecot and Courier read it): the INBOX is PATH/{tmp,new,cur}; the spam
folder is PATH/.Junk/ with its own tmp/new/cur and the `maildirfolder` marker. A message is
written to tmp/, fsynced, renamed into place and the directory fsynced, so a crash leaves either
the whole message or none of it (plus a stray file in tmp/, which readers ignore).

Where a message goes, by action:
- deliver      -> new/<name>                 (unread, no flags)
- flag         -> cur/<name>:2,F             (flags live in the info part, which only cur/ names
                                              carry; this is what Dovecot itself does when it saves
                                              a message with flags)
- spam_folder  -> .Junk/new/<name>
Line ends are written as LF, as every Unix MDA writes Maildir files (the SMTP CRLF is transport).
All recipients of one message share this one mailbox: one copy is written.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from milter.delivery import HopReply, Sent
from milter.errors import RelayError
from milter.rules import Action

JUNK = ".Junk"
OK_MAIL = HopReply(250, "2.1.0 Ok")
OK_RCPT = HopReply(250, "2.1.5 Ok")

_counter = itertools.count(1)
# Maildir names must not contain '/' or ':' (the info separator); the spec's escapes.
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


class MaildirHop:
    """A Maildir++ tree as the next hop; also the quarantine store."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()  # fixed at start: a later chdir must not move the mail

    def __str__(self) -> str:
        return f"maildir:{self.root}"

    async def begin(
        self, mail_from: str, options: Sequence[str], xforward: Mapping[str, str]
    ) -> tuple[HopReply, MaildirTransaction]:
        return OK_MAIL, MaildirTransaction(self)

    async def close(self) -> None:
        return None

    async def store(self, data: bytes, action: Action) -> Path:
        """Write `data` where `action` puts it; the final path. RelayError if the disk refuses."""
        try:
            return await asyncio.to_thread(self.store_sync, data, action)
        except OSError as e:
            raise RelayError(f"cannot write to Maildir {self.root}: {e.strerror or e}") from e

    def store_sync(self, data: bytes, action: Action) -> Path:
        folder = self.root / JUNK if action is Action.SPAM_FOLDER else self.root
        _ensure_maildir(folder, subfolder=folder != self.root)
        data = data.replace(b"\r\n", b"\n")
        now = time.time()
        name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{_HOST},S={len(data)}"
        tmp = folder / "tmp" / name
        final = folder / "cur" / f"{name}:2,F" if action is Action.FLAG else folder / "new" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return final


class MaildirTransaction:
    def __init__(self, hop: MaildirHop) -> None:
        self.hop = hop

    async def add_recipient(self, address: str, options: Sequence[str]) -> HopReply:
        return OK_RCPT

    async def send(self, data: bytes, action: Action) -> Sent:
        path = await self.hop.store(data, action)
        folder = path.parent.parent.name if path.parent.parent != self.hop.root else "INBOX"
        return Sent((HopReply(250, f"2.0.0 Ok: delivered to {folder} as {path.name}"),))

    async def abort(self) -> None:
        return None


def _ensure_maildir(folder: Path, subfolder: bool) -> None:
    if (folder / "cur").is_dir() and (folder / "new").is_dir() and (folder / "tmp").is_dir():
        return
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    if subfolder:
        (folder / "maildirfolder").touch()
    _fsync_dir(folder)
    _fsync_dir(folder.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
