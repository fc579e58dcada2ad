"""``/docs`` as a person uses it: a real headless Chromium, driven by Playwright, against a real
``runner.py serve`` on 127.0.0.1, with no network at all.

The browser is Debian's ``chromium`` (``apt-get install chromium``) and the driver is the ``playwright``
package (in the dev extra); ``playwright install`` (a browser download) is never needed.  Without either
the test fails, saying what to install: a skipped browser test would let the page break unseen.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ROOT, end_process, runner_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "browser-key-7f3a"
STEP_MS = 20_000  # each step of the page (load, click, answer) waits at most this long


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium; fails (never skips) when the browser or the driver is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright for Python: pip install -e '.[dev]' (or pip install playwright)")
    if not CHROMIUM.exists():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving_offline(tmp_path: Path) -> Iterator[str]:
    """``runner.py serve`` with the offline model and ``RUNNER_API_KEY`` set, on a free port of 127.0.0.1."""
    port = _free_port()
    err = tmp_path / "serve.err"
    with err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "runner.py"), "serve", "--port", str(port), "--model", "fake", "--grace", "2"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=runner_env(RUNNER_API_KEY=KEY),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, err.read_text()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start: " + err.read_text()
            time.sleep(0.05)
        yield url
    finally:
        if process.poll() is None:
            end_process(process, signal.SIGTERM, within_s=15)


class _Traffic:
    """Every URL the pages asked for, and whether it left the machine.

    ``guard`` sees each request that reaches the network: anything not for 127.0.0.1 is recorded and refused
    (so even a failing test sends nothing out).  A request the browser itself blocked, by the docs pages'
    Content-Security-Policy, is reported by ``page.on("request")`` too, but it never reached the network.
    """

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.offsite: list[str] = []
        self.blocked: list[str] = []

    def seen(self, request: Any) -> None:
        self.urls.append(request.url)

    def failed(self, request: Any) -> None:
        if "csp" in (request.failure or "").lower():
            self.blocked.append(request.url)

    def guard(self, route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.offsite.append(url)
            route.abort()


@contextmanager
def _screenshot_on_failure(page: Page, path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        page.screenshot(path=str(path), full_page=True)
        exc.add_note(f"screenshot of the page: {path}")
        raise


def _authorize(page: Page, key: str) -> None:
    page.locator("button.authorize").first.click()
    dialog = page.locator(".dialog-ux")
    dialog.locator("input").first.fill(key)
    dialog.locator("button.modal-btn.authorize").click()
    dialog.locator("button.btn-done").click()


def _open_operation(page: Page, path: str, body: dict[str, Any]) -> Locator:
    """Expands the POST operation on ``path``, presses "Try it out" and fills in the body."""
    operation = page.locator(".opblock-post", has=page.locator(f'.opblock-summary-path[data-path="{path}"]'))
    operation.locator(".opblock-summary").first.click()
    operation.locator("button.try-out__btn").click()
    operation.locator("textarea.body-param__text").fill(json.dumps(body))
    return operation


def _execute(operation: Locator) -> tuple[str, Any]:
    """Presses Execute; the status and the JSON body of the answer the page shows."""
    clear = operation.locator("button.btn-clear")
    if clear.count():
        clear.click()  # the previous answer goes, so the one read below is the new one
    operation.locator("button.execute").click()
    answer = operation.locator(".live-responses-table tbody .response").first
    status = answer.locator(".response-col_status").inner_text().strip()
    text = answer.locator(".response-col_description pre").first.inner_text()
    return status, json.loads(text)


def test_a_person_can_call_a_chain_from_the_docs_page_offline(browser: Browser, tmp_path: Path) -> None:
    traffic = _Traffic()
    with serving_offline(tmp_path) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 2000})
        context.set_default_timeout(STEP_MS)
        context.route("**/*", traffic.guard)
        context.on("request", traffic.seen)
        context.on("requestfailed", traffic.failed)
        page = context.new_page()
        try:
            with _screenshot_on_failure(page, tmp_path / "docs.png"):
                page.goto(url + "/docs")
                page.locator('h3.opblock-tag[data-tag="story"]').wait_for()
                summary = page.locator('.opblock-post .opblock-summary-path[data-path="/chains/story/invoke"]')
                assert summary.count() == 1
                assert not page.get_by_text("Unable to render this definition").count()

                invoke = _open_operation(page, "/chains/story/invoke", {"input": {"topic": "a brave snail"}})
                status, answer = _execute(invoke)
                assert status == "401", (status, answer)  # not authorized yet: the chain needs the key
                assert answer["error"]["type"] == "Unauthorized"

                _authorize(page, KEY)
                status, answer = _execute(invoke)
                assert status == "200", (status, answer)
                assert isinstance(answer["output"], str) and "snail" in answer["output"], answer
                assert len(answer["output"].split()) > 20 and answer["metrics"]["model_calls"] == 2

            with _screenshot_on_failure(page, tmp_path / "redoc.png"):
                page.goto(url + "/redoc")
                page.locator("h2", has_text="Run story on one input").wait_for()  # rendered, not only listed
                page.wait_for_load_state("networkidle")  # every request it makes is seen (and ended) here
        finally:
            context.close()
    assert traffic.urls, "the browser asked for nothing"
    assert [u for u in traffic.urls if urlsplit(u).hostname != "127.0.0.1" and u not in traffic.blocked] == []
    assert not traffic.offsite, traffic.offsite
