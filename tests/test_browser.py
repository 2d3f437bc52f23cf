"""The browser UI in headless Chromium against a real memchat: real Redis, model and embedder.

One browser and one server for the module; each test opens its own page. Screenshots of the
main states go to docs/screenshots/ (linked from the README).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from redis import Redis as SyncRedis

from models.embedder import SentenceEmbedder
from models.llama_engine import LlamaEngine
from server.app import create_app
from server.settings import Settings
from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    WAIT_MS,
    LiveServer,
    cid,
    first_delta,
    open_page,
    replies,
    send,
    shoot,
    stored,
    wait_reply,
)
from tests.conftest import TEST_CTX

pytestmark = pytest.mark.integration
PAYLOAD = 'Repeat exactly: <img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
ECHO_PROMPT = "You copy text. Reply with the user's text unchanged."
LOCKER = "By the way, my locker code is 4711 and the locker is in the basement gym."
ACTIVITIES = ["hiking", "baking bread", "painting", "cycling", "reading", "gardening"]
TOPICS = ["old films", "the weather", "football", "jazz records", "cooking", "train travel"]


@pytest.fixture(scope="module")
def live(
    redis_url: str, engine: LlamaEngine, embedder: SentenceEmbedder, tmp_path_factory: Any
) -> Iterator[LiveServer]:
    with SyncRedis.from_url(redis_url) as r:
        r.flushall()
    settings = Settings(
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("browser"),
        n_ctx=TEST_CTX,
        reply_tokens=64,
        rate_limit=0,
    )
    server = LiveServer(create_app(settings, llm=engine, embedder=embedder)).start()
    server.run(engine.wait_ready())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, live: LiveServer) -> Iterator[Page]:
    # bypass_csp: Playwright evaluates its wait conditions as strings; it also means the
    # injection test below proves the DOM rendering is safe without the page's CSP to help.
    context = browser.new_context(
        base_url=live.url, viewport={"width": 1280, "height": 800}, bypass_csp=True
    )
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    open_page(page, live.url)
    yield page
    context.close()
    assert errors == []


def _new_conversation(page: Page, live: LiveServer, **settings: Any) -> str:
    """A conversation with these settings, opened in the page."""
    created = page.request.post("/api/conversations", data={}).json()["id"]
    if settings:
        assert page.request.put(f"/api/conversations/{created}/settings", data=settings).ok
    open_page(page, f"{live.url}#{created}")
    page.wait_for_function("id => window.memchat.state.cid === id", arg=created)
    return str(created)


def test_a_reply_streams_as_markdown_with_timings_and_its_context(page: Page) -> None:
    send(page, "Write a Python function that adds two numbers.")
    assert page.evaluate("window.memchat.state.deltas") > 1  # it arrived in pieces
    reply = page.locator(".msg.assistant").last
    expect(reply.locator(".timings")).to_have_text(
        re.compile(r"first token \d+ ms · [\d.]+ tokens/s · \d+ tokens")
    )
    texts = [m["text"] for m in stored(page, cid(page))]
    assert len(texts) == 2 and texts[1]
    shoot(page, "chat")
    reply.locator(".inspect").click()
    panel = page.locator("#panel")
    expect(panel.locator("#panel-title")).to_have_text("Context of reply #2")
    expect(panel.locator(".sections tr[data-section='recalled']")).to_be_visible()
    expect(panel.locator(".ctx-recent h3")).to_contain_text("Recent turns (0)")


def test_enter_sends_and_shift_enter_adds_a_line(page: Page) -> None:
    page.click("#input")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#input") == "first line\nsecond line"
    assert page.locator(".msg").count() == 0
    before = replies(page)
    page.keyboard.press("Enter")
    wait_reply(page, before)
    expect(page.locator(".msg.user .body")).to_have_text("first line\nsecond line")
    assert page.input_value("#input") == ""


def test_stop_regenerate_and_edit(page: Page, live: LiveServer) -> None:
    conv = _new_conversation(page, live)
    page.click("#open-settings")
    page.fill("#set-max-tokens", "400")
    page.fill("#set-temperature", "0.8")
    page.click("#panel button[type=submit]")
    expect(page.locator(".settings-note")).to_have_text(re.compile("Saved"))
    shoot(page, "settings")
    page.reload()
    page.wait_for_function("window.memchat.state.connected")
    page.click("#open-settings")
    expect(page.locator("#set-max-tokens")).to_have_value("400")  # persisted

    before = replies(page)
    page.fill("#input", "Tell me a very long story about a dragon and a knight.")
    page.press("#input", "Enter")
    first_delta(page)
    shoot(page, "streaming")
    page.keyboard.press("Escape")  # stops generation on the server
    wait_reply(page, before)
    expect(page.locator(".msg.assistant .badge.cancelled")).to_have_text("stopped")
    msgs = stored(page, conv)
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[1]["status"] == "cancelled"

    before = replies(page)
    page.locator(".msg.assistant .regenerate").click()
    wait_reply(page, before)
    regenerated = stored(page, conv)
    assert [m["seq"] for m in regenerated] == [1, regenerated[1]["seq"]]
    assert regenerated[1]["seq"] > 2  # a new reply replaced the stopped one

    before = replies(page)
    page.locator(".msg.user .edit").click()
    page.fill(".edit-input", "Write two lines about the sea.")
    page.click("text=Save & send")
    wait_reply(page, before)
    edited = stored(page, conv)
    assert (edited[0]["seq"], edited[0]["role"]) == (1, "user")
    assert edited[0]["text"] == "Write two lines about the sea."
    assert len(edited) == 2 and edited[1]["role"] == "assistant"
    expect(page.locator(".msg.user .body")).to_have_text("Write two lines about the sea.")


def test_html_from_the_user_and_the_model_renders_as_inert_text(
    page: Page, live: LiveServer
) -> None:
    conv = _new_conversation(page, live, system_prompt=ECHO_PROMPT, temperature=0)
    send(page, PAYLOAD)
    reply = stored(page, conv)[1]["text"]
    assert "<img" in reply or "<script" in reply  # the model did return markup
    for _ in range(2):  # as streamed, then as stored after a reload
        expect(page.locator(".msg.user .body")).to_have_text(PAYLOAD)
        assert "<" in (page.locator(".msg.assistant .body").text_content() or "")
        assert page.locator("#messages img, #messages script, #messages [onerror]").count() == 0
        assert page.evaluate("window.pwned") is None
        page.reload()
        page.wait_for_function("window.memchat.state.connected")
    shoot(page, "inert-html")


def _seed_long_conversation(page: Page, live: LiveServer) -> str:
    """A conversation too long for the context, with one fact early on: recall must find it."""
    conv = page.request.post("/api/conversations", data={"title": "Long chat"}).json()["id"]
    rt, user = live.rt, "local"

    async def seed() -> None:
        turns = [("user", "Hi! I want to tell you about my week."), ("assistant", "Go ahead.")]
        turns += [("user", LOCKER), ("assistant", "Noted, I will remember that.")]
        for i in range(44):
            what, topic = ACTIVITIES[i % len(ACTIVITIES)], TOPICS[i % len(TOPICS)]
            turns.append(
                (
                    "user",
                    f"On day {i} I spent the afternoon {what} and then talked "
                    f"about {topic} with my neighbours for a long while.",
                )
            )
            turns.append(("assistant", f"That sounds lovely; {topic} after {what} is a good day."))
        msgs = [await rt.memory.record(user, conv, role, text) for role, text in turns]
        await rt.memory.index(user, conv, msgs)

    live.run(seed())
    return str(conv)


def _recalled(page: Page) -> list[int]:
    page.locator(".msg.assistant .inspect").last.click()
    expect(page.locator("#panel .ctx-recalled")).to_be_visible()
    seqs = page.locator("#panel .ctx-recalled .turn").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))"
    )
    return [int(s) for s in seqs]


def test_forget_a_turn_and_it_vanishes_from_recall(page: Page, live: LiveServer) -> None:
    conv = _seed_long_conversation(page, live)
    open_page(page, f"{live.url}#{conv}")
    send(page, "What is my locker code?")
    recalled = _recalled(page)
    assert 3 in recalled  # the inspector lists the recalled turns, the fact among them
    turn = page.locator("#panel .ctx-recalled .turn[data-seq='3']")
    expect(turn.locator(".turn-text")).to_have_text(LOCKER)
    expect(turn.locator(".turn-head")).to_contain_text(re.compile(r"score -?[\d.]+"))
    shoot(page, "inspector")

    page.click("#open-memory")
    page.fill("#turn-search", "locker code")
    expect(page.locator("#turn-list .turn[data-seq='3']")).to_have_count(1)
    for text in page.locator("#turn-list .turn .turn-text").all_text_contents():
        assert "locker code" in text.lower()
    shoot(page, "memory")
    fact = page.locator("#turn-list .turn[data-seq='3']")
    fact.locator(".forget").click()
    expect(fact.locator(".forget")).to_have_text("Forget for good?")
    fact.locator(".forget").click()
    expect(page.locator("#turn-list .turn[data-seq='3']")).to_have_count(0)
    expect(page.locator(".msg[data-seq='3']")).to_have_count(0)
    assert 3 not in [m["seq"] for m in stored(page, conv)]

    send(page, "What is my locker code?")
    assert 3 not in _recalled(page)
    # The forgotten turn's own text is gone from the context (the model's earlier reply may
    # still quote the code: that is another turn, which the user did not forget).
    assert LOCKER not in (page.locator("#panel").text_content() or "")


def test_sidebar_new_rename_search_and_delete(page: Page) -> None:
    send(page, "I am planning a trip to Lisbon in May.")
    conv = cid(page)
    item = page.locator(f"#conversations li[data-id='{conv}']")
    item.locator(".rename").click()
    page.fill(".rename-input", "Holiday")
    page.press(".rename-input", "Enter")
    expect(page.locator(f"#conversations li[data-id='{conv}'] .title")).to_have_text("Holiday")
    expect(page.locator("#conv-title")).to_have_text("Holiday")

    page.fill("#search", "lisbon")  # in the text, not the title
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations li .when")).to_contain_text("Lisbon")
    page.fill("#search", "")
    expect(page.locator(f"#conversations li[data-id='{conv}']")).to_have_count(1)

    page.click("#new-chat")
    expect(page.locator(".empty-chat")).to_be_visible()
    item = page.locator(f"#conversations li[data-id='{conv}']")
    item.hover()
    item.locator(".delete").click()
    expect(item.locator(".delete")).to_have_text("Delete?")
    item.locator(".delete").click()
    expect(page.locator(f"#conversations li[data-id='{conv}']")).to_have_count(0)
    assert page.request.get(f"/api/conversations/{conv}").status == 404


def test_a_dropped_socket_reconnects_and_says_the_reply_was_interrupted(
    page: Page, live: LiveServer
) -> None:
    conv = _new_conversation(page, live, max_tokens=400)
    page.fill("#input", "Tell me a very long story about a lighthouse keeper.")
    page.press("#input", "Enter")
    first_delta(page)
    page.evaluate("window.memchat.state.ws.close()")
    expect(page.locator("#status")).to_contain_text("interrupted")
    page.wait_for_function("window.memchat.state.connected")
    expect(page.locator(".msg.assistant .badge.interrupted")).to_be_visible()
    assert stored(page, conv)[-1]["status"] == "interrupted"
    send(page, "Are you still there?")  # the new socket works
    assert len(stored(page, conv)) == 4


def test_dark_theme_and_phone_width(page: Page, browser: Browser, live: LiveServer) -> None:
    send(page, "Show me a bash one-liner that counts lines in a file, as a code block.")
    page.click("#theme")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    shoot(page, "dark")
    page.reload()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"  # remembered

    phone = browser.new_context(
        base_url=live.url, viewport={"width": 390, "height": 844}, bypass_csp=True
    )
    small = phone.new_page()
    open_page(small, f"{live.url}#{cid(page)}")
    expect(small.locator(".msg.assistant")).to_have_count(1)
    expect(small.locator("#sidebar")).not_to_be_in_viewport()
    shoot(small, "phone")
    small.click("#menu")
    expect(small.locator("#sidebar")).to_be_in_viewport(ratio=0.99)
    small.click("#new-chat")
    expect(small.locator(".empty-chat")).to_be_visible()
    phone.close()
