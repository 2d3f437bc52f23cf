"""Stop strings: the reply text cut before the first one, on both engines and over /v1."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.batched_engine import BatchedEngine
from models.jobs import EngineConfig, ReplyText
from models.llama_engine import LlamaEngine
from models.paths import default_chat_model
from models.types import ChatMessage, Delta, Finished, SamplingParams
from tests.conftest import TEST_CTX


def _shown(pieces: list[bytes], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    reply = ReplyText(stops)
    shown = [reply.add(piece) for piece in pieces]
    return [*shown, reply.end()], reply.stopped


def test_a_stop_string_split_over_tokens_is_held_back_then_dropped() -> None:
    shown, stopped = _shown([b"Hello ", b"wor", b"ld", b"\nUser", b":", b" more"], ("\nUser:",))
    assert stopped
    assert shown == ["Hello ", "wor", "ld", "", "", "", ""], "'\\nUser' held back, then dropped"


def test_text_that_only_began_like_a_stop_string_is_released() -> None:
    shown, stopped = _shown([b"a\nUs", b"e", b"s two"], ("\nUser:",))
    assert not stopped
    assert shown == ["a", "", "\nUses two", ""]


def test_held_text_comes_out_when_the_reply_ends_otherwise() -> None:
    shown, stopped = _shown([b"end\nUse"], ("\nUser:",))
    assert (shown, stopped) == (["end", "\nUse"], False)


def test_the_earliest_of_several_stop_strings_wins_and_utf8_splits_are_joined() -> None:
    snow = "☃".encode()
    shown, stopped = _shown([b"x ", snow[:2], snow[2:], b" y STOP z END"], ("END", "STOP"))
    assert stopped and "".join(shown) == "x ☃ y "


@given(
    text=st.text(alphabet="ab\n:é", max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    stops=st.lists(st.text(alphabet="ab\n:é", min_size=1, max_size=4), max_size=3),
)
def test_shown_text_is_the_text_before_the_first_stop_however_it_is_split(
    text: str, cuts: list[int], stops: list[str]
) -> None:
    data = text.encode()
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    shown, stopped = _shown(pieces, tuple(stops))
    # The reply is over at the shortest start of the text that holds a stop string, and shows
    # that start cut before the first stop string in it.
    ends = [text.find(s) + len(s) for s in stops if s in text]
    done = text[: min(ends)] if ends else text
    first = min((i for i in (done.find(s) for s in stops) if i >= 0), default=-1)
    assert "".join(shown) == (done if first < 0 else done[:first])
    assert stopped == (first >= 0)


def test_a_stop_string_that_ends_first_wins_even_inside_a_longer_one() -> None:
    # ':é:' starts earlier but 'é' is complete first: the reply is over at 'é', in one piece or
    # split anywhere.
    for pieces in ([":é:".encode()], [":é".encode(), b":"], [b":", "é:".encode()]):
        shown, stopped = _shown(pieces, ("é", ":é:"))
        assert ("".join(shown), stopped) == (":", True), pieces


@pytest.fixture(scope="module", params=["batched", "simple"])
def llm(request: pytest.FixtureRequest) -> Iterator[BatchedEngine | LlamaEngine]:
    config = EngineConfig(str(default_chat_model()), n_ctx=TEST_CTX, n_threads=2, parallel=2)
    engine = BatchedEngine(config) if request.param == "batched" else LlamaEngine(config)
    yield engine
    engine.close()


async def _reply(llm: BatchedEngine | LlamaEngine, params: SamplingParams) -> tuple[str, Finished]:
    messages = [ChatMessage("user", "List the days of the week, one per line.")]
    parts: list[str] = []
    async for item in llm.stream(messages, params, threading.Event()):
        if isinstance(item, Delta):
            parts.append(item.text)
        else:
            return "".join(parts), item
    raise AssertionError("no Finished")


@pytest.mark.integration
async def test_a_reply_ends_before_its_stop_string(llm: BatchedEngine | LlamaEngine) -> None:
    await llm.wait_ready()
    full, _ = await _reply(llm, SamplingParams(max_tokens=40, temperature=0.0))
    assert len(full) > 12, full
    stop = full[8:12]  # somewhere in the middle of the greedy reply
    cut, done = await _reply(llm, SamplingParams(max_tokens=40, temperature=0.0, stop=(stop,)))
    assert cut == full[: full.index(stop)]
    assert done.reason == "completed"
    assert 0 < done.completion_tokens < 40
