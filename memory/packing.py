"""Token budgeting and packing: pure functions over small frozen dataclasses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Reason = Literal["summary", "recalled", "recent"]


@dataclass(frozen=True)
class Budget:
    """How the model's context window is split for one reply."""

    n_ctx: int
    reply_reserve: int
    fixed_tokens: int  # system prompt + new message + generation prompt

    @property
    def history(self) -> int:
        """Tokens left for summary, recalled and recent turns."""
        return max(0, self.n_ctx - self.reply_reserve - self.fixed_tokens)


@dataclass(frozen=True)
class Turn:
    """A stored turn offered for packing, with its exact prompt cost."""

    seq: int
    cost: int


@dataclass(frozen=True)
class Scored:
    """A recall candidate: a turn and how relevant it is to the new message."""

    turn: Turn
    score: float


def pack_recent(newest_first: Sequence[Turn], budget: int) -> list[Turn]:
    """The longest run of newest turns whose costs fit in budget, oldest first."""
    taken: list[Turn] = []
    used = 0
    for turn in newest_first:
        if used + turn.cost > budget:
            break
        taken.append(turn)
        used += turn.cost
    taken.reverse()
    return taken


def pack_ranked(ranked: Sequence[Scored], budget: int, exclude: frozenset[int]) -> list[Scored]:
    """Greedily take the best-ranked turns that fit, skipping excluded seqs and repeats."""
    taken: list[Scored] = []
    seen = set(exclude)
    used = 0
    for item in ranked:
        seq = item.turn.seq
        if seq in seen or used + item.turn.cost > budget:
            continue
        taken.append(item)
        seen.add(seq)
        used += item.turn.cost
    return taken


def total_cost(turns: Sequence[Turn]) -> int:
    """Sum of the turns' prompt costs."""
    return sum(t.cost for t in turns)


@dataclass(frozen=True)
class Line:
    """A recalled turn as one line of the memory block, with its exact-in-isolation cost."""

    seq: int
    day: str  # the date heading it is grouped under
    text: str
    cost: int  # tokens of the line and its newline
    score: float


def pack_lines(
    ranked: Sequence[Line], budget: int, exclude: frozenset[int], day_costs: Mapping[str, int]
) -> list[Line]:
    """Best-ranked lines that fit, charging each date heading once; returned in seq order."""
    taken: list[Line] = []
    days: set[str] = set()
    seen = set(exclude)
    used = 0
    for line in ranked:
        cost = line.cost + (0 if line.day in days else day_costs[line.day])
        if line.seq in seen or used + cost > budget:
            continue
        taken.append(line)
        seen.add(line.seq)
        days.add(line.day)
        used += cost
    return sorted(taken, key=lambda x: x.seq)


def render_lines(lines: Sequence[Line]) -> str:
    """Lines in seq order under a `[date]` heading each time the date changes."""
    out: list[str] = []
    day = None
    for line in lines:
        if line.day != day:
            out.append(f"[{line.day}]")
            day = line.day
        out.append(line.text)
    return "\n".join(out)


def recent_budget(budget: int, share: float) -> int:
    """Tokens the recent window may use when the whole conversation does not fit."""
    return int(budget * share)
