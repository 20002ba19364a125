"""Labelled mail on disk: directories of one-message-per-file files, Maildir folders, mbox files.

Each message also gets a place in time, so that validation can be *later* than training: TREC's
files are numbered in arrival order (``inmail.N``); other mail is ordered by the time the
receiving server stamped on it (the newest Received header), else its Date header.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import mailbox
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HAM: Final = 0
SPAM: Final = 1
_TREC_NAME: Final = re.compile(r"inmail\.(\d+)$")
# A collection gathered from several sources names its files "<source>.<number>.eml" (the modern
# corpus: one list per source): each source is then a group of its own.
_SOURCE_NAME: Final = re.compile(r"([^/]+)\.\d+\.eml$")
_HEADER_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class LabelledMessage:
    source: str  # file path, or "mbox-path:index"
    label: int  # HAM or SPAM
    group: str  # the collection it belongs to (time splits are made per group)
    order: tuple[int, float]  # place in time within its group: (kind, value), sortable
    raw: bytes


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def _files(root: Path) -> Iterator[Path]:
    """Regular files under root, in a stable order, skipping hidden files and Maildir tmp/."""
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "tmp")
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(directory, name)


def read_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """(source, raw bytes) of every message at `path`: a file, an mbox, a Maildir or a directory.

    A directory that is a Maildir yields its cur/ and new/ messages; any other directory yields
    each file under it as one message. A file starting with an mbox "From " line is read as an
    mbox (one message or many), any other file as one message. OSError propagates.
    """
    if path.is_dir():
        if _is_maildir(path):
            for sub in ("cur", "new"):
                for file in _files(path / sub):
                    yield str(file), file.read_bytes()
            return
        for file in _files(path):
            if _is_mbox(file) and _mbox_count(file) > 1:
                yield from _mbox(file)
            else:
                yield str(file), file.read_bytes()
        return
    if _is_mbox(path) and _mbox_count(path) > 1:
        yield from _mbox(path)
    else:
        yield str(path), path.read_bytes()


def _mbox_count(path: Path) -> int:
    count = 0
    with path.open("rb") as handle:
        for line in handle:
            if line.startswith(b"From "):
                count += 1
                if count > 1:
                    break
    return count


def _mbox(path: Path) -> Iterator[tuple[str, bytes]]:
    box = mailbox.mbox(path, create=False)
    try:
        for index, key in enumerate(box.iterkeys()):
            yield f"{path}:{index}", box.get_bytes(key)
    finally:
        box.close()


def received_time(raw: bytes) -> float | None:
    """When the message arrived: the newest Received header's date, else Date; None if neither."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[:_HEADER_BYTES])
    candidates = []
    received = headers.get_all("Received") or []
    if received:
        candidates.append(str(received[0]).rpartition(";")[2])
    candidates.append(str(headers.get("Date", "")))
    for value in candidates:
        parsed = email.utils.parsedate_tz(" ".join(value.split()))
        if parsed is not None:
            try:
                return float(email.utils.mktime_tz(parsed))
            except (OverflowError, ValueError):
                continue
    return None


def order_of(source: str, raw: bytes) -> tuple[int, float]:
    match = _TREC_NAME.search(source)
    if match:
        return (0, float(match.group(1)))
    when = received_time(raw)
    return (1, when if when is not None else 0.0)


def group_of(path: Path) -> str:
    """The collection a --ham/--spam path belongs to: its parent (corpus/ham, corpus/spam -> corpus)."""
    return str(path.resolve().parent)


def source_group(group: str, source: str) -> str:
    """The group of one message: its collection's, or "<collection>/<source>" for a file named
    "<source>.<number>.eml", so that each source of a many-source collection is split by time on
    its own and can be left out whole (leave-one-source-out)."""
    match = _SOURCE_NAME.search(source)
    return f"{group}/{match.group(1)}" if match else group


def load_labelled(ham: Sequence[Path], spam: Sequence[Path]) -> Iterator[LabelledMessage]:
    for label, paths in ((HAM, ham), (SPAM, spam)):
        for path in paths:
            group = group_of(path)
            for source, raw in read_messages(path):
                yield LabelledMessage(source, label, source_group(group, source), order_of(source, raw), raw)


def time_split(messages: Sequence[LabelledMessage], *fractions: float) -> list[list[int]]:
    """Indices split by time per group: the earliest first; `fractions` size the later slices.

    time_split(msgs, 0.1, 0.1) -> [train, calibration, validation], each group cut in the same
    proportions, so every collection is represented in every slice.
    """
    by_group: dict[str, list[int]] = {}
    for index, message in enumerate(messages):
        by_group.setdefault(message.group, []).append(index)
    slices: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for group in sorted(by_group):
        indices = sorted(by_group[group], key=lambda i: (messages[i].order, messages[i].source))
        n = len(indices)
        cuts = []
        end = n
        for fraction in reversed(fractions):
            start = end - round(n * fraction)
            cuts.append((start, end))
            end = start
        slices[0].extend(indices[:end])
        for slot, (start, stop) in enumerate(reversed(cuts), start=1):
            slices[slot].extend(indices[start:stop])
    return slices
