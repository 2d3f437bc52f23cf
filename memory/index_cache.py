"""Per-conversation recall state derived from Redis: lexical index, candidates, turns, costs.

Redis stays the source of truth: the cache is rebuilt when a conversation is replaced or its
edit epoch moved (turns forgotten or rewritten, here or by another replica), grows as turns are
appended, and `invalidate` drops it at once when this process removes turns.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from memory.lexical import LexicalIndex, terms
from memory.recall import CandidateTable
from memory.render import day_number, line_text
from memory.store import Message, Store

MAX_CACHED_CONVERSATIONS = 64
_LOAD_CHUNK = 512


@dataclass
class ConversationIndex:
    """What recall needs of one conversation's turns, up to seq `upto`."""

    created_at: float
    epoch: int = 0  # the conversation's edit epoch this index was built at
    upto: int = 0
    lexical: LexicalIndex = field(default_factory=LexicalIndex)
    candidates: CandidateTable = field(default_factory=CandidateTable)
    speakers: set[str] = field(default_factory=set)
    messages: dict[int, Message] = field(default_factory=dict)
    lines: dict[int, tuple[str, str, int]] = field(default_factory=dict)  # by the manager:
    # seq -> (date heading, line text, tokens), so a recalled line is costed once
    _last: Message | None = None

    def add(self, messages: list[Message]) -> None:
        """Index turns newer than any indexed so far (each with its predecessor as context)."""
        for m in messages:
            if m.seq <= self.upto:
                continue
            doc = terms(line_text(m))
            prev = self._last
            if prev is not None and day_number(prev.time) == day_number(m.time):
                doc += terms(prev.text)
            self.lexical.add(doc)  # positions in step with the candidates'
            self.candidates.append(m.seq, day_number(m.time), m.speaker)
            if m.speaker:
                self.speakers.add(m.speaker)
            self.messages[m.seq] = m
            self.upto, self._last = m.seq, m


class IndexCache:
    """A bounded LRU of conversation indexes, kept in step with the store."""

    def __init__(self, store: Store, capacity: int = MAX_CACHED_CONVERSATIONS) -> None:
        self.store = store
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], ConversationIndex] = OrderedDict()

    async def get(self, user: str, cid: str) -> ConversationIndex:
        """The conversation's index, brought up to its newest stored turn."""
        conv = await self.store.get_conversation(user, cid)
        key = (user, cid)
        index = self._items.get(key)
        if index is None or (index.created_at, index.epoch) != (conv.created_at, conv.epoch):
            index = ConversationIndex(conv.created_at, conv.epoch)  # edited, maybe elsewhere
        self._items[key] = index
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        for start in range(index.upto + 1, conv.message_count + 1, _LOAD_CHUNK):
            end = min(start + _LOAD_CHUNK - 1, conv.message_count)
            index.add(await self.store.messages(user, cid, start=start, end=end))
        return index

    def invalidate(self, user: str, cid: str) -> None:
        """Forget a conversation's index (after a turn is forgotten or the conversation deleted)."""
        self._items.pop((user, cid), None)
