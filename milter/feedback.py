"""The feedback store: the messages users taught as spam or ham, kept for retraining.

One SQLite database, `feedback.sqlite3`, in a directory of its own. Writers are many and short
lived: Dovecot runs `milter learn` once per message a user moves into or out of Junk, in the
IMAP process of that user's session, so any number may write at once. Hence WAL mode (readers
never wait, writers queue on one lock), a busy timeout instead of failing on a held lock, and
each learn as one `BEGIN IMMEDIATE` transaction: the duplicate check, the write and the eviction
it causes are one step that a crash or a concurrent writer cannot split.

A message is known by its Message-ID and a digest of its body (line ends read as LF, so the copy
from Dovecot and the file from a Maildir are one): taught twice, it is kept once; taught with
the other label, the later label wins (the user changed their mind). milter's own marks (the
X-Spam-* fields, the subject tag) are taken off first, by milter.mark.unmark: the model must
not learn its own verdict. The store holds at most `max_messages` messages and `max_bytes` of
them; past either, the oldest taught go.

The database is created whole under a temporary name and linked into place, so no process
ever opens a half-made store; its mode follows the directory's group bits (never readable by
others: it is users' mail), and SQLite gives its -wal and -shm files the database's mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from milter.errors import MilterError
from milter.mark import unmark
from milter.message import Message, header_end

DB_NAME = "feedback.sqlite3"
SCHEMA_VERSION = 1
MAX_MESSAGES = 50_000
MAX_BYTES = 1 << 30  # 1 GiB
# Postfix's message_size_limit, as the config's max_message_size: larger is not mail we took.
MAX_MESSAGE_BYTES = 10_240_000
# Dovecot waits 10 s for a pipe program (sieve_pipe_exec_timeout); a learn takes milliseconds.
BUSY_TIMEOUT = 8.0

Label = Literal["spam", "ham"]
LABELS: tuple[Label, ...] = ("spam", "ham")
Outcome = Literal["learned", "known", "relabelled"]

# Fields that every message has one of (RFC 5322 requires From and Date): a text file that
# merely starts with "Word:" is not a message.
_MESSAGE_FIELDS = (b"from", b"date", b"message-id", b"subject", b"to")
# Age buckets of --stats, disjoint: taught less than a day ago, a day to a week, a week to 30 days.
AGES: tuple[tuple[str, float], ...] = (("day", 86400.0), ("week", 7 * 86400.0), ("month", 30 * 86400.0))

_SCHEMA = f"""
CREATE TABLE messages (
    id         INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,     -- as the header gives it, unfolded; '' when it has none
    digest     TEXT NOT NULL,     -- SHA-256 (hex) of the body, CRLF read as LF
    label      TEXT NOT NULL CHECK (label IN ('spam', 'ham')),
    taught_at  REAL NOT NULL,     -- Unix time of the last label
    user       TEXT,              -- who taught the label (NULL: not known)
    size       INTEGER NOT NULL,  -- bytes of raw
    raw        BLOB NOT NULL,     -- the message as taught, milter's marks taken off
    UNIQUE (message_id, digest)
);
-- Oldest first for eviction; covering, so the byte total never reads a message.
CREATE INDEX messages_by_age ON messages (taught_at, id, size);
CREATE INDEX messages_by_user ON messages (user, label);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class FeedbackError(MilterError):
    """The store cannot be opened or written; the message names the file and what was expected."""


class NotAMessage(MilterError):
    """Input refused before it reached the store: empty, too large, binary, or no header fields."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message ready to store: milter's marks off, and the key it is known by."""

    raw: bytes
    message_id: str
    digest: str


@dataclass(frozen=True, slots=True)
class Taught:
    """What one learn did."""

    outcome: Outcome
    label: Label
    previous: Label | None  # the label it had before (relabelled, known)
    message_id: str
    digest: str
    size: int
    evicted: int  # oldest messages removed to stay within the caps


@dataclass(frozen=True, slots=True)
class Feedback:
    """One message of the store as retraining reads it."""

    id: int
    label: Label
    taught_at: float
    user: str | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The store as one read transaction saw it (Store.snapshot); both in the same order."""

    conn: sqlite3.Connection
    path: Path

    def labels(self) -> list[Feedback]:
        """Every message without its bytes (raw is b""), oldest taught first, ties by row."""
        try:
            rows = self.conn.execute(
                "SELECT id, label, taught_at, user FROM messages ORDER BY taught_at, id"
            ).fetchall()
        except sqlite3.Error as e:
            raise FeedbackError(f"{self.path}: cannot read: {e}") from None
        return [Feedback(int(i), label, float(when), user, b"") for i, label, when, user in rows]

    def raws(self) -> Iterator[tuple[int, bytes]]:
        """(id, bytes) of every message, in the order of `labels`, one at a time."""
        try:
            for row_id, raw in self.conn.execute("SELECT id, raw FROM messages ORDER BY taught_at, id"):
                yield int(row_id), bytes(raw)
        except sqlite3.Error as e:
            raise FeedbackError(f"{self.path}: cannot read: {e}") from None


@dataclass(frozen=True, slots=True)
class LabelStats:
    messages: int
    bytes: int
    ages: dict[str, int]  # "day", "week", "month", "older": disjoint buckets


@dataclass(frozen=True, slots=True)
class UserStats:
    user: str | None
    spam: int
    ham: int


@dataclass(frozen=True, slots=True)
class Stats:
    path: Path
    messages: int
    bytes: int
    max_messages: int
    max_bytes: int
    labels: dict[Label, LabelStats]
    users: list[UserStats]
    oldest: float | None
    newest: float | None


def prepare(
    raw: bytes,
    subject_tag: str | None = None,
    max_size: int = MAX_MESSAGE_BYTES,
    limit: str = "max_message_size",
) -> Prepared:
    """`raw` checked to be a message and unmarked; NotAMessage says why it is not one. `limit`
    names where `max_size` comes from, for the message."""
    if not raw.strip():
        raise NotAMessage("empty input; expected a message (header fields, a blank line, the body)")
    if len(raw) > max_size:
        raise NotAMessage(f"{len(raw)} bytes, more than the limit of {max_size} ({limit})")
    if b"\0" in raw:
        raise NotAMessage("contains NUL bytes: binary data, not a message")
    text = raw[raw.find(b"\n") + 1 :] if raw.startswith(b"From ") else raw  # an mbox From_ line
    end = header_end(text)
    fields = text[:end]
    if not fields:
        first = text.split(b"\n", 1)[0][:40].decode("utf-8", "replace")
        raise NotAMessage(f"no header fields: the first line ({first!r}) is not NAME: VALUE")
    lines = fields.split(b"\n")
    names = {
        line.partition(b":")[0].rstrip(b" \t").lower() for line in lines if line[:1] not in (b" ", b"\t", b"")
    }
    if not names.intersection(_MESSAGE_FIELDS):
        raise NotAMessage("no From, Date, Message-ID, Subject or To field: not a message")
    clean = unmark(raw, subject_tag)  # the header fields only: the body is text[end:] still
    # CRLF (SMTP, Dovecot's pipe) and LF (Maildir files) and a final newline or not: one body.
    body = text[end:].replace(b"\r\n", b"\n").strip(b"\n")
    return Prepared(clean, Message(clean).message_id or "", hashlib.sha256(body).hexdigest())


@dataclass
class Store:
    """The feedback store in `directory` (which must exist: its permissions are the admin's)."""

    directory: Path
    max_messages: int = MAX_MESSAGES
    max_bytes: int = MAX_BYTES
    max_message_size: int = MAX_MESSAGE_BYTES
    timeout: float = BUSY_TIMEOUT
    _conn: sqlite3.Connection | None = field(default=None, init=False, repr=False)

    @property
    def path(self) -> Path:
        return self.directory / DB_NAME

    def learn(
        self,
        raw: bytes,
        label: Label,
        user: str | None = None,
        subject_tag: str | None = None,
        now: float | None = None,
    ) -> Taught:
        """Keep `raw` as `label`, taught by `user`. NotAMessage (the store untouched) for bad
        input, FeedbackError when the store cannot be written."""
        if label not in LABELS:
            raise ValueError(f"label {label!r}; expected one of {LABELS}")
        if self.max_bytes < self.max_message_size:
            message = prepare(raw, subject_tag, self.max_bytes, "the store's byte cap")
        else:
            message = prepare(raw, subject_tag, self.max_message_size)
        when = time.time() if now is None else now
        size = len(message.raw)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id, label FROM messages WHERE message_id = ? AND digest = ?",
                (message.message_id, message.digest),
            ).fetchone()
            previous: Label | None = row[1] if row is not None else None
            outcome: Outcome
            if row is not None and previous == label:
                return Taught("known", label, previous, message.message_id, message.digest, size, 0)
            if row is not None:
                conn.execute(
                    "UPDATE messages SET label = ?, taught_at = ?, user = ?, size = ?, raw = ? WHERE id = ?",
                    (label, when, user, size, message.raw, row[0]),
                )
                kept, outcome = int(row[0]), "relabelled"
            else:
                cursor = conn.execute(
                    "INSERT INTO messages (message_id, digest, label, taught_at, user, size, raw)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (message.message_id, message.digest, label, when, user, size, message.raw),
                )
                kept, outcome = int(cursor.lastrowid or 0), "learned"
            evicted = self._evict(conn, kept)
        return Taught(outcome, label, previous, message.message_id, message.digest, size, evicted)

    def stats(self, now: float | None = None) -> Stats:
        """Counts by label and age, bytes, and counts by user; an empty store if none exists yet."""
        labels = {label: LabelStats(0, 0, {name: 0 for name in (*dict(AGES), "older")}) for label in LABELS}
        if not self.path.exists():
            self._check_directory()
            return Stats(self.path, 0, 0, self.max_messages, self.max_bytes, labels, [], None, None)
        when = time.time() if now is None else now
        ages = ", ".join("total(taught_at >= ?)" for _ in AGES)
        since = [when - seconds for _, seconds in AGES]
        with self._reading() as conn:
            for label, count, size, *within in conn.execute(
                f"SELECT label, count(*), total(size), {ages} FROM messages GROUP BY label", since
            ):
                buckets, below = {}, 0
                for (name, _), cumulative in zip(AGES, within, strict=True):
                    buckets[name] = int(cumulative) - below
                    below = int(cumulative)
                buckets["older"] = count - below
                labels[label] = LabelStats(count, int(size), buckets)
            users = [
                UserStats(user, int(spam), int(ham))
                for user, spam, ham in conn.execute(
                    "SELECT user, total(label = 'spam'), total(label = 'ham') FROM messages"
                    " GROUP BY user ORDER BY count(*) DESC, user"
                )
            ]
            oldest, newest = conn.execute("SELECT min(taught_at), max(taught_at) FROM messages").fetchone()
        return Stats(
            self.path,
            sum(s.messages for s in labels.values()),
            sum(s.bytes for s in labels.values()),
            self.max_messages,
            self.max_bytes,
            labels,
            users,
            oldest,
            newest,
        )

    def messages(self) -> list[Feedback]:
        """Every message in the store, oldest taught first (ties by row), from one snapshot.
        FeedbackError if there is no store yet: reading never creates one."""
        with self.snapshot() as snapshot:
            raws = dict(snapshot.raws())
            return [dataclasses.replace(m, raw=raws[m.id]) for m in snapshot.labels()]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """One consistent view of the store, to read in parts (the labels first, then the
        messages one at a time: retraining never holds the whole store in memory). FeedbackError
        if there is no store yet: reading never creates one."""
        if not self.path.exists():
            self._check_directory()
            raise FeedbackError(
                f"{self.path}: no feedback store yet; expected one made by `milter learn` (docs/learning.md)"
            )
        with self._reading() as conn:
            yield Snapshot(conn, self.path)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the database ---------------------------------------------------------------------------

    def _evict(self, conn: sqlite3.Connection, keep: int) -> int:
        """Remove the oldest messages (never `keep`, the one just taught) until within the caps."""
        count, total = conn.execute("SELECT count(*), total(size) FROM messages").fetchone()
        if count <= self.max_messages and total <= self.max_bytes:
            return 0
        doomed: list[int] = []
        cursor = conn.execute("SELECT id, size FROM messages WHERE id != ? ORDER BY taught_at, id", (keep,))
        for row_id, size in cursor:
            if count <= self.max_messages and total <= self.max_bytes:
                break
            doomed.append(row_id)
            count, total = count - 1, total - size
        cursor.close()  # finished reading before deleting from the same table
        conn.executemany("DELETE FROM messages WHERE id = ?", [(row_id,) for row_id in doomed])
        return len(doomed)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE waits on the busy timeout for
        the write lock, instead of failing at the first write as a deferred one can)."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise FeedbackError(f"{self.path}: cannot write: {e}") from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            conn.execute("BEGIN")  # one snapshot for all the figures
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise FeedbackError(f"{self.path}: cannot read: {e}") from None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if not self.path.exists():
            self._create()
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise FeedbackError(f"{self.path}: cannot open: {e}") from None
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        except sqlite3.Error as e:
            conn.close()
            raise FeedbackError(f"{self.path}: cannot read: {e}; expected a milter feedback store") from None
        if version != SCHEMA_VERSION or journal != "wal":
            conn.close()
            raise FeedbackError(
                f"{self.path}: schema version {version}, journal mode {journal}; expected a milter "
                f"feedback store (schema version {SCHEMA_VERSION}, WAL)"
            )
        self._conn = conn
        return conn

    def _check_directory(self) -> os.stat_result:
        try:
            info = self.directory.stat()
        except OSError as e:
            raise FeedbackError(
                f"{self.directory}: {e.strerror}; expected the feedback store's directory "
                "(create it as docs/learning.md says)"
            ) from None
        if not stat.S_ISDIR(info.st_mode):
            raise FeedbackError(f"{self.directory}: not a directory; expected the feedback store's directory")
        return info

    def _create(self) -> None:
        """Make the database whole under a temporary name, then link it into place: a process
        that finds `path` finds a complete store. Losing the race to another creator is fine."""
        info = self._check_directory()
        # Owner read-write, and the directory's group bits (the mail users share the store
        # through its group); never others: the store holds users' mail.
        mode = 0o600 | (info.st_mode & 0o060)
        temporary = self.directory / f".{DB_NAME}.{os.getpid()}.tmp"
        try:
            temporary.unlink(missing_ok=True)
            conn = sqlite3.connect(temporary, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = WAL")  # kept in the file: every later open is WAL
                conn.executescript(_SCHEMA)
            finally:
                conn.close()  # checkpoints and removes the temporary -wal and -shm
            os.chmod(temporary, mode)
            with contextlib.suppress(FileExistsError):
                os.link(temporary, self.path)
        except (OSError, sqlite3.Error) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise FeedbackError(
                f"{self.path}: cannot create: {reason}; expected a directory this user may write "
                "(docs/learning.md: group write and setgid)"
            ) from None
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(OSError):
                    Path(f"{temporary}{suffix}").unlink()
