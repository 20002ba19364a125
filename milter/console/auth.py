"""Who may use the console, and proof that a change was asked for by the console's own page.

- Without a password file (loopback only, config.py refuses anything else) everyone who can
  reach the port is "console@ADDRESS". With one, a login (user and password, checked against
  the scrypt hashes) gives a session: a random id in an HttpOnly, SameSite=Strict cookie,
  kept in memory (a restart logs everyone out), ending after SESSION_SECONDS of disuse.
- CSRF: every POST (forms and the JSON API) must carry the token, as the form field
  `csrf_token` or the header `X-CSRF-Token`. With a session it is the session's; without a
  password there is one token per console process. A page of another site can neither read it
  (no CORS) nor guess it. `GET /api/csrf` gives it to scripts.
- DNS rebinding (a hostile page whose name resolves to 127.0.0.1 reads the console as its own
  origin): without a password, requests must name the console by an address or `localhost` in
  their Host header, never another name.
- Logins are rate-limited: LOGIN_FAILURES failures from one address within LOGIN_WINDOW seconds
  lock that address out for the rest of the window, and all addresses together get at most
  GLOBAL_FAILURES per window (a spread-out guesser).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from milter.password import Hashed, verify

SESSION_COOKIE = "milter_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 8 * 3600.0
LOGIN_WINDOW = 300.0
LOGIN_FAILURES = 5
GLOBAL_FAILURES = 50
MAX_SESSIONS = 1_000


@dataclass(slots=True)
class Session:
    user: str
    csrf: str
    last_used: float


@dataclass
class LoginLimiter:
    """Failed logins per address and in all, in a sliding window."""

    window: float = LOGIN_WINDOW
    per_address: int = LOGIN_FAILURES
    overall: int = GLOBAL_FAILURES
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _all: deque[float] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        while self._all and now - self._all[0] > self.window:
            self._all.popleft()
        for address in list(self._failures):
            times = self._failures[address]
            while times and now - times[0] > self.window:
                times.popleft()
            if not times:
                del self._failures[address]

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until `address` may try again (0: now)."""
        when = time.monotonic() if now is None else now
        self._trim(when)
        times = self._failures.get(address)
        waits = []
        if times is not None and len(times) >= self.per_address:
            waits.append(self.window - (when - times[0]))
        if len(self._all) >= self.overall:
            waits.append(self.window - (when - self._all[0]))
        return max(waits, default=0.0)

    def failed(self, address: str, now: float | None = None) -> None:
        when = time.monotonic() if now is None else now
        self._failures.setdefault(address, deque()).append(when)
        self._all.append(when)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


class Auth:
    """The console's users (None: no password, loopback only), sessions and CSRF tokens."""

    def __init__(self, users: dict[str, Hashed] | None) -> None:
        self.users = users
        self.sessions: dict[str, Session] = {}
        self.limiter = LoginLimiter()
        self.open_token = secrets.token_urlsafe(32)  # the CSRF token without a password
        # Compared against when the user is unknown, so a wrong name costs a scrypt as a wrong
        # password does (no timing tells which names exist).
        self._decoy = next(iter(users.values())) if users else None

    @property
    def required(self) -> bool:
        return self.users is not None

    def check_password(self, user: str, password: str) -> bool:
        """Slow (scrypt): call it off the event loop."""
        if self.users is None:
            return False
        hashed = self.users.get(user)
        if hashed is None:
            if self._decoy is not None:
                verify(password, self._decoy)
            return False
        return verify(password, hashed)

    def open_session(self, user: str) -> tuple[str, Session]:
        now = time.monotonic()
        self._expire(now)
        if len(self.sessions) >= MAX_SESSIONS:
            oldest = min(self.sessions, key=lambda k: self.sessions[k].last_used)
            del self.sessions[oldest]
        session_id = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), now)
        self.sessions[session_id] = session
        return session_id, session

    def session(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self.sessions.get(session_id)
        now = time.monotonic()
        if session is None or now - session.last_used > SESSION_SECONDS:
            self.sessions.pop(session_id, None)
            return None
        session.last_used = now
        return session

    def close_session(self, session_id: str | None) -> None:
        if session_id:
            self.sessions.pop(session_id, None)

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self.sessions.items() if now - s.last_used > SESSION_SECONDS]:
            del self.sessions[key]

    @staticmethod
    def token_ok(expected: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def host_is_address(host_header: str | None) -> bool:
    """Whether a Host header names the console by an IP address or `localhost` (with a port or
    not): what a request that did not come through a rebound DNS name carries."""
    if not host_header:
        return False
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
