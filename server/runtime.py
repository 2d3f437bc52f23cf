"""The live parts every handler uses, stored on the app under one typed key."""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from memory.manager import Embedder, MemoryManager
from memory.store import Store
from models.types import ChatModel
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

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run work that must finish even if its requester leaves; shutdown waits for it."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())


RUNTIME = web.AppKey("runtime", Runtime)
