"""Next hops: where an accepted message goes (back to Postfix over SMTP/LMTP, or a Maildir).

A next hop is used as a transaction that mirrors the inbound one, so every reply the client gets
is the next hop's own answer: `begin` when the client says MAIL, `add_recipient` for each RCPT
(a recipient the next hop refuses is refused to the client with the next hop's code, never
accepted and dropped later), `send` once the message is decided, `abort` when it is not sent
(RSET, discard, quarantine, a client that went away). Transport failures raise `RelayError`;
answers of the next hop come back as `HopReply` values. The SMTP layer alone turns both into
replies to the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from milter.config import NextHop as NextHopSpec
from milter.config import parse_next_hop
from milter.rules import Action


@dataclass(frozen=True, slots=True)
class HopReply:
    """One reply of the next hop (code and text as it sent them)."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class Sent:
    """The next hop's answer to the message: one reply per recipient it accepted at RCPT
    (LMTP), or one reply for all of them (SMTP, Maildir)."""

    replies: tuple[HopReply, ...]

    @property
    def all_ok(self) -> bool:
        return all(r.ok for r in self.replies)

    @property
    def none_ok(self) -> bool:
        return not any(r.ok for r in self.replies)


class Transaction(Protocol):
    """One message's transaction at the next hop, opened by `NextHop.begin`."""

    async def add_recipient(self, address: str, options: Sequence[str]) -> HopReply: ...

    async def send(self, data: bytes, action: Action) -> Sent:
        """Hand over the (marked) message; `action` picks the folder where the hop has folders."""
        ...

    async def abort(self) -> None:
        """End the transaction without a message; never raises."""
        ...


class NextHop(Protocol):
    async def begin(
        self, mail_from: str, options: Sequence[str], xforward: Mapping[str, str]
    ) -> tuple[HopReply, Transaction | None]:
        """Open a transaction for `mail_from` ('' for the null sender). The reply is the next
        hop's answer to MAIL; the transaction is None when it refused. RelayError if unreachable."""
        ...

    async def close(self) -> None:
        """Close idle connections (shutdown)."""
        ...

    def __str__(self) -> str: ...


def next_hop_from_url(
    url: str | NextHopSpec, *, timeout: float = 120.0, hostname: str = "localhost"
) -> NextHop:
    """The next hop for `url`: smtp://HOST:PORT, lmtp://HOST:PORT, lmtp:/PATH.sock or maildir:PATH."""
    from milter.delivery.maildir import MaildirHop
    from milter.delivery.smtp import SmtpHop

    spec = parse_next_hop(url) if isinstance(url, str) else url
    if spec.scheme == "maildir":
        assert spec.path is not None
        return MaildirHop(spec.path)
    return SmtpHop(spec, timeout=timeout, local_hostname=hostname)
