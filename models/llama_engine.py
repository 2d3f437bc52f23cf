"""The llama.cpp chat engine: one worker thread owns the model; requests queue in order.

This module is the only place blocking llama.cpp calls cross into asyncio.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from models.errors import BadRequest, Unavailable
from models.tokenizer import GGUFTokenizer
from models.types import CancelToken, ChatMessage, Delta, Finished, SamplingParams

log = logging.getLogger(__name__)

PRIORITY_CHAT = 0
PRIORITY_BACKGROUND = 10
_N_BATCH = 512


@dataclass(frozen=True)
class EngineConfig:
    """How to open the GGUF model."""

    model_path: str
    n_ctx: int = 4096
    n_threads: int = 0
    n_batch: int = _N_BATCH


@dataclass
class _Job:
    tokens: list[int]
    params: SamplingParams
    cancel: CancelToken
    emit: Callable[[Delta | Finished], None]
    priority: int = PRIORITY_CHAT
    submitted: float = field(default_factory=time.perf_counter)


class LlamaEngine:
    """Generates replies with llama-cpp-python on a single worker thread."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.n_ctx = config.n_ctx
        self.tokenizer = GGUFTokenizer(config.model_path)
        self._jobs: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._ready = threading.Event()
        self._waiting_lock = threading.Lock()
        self._chat_waiting = 0
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="llama-worker", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        """True once the model is loaded and accepting work."""
        return self._ready.is_set() and self._load_error is None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the worker."""
        return self._jobs.qsize()

    async def wait_ready(self) -> None:
        """Wait until the model has loaded; raise if loading failed."""
        await asyncio.get_running_loop().run_in_executor(None, self._ready.wait)
        if self._load_error is not None:
            raise Unavailable("model_failed", f"the model failed to load: {self._load_error}")

    async def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        priority: int = PRIORITY_CHAT,
    ) -> AsyncIterator[Delta | Finished]:
        """Yield reply deltas as they are decoded, then one Finished.

        Background jobs stop (finishing "cancelled") as soon as a chat request waits.
        """
        if not self.ready:
            raise Unavailable("model_loading", "the model is still loading; retry in a moment")
        tokens = self.tokenizer.prompt_tokens(messages)
        if len(tokens) >= self.n_ctx:
            raise BadRequest(
                "context_overflow",
                f"the prompt has {len(tokens)} tokens; the model's context holds {self.n_ctx}",
            )
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Delta | Finished] = asyncio.Queue()

        def emit(item: Delta | Finished) -> None:
            loop.call_soon_threadsafe(out.put_nowait, item)

        if priority == PRIORITY_CHAT:
            with self._waiting_lock:
                self._chat_waiting += 1
        job = _Job(tokens, params, cancel, emit, priority)
        self._jobs.put((priority, next(self._order), job))
        while True:
            item = await out.get()
            yield item
            if isinstance(item, Finished):
                return

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self._jobs.put((PRIORITY_BACKGROUND + 1, next(self._order), None))
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            llm = self._open()
        except Exception as e:  # reported through wait_ready / health
            self._load_error = e
            self._ready.set()
            return
        self._ready.set()
        while (job := self._jobs.get()[2]) is not None:
            if job.priority == PRIORITY_CHAT:
                with self._waiting_lock:
                    self._chat_waiting -= 1
            try:
                job.emit(_generate(llm, job, self.n_ctx, self._preempted(job)))
            except Exception as e:
                log.exception("generation failed")
                job.emit(Finished("error", len(job.tokens), 0, 0, 0.0, 0.0, error=str(e)))
        llm.close()

    def _preempted(self, job: _Job) -> Callable[[], bool]:
        """Background work gives way as soon as a chat request is waiting."""
        if job.priority == PRIORITY_CHAT:
            return lambda: False
        return lambda: self._chat_waiting > 0

    def _open(self) -> Any:
        from llama_cpp import Llama

        return Llama(
            model_path=self.config.model_path,
            n_ctx=self.config.n_ctx,
            n_batch=self.config.n_batch,
            n_threads=self.config.n_threads or None,
            verbose=False,
        )


def _generate(llm: Any, job: _Job, n_ctx: int, preempted: Callable[[], bool]) -> Finished:
    """Decode one reply on the worker thread, emitting deltas; return the final accounting."""
    import llama_cpp

    params = job.params
    cached = _common_prefix(list(llm._input_ids), job.tokens)
    budget = min(params.max_tokens, n_ctx - len(job.tokens))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    completion = 0
    first = last = 0.0
    reason = "length"
    if params.seed is not None:
        llm.set_seed(params.seed)
    tokens = llm.generate(
        job.tokens,
        top_k=params.top_k,
        top_p=params.top_p,
        min_p=params.min_p,
        temp=params.temperature,
        repeat_penalty=params.repeat_penalty,
    )
    try:
        while completion < budget:
            if job.cancel.is_set() or preempted():
                reason = "cancelled"
                break
            token = next(tokens)
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                reason = "completed"
                break
            completion += 1
            last = time.perf_counter()
            first = first or last
            text = decoder.decode(llm.detokenize([token]))
            if text:
                job.emit(Delta(text))
    finally:
        tokens.close()
    tail = decoder.decode(b"", final=True)
    if tail:
        job.emit(Delta(tail))
    return Finished(
        reason=reason,  # type: ignore[arg-type]
        prompt_tokens=len(job.tokens),
        completion_tokens=completion,
        cached_tokens=cached,
        ttft_ms=(first - job.submitted) * 1000 if first else 0.0,
        tokens_per_s=(completion - 1) / (last - first) if completion > 1 and last > first else 0.0,
    )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
