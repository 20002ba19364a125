"""Helpers for the console's tests: an HTTP client for the JSON API, rules that quarantine."""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Subject "hold ..." is quarantined, everything else goes the shipped way.
HOLD_RULES = (
    "rules:\n"
    "  - {name: hold-for-review, if: {header: {Subject: '(?i)^hold'}}, action: quarantine}\n"
    "  - {name: spam, if: {probability: {min: 0.90}}, action: spam_folder}\n"
    "  - {name: suspicious, if: {probability: {min: 0.50}}, action: flag}\n"
    "  - {name: default, action: deliver}\n"
)


def hold_rules(tmp_path: Path) -> Path:
    path = tmp_path / "hold-rules.yaml"
    path.write_text(HOLD_RULES)
    return path


def message(
    subject: str, body: str = "Hi Bob,\r\n\r\nsee you on Friday.\r\n\r\nAlice\r\n", mid: str = ""
) -> bytes:
    mid = mid or f"<{abs(hash(subject))}.{time.monotonic_ns()}@example.org>"
    return (
        f"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: {subject}\r\n"
        f"Message-ID: {mid}\r\nDate: Mon, 3 Mar 2025 10:00:00 +0000\r\n\r\n{body}"
    ).encode()


def wait_for(predicate: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """The first true value of `predicate`, polled until `timeout` (an event, not a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Api:
    """The console's JSON API over real HTTP, with cookies (a session after `login`)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.running: Any = None  # the daemon behind it, when a test started one in process
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = None
        all_headers = dict(headers or {})
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=all_headers)
        try:
            with self.opener.open(req, timeout=30) as response:
                status, raw, got = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as e:
            status, raw, got = e.code, e.read(), dict(e.headers)
        text = raw.decode("utf-8", "replace")
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return status, parsed, got

    def get(self, path: str) -> Any:
        status, body, _ = self.request("GET", path)
        assert status == 200, (path, status, body)
        return body

    def csrf(self) -> str:
        token: str = self.get("/api/csrf")["csrf_token"]
        return token

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        status, parsed, _ = self.request("POST", path, body, headers={"X-CSRF-Token": self.csrf()})
        return status, parsed

    def login(self, user: str, password: str) -> int:
        status, page, _ = self.request("GET", "/login")
        assert status == 200, (status, page)
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        status, _, _ = self.request(
            "POST", "/login", form={"csrf_token": token, "user": user, "password": password}
        )
        return status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers to look at (303 after a login), not to follow."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
