"""The per-turn prompt layout, built for llama.cpp's prefix reuse.

A conversation's prompt is laid out once (a "reset") and then only grows at its end:

    [system prompt]
    [memory: pinned summary + turns recalled at the reset]     stable until the next reset
    [timeline: stored turns from the anchor on, each turn's    grows by one exchange a turn
     recall note just before the user turn it was made for]
    [this turn's recall note][the new user message]            the only new tokens

So every reply re-evaluates only the new note and message (the previous reply is already in
the KV cache). When the timeline fills the budget, the layout is reset: the anchor moves up,
the summary is refolded, and the new prefix is evaluated in the background while the user
reads. The layout is plain data kept in Redis; losing it costs time, never correctness.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from memory.packing import Line, render_lines
from memory.render import as_chat, memory_text
from memory.store import Message
from models.types import ChatMessage

NOTE_HEADER = "Recalled from earlier in this conversation:"
RESET_RECENT_SHARE = 0.3  # of the history budget: the timeline right after a reset
RESET_RECALL_SHARE = 0.2  # of the history budget: turns recalled into the stable prefix
SUMMARY_SHARE = 0.15  # the summary is left out of the prefix when it would take more
NOTE_TOKENS = 64  # default cap of one turn's recall note: every note token is evaluated
# while the user waits for the first token, so it is the price of recall on each reply
NOTE_MIN_SCORE = 1.5  # fused score (a z-score) a turn needs to be worth a note
PREFILL_SHARE = 0.8  # past this share of the budget, the next layout is prepared in the background


@dataclass(frozen=True)
class Recalled:
    """A turn recalled into the prompt: where it sits and how relevant it was."""

    seq: int
    score: float


@dataclass(frozen=True)
class Layout:
    """How a conversation's prompt is laid out until the next reset."""

    anchor: int  # first seq of the timeline
    system: str = ""  # the system prompt it was laid out with
    summary: str = ""
    summary_version: int = 0
    summary_upto: int = 0
    base: tuple[Recalled, ...] = ()  # recalled into the stable prefix at the reset
    notes: dict[int, tuple[Recalled, ...]] = field(default_factory=dict)  # user seq -> note
    history_tokens: int = 0  # history tokens of the latest prompt built from it
    budget: int = 0  # the history budget that prompt had

    def recalled_seqs(self) -> set[int]:
        """Every seq already recalled somewhere in the prompt."""
        seqs = {r.seq for r in self.base}
        for note in self.notes.values():
            seqs.update(r.seq for r in note)
        return seqs

    def with_note(
        self, user_seq: int, note: Sequence[Recalled], history: int, budget: int
    ) -> Layout:
        """The layout after one more turn."""
        notes = dict(self.notes)
        if note:
            notes[user_seq] = tuple(note)
        return replace(self, notes=notes, history_tokens=history, budget=budget)

    def to_json(self) -> str:
        """The stored form."""
        data = asdict(self)
        data["notes"] = {str(k): v for k, v in data["notes"].items()}
        return json.dumps(data, ensure_ascii=False)

    @staticmethod
    def from_json(raw: str) -> Layout:
        """Parse the stored form."""
        data = json.loads(raw)
        return Layout(
            anchor=int(data["anchor"]),
            system=data["system"],
            summary=data["summary"],
            summary_version=int(data["summary_version"]),
            summary_upto=int(data["summary_upto"]),
            base=tuple(Recalled(**r) for r in data["base"]),
            notes={int(k): tuple(Recalled(**r) for r in v) for k, v in data["notes"].items()},
            history_tokens=int(data["history_tokens"]),
            budget=int(data["budget"]),
        )


def needs_prefill(layout: Layout) -> bool:
    """True when the next turns would soon overflow: prepare the next layout now."""
    return layout.budget > 0 and layout.history_tokens > layout.budget * PREFILL_SHARE


def render(
    layout: Layout,
    messages: Mapping[int, Message],
    lines: Mapping[int, Line],
    last: int,
) -> list[ChatMessage]:
    """The stable part of the prompt: system, memory block and timeline up to seq `last`."""
    out = [ChatMessage("system", layout.system)]
    base = render_lines([lines[r.seq] for r in layout.base if r.seq in lines])
    block = memory_text(layout.summary, base)
    if block:
        out.append(ChatMessage("system", block))
    for seq in range(layout.anchor, last + 1):
        note = layout.notes.get(seq)
        if note:
            out.append(note_message([lines[r.seq] for r in note if r.seq in lines]))
        if seq in messages:
            out.append(as_chat(messages[seq]))
    return out


def note_message(lines: Sequence[Line]) -> ChatMessage:
    """One turn's recall note."""
    return ChatMessage(
        "system", f"{NOTE_HEADER}\n{render_lines(sorted(lines, key=lambda ln: ln.seq))}"
    )


def choose_note(
    ranked: Sequence[Line], exclude: set[int], budget: int, day_costs: Mapping[str, int]
) -> list[Line]:
    """The few best turns, relevant enough and not already in the prompt, that fit `budget`."""
    taken: list[Line] = []
    days: set[str] = set()
    used = 0
    for line in ranked:
        if line.score < NOTE_MIN_SCORE:
            break
        cost = line.cost + (0 if line.day in days else day_costs[line.day])
        if line.seq in exclude or used + cost > budget:
            continue
        taken.append(line)
        days.add(line.day)
        used += cost
    return taken
