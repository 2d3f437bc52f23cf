"""Browser-test helpers: a real listening memchat on its own loop thread, and Playwright steps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.sync_api import Page

from server.runtime import RUNTIME, Runtime

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
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
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
WAIT_MS = 120_000  # the real model on a few CPU cores


class LiveServer:
    """An app served on a real port by its own event loop in a thread (browsers need a socket)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = TestServer(app, host="127.0.0.1")
        self.url = ""

    def start(self) -> LiveServer:
        """Start serving; `url` is the page's address."""
        self.thread.start()
        self.run(self.server.start_server())
        self.url = str(self.server.make_url("/"))
        return self

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_MS / 1000)

    @property
    def rt(self) -> Runtime:
        """The app's live parts."""
        return self.app[RUNTIME]

    def stop(self) -> None:
        """Close the server and its loop."""
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def open_page(page: Page, url: str) -> None:
    """Load the UI and wait until its websocket is connected."""
    page.goto(url)
    page.wait_for_function("window.memchat && window.memchat.state.connected")


def replies(page: Page) -> int:
    """Replies the page has seen finish."""
    return int(page.evaluate("window.memchat.state.replies"))


def wait_reply(page: Page, before: int) -> None:
    """Wait until a reply after `before` finished and the conversation was shown as stored."""
    page.wait_for_function(
        "n => window.memchat.state.replies > n", arg=before, timeout=WAIT_MS, polling=100
    )


def send(page: Page, text: str) -> None:
    """Type a message, press Enter, and wait for the whole reply."""
    before = replies(page)
    page.fill("#input", text)
    page.press("#input", "Enter")
    wait_reply(page, before)


def first_delta(page: Page) -> None:
    """Wait until the streaming reply shows text."""
    page.wait_for_function(
        "() => { const b = document.querySelector('.msg.streaming .body');"
        " return b && b.textContent.length > 0; }",
        timeout=WAIT_MS,
        polling="raf",
    )


def cid(page: Page) -> str:
    """The open conversation's id."""
    return str(page.evaluate("window.memchat.state.cid"))


def stored(page: Page, conversation: str) -> list[dict[str, Any]]:
    """The conversation's messages as the server stores them."""
    resp = page.request.get(f"/api/conversations/{conversation}/messages")
    assert resp.ok, resp.text()
    return list(resp.json()["messages"])


def shoot(page: Page, name: str) -> None:
    """Save a screenshot for the README."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
