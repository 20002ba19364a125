"""`milter learn`: put messages the users judged into the feedback store (milter.feedback)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from milter.errors import ConfigError

if TYPE_CHECKING:  # imported where used: `milter --help` loads every command module
    from milter.feedback import Store, Taught

DESCRIPTION = """\
Keep each message as spam or ham in the site's feedback store, the training data that users
give by moving mail into and out of Junk (dovecot/90-milter-imapsieve.conf runs this for every
such move). FILE is a message file, a directory (every file under it, e.g. a Maildir's cur/;
hidden files and tmp/ skipped), or `-` for one message on standard input, as a Sieve pipe
gives it.

What is kept: the message's bytes less milter's own marks (the X-Spam-* fields, and the config's
subject_tag where milter put it: the model must not learn its own verdict), its label, the time,
who taught it (--user, else $USER, which Dovecot's pipe sets to the mail user), its Message-ID,
a SHA-256 digest of its body, and its size. A message is known by its Message-ID and body
digest: taught again with the same label it is kept once ("known"); taught with the other label,
the later label wins ("relabelled"). The store keeps at most 50000 messages and 1 GiB of them;
past either, the oldest taught go. Each message is one SQLite transaction (WAL mode, busy
timeout), so any number of `milter learn` may run at once.

Refused, with the store untouched: empty input, more than max_message_size bytes, NUL bytes
(binary data), no header fields, or none of From, Date, Message-ID, Subject and To. The other
files are still learned. Each outcome is a line on standard output ("FILE: learned as spam");
with --json one object per message:
  {"file", "outcome", "label", "previous", "message_id", "digest", "size", "user", "evicted"}
and {"file", "error"} for a refused one.

--stats shows what the store holds: messages and bytes by label, by when they were taught (the
last day, a day to a week, a week to 30 days, older), and by user; with --json one object:
  {"store", "messages", "bytes", "limits": {"messages", "bytes"}, "oldest", "newest",
   "labels": {"spam"|"ham": {"messages", "bytes", "age": {"day", "week", "month", "older"}}},
   "users": [{"user", "spam", "ham"}, ...]}
with times as ISO 8601 UTC and "user" null where no user was known.
"""

EPILOG = """\
exit status:
  0  every message was learned (or was known already); --stats: shown
  1  the store could not be opened or written (its directory, permissions, a lock held past
     the busy timeout, a file that is no feedback store); the message was not learned
  2  usage error, a bad config file, or at least one input refused as not a message

files:
  /var/lib/milter-feedback/feedback.sqlite3   the store (config key feedback_store: its
                                              directory; -wal and -shm files beside it)

examples:
  milter learn --spam ~/Maildir/.Junk/cur
  milter learn --ham --user alice message.eml
  milter learn --spam - < message.eml
  milter learn --stats --json | jq .labels
"""

# Directory names under a Maildir that hold no messages to learn (Maildir's tmp/: partial).
_SKIPPED_DIRECTORIES = ("tmp",)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "learn",
        help="keep messages users judged as spam or ham in the feedback store",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--spam", dest="label", action="store_const", const="spam", help="the messages are spam"
    )
    what.add_argument(
        "--ham", dest="label", action="store_const", const="ham", help="the messages are not spam"
    )
    what.add_argument("--stats", action="store_true", help="show what the store holds instead")
    parser.add_argument("files", nargs="*", metavar="FILE", help="message file, directory, or - for stdin")
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="the store's directory (default: the config's feedback_store, /var/lib/milter-feedback)",
    )
    parser.add_argument(
        "--user",
        metavar="NAME",
        help="who taught the messages (default: $USER; Dovecot's pipe sets it to the mail user)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the config file for feedback_store, subject_tag and max_message_size "
        "(default: /etc/milter/milter.yaml if it exists)",
    )
    parser.add_argument("--json", action="store_true", help="JSON: one object per message, or the stats")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from milter.config import load_config
    from milter.feedback import FeedbackError, Store

    if args.stats and args.files:
        return _usage("--stats takes no FILE")
    if not args.stats and not args.files:
        return _usage(f"--{args.label} needs at least one FILE, or - for standard input")
    if args.files.count("-") > 1:
        return _usage("- (standard input) can be given once")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"milter learn: {e}", file=sys.stderr)
        return 2
    directory = args.store if args.store is not None else config.feedback_store
    with Store(directory, max_message_size=config.max_message_size) as store:
        try:
            if args.stats:
                _show_stats(store, args.json)
                return 0
            user = args.user or os.environ.get("USER") or None  # an empty --user: not known
            return _learn(store, args, user, config.subject_tag)
        except FeedbackError as e:
            print(f"milter learn: {e}", file=sys.stderr)
            return 1


def _usage(message: str) -> int:
    print(f"milter learn: {message}; see milter learn --help", file=sys.stderr)
    return 2


def _learn(store: Store, args: argparse.Namespace, user: str | None, subject_tag: str | None) -> int:
    from milter.feedback import NotAMessage

    refused = 0
    for name, raw in _sources(args.files, store.max_message_size):
        try:
            if isinstance(raw, OSError):
                raise NotAMessage(f"cannot read: {raw.strerror or raw}")
            taught = store.learn(raw, args.label, user, subject_tag)
        except NotAMessage as e:
            refused += 1
            print(f"milter learn: {name}: refused: {e}", file=sys.stderr)
            if args.json:
                print(json.dumps({"file": name, "error": str(e)}), flush=True)
            continue
        if args.json:
            record = {
                "file": name,
                "outcome": taught.outcome,
                "label": taught.label,
                "previous": taught.previous,
                "message_id": taught.message_id,
                "digest": taught.digest,
                "size": taught.size,
                "user": user,
                "evicted": taught.evicted,
            }
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(f"{name}: {_said(taught)}", flush=True)
    return 2 if refused else 0


def _said(taught: Taught) -> str:
    match taught.outcome:
        case "learned":
            text = f"learned as {taught.label}"
        case "known":
            text = f"already in the store as {taught.label}"
        case _:
            text = f"relabelled {taught.previous} -> {taught.label}"
    if taught.evicted:
        text += f" ({taught.evicted} oldest removed: the store is at its cap)"
    return text


def _sources(names: list[str], limit: int) -> Iterator[tuple[str, bytes | OSError]]:
    """(name, bytes or the error reading them) for each message named. Standard input is read
    to one byte past `limit`, so a huge stream is refused without being held."""
    for name in names:
        if name == "-":
            yield "-", sys.stdin.buffer.read(limit + 1)
            continue
        path = Path(name)
        for file in _files(path) if path.is_dir() else iter([path]):
            try:
                with file.open("rb") as f:
                    data = f.read(limit + 1)
            except OSError as e:
                yield str(file), e
                continue
            yield str(file), data


def _files(root: Path) -> Iterator[Path]:
    """Regular files under `root`, in a stable order; hidden ones and Maildir tmp/ skipped."""
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in _SKIPPED_DIRECTORIES)
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(directory, name)


def _show_stats(store: Store, as_json: bool) -> None:
    stats = store.stats()
    if as_json:
        obj = {
            "store": str(stats.path),
            "messages": stats.messages,
            "bytes": stats.bytes,
            "limits": {"messages": stats.max_messages, "bytes": stats.max_bytes},
            "oldest": _iso(stats.oldest),
            "newest": _iso(stats.newest),
            "labels": {
                label: {"messages": s.messages, "bytes": s.bytes, "age": s.ages}
                for label, s in stats.labels.items()
            },
            "users": [{"user": u.user, "spam": u.spam, "ham": u.ham} for u in stats.users],
        }
        print(json.dumps(obj, ensure_ascii=False))
        return
    print(f"store: {stats.path}")
    print(
        f"messages: {stats.messages} of at most {stats.max_messages}, "
        f"{stats.bytes} bytes of at most {stats.max_bytes}"
    )
    if stats.messages:
        print(f"taught: from {_iso(stats.oldest)} to {_iso(stats.newest)}")
    print(
        f"{'':6}{'messages':>10}{'bytes':>14}{'last day':>10}{'to a week':>11}{'to 30 days':>12}{'older':>8}"
    )
    for label, s in stats.labels.items():
        ages = s.ages
        print(
            f"{label:6}{s.messages:>10}{s.bytes:>14}{ages['day']:>10}{ages['week']:>11}"
            f"{ages['month']:>12}{ages['older']:>8}"
        )
    if stats.users:
        print("by user (who taught the label each message has now):")
        width = max(len(u.user or "(unknown)") for u in stats.users)
        for u in stats.users:
            print(f"  {u.user or '(unknown)':{width}}  spam {u.spam:>6}  ham {u.ham:>6}")


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
