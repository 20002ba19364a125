"""The console in a real browser: Debian's chromium, headless, driven by selenium through
chromium-driver (both installed by scripts/setup from debian-packages.txt).

With MILTER_SCREENSHOTS=DIR set, the tests also save the screenshots docs/console.md shows
(`MILTER_SCREENSHOTS=docs/console .venv/bin/pytest tests/test_console_browser.py`).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sink, free_port
from consoleutil import message, wait_for
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from test_console import PASSWORD, console_config, console_daemon, held_ids, send

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = os.environ.get("MILTER_SCREENSHOTS")

# Everything a hostile message can put where a console shows it.
HOSTILE_SUBJECT = "hold <script>alert('subject')</script> =?utf-8?B?PHNjcmlwdD5hbGVydCgyKTwvc2NyaXB0Pg==?="
HOSTILE_HTML = (
    "<html><head><style>body{background:url(http://remote.example/bg.png)}</style>"
    "<script>alert('body')</script></head><body>"
    "<p>Dear user, <a href=\"javascript:alert('link')\">click here</a> to verify.</p>"
    '<img src="http://remote.example/pixel.gif" onerror="alert(\'img\')">'
    '<iframe src="http://remote.example/frame"></iframe>'
    '<form action="http://remote.example/steal"><input name=p></form>'
    "<p>&lt;b&gt;escaped&lt;/b&gt; and <b onmouseover=\"alert('b')\">bold</b></p></body></html>"
)


def hostile_message() -> bytes:
    head = (
        "From: =?utf-8?Q?=3Cscript=3Ealert(3)=3C/script=3E?= <evil@example.org>\r\n"
        "To: <bob@example.net>\r\n"
        f"Subject: {HOSTILE_SUBJECT}\r\n"
        'Message-ID: <"><img src=x onerror=alert(4)>@example.org>\r\n'
        "X-Broken: =?x-unknown-charset?Q?=FF=FE?= =?utf-8?B?not*base64?= \x7f\r\n"
        f"X-Huge: {'A' * 20000}\r\n"
        'Reply-To: <a href="javascript:alert(5)">me</a>\r\n'
        'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
    )
    body = (
        "--b\r\nContent-Type: text/plain; charset=bogus-charset\r\n\r\n"
        "<script>alert('plain')</script> plain \xff\xfe text\r\n"
        "--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{HOSTILE_HTML}\r\n--b--\r\n"
    )
    return head.encode() + body.encode("latin-1")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1280,1000", "--no-first-run", "--disable-extensions", "--lang=en-US",
    ):  # fmt: skip
        options.add_argument(argument)
    # No password manager: its bubbles and autofill change pages the tests are clicking in.
    options.add_experimental_option(
        "prefs", {"credentials_enable_service": False, "profile.password_manager_enabled": False}
    )
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def click(driver: WebDriver, find: Callable[[], Any]) -> None:
    """Click what `find()` finds, a thing that loads a page, and wait until the new page is
    there. Found again if chromium says the node left the document between finding and
    clicking (seen once in some runs, on a page that had finished loading)."""
    page = driver.find_element(By.TAG_NAME, "html")
    for attempt in range(3):
        try:
            find().click()
            break
        except StaleElementReferenceException:
            if attempt == 2:
                raise
        except WebDriverException as e:
            if attempt == 2 or "does not belong to the document" not in str(e):
                raise
    WebDriverWait(driver, 20).until(lambda _: _left_document(page))
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _left_document(element: Any) -> bool:
    """Whether `element` is gone from the page: selenium's staleness_of, but chromium may say so
    with "does not belong to the document" rather than a stale-element error (seen in CI)."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as e:
        if "does not belong to the document" in str(e):
            return True
        raise
    return False


def shot(driver: WebDriver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        # The whole page: the window is its height plus what the window itself takes.
        height, frame = driver.execute_script(
            "return [Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),"
            " window.outerHeight - window.innerHeight]"
        )
        driver.set_window_size(1280, min(max(int(height), 600), 2400) + int(frame))
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))
        driver.set_window_size(1280, 1000)


def assert_inert(driver: WebDriver, base: str) -> None:
    """Nothing from a message became markup, ran, or was fetched."""
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    main = driver.find_element(By.TAG_NAME, "main")
    for selector in ("script", "img", "iframe", "object", "embed", "style", "[onerror]", "[onmouseover]"):
        assert main.find_elements(By.CSS_SELECTOR, selector) == [], selector
    for link in main.find_elements(By.TAG_NAME, "a"):
        href = link.get_attribute("href") or ""
        assert href.startswith(base + "/"), href  # the console's own pages only
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(base + "/") for url in fetched), fetched  # nothing from elsewhere


def test_overview_history_and_teach(browser: WebDriver, config_for: Any, tmp_path: Path, sink: Sink) -> None:
    config = console_config(config_for, tmp_path, sink)
    with console_daemon(config) as api:
        send(config.listen_port, message("lunch on friday?"))
        spammy = (
            "Click here for your special offer. Cheap pills without prescription. You have won a prize.\r\n"
        )
        send(config.listen_port, message("you have won", spammy), ("carol@example.net",))
        entries = wait_for(
            lambda: len(api.get("/api/history")) == 2 and api.get("/api/history"), "two decisions"
        )
        browser.get(api.base + "/")
        assert browser.title.startswith("Overview")
        assert browser.find_element(By.ID, "workers-up").text == "1 of 1"
        assert browser.find_element(By.ID, "last-hour").text == "2"
        assert browser.find_element(By.ID, "model-id").text == entries[0]["model"]
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 2
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")  # the bars of the last minute
        shot(browser, "overview")
        click(browser, lambda: browser.find_element(By.ID, "nav-history"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#history tr.entry")
        assert len(rows) == 2
        won = next(r for r in rows if "you have won" in r.text)
        assert won.find_element(By.CSS_SELECTOR, ".score").text == f"{entries[0]['probability']:.3f}"
        assert won.find_element(By.CSS_SELECTOR, ".features").text  # what pushed the score
        shot(browser, "history")
        browser.find_element(By.ID, "filter-subject").send_keys("LUNCH")
        click(browser, lambda: browser.find_element(By.ID, "filter"))
        (row,) = browser.find_elements(By.CSS_SELECTOR, "#history tr.entry")
        assert "lunch on friday?" in row.text
        click(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#history tr.entry a"))
        assert browser.find_element(By.ID, "probability").text == f"{entries[1]['probability']:.3f}"
        assert browser.find_elements(By.CSS_SELECTOR, "#features tr td code")
        shot(browser, "entry")
        click(browser, lambda: browser.find_element(By.ID, "teach-ham"))
        assert "as ham" in browser.find_element(By.ID, "notice").text
    assert (config.feedback_store / "feedback.sqlite3").exists()


def test_quarantine_view_release_once_and_delete(
    browser: WebDriver, config_for: Any, tmp_path: Path, sink: Sink
) -> None:
    config = console_config(config_for, tmp_path, sink)
    with console_daemon(config) as api:
        send(config.listen_port, message("hold: quarterly invoice", mid="<invoice@example.org>"))
        send(config.listen_port, message("hold: a second one", mid="<second@example.org>"))
        wait_for(lambda: len(held_ids(api)) == 2, "two quarantined messages")
        browser.get(api.base + "/quarantine")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#quarantine tr.held")) == 2
        shot(browser, "quarantine")
        click(
            browser, lambda: browser.find_element(By.XPATH, "//tr[@class='held'][contains(., 'invoice')]//a")
        )
        held_page = browser.current_url
        headers = browser.find_element(By.ID, "headers").text
        assert "Message-ID <invoice@example.org>" in headers
        assert "see you on Friday." in browser.find_element(By.CSS_SELECTOR, "pre.body").text
        shot(browser, "quarantined-message")
        click(browser, lambda: browser.find_element(By.ID, "release"))
        assert browser.current_url.endswith("/quarantine?done=released")
        assert "Released" in browser.find_element(By.ID, "notice").text
        (got,) = sink.received  # arrived, once
        assert b"<invoice@example.org>" in got.data and got.rcpt_tos == ["bob@example.net"]
        (left,) = browser.find_elements(By.CSS_SELECTOR, "#quarantine tr.held")
        assert "a second one" in left.text
        browser.get(held_page)  # released: no longer in the quarantine
        assert "no message" in browser.find_element(By.TAG_NAME, "body").text
        assert len(sink.received) == 1
        browser.get(api.base + "/quarantine")
        click(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#quarantine tr.held button.delete"))
        assert browser.find_element(By.ID, "empty").text == "The quarantine is empty."
        assert held_ids(api) == [] and len(sink.received) == 1


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another origin's page with a form that posts to the console (a CSRF attempt)."""

    target = ""

    def do_GET(self) -> None:
        page = (
            # As such a page would: it posts the form itself, as soon as it is loaded.
            '<html><body onload="document.forms[0].submit()">'
            f'<form id="f" method="post" action="{self.target}">'
            '<input type="hidden" name="label" value="spam"><button id="go">win a prize</button>'
            "</form></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def attacker_site(target: str) -> Iterator[str]:
    handler = type("Handler", (_Attacker,), {"target": target})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_post_without_the_csrf_token_is_refused(
    browser: WebDriver, config_for: Any, tmp_path: Path, sink: Sink
) -> None:
    config = console_config(config_for, tmp_path, sink)
    with console_daemon(config) as api:
        send(config.listen_port, message("hold: keep me"))
        (held,) = held_ids(api)
        for action in ("release", "delete"):
            with attacker_site(f"{api.base}/quarantine/{held}/{action}") as page:
                browser.get(page)
                WebDriverWait(browser, 20, ignored_exceptions=(WebDriverException,)).until(
                    lambda d: "missing or wrong CSRF token" in d.find_element(By.TAG_NAME, "body").text
                )
                assert browser.current_url == f"{api.base}/quarantine/{held}/{action}"
        assert held_ids(api) == [held] and sink.received == []


def test_login_is_required_off_loopback(
    browser: WebDriver, config_for: Any, tmp_path: Path, sink: Sink
) -> None:
    from milter.password import write_password_file

    passwords = tmp_path / "console.passwd"
    write_password_file(passwords, "admin", PASSWORD)
    port = free_port()
    config = console_config(
        config_for, tmp_path, sink, console=("0.0.0.0", port), console_password_file=passwords
    )
    with console_daemon(config) as api:
        browser.delete_all_cookies()
        browser.get(api.base + "/history")
        assert browser.current_url == api.base + "/login"
        shot(browser, "login")
        browser.find_element(By.ID, "password").send_keys("not the password")
        click(browser, lambda: browser.find_element(By.ID, "login"))
        assert browser.find_element(By.ID, "login-failed").text == "Wrong user name or password."
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        click(browser, lambda: browser.find_element(By.ID, "login"))
        assert browser.current_url == api.base + "/" and browser.title.startswith("Overview")
        assert "admin" in browser.find_element(By.CSS_SELECTOR, ".who").text
        click(browser, lambda: browser.find_element(By.CSS_SELECTOR, ".who button"))  # log out
        browser.get(api.base + "/quarantine")
        assert browser.current_url == api.base + "/login"


def test_a_hostile_message_is_inert_text_on_every_page(
    browser: WebDriver, config_for: Any, tmp_path: Path, sink: Sink
) -> None:
    config = console_config(config_for, tmp_path, sink)
    with console_daemon(config) as api:
        send(config.listen_port, hostile_message())
        (held,) = held_ids(api)
        (entry,) = wait_for(lambda: api.get("/api/history"), "the decision in the history")
        for path in ("/", "/history", f"/history/{entry['id']}", "/quarantine", f"/quarantine/{held}"):
            browser.get(api.base + path)
            assert_inert(browser, api.base)
        text = browser.find_element(By.TAG_NAME, "main").text
        assert "<script>alert('subject')</script>" in text  # shown, as text
        assert "<script>alert(2)</script>" in text  # the encoded word, decoded, still text
        assert "<script>alert('plain')</script>" in text
        assert "Dear user, click here to verify." in text  # the HTML part as the text a reader sees
        assert '<a href="javascript:alert(5)">me</a>' in text  # a header value, as text
        assert "[...]" in text  # the huge field, cut
        shot(browser, "hostile-message")
        browser.get(api.base + "/history")
        assert "<script>alert('subject')</script>" in browser.find_element(By.ID, "history").text
