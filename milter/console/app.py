"""The console's pages and JSON API (aiohttp), and the checks every request passes.

Every page works without JavaScript (forms post, the server draws the charts), so the Content
Security Policy allows no script at all: text from a message that slipped through as markup
still could not run. Database and file work runs in a thread, never on the event loop that
also serves mail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from milter.config import Config, format_address
from milter.console import charts
from milter.console.auth import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, Auth, host_is_address
from milter.console.view import view
from milter.delivery import NextHop
from milter.errors import MilterError
from milter.history import Entry, History, Search
from milter.quarantine import Held, NotHeld, Quarantine

log = logging.getLogger("milter.console")

HERE = Path(__file__).parent
LOGIN_COOKIE = "milter_login"
FORM = "application/x-www-form-urlencoded"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NOTICES = {
    "released": "Released: handed to the next hop.",
    "deleted": "Deleted from the quarantine.",
    "taught-spam": "Kept in the feedback store as spam.",
    "taught-ham": "Kept in the feedback store as ham.",
    "known": "The feedback store had this message with that label already.",
}
LABELS = ("spam", "ham")


@dataclass
class State:
    """What the handlers share."""

    config: Config
    auth: Auth
    history: History
    quarantine: Quarantine
    hop: NextHop | None  # None in milter mode: Postfix holds the mail
    templates: jinja2.Environment

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def recover(self) -> None:
        """Release what a crash left half released (milter.quarantine)."""
        assert self.hop is not None
        try:
            results = await self.quarantine.recover(self.hop)
        except OSError as e:
            log.error("console: quarantine recovery: %s", e)
            return
        for result in results:
            log.warning("console: finished an interrupted release of %s: %s", result.id, result.reply)
            await self.db(
                self.history.log_action, "recovery", None, "release", result.id,
                ("released: " if result.ok else "failed: ") + result.reply,
            )  # fmt: skip


STATE = web.AppKey("console", State)
USER = web.RequestKey("user", str)  # who is asking: a user name, console@ADDRESS, or "" (login)
ADDRESS = web.RequestKey("address", str)
CSRF = web.RequestKey("csrf", str)
JSON_BODY = web.RequestKey("json_body", object)


def _state(request: web.Request) -> State:
    return request.app[STATE]


def _who(request: web.Request) -> str:
    return request[USER]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shown_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def make_app(
    config: Config, auth: Auth, history: History, quarantine: Quarantine, hop: NextHop | None
) -> web.Application:
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["when"] = shown_time
    templates.filters["probability"] = lambda p: "unscored" if p is None else f"{p:.3f}"
    templates.globals["colour"] = charts.colour
    app = web.Application(
        middlewares=[_headers, _guard],
        client_max_size=64 * 1024,
    )
    app[STATE] = State(config, auth, history, quarantine, hop, templates)
    app.add_routes(
        [
            web.get("/", overview),
            web.get("/login", login_page),
            web.post("/login", login),
            web.post("/logout", logout),
            web.get("/history", history_page),
            web.get("/history/{id:\\d+}", entry_page),
            web.post("/history/{id:\\d+}/teach", teach_entry),
            web.get("/quarantine", quarantine_page),
            web.get("/quarantine/{id}", held_page),
            web.post("/quarantine/{id}/release", release),
            web.post("/quarantine/{id}/delete", delete),
            web.post("/quarantine/{id}/teach", teach_held),
            web.get("/static/console.css", stylesheet),
            web.get("/api/csrf", api_csrf),
            web.get("/api/stats", api_stats),
            web.get("/api/history", api_history),
            web.get("/api/history/{id:\\d+}", api_entry),
            web.post("/api/history/{id:\\d+}/teach", teach_entry),
            web.get("/api/quarantine", api_quarantine),
            web.get("/api/quarantine/{id}", api_held),
            web.post("/api/quarantine/{id}/release", release),
            web.post("/api/quarantine/{id}/delete", delete),
            web.post("/api/quarantine/{id}/teach", teach_held),
            web.get("/api/actions", api_actions),
        ]
    )
    return app


# --- the checks ---------------------------------------------------------------------------------


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _error(request: web.Request, status: int, message: str, **headers: str) -> web.Response:
    if _is_api(request):
        return web.json_response({"error": message}, status=status, headers=headers)
    return web.Response(text=message + "\n", status=status, content_type="text/plain", headers=headers)


def _secure(headers: Any) -> None:
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as e:
        _secure(e.headers)
        raise
    _secure(response.headers)
    csrf = request.get(CSRF)
    if csrf and _is_api(request) and request.method == "GET":
        # Scripts find the token on any API answer too; another site's page cannot read
        # response headers (no CORS), so this tells nobody who could not GET /api/csrf.
        response.headers[CSRF_HEADER] = csrf
    return response


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is asking (or the login page), and for a POST: the CSRF token."""
    state = _state(request)
    auth = state.auth
    address = request.remote or "?"
    request[ADDRESS] = address
    csrf = auth.open_token
    if auth.required:
        session = auth.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            if request.path in ("/login", "/static/console.css"):
                request[USER] = ""
                return await handler(request)
            if _is_api(request):
                return _error(request, 401, "login required: POST /login with user, password and csrf_token")
            raise web.HTTPSeeOther("/login")
        request[USER] = session.user
        csrf = session.csrf
    else:
        if not host_is_address(request.headers.get("Host")):
            return _error(
                request,
                421,
                "this console answers to its address only (http://127.0.0.1:PORT/), not a name",
            )
        request[USER] = f"console@{address}"
    request[CSRF] = csrf
    if request.method == "POST" and request.path != "/login":
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
        if given is None and request.content_type == "application/json":
            body = await _json_body(request)
            value = body.get(CSRF_FIELD) if isinstance(body, dict) else None
            given = value if isinstance(value, str) else None
        if not auth.token_ok(csrf, given):
            log.warning(
                "console: refused %s %s from %s: no valid CSRF token", request.method, request.path, address
            )
            return _error(
                request,
                403,
                f"missing or wrong CSRF token: GET /api/csrf and send it as the {CSRF_HEADER} header "
                f"(or the form field {CSRF_FIELD})",
            )
    return await handler(request)


async def _json_body(request: web.Request) -> Any:
    if JSON_BODY not in request:
        try:
            request[JSON_BODY] = await request.json() if request.can_read_body else {}
        except (ValueError, UnicodeDecodeError):
            request[JSON_BODY] = {}
    return request[JSON_BODY]


def _page(request: web.Request, template: str, **context: Any) -> web.Response:
    state = _state(request)
    page = state.templates.get_template(template).render(
        user=request.get(USER),
        csrf=request.get(CSRF, ""),
        password=state.auth.required,
        protocol=state.config.protocol,
        notice=NOTICES.get(request.query.get("done", ""), ""),
        **context,
    )
    return web.Response(text=page, content_type="text/html", charset="utf-8")


async def stylesheet(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(HERE / "static" / "console.css", headers={"Cache-Control": "max-age=3600"})


# --- login ----------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    if not state.auth.required or request.get(USER):
        raise web.HTTPSeeOther("/")
    import secrets

    # One token per browser, kept while it logs in (a second GET of the page, prefetched or
    # reloaded, must not make the form the first one showed stale).
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = _page(request, "login.html", login_token=token, failed=request.query.get("failed") == "1")
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", path="/login", max_age=3600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    auth = state.auth
    if not auth.required:
        raise web.HTTPSeeOther("/")
    address = request[ADDRESS]
    form = await request.post()
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not auth.token_ok(expected, _form_text(form, CSRF_FIELD)):
        return _error(request, 403, "missing or wrong CSRF token on the login form: load /login again")
    wait = auth.limiter.retry_after(address)
    if wait > 0:
        log.warning("console: login from %s refused: too many failures (retry in %.0f s)", address, wait)
        return _error(
            request,
            429,
            f"too many failed logins; retry in {wait:.0f} s",
            **{"Retry-After": f"{wait:.0f}"},
        )
    user, password = _form_text(form, "user") or "", _form_text(form, "password") or ""
    ok = await asyncio.to_thread(auth.check_password, user, password)
    if not ok:
        auth.limiter.failed(address)
        log.warning("console: failed login for %r from %s", user[:64], address)
        await state.db(state.history.log_action, user[:64] or "?", address, "login", "-", "failed")
        raise web.HTTPSeeOther("/login?failed=1")
    auth.limiter.succeeded(address)
    session_id, _ = auth.open_session(user)
    log.info("console: %s logged in from %s", user, address)
    await state.db(state.history.log_action, user, address, "login", "-", "ok")
    response = web.HTTPSeeOther("/")
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict", path="/")
    response.del_cookie(LOGIN_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    state.auth.close_session(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/login" if state.auth.required else "/")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def _form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


# --- overview and stats ------------------------------------------------------------------------


def _stats(state: State) -> dict[str, Any]:
    now = time.time()
    stats = state.history.stats(now)
    workers = state.history.workers(now)
    events = state.history.events(20)
    per_minute, per_hour = stats["per_minute"], stats["per_hour"]

    def totals(series: dict[str, Any], last: int) -> dict[str, int]:
        return {action: sum(counts[-last:]) for action, counts in series["actions"].items()}

    up = [w for w in workers if w["up"]]
    live = max(up or workers, key=lambda w: float(w["model_loaded"] or 0), default=None)
    return {
        "time": iso(now),
        "per_minute": per_minute,
        "per_hour": per_hour,
        "last_hour": {"messages": sum(per_minute["messages"]), "actions": totals(per_minute, 60)},
        "last_day": {"messages": sum(per_hour["messages"]), "actions": totals(per_hour, 24)},
        "latency_ms": stats["latency_ms"],
        "model": {
            "id": live["model_id"] if live else None,
            "loaded": iso(live["model_loaded"]) if live and live["model_loaded"] else None,
            "load_seconds": live["model_load_seconds"] if live else None,
        },
        "rules": {
            "count": live["rules"] if live else None,
            "loaded": iso(live["rules_loaded"]) if live and live["rules_loaded"] else None,
        },
        "workers": {
            "configured": state.config.workers,
            "up": len(up),
            "list": [
                {
                    "worker": w["worker"],
                    "pid": w["pid"],
                    "up": w["up"],
                    "state": w["state"],
                    "started": iso(w["started"]),
                    "heartbeat": iso(w["heartbeat"]),
                    "model_id": w["model_id"],
                    "rules": w["rules"],
                    "written": w["written"],
                    "dropped": w["dropped"],
                }
                for w in workers
            ],
        },
        "events": [{**e, "time": iso(float(e["time"]))} for e in events],
        "history": {
            "kept": stats["kept"],
            "max_rows": state.config.history_max_rows,
            "dropped": sum(int(w["dropped"]) for w in workers),
            "oldest": iso(stats["oldest"]),
        },
        "protocol": state.config.protocol,
    }


async def api_stats(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    return web.json_response(await state.db(_stats, state))


async def overview(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    stats = await state.db(_stats, state)
    minute, hour = stats["per_minute"], stats["per_hour"]
    actions = sorted(set(minute["actions"]) | set(hour["actions"]))
    return _page(
        request,
        "overview.html",
        stats=stats,
        minute_chart=charts.stacked_bars(
            minute["actions"], minute["start"], 60, "Messages per minute, the last hour", 10, "%H:%M"
        ),
        hour_chart=charts.stacked_bars(
            hour["actions"], hour["start"], 3600, "Messages per hour, the last day", 4, "%H:00"
        ),
        legend=charts.legend(actions),
    )


# --- history -------------------------------------------------------------------------------


def _search(query: Any, default_limit: int) -> Search:
    def number(name: str) -> float | None:
        text = query.get(name, "").strip()
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            pass
        try:  # an ISO date or date-time, as the history page's form sends it
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise web.HTTPBadRequest(
                text=f"{name}: expected Unix time or an ISO 8601 date, got {text[:40]!r}"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()

    try:
        limit = int(query.get("limit", default_limit))
    except ValueError:
        raise web.HTTPBadRequest(text="limit: expected a number") from None
    before = number("before")
    return Search(
        action=query.get("action") or None,
        sender=query.get("sender") or None,
        subject=query.get("subject") or None,
        since=number("since"),
        until=number("until"),
        before=int(before) if before is not None else None,
        limit=max(1, min(limit, 1000)),
    )


def entry_json(entry: Entry) -> dict[str, Any]:
    data = asdict(entry)
    data["timestamp"] = entry.time
    data["time"] = iso(entry.time)
    data["recipients"] = list(entry.recipients)
    data["features"] = [[name, value] for name, value in entry.features]
    return data


async def api_history(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    entries = await state.db(state.history.search, _search(request.query, 100))
    return web.json_response([entry_json(e) for e in entries])


async def api_entry(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    entry = await state.db(state.history.entry, int(request.match_info["id"]))
    if entry is None:
        return _error(request, 404, "no such history entry (the history keeps the newest only)")
    return web.json_response(entry_json(entry))


async def history_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    search = _search(request.query, 100)
    entries = await state.db(state.history.search, search)
    return _page(
        request,
        "history.html",
        entries=entries,
        search=search,
        query=request.query,
        actions=charts.ORDER,
        next_before=entries[-1].id if len(entries) == search.limit else None,
    )


async def entry_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    entry = await state.db(state.history.entry, int(request.match_info["id"]))
    if entry is None:
        raise web.HTTPNotFound(text="no such history entry (the history keeps the newest only)")
    return _page(request, "entry.html", entry=entry)


# --- quarantine ------------------------------------------------------------------------------


def held_json(held: Held) -> dict[str, Any]:
    env = held.envelope
    return {
        "id": held.id,
        "state": held.state,
        "time": iso(held.time),
        "timestamp": held.time,
        "size": held.size,
        "sender": env.mail_from if env else None,
        "recipients": [address for address, _ in env.recipients] if env else [],
        "probability": round(env.probability, 4) if env and env.probability is not None else None,
        "rule": env.rule if env else None,
        "model": env.model_id if env else None,
        "subject": held.header("Subject"),
        "from": held.header("From"),
        "message_id": held.header("Message-ID") or None,
    }


async def _hold_queue(state: State) -> tuple[list[dict[str, Any]], str | None]:
    """Postfix's hold queue (milter mode), from `postqueue -j`; (entries, error)."""
    conf = state.config.postfix_config_dir
    where = ["-c", str(conf)] if conf is not None else []
    try:
        process = await asyncio.create_subprocess_exec(
            "postqueue", *where, "-j", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    except (OSError, TimeoutError) as e:
        return [], f"cannot run postqueue -j: {e}"
    if process.returncode != 0:
        return [], f"postqueue -j failed: {err.decode('utf-8', 'replace').strip()[:300]}"
    held = []
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("queue_name") == "hold":
            held.append(
                {
                    "id": str(item.get("queue_id", "")),
                    "state": "hold",
                    "time": iso(float(item.get("arrival_time", 0))),
                    "timestamp": float(item.get("arrival_time", 0)),
                    "size": int(item.get("message_size", 0)),
                    "sender": str(item.get("sender", "")),
                    "recipients": [str(r.get("address", "")) for r in item.get("recipients", [])],
                    "release": shlex.join(["postsuper", *where, "-H", str(item.get("queue_id", ""))]),
                }
            )
    return held, None


async def api_quarantine(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    if state.config.protocol == "milter":
        held, error = await _hold_queue(state)
        if error is not None:
            return _error(request, 503, error)
        return web.json_response(held)
    found = await state.db(state.quarantine.listing)
    return web.json_response([held_json(h) for h in found])


async def quarantine_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    if state.config.protocol == "milter":
        held, error = await _hold_queue(state)
        conf = state.config.postfix_config_dir
        postsuper = shlex.join(["postsuper", *(["-c", str(conf)] if conf is not None else [])])
        return _page(request, "hold.html", held=held, error=error, postsuper=postsuper)
    found = await state.db(state.quarantine.listing)
    return _page(request, "quarantine.html", held=found, path=str(state.quarantine))


async def _read_held(state: State, held_id: str) -> tuple[Held, bytes]:
    def read() -> tuple[Held, bytes]:
        held = state.quarantine.get(held_id)
        _, message = state.quarantine.read(held_id)
        return held, message

    try:
        result: tuple[Held, bytes] = await state.db(read)
    except NotHeld:
        raise web.HTTPNotFound(text=f"no message {held_id[:80]!r} in the quarantine") from None
    return result


async def api_held(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _milter_mode_refusal(request, state)
    held, message = await _read_held(state, request.match_info["id"])
    shown = view(message)
    return web.json_response(
        {
            **held_json(held),
            "headers": [list(h) for h in shown.headers],
            "parts": [asdict(p) for p in shown.parts],
        }
    )


async def held_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _milter_mode_refusal(request, state)
    held, message = await _read_held(state, request.match_info["id"])
    entry = await state.db(state.history.by_quarantine, held.id)
    return _page(request, "held.html", held=held, shown=view(message), entry=entry)


def _milter_mode_refusal(request: web.Request, state: State) -> None:
    if state.config.protocol == "milter":
        message = (
            "milter protocol: Postfix holds quarantined mail in its hold queue; release it with "
            "postsuper -H QUEUE_ID, delete it with postsuper -d QUEUE_ID"
        )
        if _is_api(request):
            raise web.HTTPConflict(text=json.dumps({"error": message}), content_type="application/json")
        raise web.HTTPConflict(text=message)


def _done(request: web.Request, result: dict[str, Any], status: int, where: str) -> web.StreamResponse:
    if _is_api(request):
        return web.json_response(result, status=status)
    if status >= 400:
        return _error(request, status, str(result.get("error", "failed")))
    raise web.HTTPSeeOther(where)


async def release(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _milter_mode_refusal(request, state)
    assert state.hop is not None
    held_id = request.match_info["id"]
    who, address = _who(request), request[ADDRESS]
    try:
        result = await state.quarantine.release(held_id, state.hop, who)
    except NotHeld:
        return _done(request, {"error": f"no message {held_id[:80]!r} in the quarantine"}, 404, "")
    except OSError as e:
        log.error("console: release of %s by %s failed: %s", held_id, who, e)
        return _done(request, {"error": f"cannot release: {e}"}, 500, "")
    outcome = ("released: " if result.ok else "failed: ") + result.reply
    log.info("console: %s (from %s) released %s: %s", who, address, held_id, outcome)
    await state.db(state.history.log_action, who, address, "release", held_id, outcome)
    if not result.ok:
        return _done(request, {"id": held_id, "released": False, "error": result.reply}, 502, "")
    body = {
        "id": held_id,
        "released": True,
        "reply": result.reply,
        "refused": list(result.refused),
        "by": who,
    }
    return _done(request, body, 200, "/quarantine?done=released")


async def delete(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _milter_mode_refusal(request, state)
    held_id = request.match_info["id"]
    who, address = _who(request), request[ADDRESS]
    try:
        await state.db(state.quarantine.delete, held_id)
    except NotHeld:
        return _done(request, {"error": f"no message {held_id[:80]!r} in the quarantine"}, 404, "")
    log.info("console: %s (from %s) deleted %s from the quarantine", who, address, held_id)
    await state.db(state.history.log_action, who, address, "delete", held_id, "deleted")
    return _done(request, {"id": held_id, "deleted": True, "by": who}, 200, "/quarantine?done=deleted")


# --- teaching ----------------------------------------------------------------------------------


async def _label(request: web.Request) -> str:
    if request.content_type == "application/json":
        body = await _json_body(request)
        label = body.get("label") if isinstance(body, dict) else None
    else:
        form = await request.post()
        label = _form_text(form, "label")
    if label not in LABELS:
        raise web.HTTPBadRequest(text=f"label: expected spam or ham, got {str(label)[:20]!r}")
    return str(label)


async def _teach(request: web.Request, raw: bytes, label: str, target: str, back: str) -> web.StreamResponse:
    from milter.feedback import Store

    state = _state(request)
    who, address = _who(request), request[ADDRESS]

    def learn() -> Any:
        with Store(state.config.feedback_store) as store:
            return store.learn(raw, label, user=who, subject_tag=state.config.subject_tag)  # type: ignore[arg-type]

    try:
        taught = await asyncio.to_thread(learn)
    except MilterError as e:
        log.warning("console: %s could not teach %s as %s: %s", who, target, label, e)
        await state.db(state.history.log_action, who, address, f"teach-{label}", target, f"failed: {e}")
        return _done(request, {"error": str(e)}, 503 if type(e).__name__ == "FeedbackError" else 422, back)
    log.info("console: %s (from %s) taught %s as %s: %s", who, address, target, label, taught.outcome)
    await state.db(state.history.log_action, who, address, f"teach-{label}", target, taught.outcome)
    done = "known" if taught.outcome == "known" else f"taught-{label}"
    body = {"target": target, "label": label, "outcome": taught.outcome, "by": who}
    return _done(request, body, 200, f"{back}?done={done}")


async def teach_entry(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    entry_id = int(request.match_info["id"])
    label = await _label(request)
    raw = await state.db(state.history.raw, entry_id)
    if raw is None:
        return _done(request, {"error": "the message itself is no longer kept: cannot teach it"}, 410, "")
    return await _teach(request, raw, label, f"history/{entry_id}", f"/history/{entry_id}")


async def teach_held(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _milter_mode_refusal(request, state)
    held_id = request.match_info["id"]
    label = await _label(request)
    _, message = await _read_held(state, held_id)
    return await _teach(request, message, label, f"quarantine/{held_id}", f"/quarantine/{held_id}")


# --- the rest of the API ---------------------------------------------------------------------


async def api_csrf(request: web.Request) -> web.StreamResponse:
    return web.json_response({CSRF_FIELD: request[CSRF], "header": CSRF_HEADER, "field": CSRF_FIELD})


async def api_actions(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    try:
        limit = max(1, min(int(request.query.get("limit", 50)), 1000))
    except ValueError:
        raise web.HTTPBadRequest(text="limit: expected a number") from None
    actions = await state.db(state.history.actions, limit)
    return web.json_response([{**a, "time": iso(float(a["time"]))} for a in actions])


def console_url(config: Config) -> str:
    assert config.console is not None
    return f"http://{format_address(*config.console)}/"
