"""`milter learn` as Dovecot and an administrator run it: a real subprocess each time, standard
input for the Sieve pipe, JSON out, exit statuses; and the shipped dovecot/milter-learn wrapper,
which must exit 0 and read the whole message whatever happens."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from milter.feedback import DB_NAME

REPO = Path(__file__).resolve().parent.parent
WRAPPER = REPO / "dovecot" / "milter-learn"


def message(n: int, extra: str = "", subject: str = "hello") -> bytes:
    return (
        f"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: {subject}\n"
        f"Message-ID: <cli{n}@example.org>\n{extra}\nMessage number {n}.\n"
    ).encode()


def learn(*args: str, stdin: bytes = b"", user: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "USER"}
    if user is not None:
        env["USER"] = user
    return subprocess.run(
        [sys.executable, "-m", "milter", "learn", *args],
        input=stdin.decode("latin-1"),
        capture_output=True,
        text=True,
        encoding="latin-1",
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def stats(store: Path) -> dict[str, object]:
    done = learn("--stats", "--json", "--store", str(store))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def stored(store: Path) -> list[tuple[str, str, str | None, bytes]]:
    with closing(sqlite3.connect(store / DB_NAME)) as conn:
        rows = conn.execute("SELECT message_id, label, user, raw FROM messages ORDER BY id").fetchall()
    return [(m, label, user, bytes(raw)) for m, label, user, raw in rows]


def test_standard_input_learned_then_known_then_relabelled(tmp_path: Path) -> None:
    store = str(tmp_path)
    first = learn("--spam", "--store", store, "-", stdin=message(1), user="alice")
    assert (first.returncode, first.stdout, first.stderr) == (0, "-: learned as spam\n", "")
    again = learn("--spam", "--store", store, "-", stdin=message(1), user="carol")
    assert (again.returncode, again.stdout) == (0, "-: already in the store as spam\n")
    changed = learn("--ham", "--store", store, "--user", "bob", "-", stdin=message(1), user="alice")
    assert (changed.returncode, changed.stdout) == (0, "-: relabelled spam -> ham\n")
    got = stats(tmp_path)
    assert (got["messages"], got["bytes"]) == (1, len(message(1)))
    assert got["labels"] == {
        "spam": {"messages": 0, "bytes": 0, "age": {"day": 0, "week": 0, "month": 0, "older": 0}},
        "ham": {
            "messages": 1,
            "bytes": len(message(1)),
            "age": {"day": 1, "week": 0, "month": 0, "older": 0},
        },
    }
    assert got["users"] == [{"user": "bob", "spam": 0, "ham": 1}]  # --user over $USER
    assert got["limits"] == {"messages": 50000, "bytes": 1 << 30}
    assert got["store"] == str(tmp_path / DB_NAME)
    assert got["oldest"] == got["newest"] and str(got["oldest"]).endswith("Z")


def test_json_lines_and_a_refused_file_among_good_ones(tmp_path: Path) -> None:
    good, empty, binary, missing = (
        tmp_path / name for name in ("good.eml", "empty.eml", "a.png", "gone.eml")
    )
    good.write_bytes(message(1, extra="X-Spam-Flag: YES\nX-Spam-Score: 0.990\n"))
    empty.write_bytes(b"")
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    store = tmp_path / "store"
    store.mkdir()
    done = learn("--spam", "--json", "--store", str(store), str(empty), str(good), str(binary), str(missing))
    assert done.returncode == 2  # refused input; the good file is learned all the same
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["file"] for r in records] == [str(empty), str(good), str(binary), str(missing)]
    learned = records[1]
    assert set(learned) == {
        "file",
        "outcome",
        "label",
        "previous",
        "message_id",
        "digest",
        "size",
        "user",
        "evicted",
    }
    assert (learned["outcome"], learned["label"], learned["previous"]) == ("learned", "spam", None)
    assert (learned["message_id"], learned["size"], learned["user"]) == (
        "<cli1@example.org>",
        len(message(1)),
        None,
    )
    assert len(learned["digest"]) == 64 and learned["evicted"] == 0
    assert (
        records[0] == {"file": str(empty), "error": records[0]["error"]}
        and "empty input" in records[0]["error"]
    )
    assert "NUL bytes" in records[2]["error"] and "cannot read" in records[3]["error"]
    for name, why in (
        (empty, "empty input"),
        (binary, "contains NUL bytes"),
        (missing, "cannot read: No such file"),
    ):
        assert f"milter learn: {name}: refused: {why}" in done.stderr
    assert [(m, label, raw) for m, label, _, raw in stored(store)] == [
        ("<cli1@example.org>", "spam", message(1))
    ]


def test_config_names_the_store_the_subject_tag_and_the_size_limit(tmp_path: Path) -> None:
    config = tmp_path / "milter.yaml"
    config.write_text("feedback_store: feedback\nsubject_tag: '[SPAM]'\nmax_message_size: 2048\n")
    (tmp_path / "feedback").mkdir()  # relative to the config file, as every path in it
    tagged = message(1, subject="[SPAM] cheap pills", extra="X-Spam-Flag: YES\n")
    done = learn("--spam", "--config", str(config), "-", stdin=tagged, user="alice")
    assert (done.returncode, done.stderr) == (0, "")
    [(_, _, user, raw)] = stored(tmp_path / "feedback")
    assert (user, raw) == ("alice", message(1, subject="cheap pills"))
    huge = message(2, extra="X-Filler: " + "x" * 3000 + "\n")
    refused = learn("--spam", "--config", str(config), "-", stdin=huge)
    assert refused.returncode == 2
    assert (
        "milter learn: -: refused: 2049 bytes, more than the limit of 2048 (max_message_size)"
        in refused.stderr
    )
    assert len(stored(tmp_path / "feedback")) == 1


def test_a_maildir_argument_learns_cur_and_new_not_tmp_or_hidden(tmp_path: Path) -> None:
    maildir = tmp_path / "Junk"
    for n, sub in enumerate(("cur", "new", "tmp"), 1):
        (maildir / sub).mkdir(parents=True)
        (maildir / sub / f"{n}.eml").write_bytes(message(n))
    (maildir / "cur" / ".hidden").write_bytes(message(9))
    store = tmp_path / "store"
    store.mkdir()
    done = learn("--spam", "--store", str(store), "--user", "admin", str(maildir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{maildir / 'cur' / '1.eml'}: learned as spam",
        f"{maildir / 'new' / '2.eml'}: learned as spam",
    ]
    assert [(m, user) for m, _, user, _ in stored(store)] == [
        ("<cli1@example.org>", "admin"),
        ("<cli2@example.org>", "admin"),
    ]


def test_store_problems_exit_1_naming_the_file(tmp_path: Path) -> None:
    missing = learn("--spam", "--store", str(tmp_path / "nowhere"), "-", stdin=message(1))
    assert missing.returncode == 1
    assert (
        f"milter learn: {tmp_path / 'nowhere'}: No such file or directory; expected the feedback"
        in missing.stderr
    )
    (tmp_path / DB_NAME).write_text("this is not a database " * 100)
    broken = learn("--ham", "--store", str(tmp_path), "-", stdin=message(1))
    assert broken.returncode == 1 and f"milter learn: {tmp_path / DB_NAME}: cannot read: " in broken.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ((), "one of the arguments --spam --ham --stats is required"),
        (("--spam",), "--spam needs at least one FILE, or - for standard input"),
        (("--stats", "x.eml"), "--stats takes no FILE"),
        (("--spam", "--ham", "-"), "not allowed with argument"),
        (("--spam", "-", "-"), "- (standard input) can be given once"),
        (("--spam", "--config", "/nonexistent/milter.yaml", "-"), "/nonexistent/milter.yaml"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], said: str) -> None:
    done = learn(*args, "--store", str(tmp_path), stdin=message(1))
    assert (done.returncode, done.stdout) == (2, "")
    assert said in done.stderr
    assert not (tmp_path / DB_NAME).exists()


def test_stats_as_text(tmp_path: Path) -> None:
    for n, label, user in ((1, "--spam", "alice"), (2, "--spam", "alice"), (3, "--ham", "")):
        assert learn(label, "--store", str(tmp_path), "--user", user, "-", stdin=message(n)).returncode == 0
    done = learn("--stats", "--store", str(tmp_path))
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0] == f"store: {tmp_path / DB_NAME}"
    assert lines[1] == f"messages: 3 of at most 50000, {3 * len(message(1))} bytes of at most {1 << 30}"
    assert lines[4].split() == ["spam", "2", str(2 * len(message(1))), "2", "0", "0", "0"]
    assert lines[5].split() == ["ham", "1", str(len(message(1))), "1", "0", "0", "0"]
    assert [line.split() for line in lines[7:]] == [
        ["alice", "spam", "2", "ham", "0"],
        ["(unknown)", "spam", "0", "ham", "1"],
    ]


def test_help_documents_the_contract() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "milter", "learn", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    for word in ("--spam", "--ham", "--stats", "--store DIR", "--user NAME", "--config FILE", "--json", "`-`",
                 "exit status:", "  0  ", "  1  ", "  2  ", '"outcome"', '"digest"', '"users"', "X-Spam-*",
                 "subject_tag", "50000", "1 GiB", "WAL", "$USER", "feedback_store"):  # fmt: skip
        assert word in done.stdout, word
    top = subprocess.run(
        [sys.executable, "-m", "milter", "--help"], capture_output=True, text=True, check=False
    )
    assert "learn" in top.stdout


# --- the Dovecot pipe wrapper -----------------------------------------------------------------


@pytest.fixture
def wrapper(tmp_path: Path) -> Path:
    """dovecot/milter-learn as installed, its two paths pointed at this milter and a config."""
    config = tmp_path / "milter.yaml"
    config.write_text(f"feedback_store: {tmp_path / 'store'}\nmax_message_size: 4096\n")
    milter = Path(os.path.abspath(sys.executable)).parent / "milter"
    text = WRAPPER.read_text()
    for old, new in (
        ("MILTER=/opt/milter/bin/milter", f"MILTER={milter}"),
        ("CONFIG=/etc/milter/milter.yaml", f"CONFIG={config}"),
    ):
        assert old in text
        text = text.replace(old, new)
    installed = tmp_path / "milter-learn"
    installed.write_text(text)
    installed.chmod(0o755)
    return installed


def pipe(wrapper: Path, args: list[str], raw: bytes) -> tuple[int, str]:
    """Run the wrapper as Dovecot does: the message written whole to its standard input (a
    wrapper that stopped reading would make this write fail), its error output kept."""
    with subprocess.Popen(
        [str(wrapper), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={},
    ) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(raw)  # raises BrokenPipeError if the wrapper left some unread
        proc.stdin.close()
        err = proc.stderr.read().decode()
        return proc.wait(60), err


def test_wrapper_learns_with_the_user_dovecot_names(tmp_path: Path, wrapper: Path) -> None:
    (tmp_path / "store").mkdir()
    assert pipe(wrapper, ["spam", "alice"], message(1, extra="X-Spam-Flag: NO\n")) == (0, "")
    assert pipe(wrapper, ["ham", "alice"], message(2)) == (0, "")
    assert [(m, label, user) for m, label, user, _ in stored(tmp_path / "store")] == [
        ("<cli1@example.org>", "spam", "alice"),
        ("<cli2@example.org>", "ham", "alice"),
    ]


def test_wrapper_exits_0_and_logs_when_learning_fails(tmp_path: Path, wrapper: Path) -> None:
    # No store directory: milter learn exits 1 before it reads the message.
    code, err = pipe(wrapper, ["spam", "alice"], message(1))
    assert code == 0
    assert err.startswith(
        "milter-learn: spam from user 'alice' not learned: milter learn exited 1: milter learn: "
    )
    assert "expected the feedback store's directory" in err
    (tmp_path / "store").mkdir()
    # Larger than max_message_size: milter learn stops reading at the limit; the rest is drained.
    code, err = pipe(wrapper, ["ham", "bob"], message(2, extra="X-Filler: " + "x" * 1_000_000 + "\n"))
    assert code == 0 and "milter learn exited 2" in err and "more than the limit of 4096" in err
    code, err = pipe(wrapper, ["maybe", "bob"], message(3))
    assert (
        code == 0
        and err == "milter-learn: expected spam or ham as the first argument, got 'maybe'; nothing learned\n"
    )
    assert not (tmp_path / "store" / DB_NAME).exists()


def test_the_document_installs_where_the_shipped_files_look() -> None:
    """docs/learning.md's commands put each file where 90-milter-imapsieve.conf and the wrapper
    expect it, and make the directory and group the config and the conf name."""
    from milter.config import Config

    doc = (REPO / "docs" / "learning.md").read_text()
    conf = (REPO / "dovecot" / "90-milter-imapsieve.conf").read_text()
    for setting, installed in (
        (
            "sieve_pipe_bin_dir = /etc/dovecot/sieve-pipe",
            "install -m 0755 dovecot/milter-learn /etc/dovecot/sieve-pipe/",
        ),
        (
            "file:/etc/dovecot/sieve/milter-learn-spam.sieve",
            "sievec /etc/dovecot/sieve/milter-learn-spam.sieve",
        ),
        (
            "file:/etc/dovecot/sieve/milter-learn-ham.sieve",
            "sievec /etc/dovecot/sieve/milter-learn-ham.sieve",
        ),
        ("mail_access_groups = milter-feedback", "groupadd --system milter-feedback"),
    ):
        assert setting in conf and installed in doc, (setting, installed)
    assert f"install -d -m 2770 -o milter -g milter-feedback {Config().feedback_store}\n" in doc
    assert "install -m 0644 dovecot/90-milter-imapsieve.conf /etc/dovecot/conf.d/" in doc
    assert "CONFIG=/etc/milter/milter.yaml\n" in WRAPPER.read_text()
