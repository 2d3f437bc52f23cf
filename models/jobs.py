"""What both llama.cpp engines share: configuration, priorities, queued jobs, KV-state keys."""

from __future__ import annotations

import asyncio
import codecs
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import BadRequest, Unavailable
from models.tokenizer import GGUFTokenizer
from models.types import CancelToken, ChatMessage, Delta, Finished, SamplingParams

PRIORITY_CHAT = 0
PRIORITY_BACKGROUND = 10
N_BATCH = 512
STAGED = "\x00next"  # suffix of the key a conversation's prefilled next prefix is kept under
PREFILL_CHUNK = 32  # background tokens between checks for waiting chat requests


# K cache types offered (ggml type ids). Q8_0 halves the K cache and, without flash attention,
# reads a prompt deep in a long context faster on CPU (scripts/bench_depth.py, BENCHMARKS.md).
KV_TYPES = {"f16": 1, "q8_0": 8}


@dataclass(frozen=True)
class EngineConfig:
    """How to open the GGUF model, and how much KV state to keep per conversation."""

    model_path: str
    n_ctx: int = 4096  # per conversation: the batched engine gives every sequence this many
    n_threads: int = 0  # 0: every core (llama-cpp-python's own default is half of them)
    flash_attn: bool = True  # faster prompt evaluation and decoding on CPU (see BENCHMARKS.md)
    cache_type_k: str = "f16"  # the K cache's type: "f16", or "q8_0" (see KV_TYPES)
    n_batch: int = N_BATCH
    kv_ram_mb: int = 1024
    kv_disk_mb: int = 4096
    kv_dir: Path | None = None
    idle_grace_s: float = 1.0  # quiet time after a reply before background work and parking
    parallel: int = 8  # batched engine: sequences decoded together (one per active conversation)
    prompt_chunk: int = 64  # batched engine: prompt tokens per step while replies stream
    max_gap: int = -1  # batched engine: idle sequences padded between replies (-1: measured)
    weights: str = "auto"  # models/weights.py: "keep", "auto" or a format to convert into
    weights_dir: Path | None = None  # where converted weights are cached (None: user cache)

    def type_k(self) -> int:
        """The K cache's ggml type id, for llama.cpp's context parameters."""
        if self.cache_type_k not in KV_TYPES:
            raise ValueError(f"cache_type_k must be one of {', '.join(KV_TYPES)}")
        return KV_TYPES[self.cache_type_k]

    def weights_path(self) -> str:
        """The file to load: model_path, or its converted copy (made on first use)."""
        from models.weights import prepare

        return prepare(self.model_path, self.weights, self.weights_dir)


class Loading:
    """A model opened on its worker thread: whether it is ready, and why not if it failed."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None

    @property
    def ready(self) -> bool:
        """True once the model is loaded and accepting work."""
        return self._done.is_set() and self._error is None

    def finished(self, error: BaseException | None = None) -> None:
        """Called by the worker once the model is open (or failed to open)."""
        self._error = error
        self._done.set()

    async def wait(self) -> None:
        """Wait until loading ends; raise if it failed."""
        await asyncio.get_running_loop().run_in_executor(None, self._done.wait)
        if self._error is not None:
            raise Unavailable("model_failed", f"the model failed to load: {self._error}")

    def check(self) -> None:
        """Refuse work until the model is ready."""
        if not self.ready:
            raise Unavailable("model_loading", "the model is still loading; retry in a moment")


@dataclass
class Job:
    """One request for the worker: a prompt, how to sample, where to send what it makes."""

    tokens: list[int]
    params: SamplingParams
    cancel: CancelToken
    emit: Callable[[Delta | Finished], None]
    priority: int = PRIORITY_CHAT
    cache_key: str | None = None
    prefill_only: bool = False  # evaluate the prompt into the KV cache; generate nothing
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def chat(self) -> bool:
        """True for a chat request (background work gives way to these)."""
        return self.priority == PRIORITY_CHAT


class LocalEngine:
    """What both in-process llama.cpp engines share: the tokenizer, the per-conversation KV
    cache, the load state, and turning a request into a job for the worker thread, which each
    engine queues in its own way (`_submit`)."""

    def __init__(self, config: EngineConfig) -> None:
        from models.kv_cache import KVCache

        self.config = config
        self.n_ctx = config.n_ctx
        self.tokenizer = GGUFTokenizer(config.model_path)
        self.kv = KVCache(
            config.kv_ram_mb << 20, config.kv_dir, config.kv_disk_mb << 20 if config.kv_dir else 0
        )
        self._loading = Loading()

    @property
    def ready(self) -> bool:
        """True once the model is loaded and accepting work."""
        return self._loading.ready

    async def wait_ready(self) -> None:
        """Wait until the model has loaded; raise if loading failed."""
        await self._loading.wait()

    async def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        priority: int = PRIORITY_CHAT,
        cache_key: str | None = None,
    ) -> AsyncIterator[Delta | Finished]:
        """Yield reply deltas as they are decoded, then one Finished.

        `cache_key` (a conversation id) keeps that conversation's KV state between turns.
        Background jobs stop ("cancelled") as soon as a chat request is waiting.
        """
        self._loading.check()
        tokens = encode(self.tokenizer, messages, self.n_ctx)
        job, out = streaming_job(tokens, params, cancel, priority, cache_key)
        self._submit(job)
        async for item in relay(out):
            yield item

    async def prefill(self, messages: list[ChatMessage], *, cache_key: str) -> Finished:
        """Evaluate a prompt prefix into `cache_key`'s staged KV state in the background.

        The next reply whose prompt starts with these messages re-evaluates only what follows.
        It gives way to chat requests; what it evaluated so far is kept.
        """
        self._loading.check()
        tokens = encode(self.tokenizer, messages, self.n_ctx, add_generation_prompt=False)
        job, result = prefill_job(tokens, cache_key, threading.Event())
        self._submit(job)
        return await result

    def _submit(self, job: Job) -> None:
        """Hand a job to the worker thread."""
        raise NotImplementedError


def encode(
    tokenizer: GGUFTokenizer,
    messages: list[ChatMessage],
    n_ctx: int,
    *,
    add_generation_prompt: bool = True,
) -> list[int]:
    """The prompt's tokens; a prompt that leaves no room in the context is a BadRequest."""
    tokens = tokenizer.prompt_tokens(messages, add_generation_prompt=add_generation_prompt)
    if len(tokens) >= n_ctx:
        raise BadRequest(
            "context_overflow",
            f"the prompt has {len(tokens)} tokens; the model's context holds {n_ctx}",
        )
    return tokens


def streaming_job(
    tokens: list[int],
    params: SamplingParams,
    cancel: CancelToken,
    priority: int,
    cache_key: str | None,
) -> tuple[Job, asyncio.Queue[Delta | Finished]]:
    """A job whose output lands, thread-safely, in a queue the caller reads on its loop."""
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[Delta | Finished] = asyncio.Queue()

    def emit(item: Delta | Finished) -> None:
        loop.call_soon_threadsafe(out.put_nowait, item)

    return Job(tokens, params, cancel, emit, priority, cache_key), out


async def relay(out: asyncio.Queue[Delta | Finished]) -> AsyncIterator[Delta | Finished]:
    """Yield a job's output until its Finished."""
    while True:
        item = await out.get()
        yield item
        if isinstance(item, Finished):
            return


def prefill_job(
    tokens: list[int], cache_key: str, cancel: CancelToken
) -> tuple[Job, asyncio.Future[Finished]]:
    """A background job that evaluates a prefix under `cache_key`'s staged key."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Finished] = loop.create_future()

    def emit(item: Delta | Finished) -> None:
        if isinstance(item, Finished):
            loop.call_soon_threadsafe(result.set_result, item)

    job = Job(tokens, SamplingParams(), cancel, emit, PRIORITY_BACKGROUND, cache_key + STAGED, True)
    return job, result


def family(key: str | None) -> tuple[str, ...]:
    """The KV states a job for `key` may start from: its own and its staged next prefix."""
    if key is None:
        return ()
    if key.endswith(STAGED):
        return (key,)
    return (key, key + STAGED)


def threads(configured: int) -> int:
    """Threads for llama.cpp: the configured count, or every core."""
    return configured or os.cpu_count() or 1


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ReplyText:
    """A reply's bytes as text: UTF-8 decoded as tokens arrive, and cut before the first of its
    stop strings to be complete; text that may be the start of one is held back until it is
    clear."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False  # a stop string was reached: the reply is over

    def add(self, piece: bytes) -> str:
        """The text that can be shown once one more token's bytes are known."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(piece)
        ends = [i + len(s) for s, i in ((s, text.find(s)) for s in self._stops) if i >= 0]
        if ends:
            # The reply ends where the first stop string is complete, as if the text had come
            # one character at a time, so how it was split into tokens does not matter.
            done = text[: min(ends)]
            self.stopped, self._held = True, ""
            return done[: min(i for i in (done.find(s) for s in self._stops) if i >= 0)]
        keep = max((_started(text, s) for s in self._stops), default=0)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def end(self) -> str:
        """What is left to show when the reply ends for another reason."""
        if self.stopped:
            return ""
        rest, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return rest


def _started(text: str, stop: str) -> int:
    """The length of the longest end of `text` that `stop` begins with (not all of `stop`)."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
