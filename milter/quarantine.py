"""The quarantine (SMTP protocol): a Maildir of held messages, each with the envelope it came with.

A held message is one file, written as every Maildir message is (milter.delivery.maildir:
tmp/, fsync, rename into new/): the marked message with one field put first,
`X-Milter-Envelope:`, base64 of JSON: the sender and MAIL parameters, each recipient with its
RCPT parameters, the XFORWARD attributes, and the verdict. Message and envelope are one file, so
no crash can keep one without the other. Only the file's first field is read as the envelope:
a sender who writes such a field into the message itself gets it ignored (it is never first).

Release hands the message to the next hop as the `deliver` action would (the same transaction:
MAIL with its parameters, each RCPT, the message marked anew with action deliver and rule
`released`, plus an X-Milter-Released field saying who released it), exactly once:

1. the file is renamed into the `.Releasing` folder: a second release of the same message (a
   double click, two admins) finds it gone and is refused;
2. it is handed to the next hop;
3. on success it is renamed into the `.Released` folder (kept, flagged seen, for the record);
   on failure back into the quarantine, and the release reports the next hop's reply.

A crash between 1 and 3 leaves the file in `.Releasing`; `recover()` (at the console's start)
releases it again: if the next hop had taken it before the crash, the mail arrives twice (the
safe error), and it is never lost. Delete removes the file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from milter.delivery import NextHop
from milter.delivery.maildir import MaildirHop, _ensure_maildir, _fsync_dir
from milter.errors import RelayError
from milter.mark import mark
from milter.message import parse_header_fields
from milter.model import Score
from milter.policy import Verdict
from milter.rules import Action, Decision

ENVELOPE_FIELD = b"X-Milter-Envelope:"
RELEASED_FIELD = "X-Milter-Released"
RELEASING = ".Releasing"
RELEASED = ".Released"
RELEASE_RULE = "released"
HEAD_BYTES = 64 * 1024  # what a listing reads of each file
# A quarantine id is a Maildir unique name, without the info part (":2,FLAGS").
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._,=\\-]{0,254}")


class NotHeld(Exception):
    """No message of that id in the quarantine (released, deleted, or never there)."""


@dataclass(frozen=True, slots=True)
class HeldEnvelope:
    """How a quarantined message came in, and what the filter said of it."""

    mail_from: str
    mail_options: tuple[str, ...]
    recipients: tuple[tuple[str, tuple[str, ...]], ...]  # (address, RCPT parameters)
    xforward: Mapping[str, str] = field(default_factory=dict)
    time: float = 0.0
    probability: float | None = None
    rule: str = ""
    model_id: str = ""
    features: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "from": self.mail_from,
                "mail_options": list(self.mail_options),
                "rcpt": [[address, list(options)] for address, options in self.recipients],
                "xforward": dict(self.xforward),
                "time": self.time,
                "probability": self.probability,
                "rule": self.rule,
                "model": self.model_id,
                "features": [[name, value] for name, value in self.features[:16]],
            },
            ensure_ascii=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> HeldEnvelope:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not a version 1 envelope")
        probability = data.get("probability")
        return cls(
            mail_from=str(data["from"]),
            mail_options=tuple(str(o) for o in data.get("mail_options", ())),
            recipients=tuple((str(a), tuple(str(o) for o in opts)) for a, opts in data["rcpt"]),
            xforward={str(k): str(v) for k, v in dict(data.get("xforward", {})).items()},
            time=float(data.get("time", 0.0)),
            probability=float(probability) if probability is not None else None,
            rule=str(data.get("rule", "")),
            model_id=str(data.get("model", "")),
            features=tuple((str(n), float(v)) for n, v in data.get("features", ())),
        )


def envelope_field(envelope: HeldEnvelope) -> bytes:
    """The X-Milter-Envelope field, folded at 76 characters, with its line end (LF)."""
    encoded = base64.b64encode(envelope.to_json().encode("ascii")).decode("ascii")
    chunks = [encoded[i : i + 72] for i in range(0, len(encoded), 72)] or [""]
    return ENVELOPE_FIELD + b" " + "\n\t".join(chunks).encode("ascii") + b"\n"


def split_envelope(data: bytes) -> tuple[HeldEnvelope | None, bytes]:
    """(the envelope in the file's first field, the message without it); (None, data) if the
    first field is not one."""
    if data[: len(ENVELOPE_FIELD)].lower() != ENVELOPE_FIELD.lower():
        return None, data
    end = 0
    while True:  # the field and its continuation lines
        newline = data.find(b"\n", end)
        if newline < 0:
            return None, data
        end = newline + 1
        if data[end : end + 1] not in (b" ", b"\t"):
            break
    value = b"".join(data[len(ENVELOPE_FIELD) : end].split())
    try:
        envelope = HeldEnvelope.from_json(base64.b64decode(value, validate=True).decode("ascii"))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None, data
    return envelope, data[end:]


@dataclass(frozen=True, slots=True)
class Held:
    """A message in the quarantine, as a listing shows it."""

    id: str
    path: Path
    state: str  # held, releasing (a release was interrupted)
    time: float  # when it was quarantined
    size: int
    envelope: HeldEnvelope | None
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), "")


@dataclass(frozen=True, slots=True)
class Released:
    """What a release did."""

    id: str
    ok: bool
    reply: str  # the next hop's reply (or why it failed)
    refused: tuple[str, ...] = ()  # recipients the next hop refused for good


def _info_split(name: str) -> str:
    return name.split(":", 1)[0]


class Quarantine:
    """The quarantine Maildir at `root`: store (the SMTP face), list, read, release, delete."""

    def __init__(self, root: Path) -> None:
        self.maildir = MaildirHop(root)
        self.root = self.maildir.root

    def __str__(self) -> str:
        return str(self.root)

    # --- storing (on the hot path, in a thread) ---------------------------------------------

    async def store(self, marked: bytes, envelope: HeldEnvelope) -> str:
        """Keep `marked` with its envelope; its quarantine id. RelayError if the disk refuses."""
        path = await self.maildir.store(envelope_field(envelope) + marked, Action.DELIVER)
        return _info_split(path.name)

    # --- the console's side ---------------------------------------------------------------

    def _files(self) -> list[tuple[Path, str]]:
        found: list[tuple[Path, str]] = []
        for folder, state in ((self.root, "held"), (self.root / RELEASING, "releasing")):
            for sub in ("new", "cur"):
                with contextlib.suppress(FileNotFoundError):
                    found.extend(
                        (entry, state) for entry in (folder / sub).iterdir() if not entry.name.startswith(".")
                    )
        return found

    def find(self, held_id: str) -> tuple[Path, str]:
        """The file of `held_id` and its state; NotHeld if there is none."""
        if not _ID.fullmatch(held_id):
            raise NotHeld(held_id)
        for folder, state in ((self.root, "held"), (self.root / RELEASING, "releasing")):
            candidate = folder / "new" / held_id
            if candidate.exists():
                return candidate, state
            with contextlib.suppress(FileNotFoundError):
                for entry in (folder / "cur").iterdir():
                    if _info_split(entry.name) == held_id:
                        return entry, state
        raise NotHeld(held_id)

    def listing(self, limit: int = 500) -> list[Held]:
        """The held messages, newest first (Maildir names start with the time)."""
        files = sorted(self._files(), key=lambda f: _info_split(f[0].name), reverse=True)[:limit]
        held = []
        for path, state in files:
            with contextlib.suppress(FileNotFoundError):
                held.append(self._describe(path, state))
        return held

    def _describe(self, path: Path, state: str) -> Held:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
            size = os.fstat(f.fileno()).st_size
        envelope, message = split_envelope(head)
        when = envelope.time if envelope is not None and envelope.time else path.stat().st_mtime
        return Held(_info_split(path.name), path, state, when, size, envelope, parse_header_fields(message))

    def get(self, held_id: str) -> Held:
        path, state = self.find(held_id)
        try:
            return self._describe(path, state)
        except FileNotFoundError:
            raise NotHeld(held_id) from None

    def read(self, held_id: str) -> tuple[HeldEnvelope | None, bytes]:
        """The envelope and the message (as quarantined, marks included) of `held_id`."""
        path, _ = self.find(held_id)
        try:
            return split_envelope(path.read_bytes())
        except FileNotFoundError:
            raise NotHeld(held_id) from None

    def delete(self, held_id: str) -> None:
        path, state = self.find(held_id)
        if state == "releasing":
            raise NotHeld(held_id)  # being released right now: not ours to delete
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotHeld(held_id) from None
        _fsync_dir(path.parent)

    async def release(self, held_id: str, hop: NextHop, by: str, now: float | None = None) -> Released:
        """Hand `held_id` to `hop` as `deliver` would (see the module docstring). NotHeld if it is
        not in the quarantine (or another release has it)."""
        path, state = self.find(held_id)
        if state != "held":
            raise NotHeld(held_id)
        releasing = self.root / RELEASING
        await asyncio.to_thread(_ensure_maildir, releasing, True)
        target = releasing / "cur" / f"{held_id}:2,"
        try:
            os.rename(path, target)  # atomic: of two releases, one gets the file
        except FileNotFoundError:
            raise NotHeld(held_id) from None
        await asyncio.to_thread(_fsync_dir, target.parent)
        return await self._hand_over(held_id, target, hop, by, now)

    async def recover(self, hop: NextHop) -> list[Released]:
        """Release again what a crash left half released (a duplicate at worst, never a loss)."""
        done = []
        for path, state in self._files():
            if state == "releasing":
                done.append(await self._hand_over(_info_split(path.name), path, hop, "recovery", None))
        return done

    async def _hand_over(
        self, held_id: str, path: Path, hop: NextHop, by: str, now: float | None
    ) -> Released:
        data = await asyncio.to_thread(path.read_bytes)
        envelope, message = split_envelope(data)
        if envelope is None:
            await self._put_back(path, held_id)
            return Released(held_id, False, "no envelope kept with this message (not quarantined by milter?)")
        try:
            result = await deliver(released_copy(message, envelope, by, now), envelope, hop)
        except RelayError as e:
            result = Released(held_id, False, f"next hop failed: {e}")
        result = Released(held_id, result.ok, result.reply, result.refused)
        if result.ok:
            released = self.root / RELEASED
            await asyncio.to_thread(_ensure_maildir, released, True)
            final = released / "cur" / f"{held_id}:2,S"
            os.rename(path, final)
            await asyncio.to_thread(_fsync_dir, final.parent)
        else:
            await self._put_back(path, held_id)
        return result

    async def _put_back(self, path: Path, held_id: str) -> None:
        back = self.root / "new" / held_id
        os.rename(path, back)
        await asyncio.to_thread(_fsync_dir, back.parent)


def released_copy(message: bytes, envelope: HeldEnvelope, by: str, now: float | None = None) -> bytes:
    """The quarantined message as `deliver` would have handed it on: marked anew (action
    deliver, rule `released`, the original score), with who released it and when."""
    score = (
        Score(envelope.probability, envelope.model_id, envelope.features)
        if envelope.probability is not None
        else None
    )
    verdict = Verdict(Decision(Action.DELIVER, RELEASE_RULE), score, envelope.model_id or "unknown")
    marked = mark(message, verdict)
    when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    who = re.sub(r"[^\x21-\x7e]", "_", by)[:64] or "unknown"
    eol = b"\r\n" if b"\r\n" in marked[:2000] else b"\n"
    line = (
        f"{RELEASED_FIELD}: by {who} on {format_datetime(when)} (quarantined by rule {envelope.rule or '-'})"
    )
    return line.encode("ascii", "replace") + eol + marked


async def deliver(data: bytes, envelope: HeldEnvelope, hop: NextHop) -> Released:
    """One transaction at `hop` with `envelope`: MAIL, each RCPT, the message (action deliver).
    Raises RelayError when the next hop cannot be reached or fails mid-way."""
    reply, transaction = await hop.begin(envelope.mail_from, envelope.mail_options, envelope.xforward)
    if transaction is None:
        return Released("", False, f"next hop refused the sender: {reply}")
    try:
        accepted: list[str] = []
        refused: list[str] = []
        for address, options in envelope.recipients:
            answer = await transaction.add_recipient(address, options)
            if answer.ok:
                accepted.append(address)
            elif answer.temporary:
                return Released("", False, f"next hop deferred <{address}>: {answer}; try again later")
            else:
                refused.append(f"<{address}>: {answer}")
        if not accepted:
            return Released("", False, "next hop refused every recipient: " + "; ".join(refused))
        sent = await transaction.send(data, Action.DELIVER)
    finally:
        await transaction.abort()  # a no-op once sent
    replies = "; ".join(str(r) for r in sent.replies)
    if sent.none_ok:
        return Released("", False, f"next hop refused the message: {replies}")
    return Released("", True, replies, tuple(refused))


def held_envelope(
    mail_from: str,
    mail_options: Sequence[str],
    recipients: Sequence[tuple[str, Sequence[str]]],
    xforward: Mapping[str, str],
    verdict: Verdict,
) -> HeldEnvelope:
    score = verdict.score
    return HeldEnvelope(
        mail_from=mail_from,
        mail_options=tuple(mail_options),
        recipients=tuple((address, tuple(options)) for address, options in recipients),
        xforward=dict(xforward),
        time=time.time(),
        probability=verdict.probability,
        rule=verdict.decision.rule,
        model_id=verdict.model_id,
        features=score.features if score is not None else (),
    )
