"""The history of decisions: one SQLite database (WAL) that every worker writes and the console reads.

What is kept per message is the log line's content (milter.outcome.Decided) plus what a log
line leaves out: the recipients, the Subject, the features that pushed the score, and, for the
newest `raw_rows` messages, the message itself, so the console can teach it. Messages are
appended to segment files beside the database (PATH.messages/, one series per worker, a file
dropped whole once no kept message is in it) and the database keeps where each one is: as
SQLite blobs they cost the writer half again as much CPU in all (measured: about 80 against
52 us a message; the WAL frames and their checksums).

Off the hot path: a face calls `HistoryWriter.record(decided)`, which appends the record to a
bounded deque and returns; a writer thread takes what came every 0.25 s, reads the Subject,
serializes, and writes it in one transaction. When the deque is full (a disk slower
than the mail) the record is dropped and counted (`dropped`, the console shows it, and
milter_history_dropped_total): a reply is never delayed for the history. Retention: at most
`max_rows` decisions, the oldest go first.

Several processes write at once (`--workers N`: one writer per worker, and the console's own
bookkeeping): WAL lets readers go on while one writer writes, and a busy timeout queues writers.
The workers also keep a row each in `workers` (model and rules serving, when loaded, a
heartbeat) and append reloads and refusals to `events`: the console shows the whole daemon
from this one file, whichever process serves it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any, BinaryIO

from milter.outcome import Decided

log = logging.getLogger("milter.history")

SCHEMA_VERSION = 1
QUEUE_SIZE = 20_000  # records waiting for the writer; past this they are dropped (and counted)
INTERVAL = 0.25  # seconds between the writer's rounds
BATCH = 2_000  # records per transaction at most
HEARTBEAT = 5.0  # seconds between a worker's heartbeats (the console's "workers up")
SEGMENT_BYTES = 16 << 20  # messages are appended to files of about this size, dropped whole
RAW_ROWS = 2_000  # newest messages kept whole, for teaching
MAX_RAW_BYTES = 1 << 20  # larger messages are not kept whole
MAX_EVENTS = 1_000
MAX_ACTIONS = 10_000
PRUNE_EVERY = 1_000  # rows written between retention passes
BUSY_TIMEOUT = 10.0
HEADER_SCAN = 64 * 1024  # where the Subject is looked for: the header block's first part
MAX_SUBJECT = 998  # a header line's limit: anything longer is cut for display and search

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS decisions (
    id          INTEGER PRIMARY KEY,
    time        REAL NOT NULL,        -- Unix time of the decision
    worker      INTEGER,              -- the worker process that decided (0 without --workers)
    protocol    TEXT NOT NULL,        -- smtp or milter
    queue_id    TEXT,
    message_id  TEXT,
    client      TEXT,
    helo        TEXT,
    sender      TEXT NOT NULL,        -- the envelope sender ('' for the null sender)
    recipients  TEXT NOT NULL,        -- JSON list of the envelope recipients
    subject     TEXT NOT NULL,        -- decoded (RFC 2047), at most {MAX_SUBJECT} characters
    size        INTEGER NOT NULL,
    probability REAL,                 -- NULL: unscored
    action      TEXT,                 -- NULL: never decided (the next hop went away first)
    rule        TEXT,
    model       TEXT,
    error       TEXT,
    features    TEXT NOT NULL,        -- JSON list of [feature, contribution], strongest first
    reply       TEXT,
    next_hop    TEXT,
    ms          REAL,                 -- milliseconds from MAIL (SMTP) or end of message (milter)
    quarantine  TEXT,                 -- the quarantine id (SMTP) or Postfix queue id (milter hold)
    status      TEXT                  -- reserved; the console's released/deleted come from `actions`
);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (time);
CREATE INDEX IF NOT EXISTS decisions_by_quarantine ON decisions (quarantine) WHERE quarantine IS NOT NULL;
CREATE TABLE IF NOT EXISTS raw (
    id      INTEGER PRIMARY KEY,      -- = decisions.id
    segment TEXT NOT NULL,            -- the file in the messages directory that holds it
    offset  INTEGER NOT NULL,         -- where the message as received starts in it
    length  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker             INTEGER PRIMARY KEY,
    pid                INTEGER NOT NULL,
    protocol           TEXT NOT NULL,
    started            REAL NOT NULL,
    heartbeat          REAL NOT NULL,
    state              TEXT NOT NULL,  -- serving, stopped
    model_id           TEXT,
    model_loaded       REAL,
    model_load_seconds REAL,
    rules              INTEGER,
    rules_loaded       REAL,
    written            INTEGER NOT NULL DEFAULT 0,
    dropped            INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY,
    time   REAL NOT NULL,
    worker INTEGER,
    kind   TEXT NOT NULL,             -- reload, refused, error
    text   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    id      INTEGER PRIMARY KEY,
    time    REAL NOT NULL,
    user    TEXT NOT NULL,            -- who: the console user, or console@ADDRESS without a password
    address TEXT,                     -- from where
    action  TEXT NOT NULL,            -- release, delete, teach-spam, teach-ham, login, ...
    target  TEXT NOT NULL,            -- the quarantine id or history id acted on
    result  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_by_target ON actions (target);
"""


class HistoryError(Exception):
    """The history database cannot be opened or is not one."""


def connect(path: Path, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """An open history database (created if absent), WAL mode, autocommit."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise HistoryError(f"{path}: cannot open: {e}") from None
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise HistoryError(f"{path}: schema version {version}; expected {SCHEMA_VERSION}")
        if version == 0:
            # Several workers may create it at once: every statement is IF NOT EXISTS, so
            # whichever runs second changes nothing.
            conn.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
    except sqlite3.Error as e:
        conn.close()
        raise HistoryError(f"{path}: cannot use: {e}; expected a milter history database") from None
    except HistoryError:
        conn.close()
        raise
    return conn


_FIELD_END = re.compile(rb"\n(?![ \t])")


def subject_of(raw: bytes) -> str:
    """The Subject of `raw`, RFC 2047 decoded where it decodes, whitespace collapsed, cut at
    MAX_SUBJECT characters; never raises (a broken encoding shows as sent).

    Found with bytes.find in the lowered header block: parsing every field for it, or a regex
    ignoring case, cost several times as much (in the writer, beside the event loop)."""
    # The header block, found without copying the message (header_block slices 256 KiB first).
    ends = [i for i in (raw.find(b"\n\n", 0, HEADER_SCAN), raw.find(b"\n\r\n", 0, HEADER_SCAN)) if i >= 0]
    head = raw[: min(ends)] if ends else raw[:HEADER_SCAN]
    low = b"\n" + head.lower()
    at = low.find(b"\nsubject:")
    if at < 0:
        return ""
    start = at + len(b"subject:")  # in `head`: `low` has one byte more in front
    end = _FIELD_END.search(head, start)
    value = head[start : end.start() if end else len(head)][: MAX_SUBJECT * 4].decode("utf-8", "replace")
    if "=?" in value:
        with contextlib.suppress(Exception):  # hostile encodings: LookupError, ValueError, ...
            value = str(make_header(decode_header(value)))
    return " ".join(value.split())[:MAX_SUBJECT]


def _row(d: Decided, worker: int) -> tuple[Any, ...]:
    f = d.fields
    probability = f.get("probability")
    return (
        d.time,
        worker,
        d.protocol,
        f.get("queue_id"),
        f.get("message_id"),
        f.get("client"),
        f.get("helo"),
        d.envelope.mail_from,
        json.dumps(list(d.envelope.rcpt_tos), ensure_ascii=False),
        subject_of(d.raw),
        len(d.raw),
        probability if isinstance(probability, float | int) else None,
        f.get("action"),
        f.get("rule"),
        f.get("model"),
        f.get("error"),
        json.dumps([[name, value] for name, value in d.features], ensure_ascii=False),
        f.get("reply"),
        _text(f.get("next_hop")),
        f.get("ms"),
        d.quarantine,
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


_INSERT = (
    "INSERT INTO decisions (time, worker, protocol, queue_id, message_id, client, helo, sender,"
    " recipients, subject, size, probability, action, rule, model, error, features, reply, next_hop,"
    " ms, quarantine) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class _Status:
    fields: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class _Event:
    time: float
    kind: str
    text: str


class HistoryWriter:
    """Records decisions (and the worker's status) from the event loop; writes in a thread.

    The hand-over is a deque: appending is one atomic operation with no lock and wakes nobody
    (a queue.Queue woke the writer for every message, which then wrote one-row transactions:
    a fifth more CPU per message under load). The writer wakes every `interval` seconds and
    writes what has come in one transaction.
    """

    def __init__(
        self,
        path: Path,
        *,
        worker: int = 0,
        protocol: str = "smtp",
        max_rows: int = 100_000,
        queue_size: int = QUEUE_SIZE,
        raw_rows: int = RAW_ROWS,
        heartbeat: float = HEARTBEAT,
        interval: float = INTERVAL,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.worker = worker
        self.protocol = protocol
        self.max_rows = max_rows
        self.raw_rows = raw_rows
        self.heartbeat = heartbeat
        self.interval = interval
        self.queue_size = queue_size
        self.on_drop = on_drop  # called for each dropped record (metrics)
        self.dropped = 0
        self.written = 0
        self._pending: deque[object] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._since_prune = 0
        self._last_error = 0.0
        self._segment: BinaryIO | None = None
        self._segment_name = ""
        self._segment_size = 0

    def start(self) -> None:
        """Open (or create) the database and start the writer; HistoryError if it cannot."""
        self._conn = connect(self.path)
        now = time.time()
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workers (worker, pid, protocol, started, heartbeat, state)"
                " VALUES (?, ?, ?, ?, ?, 'serving')",
                (self.worker, os.getpid(), self.protocol, now, now),
            )
        self._thread = threading.Thread(target=self._run, name="milter-history", daemon=True)
        self._thread.start()

    # --- from the event loop: never blocks -------------------------------------------------------

    def record(self, decided: Decided) -> None:
        if len(self._pending) >= self.queue_size:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return
        self._pending.append(decided)

    def status(self, **fields: object) -> None:
        """Update this worker's row: model_id, model_loaded, model_load_seconds, rules, rules_loaded."""
        self._pending.append(_Status(fields))

    def event(self, kind: str, text: str) -> None:
        self._pending.append(_Event(time.time(), kind, text))

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending (for up to `timeout` seconds), mark the worker stopped, close."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None

    # --- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        last_beat = time.monotonic()
        while True:
            stopping = self._stop.wait(self.interval)
            while True:
                items: list[object] = []
                while self._pending and len(items) < BATCH:
                    items.append(self._pending.popleft())
                beat = (stopping and not self._pending) or time.monotonic() - last_beat >= self.heartbeat
                try:
                    self._write(items, beat, stopping and not self._pending)
                except (sqlite3.Error, HistoryError) as e:
                    self.dropped += sum(isinstance(i, Decided) for i in items)
                    now = time.monotonic()
                    if now - self._last_error > 60:  # one line a minute, not one per batch
                        self._last_error = now
                        log.warning(
                            "history %s: cannot write (%s); decisions dropped meanwhile", self.path, e
                        )
                if beat:
                    last_beat = time.monotonic()
                if not self._pending:
                    break
            if stopping:
                break
        if self._segment is not None:
            with contextlib.suppress(OSError):
                self._segment.close()
            self._segment = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _write(self, items: Sequence[object], beat: bool, stopping: bool) -> None:
        if not items and not beat:
            return
        decisions = [d for d in items if isinstance(d, Decided)]
        rows = [_row(d, self.worker) for d in decisions]
        with self._transaction() as conn:
            if rows:
                # Holding the write lock (BEGIN IMMEDIATE), the rows get the ids after the
                # largest: INTEGER PRIMARY KEY without AUTOINCREMENT takes max(id) + 1.
                first = int(conn.execute("SELECT coalesce(max(id), 0) + 1 FROM decisions").fetchone()[0])
                conn.executemany(_INSERT, rows)
                kept = [
                    (first + i, *self._append(d.raw), len(d.raw))
                    for i, d in enumerate(decisions)
                    if self.raw_rows and 0 < len(d.raw) <= MAX_RAW_BYTES
                ]
                if self._segment is not None:
                    self._segment.flush()  # before the rows that point into it are committed
                conn.executemany(
                    "INSERT OR REPLACE INTO raw (id, segment, offset, length) VALUES (?, ?, ?, ?)", kept
                )
            for item in items:
                if isinstance(item, _Status):
                    for key, value in item.fields.items():
                        if key in _STATUS_KEYS:
                            conn.execute(
                                f"UPDATE workers SET {key} = ? WHERE worker = ?", (value, self.worker)
                            )
                elif isinstance(item, _Event):
                    conn.execute(
                        "INSERT INTO events (time, worker, kind, text) VALUES (?, ?, ?, ?)",
                        (item.time, self.worker, item.kind, item.text),
                    )
            self.written += len(rows)
            self._since_prune += len(rows)
            if beat:
                conn.execute(
                    "UPDATE workers SET heartbeat = ?, pid = ?, written = ?, dropped = ?, state = ?"
                    " WHERE worker = ?",
                    (time.time(), os.getpid(), self.written, self.dropped,
                     "stopped" if stopping else "serving", self.worker),
                )  # fmt: skip
            if self._since_prune >= PRUNE_EVERY or stopping:
                self._since_prune = 0
                prune(conn, self.max_rows, self.raw_rows)
                self._drop_segments(conn)

    def _append(self, data: bytes) -> tuple[str, int]:
        """Write a message to the current segment file: (its name, the offset)."""
        if self._segment is None or self._segment_size >= SEGMENT_BYTES:
            self._rotate()
        assert self._segment is not None
        offset = self._segment_size
        self._segment.write(data)
        self._segment_size += len(data)
        return self._segment_name, offset

    def _rotate(self) -> None:
        if self._segment is not None:
            self._segment.close()
        directory = messages_directory(self.path)
        directory.mkdir(mode=0o700, exist_ok=True)
        self._segment_name = f"w{self.worker}-{time.time_ns()}.msgs"
        # Users' mail: readable by the owner alone, whatever the umask.
        fd = os.open(directory / self._segment_name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segment = os.fdopen(fd, "ab", buffering=1 << 20)
        self._segment_size = 0

    def _drop_segments(self, conn: sqlite3.Connection) -> None:
        """Remove this worker's segment files that no kept message points into any more."""
        prefix = f"w{self.worker}-"
        live = {
            r[0]
            for r in conn.execute("SELECT DISTINCT segment FROM raw WHERE segment LIKE ?", (prefix + "%",))
        }
        with contextlib.suppress(FileNotFoundError):
            for file in messages_directory(self.path).glob(prefix + "*.msgs"):
                if file.name not in live and file.name != self._segment_name:
                    file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        if conn is None:
            raise HistoryError(f"{self.path}: not open")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


_STATUS_KEYS = frozenset({"model_id", "model_loaded", "model_load_seconds", "rules", "rules_loaded"})


def messages_directory(path: Path) -> Path:
    """Where the history keeps the messages themselves: beside the database, PATH.messages/."""
    return path.with_name(path.name + ".messages")


def prune(conn: sqlite3.Connection, max_rows: int, raw_rows: int) -> None:
    """Keep the newest `max_rows` decisions, `raw_rows` messages, and bounded events/actions."""
    for table, keep in (
        ("decisions", max_rows),
        ("raw", raw_rows),
        ("events", MAX_EVENTS),
        ("actions", MAX_ACTIONS),
    ):
        row = conn.execute(f"SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,)).fetchone()
        if row is not None:
            conn.execute(f"DELETE FROM {table} WHERE id <= ?", (row[0],))
    conn.execute("DELETE FROM raw WHERE id < (SELECT min(id) FROM decisions)")


# --- reading: the console's side ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One decision as the console shows it."""

    id: int
    time: float
    worker: int | None
    protocol: str
    queue_id: str | None
    message_id: str | None
    client: str | None
    helo: str | None
    sender: str
    recipients: tuple[str, ...]
    subject: str
    size: int
    probability: float | None
    action: str | None
    rule: str | None
    model: str | None
    error: str | None
    features: tuple[tuple[str, float], ...]
    reply: str | None
    next_hop: str | None
    ms: float | None
    quarantine: str | None
    status: str | None
    kept: bool  # the message itself is still kept (it can be taught)


_COLUMNS = (
    "d.id, d.time, d.worker, d.protocol, d.queue_id, d.message_id, d.client, d.helo, d.sender,"
    " d.recipients, d.subject, d.size, d.probability, d.action, d.rule, d.model, d.error, d.features,"
    " d.reply, d.next_hop, d.ms, d.quarantine, coalesce(d.status, ("
    "   SELECT CASE a.action WHEN 'release' THEN 'released' ELSE 'deleted' END FROM actions a"
    "   WHERE d.quarantine IS NOT NULL AND a.target = d.quarantine"
    "   AND (a.action = 'delete' OR a.result LIKE 'released%') ORDER BY a.id DESC LIMIT 1)),"
    " r.id IS NOT NULL"
)


def _entry(row: Sequence[Any]) -> Entry:
    values = list(row)
    values[9] = tuple(json.loads(values[9]))
    values[17] = tuple((str(name), float(value)) for name, value in json.loads(values[17]))
    values[23] = bool(values[23])
    return Entry(*values)


@dataclass(frozen=True, slots=True)
class Search:
    """What the history page and GET /api/history filter by (all optional, all combined)."""

    action: str | None = None
    sender: str | None = None  # substring, any case
    subject: str | None = None  # substring, any case
    since: float | None = None  # Unix time
    until: float | None = None
    before: int | None = None  # entries older than this id (paging)
    limit: int = 100


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class History:
    """The history database as the console uses it: one connection, used under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def search(self, search: Search) -> list[Entry]:
        where: list[str] = []
        args: list[object] = []
        if search.action:
            where.append("d.action = ?")
            args.append(search.action)
        if search.sender:
            where.append("d.sender LIKE ? ESCAPE '\\'")
            args.append(_like(search.sender))
        if search.subject:
            where.append("d.subject LIKE ? ESCAPE '\\'")
            args.append(_like(search.subject))
        if search.since is not None:
            where.append("d.time >= ?")
            args.append(search.since)
        if search.until is not None:
            where.append("d.time < ?")
            args.append(search.until)
        if search.before is not None:
            where.append("d.id < ?")
            args.append(search.before)
        sql = f"SELECT {_COLUMNS} FROM decisions d LEFT JOIN raw r ON r.id = d.id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY d.id DESC LIMIT ?"
        args.append(max(1, min(search.limit, 10_000)))
        with self._db() as conn:
            return [_entry(row) for row in conn.execute(sql, args)]

    def entry(self, entry_id: int) -> Entry | None:
        with self._db() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM decisions d LEFT JOIN raw r ON r.id = d.id WHERE d.id = ?",
                (entry_id,),
            ).fetchone()
        return _entry(row) if row is not None else None

    def by_quarantine(self, quarantine_id: str) -> Entry | None:
        with self._db() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM decisions d LEFT JOIN raw r ON r.id = d.id"
                " WHERE d.quarantine = ? ORDER BY d.id DESC LIMIT 1",
                (quarantine_id,),
            ).fetchone()
        return _entry(row) if row is not None else None

    def raw(self, entry_id: int) -> bytes | None:
        """The message of a decision, if it is still kept."""
        with self._db() as conn:
            row = conn.execute("SELECT segment, offset, length FROM raw WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            return None
        segment, offset, length = row
        try:
            with (messages_directory(self.path) / str(segment)).open("rb") as f:
                f.seek(int(offset))
                data = f.read(int(length))
        except OSError:
            return None
        return data if len(data) == int(length) else None

    def log_action(self, user: str, address: str | None, action: str, target: str, result: str) -> None:
        with self._db() as conn:
            conn.execute(
                "INSERT INTO actions (time, user, address, action, target, result) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), user, address, action, target, result),
            )

    def actions(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._db() as conn:
            rows = conn.execute(
                "SELECT time, user, address, action, target, result FROM actions ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        keys = ("time", "user", "address", "action", "target", "result")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def events(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._db() as conn:
            rows = conn.execute(
                "SELECT time, worker, kind, text FROM events ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(zip(("time", "worker", "kind", "text"), row, strict=True)) for row in rows]

    def workers(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each worker's row, with `up`: serving, heartbeat recent, and its process alive."""
        when = time.time() if now is None else now
        with self._db() as conn:
            cursor = conn.execute(
                "SELECT worker, pid, protocol, started, heartbeat, state, model_id, model_loaded,"
                " model_load_seconds, rules, rules_loaded, written, dropped FROM workers ORDER BY worker"
            )
            names = [c[0] for c in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:
            row["up"] = (
                row["state"] == "serving"
                and when - float(row["heartbeat"]) <= 3 * HEARTBEAT
                and _alive(int(row["pid"]))
            )
        return rows

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Messages and actions per minute (the last hour) and per hour (the last day), the
        latency percentiles of the last hour, and totals."""
        when = time.time() if now is None else now
        with self._db() as conn:
            minute = self._series(conn, when, 60, 60)
            hour = self._series(conn, when, 3600, 24)
            ms = [r[0] for r in conn.execute(
                "SELECT ms FROM decisions WHERE time >= ? AND ms IS NOT NULL ORDER BY ms", (when - 3600,)
            )]  # fmt: skip
            total, first = conn.execute("SELECT count(*), min(time) FROM decisions").fetchone()
        return {
            "per_minute": minute,
            "per_hour": hour,
            "latency_ms": {
                "p50": _percentile(ms, 0.50),
                "p99": _percentile(ms, 0.99),
                "messages": len(ms),
                "window_seconds": 3600,
            },
            "kept": int(total),
            "oldest": first,
        }

    @staticmethod
    def _series(conn: sqlite3.Connection, now: float, width: int, count: int) -> dict[str, Any]:
        """Counts by action in `count` buckets of `width` seconds ending now, oldest first."""
        end = (int(now) // width + 1) * width
        start = end - width * count
        buckets: dict[str, list[int]] = {}
        totals = [0] * count
        for slot, action, n in conn.execute(
            "SELECT CAST((time - ?) / ? AS INTEGER) AS slot, coalesce(action, 'none'), count(*)"
            " FROM decisions WHERE time >= ? AND time < ? GROUP BY slot, 2",
            (start, width, start, end),
        ):
            if 0 <= slot < count:
                buckets.setdefault(action, [0] * count)[slot] += n
                totals[slot] += n
        return {"start": start, "width_seconds": width, "messages": totals, "actions": buckets}


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
