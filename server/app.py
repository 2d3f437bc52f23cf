"""The app factory: builds the aiohttp application from settings and injectable parts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web
from redis.exceptions import BusyLoadingError, RedisClusterUnreachableError
from redis.exceptions import ConnectionError as RedisConnectionError

from memory.manager import Embedder, MemoryManager
from memory.store import Client, Store, connect
from models.errors import Unavailable
from models.jobs import EngineConfig
from models.types import ChatModel
from server import api, api_ui, auth, openai_api, ws
from server.redis_process import EmbeddedRedis
from server.runtime import RUNTIME, Runtime
from server.settings import Settings

log = logging.getLogger(__name__)
_REDIS_WAIT_S = 30.0


def create_app(
    settings: Settings,
    *,
    llm: ChatModel | None = None,
    embedder: Embedder | None = None,
    redis: Client | None = None,
) -> web.Application:
    """Build the app; parts not given are opened from settings when it starts."""
    app = web.Application(
        client_max_size=settings.max_message_chars * 4 + 65536,
        middlewares=[api.errors, auth.middleware],
    )
    app[auth.ACCESS] = auth.Access.from_settings(settings)
    app.cleanup_ctx.append(_resources(settings, llm, embedder, redis))
    app.on_shutdown.append(_close_sockets)
    api.setup_routes(app)
    api_ui.setup_routes(app)
    openai_api.setup_routes(app)
    app.router.add_get("/ws", ws.handle)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", settings.web_dir, name="static")
    return app


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[RUNTIME].settings.web_dir / "index.html")


def _resources(
    settings: Settings, llm: ChatModel | None, embedder: Embedder | None, redis: Client | None
) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        embedded = None
        client: Client | None = redis
        if client is None:
            url = settings.redis_url
            if not url:
                embedded = EmbeddedRedis(settings.data_dir)
                url = embedded.start()  # forks: done on the loop thread, before workers start
            client = connect(url, cluster=settings.redis_cluster)
        try:
            store = Store(client)
            await _wait_for_redis(store)
            model = llm if llm is not None else _open_llm(settings)
            memory = MemoryManager(
                store,
                model.tokenizer,
                embedder,
                summarizer_model=model,
                prefiller=model,
                note_tokens=settings.recall_note_tokens,
            )
            rt = Runtime(settings, store, model, memory)
            if embedder is None:
                rt.embedder_task = asyncio.create_task(_load_embedder(settings, rt.memory))
            app[RUNTIME] = rt
            yield
            await _drain(rt)
            if llm is None:
                await asyncio.get_running_loop().run_in_executor(None, model.close)
        finally:
            if redis is None:
                await client.aclose()
            if embedded is not None:
                embedded.stop()

    return ctx


async def _wait_for_redis(store: Store) -> None:
    deadline = asyncio.get_running_loop().time() + _REDIS_WAIT_S
    while True:
        try:
            await store.check_server()
            return
        except (BusyLoadingError, RedisConnectionError, RedisClusterUnreachableError) as e:
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable("redis_unreachable", f"cannot reach Redis: {e}") from e
            await asyncio.sleep(0.1)


def engine_config(settings: Settings) -> EngineConfig:
    """The in-process engine's configuration, from the settings."""
    from models.paths import default_chat_model, resolve

    return EngineConfig(
        resolve(settings.model, default_chat_model()),
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        flash_attn=settings.flash_attn,
        cache_type_k=settings.cache_type_k,
        kv_ram_mb=settings.kv_ram_mb,
        kv_disk_mb=settings.kv_disk_mb,
        kv_dir=settings.data_dir / "kv",
        parallel=settings.parallel,
        weights=settings.weights,
        weights_dir=Path(settings.weights_dir) if settings.weights_dir else None,
    )


def _open_llm(settings: Settings) -> ChatModel:
    if settings.inference_url:
        return _open_remote(settings)
    config = engine_config(settings)
    if settings.engine == "batched":
        from models.batched_engine import BatchedEngine

        return BatchedEngine(config)
    from models.llama_engine import LlamaEngine

    return LlamaEngine(config)


def _open_remote(settings: Settings) -> ChatModel:
    from models.paths import default_chat_model, resolve
    from models.remote_engine import RemoteConfig, RemoteEngine

    config = RemoteConfig(
        settings.inference_url,
        str(resolve(settings.model, default_chat_model())),
        n_ctx=settings.n_ctx,
        model=settings.inference_model,
        api_key=settings.inference_api_key,
    )
    return RemoteEngine(config)


async def _load_embedder(settings: Settings, memory: MemoryManager) -> Embedder:
    from models.embedder import SentenceEmbedder
    from models.paths import default_embedder, resolve

    path = resolve(settings.embedder, default_embedder())
    loaded = await SentenceEmbedder.load(path)
    memory.embedder = loaded
    return loaded


async def _drain(rt: Runtime) -> None:
    if rt.embedder_task is not None:
        rt.embedder_task.cancel()
    if rt.background:
        await asyncio.gather(*rt.background, return_exceptions=True)


async def _close_sockets(app: web.Application) -> None:
    for sock in list(app[RUNTIME].sockets):
        await sock.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
