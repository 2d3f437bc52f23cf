"""The live parts every handler uses, stored on the app under one typed key."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from memory.manager import Embedder, MemoryManager
from memory.store import Store
from models.types import ChatModel
from server.errors import QueueFull
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The live parts a request handler uses."""

    settings: Settings
    store: Store
    llm: ChatModel
    memory: MemoryManager
    metrics: Metrics = field(default_factory=Metrics)
    embedder_task: asyncio.Task[Embedder] | None = None
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    replies: int = 0  # chat replies admitted and not yet ended (waiting or generating)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run work that must finish even if its requester leaves; shutdown waits for it."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._finished)
        return task

    def spawn_reply(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a chat reply if fewer than `max_queue` are in flight; else refuse it at once."""
        if self.replies >= self.settings.max_queue:
            coro.close()  # never started: nothing was stored or changed
            raise QueueFull(self.settings.max_queue)
        self.replies += 1
        task = self.spawn(coro)
        task.add_done_callback(self._reply_ended)
        return task

    def _reply_ended(self, _task: asyncio.Task[Any]) -> None:
        self.replies -= 1

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())


RUNTIME = web.AppKey("runtime", Runtime)
