"""The feedback store: what is kept once, what wins, what is taken off, what goes at the cap, and
that many processes writing at once lose nothing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from milter.feedback import DB_NAME, FeedbackError, NotAMessage, Store, prepare
from milter.mark import mark, unmark
from milter.model import Score
from milter.policy import Verdict
from milter.rules import Action, Decision

REPO = Path(__file__).resolve().parent.parent
SPAM = Verdict(
    Decision(Action.SPAM_FOLDER, "spam", 0.9), Score(0.97, "spam-abc", (("subj:pills", 2.0),)), "spam-abc"
)
HAM = Verdict(Decision(Action.DELIVER, "default"), Score(0.01, "spam-abc", ()), "spam-abc")
DAY = 86400.0


def message(n: int, body: str = "", eol: bytes = b"\n", subject: str = "hello") -> bytes:
    lines = [b"From: Alice <alice@example.org>", b"To: bob@example.net", f"Subject: {subject}".encode(),
             f"Message-ID: <m{n}@example.org>".encode(), b""]  # fmt: skip
    return eol.join(lines) + eol + (body or f"Message number {n}.").encode() + eol


def rows(directory: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(directory / DB_NAME)) as conn:
        return conn.execute("SELECT message_id, label, user, size, raw FROM messages ORDER BY id").fetchall()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_taught_twice_kept_once(store: Store, tmp_path: Path) -> None:
    first = store.learn(message(1), "spam", "alice")
    again = store.learn(message(1), "spam", "bob")
    assert (first.outcome, again.outcome) == ("learned", "known")
    assert rows(tmp_path) == [("<m1@example.org>", "spam", "alice", len(message(1)), message(1))]


def test_the_later_opposite_label_wins(store: Store, tmp_path: Path) -> None:
    store.learn(message(1), "spam", "alice")
    changed = store.learn(message(1), "ham", "alice")
    assert (changed.outcome, changed.previous, changed.label) == ("relabelled", "spam", "ham")
    assert [row[:3] for row in rows(tmp_path)] == [("<m1@example.org>", "ham", "alice")]
    assert store.learn(message(1), "spam", "carol").outcome == "relabelled"
    assert [row[:3] for row in rows(tmp_path)] == [("<m1@example.org>", "spam", "carol")]


def test_same_message_id_other_body_and_same_body_other_id_are_two(store: Store, tmp_path: Path) -> None:
    store.learn(message(1), "spam")
    store.learn(message(1, body="Another text."), "spam")
    store.learn(message(2, body="Message number 1."), "spam")
    assert len(rows(tmp_path)) == 3


def test_milters_marks_are_taken_off_before_digest_and_storage(tmp_path: Path) -> None:
    """The copy a user moves carries X-Spam-* fields and maybe the subject tag: it is the same
    message as the one without, and what is kept carries none of it."""
    store = Store(tmp_path)
    raw = message(1, eol=b"\r\n", subject="cheap pills")
    marked = mark(raw, SPAM, "[SPAM]")
    assert marked != raw and b"X-Spam-Flag: YES" in marked and b"Subject: [SPAM] cheap pills" in marked
    assert store.learn(marked, "spam", subject_tag="[SPAM]").outcome == "learned"
    assert store.learn(raw, "spam", subject_tag="[SPAM]").outcome == "known"
    assert store.learn(mark(raw, HAM), "ham", subject_tag="[SPAM]").outcome == "relabelled"
    assert rows(tmp_path)[0][4] == raw  # exactly the unmarked bytes
    assert prepare(marked, "[SPAM]") == prepare(raw, "[SPAM]")


def test_unmark_undoes_mark() -> None:
    for raw in (
        message(1),
        message(2, eol=b"\r\n"),
        b"From x@y Mon Jan  1 00:00:00 2024\nSubject:hi\n\nbody\n",
    ):
        for verdict in (SPAM, HAM):
            assert unmark(mark(raw, verdict, "[SPAM]"), "[SPAM]") == raw
    # Forged or earlier X-Spam-* fields go too, continuation lines with them.
    forged = b"X-Spam-Status: No,\n\tscore=0.01\nFrom: a@example.org\nSubject: x\n\nbody\n"
    assert unmark(forged) == b"From: a@example.org\nSubject: x\n\nbody\n"


def test_crlf_and_lf_copies_are_one(store: Store) -> None:
    assert store.learn(message(1, eol=b"\r\n"), "spam").outcome == "learned"
    assert store.learn(message(1, eol=b"\n"), "spam").outcome == "known"
    assert store.learn(message(1).rstrip(b"\n"), "spam").outcome == "known"


def test_cap_by_count_removes_the_oldest_taught(tmp_path: Path) -> None:
    store = Store(tmp_path, max_messages=3)
    for n in range(1, 4):
        store.learn(message(n), "spam", now=1000.0 + n)
    store.learn(message(1), "ham", now=1010.0)  # relabelled: taught anew, now the newest
    taught = store.learn(message(4), "spam", now=1011.0)
    assert taught.evicted == 1
    assert [row[0] for row in rows(tmp_path)] == ["<m1@example.org>", "<m3@example.org>", "<m4@example.org>"]
    assert store.learn(message(5), "spam", now=1012.0).evicted == 1
    assert [row[0] for row in rows(tmp_path)] == ["<m1@example.org>", "<m4@example.org>", "<m5@example.org>"]


def test_cap_by_bytes_removes_the_oldest_until_it_fits(tmp_path: Path) -> None:
    small = [message(n, body="x" * 100) for n in range(1, 4)]
    store = Store(tmp_path, max_bytes=sum(map(len, small)) + 10)
    for n, raw in enumerate(small, 1):
        assert store.learn(raw, "ham", now=float(n)).evicted == 0
    big = message(9, body="y" * 250)  # room only after the two oldest go
    assert store.learn(big, "spam", now=10.0).evicted == 2
    assert [row[0] for row in rows(tmp_path)] == ["<m3@example.org>", "<m9@example.org>"]
    assert store.stats().bytes <= store.max_bytes
    with pytest.raises(NotAMessage, match=r"more than the limit of .* \(the store's byte cap\)"):
        store.learn(message(10, body="z" * 1000), "spam")  # larger than the whole store


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "empty input"),
        (b"  \r\n\n", "empty input"),
        (bytes(range(256)) * 4, "NUL bytes"),
        (b"\x89PNG\r\n\x1a\n" + b"\xff" * 64, "no header fields"),
        (b"hello world\nthis is a note\n", "no header fields"),
        (b"Note: shopping\nMilk: 2\n\neggs\n", "no From, Date, Message-ID, Subject or To"),
        (message(1, body="x" * 2000), "2\\d\\d\\d bytes, more than the limit of 1024"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_store_unchanged(tmp_path: Path, raw: bytes, why: str) -> None:
    fresh = Store(tmp_path / "fresh", max_message_size=1024)
    (tmp_path / "fresh").mkdir()
    with pytest.raises(NotAMessage, match=why):
        fresh.learn(raw, "spam")
    assert not (tmp_path / "fresh" / DB_NAME).exists()  # refused before the store was opened
    used = Store(tmp_path, max_message_size=1024)
    used.learn(message(2), "ham", "alice")
    used.close()
    before = (rows(tmp_path), hashlib.sha256((tmp_path / DB_NAME).read_bytes()).hexdigest())
    with Store(tmp_path, max_message_size=1024) as again, pytest.raises(NotAMessage, match=why):
        again.learn(raw, "spam")
    assert (rows(tmp_path), hashlib.sha256((tmp_path / DB_NAME).read_bytes()).hexdigest()) == before


def test_store_errors_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(FeedbackError, match=f"{tmp_path / 'missing'}: No such file or directory; expected"):
        Store(tmp_path / "missing").learn(message(1), "spam")
    (tmp_path / DB_NAME).write_bytes(b"not a database, just bytes " * 100)
    with pytest.raises(
        FeedbackError, match=f"{tmp_path / DB_NAME}: cannot read: .*expected a milter feedback"
    ):
        Store(tmp_path).learn(message(1), "spam")
    other = tmp_path / "other"
    other.mkdir()
    with contextlib.closing(sqlite3.connect(other / DB_NAME)) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(
        FeedbackError, match="schema version 0, journal mode delete; expected a milter feedback"
    ):
        Store(other).stats()


def test_files_follow_the_directorys_group_bits_never_others(tmp_path: Path) -> None:
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    os.chmod(shared, 0o2775)
    os.chmod(private, 0o700)
    with Store(shared) as store:
        store.learn(message(1), "spam")
        # The connection is open, so the -wal and -shm files are there: SQLite gives them the
        # database's mode, whatever the umask of the process that made them.
        modes = {p.name: p.stat().st_mode & 0o777 for p in shared.iterdir()}
    assert modes == {DB_NAME: 0o660, f"{DB_NAME}-wal": 0o660, f"{DB_NAME}-shm": 0o660}
    with Store(private) as store:
        store.learn(message(1), "spam")
    assert (private / DB_NAME).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in shared.iterdir() if p.name.endswith(".tmp")] == []


def test_stats_by_label_age_and_user(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.stats().messages == 0 and not (tmp_path / DB_NAME).exists()  # nothing created
    now = 100 * DAY
    taught = [
        (1, "spam", "alice", 0.5),
        (2, "spam", "alice", 3),
        (3, "spam", "bob", 10),
        (4, "ham", "bob", 40),
        (5, "ham", None, 0.1),
        (6, "spam", "alice", 6.9),
    ]
    for n, label, user, days in taught:
        store.learn(message(n), label, user, now=now - days * DAY)  # type: ignore[arg-type]
    stats = store.stats(now=now)
    assert (stats.messages, stats.bytes) == (6, sum(len(message(n)) for n, *_ in taught))
    assert stats.labels["spam"].ages == {"day": 1, "week": 2, "month": 1, "older": 0}
    assert stats.labels["ham"].ages == {"day": 1, "week": 0, "month": 0, "older": 1}
    assert (stats.labels["spam"].messages, stats.labels["ham"].messages) == (4, 2)
    assert [(u.user, u.spam, u.ham) for u in stats.users] == [("alice", 3, 0), ("bob", 1, 1), (None, 0, 1)]
    assert (stats.oldest, stats.newest) == (now - 40 * DAY, now - 0.1 * DAY)


WRITER = """
import sys
from pathlib import Path
from milter.feedback import Store

directory, me = Path(sys.argv[1]), int(sys.argv[2])
store = Store(directory)
print("ready", flush=True)
sys.stdin.read()  # the start signal: every writer is up before any writes

def message(tag, n):
    return (f"From: w{me}@example.org\\nSubject: s\\nMessage-ID: <{tag}-{n}@example.org>\\n\\n"
            f"body of {tag} {n}\\n").encode()

for n in range(50):
    store.learn(message(f"w{me}", n), "spam" if n % 2 else "ham", f"user{me}")
    if n % 5 == 0:  # every writer also teaches the same ten shared messages
        store.learn(message("shared", n // 5), "spam", f"user{me}")
print("done", flush=True)
"""


def test_eight_processes_teaching_at_once_lose_nothing(tmp_path: Path) -> None:
    """A fresh store (so its creation races too), 8 writers x 50 messages of their own plus 10
    that all of them teach: every one kept, the shared ones once, the database intact."""
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", WRITER, str(tmp_path), str(i)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=REPO,
                )
            )
            for i in range(8)
        ]
        for proc in writers:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        for proc in writers:
            assert proc.stdin is not None
            proc.stdin.close()  # go
        for proc in writers:
            assert proc.stdout is not None and proc.stderr is not None
            out, err = proc.stdout.read(), proc.stderr.read()
            assert (proc.wait(120), out, err) == (0, b"done\n", b"")
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        counts = dict(
            conn.execute(
                "SELECT user, count(*) FROM messages WHERE message_id NOT LIKE '<shared%' GROUP BY user"
            )
        )
        shared = conn.execute(
            "SELECT count(*), count(DISTINCT message_id) FROM messages WHERE message_id LIKE '<shared%'"
        )
        assert shared.fetchone() == (10, 10)
    assert counts == {f"user{i}": 50 for i in range(8)}
    stats = Store(tmp_path).stats()
    assert (stats.messages, stats.labels["spam"].messages, stats.labels["ham"].messages) == (410, 210, 200)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_snapshot_reads_labels_then_messages_as_one_view(tmp_path: Path) -> None:
    """Retraining reads the labels, then the messages one at a time: a learn in between (another
    process's) is not in either, and the two come in the same order."""
    with Store(tmp_path) as store:
        for n, when in ((1, 30.0), (2, 10.0), (3, 20.0)):
            store.learn(message(n), "spam" if n % 2 else "ham", "alice", now=when)
    with Store(tmp_path) as reader, reader.snapshot() as snapshot:
        labels = snapshot.labels()
        with Store(tmp_path) as writer:
            writer.learn(message(4), "ham", "bob", now=5.0)
            writer.learn(message(1), "ham", "bob", now=40.0)  # relabelled meanwhile
        raws = list(snapshot.raws())
    assert [(m.taught_at, m.label, m.raw) for m in labels] == [
        (10.0, "ham", b""),
        (20.0, "spam", b""),
        (30.0, "spam", b""),
    ]
    assert [m.id for m in labels] == [row_id for row_id, _ in raws]
    assert [raw for _, raw in raws] == [message(2), message(3), message(1)]
    with Store(tmp_path) as store:
        assert [(m.label, m.user) for m in store.messages()] == [
            ("ham", "bob"),
            ("ham", "alice"),
            ("spam", "alice"),
            ("ham", "bob"),
        ]
