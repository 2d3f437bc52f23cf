"""How stored turns, dates and the memory block read inside a prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache

from memory.packing import Line
from memory.store import Message
from models.types import ChatMessage

SECONDS_PER_DAY = 86_400
RECALL_HEADER = "Recalled turns from earlier in this conversation (by date):"
SUMMARY_HEADER = "Summary of the conversation so far:"


def line_text(message: Message) -> str:
    """A turn as one line: `speaker: text`."""
    return f"{message.speaker}: {message.text}" if message.speaker else message.text


def as_chat(message: Message) -> ChatMessage:
    """A turn as a chat message of the prompt."""
    if message.role == "assistant":
        return ChatMessage("assistant", line_text(message))
    return ChatMessage("user", line_text(message))


def day_number(at: float) -> int:
    """The UTC calendar day of a timestamp, as a number: turns of one day form a session."""
    return int(at // SECONDS_PER_DAY)


def day_label(at: float) -> str:
    """A compact date heading, e.g. `8 May 2023`."""
    return _label_of_day(day_number(at))


@lru_cache(maxsize=4096)
def _label_of_day(day: int) -> str:
    d = datetime.fromtimestamp(day * SECONDS_PER_DAY, tz=UTC)
    return f"{d.day} {d:%B %Y}"


def without_year(label: str) -> str:
    """A date heading without its year: `8 May 2023` -> `8 May`."""
    return label.rsplit(" ", 1)[0]


def year_shown_on_change(lines: Sequence[Line]) -> list[Line]:
    """Lines in seq order, their date headings showing the year only where it changes."""
    out: list[Line] = []
    year, day, label = "", "", ""
    for line in lines:
        if line.day != day:
            day, shown = line.day, line.day.rsplit(" ", 1)[-1]
            label = day if shown != year else without_year(day)
            year = shown
        out.append(replace(line, day=label))
    return out


def memory_text(summary: str, recalled: str) -> str:
    """The memory message: the summary, then the recalled turns, each under its header."""
    parts = []
    if summary:
        parts.append(f"{SUMMARY_HEADER}\n{summary}")
    if recalled:
        parts.append(f"{RECALL_HEADER}\n{recalled}")
    return "\n\n".join(parts)
