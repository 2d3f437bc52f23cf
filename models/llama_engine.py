"""The llama.cpp chat engine: one worker thread owns the model; requests queue in order.

This module is the only place blocking llama.cpp calls cross into asyncio.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from models.jobs import (
    PREFILL_CHUNK,
    PRIORITY_BACKGROUND,
    PRIORITY_CHAT,
    EngineConfig,
    Job,
    LocalEngine,
    ReplyText,
    common_prefix,
    family,
    threads,
)
from models.kv_cache import KVSnapshot
from models.types import Delta, Finished

log = logging.getLogger(__name__)

__all__ = ["PRIORITY_BACKGROUND", "PRIORITY_CHAT", "EngineConfig", "LlamaEngine", "threads"]


class LlamaEngine(LocalEngine):
    """Generates replies with llama-cpp-python on a single worker thread."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self._jobs: queue.PriorityQueue[tuple[int, int, Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._waiting_lock = threading.Lock()
        self._chat_waiting = 0
        self._active_key: str | None = None
        self._parked = -1  # n_tokens of the active state when it was last saved while idle
        self._last_chat = 0.0  # monotonic time the last chat job ended
        self._chat_arrived = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llama-worker", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the worker."""
        return self._jobs.qsize()

    def _submit(self, job: Job) -> None:
        if job.chat:
            with self._waiting_lock:
                self._chat_waiting += 1
        self._jobs.put((job.priority, next(self._order), job))
        if job.chat:
            self._chat_arrived.set()

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self._jobs.put((PRIORITY_BACKGROUND + 1, next(self._order), None))
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            llm = open_llama(self.config)
        except Exception as e:  # reported through wait_ready / health
            self._loading.finished(e)
            return
        self._loading.finished()
        while (job := self._next_job(llm)) is not None:
            if job.priority == PRIORITY_CHAT:
                with self._waiting_lock:
                    self._chat_waiting -= 1
            try:
                self._switch(llm, job)
                run = _prefill if job.prefill_only else _generate
                job.emit(run(llm, job, self.n_ctx, self._preempted(job)))
            except Exception as e:
                log.exception("generation failed")
                job.emit(Finished("error", len(job.tokens), 0, 0, 0.0, 0.0, error=str(e)))
            if job.priority == PRIORITY_CHAT:
                self._last_chat = time.monotonic()
        llm.close()

    def _next_job(self, llm: Any) -> Job | None:
        """The next job; background work waits until chat has been quiet for `idle_grace_s`,
        and the active state is parked once the worker has been idle that long."""
        grace = self.config.idle_grace_s
        while True:
            try:
                item = self._jobs.get(timeout=grace)
            except queue.Empty:
                self._park(llm)
                item = self._jobs.get()
            job = item[2]
            quiet = self._last_chat + grace - time.monotonic()
            if job is None or job.priority == PRIORITY_CHAT or quiet <= 0:
                return job
            self._jobs.put(item)  # a user is likely to send again soon: keep the engine free
            self._chat_arrived.wait(quiet)
            self._chat_arrived.clear()

    def _park(self, llm: Any) -> None:
        """While idle, save the active conversation's state, so a later switch costs no save."""
        if self._active_key is None or llm.n_tokens in (0, self._parked):
            return
        self.kv.put(self._active_key, _snapshot(llm))
        self._parked = llm.n_tokens

    def _switch(self, llm: Any, job: Job) -> None:
        """Start the job from the best KV state it has: the context as it is, the conversation's
        parked state, or a prefix prefilled for its next reply; park what gets replaced."""
        key = job.cache_key
        if key is not None and key == self._active_key:
            self._parked = -1  # the job changes the state; a parked copy goes stale
            return
        states = family(key)
        in_context = key is None or self._active_key in states
        best = common_prefix(list(llm._input_ids), job.tokens) if in_context else -1
        choice = None
        for k in states:
            snap = self.kv.peek(k)
            if (
                snap is not None
                and (found := common_prefix(snap.tokens.tolist(), job.tokens)) > best
            ):
                best, choice = found, k
        if choice is not None or not in_context:
            self._park(llm)
        if choice is not None:
            snap = self.kv.take(choice)
            if snap is not None:
                _restore(llm, snap)
        for k in states:
            self.kv.discard(k)  # the context holds this conversation's state from here on
        self._active_key = key
        self._parked = -1

    def _preempted(self, job: Job) -> Callable[[], bool]:
        """Background work gives way as soon as a chat request is waiting."""
        if job.priority == PRIORITY_CHAT:
            return lambda: False
        return lambda: self._chat_waiting > 0


def open_llama(config: EngineConfig) -> Any:
    """A llama-cpp-python Llama as the simple engine opens it (also the bench's baseline)."""
    from llama_cpp import Llama

    return Llama(
        model_path=config.weights_path(),
        n_ctx=config.n_ctx,
        n_batch=config.n_batch,
        n_threads=threads(config.n_threads),
        n_threads_batch=threads(config.n_threads),
        flash_attn=config.flash_attn,
        type_k=config.type_k(),
        verbose=False,
    )


def _generate(llm: Any, job: Job, n_ctx: int, preempted: Callable[[], bool]) -> Finished:
    """Decode one reply on the worker thread, emitting deltas; return the final accounting."""
    import llama_cpp

    params = job.params
    # llama.cpp re-evaluates at least the last prompt token to get fresh logits.
    cached = min(common_prefix(list(llm._input_ids), job.tokens), len(job.tokens) - 1)
    if job.priority != PRIORITY_CHAT and not _eval_chunks(llm, job.tokens[:-1], preempted):
        # Background work yields to a waiting chat request even while reading its prompt.
        return Finished("cancelled", len(job.tokens), 0, cached, 0.0, 0.0)
    budget = min(params.max_tokens, n_ctx - len(job.tokens))
    reply = ReplyText(params.stop)
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
            text = reply.add(llm.detokenize([token]))
            if text:
                job.emit(Delta(text))
            if reply.stopped:
                reason = "completed"
                break
    finally:
        tokens.close()
    tail = reply.end()
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


def _prefill(llm: Any, job: Job, n_ctx: int, preempted: Callable[[], bool]) -> Finished:
    """Evaluate the job's tokens after the longest cached prefix, in chunks that can yield."""
    started = time.perf_counter()
    cached = common_prefix(list(llm._input_ids), job.tokens)
    reason = "completed" if _eval_chunks(llm, job.tokens, preempted) else "cancelled"
    ms = (time.perf_counter() - started) * 1000
    return Finished(reason, len(job.tokens), 0, cached, ms, 0.0)  # type: ignore[arg-type]


def _eval_chunks(llm: Any, tokens: list[int], preempted: Callable[[], bool]) -> bool:
    """Evaluate tokens after the longest cached prefix, in chunks; False if preempted first."""
    done = common_prefix(list(llm._input_ids), tokens)
    llm.n_tokens = done
    while done < len(tokens):
        if preempted():
            return False
        chunk = tokens[done : done + PREFILL_CHUNK]
        llm.eval(chunk)
        done += len(chunk)
    return True


def _snapshot(llm: Any) -> KVSnapshot:
    import ctypes

    import llama_cpp

    size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
    buf = np.empty(size, dtype=np.uint8)  # written in place: no intermediate copies
    written = llama_cpp.llama_state_seq_get_data(
        llm.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size, 0
    )
    tokens = np.asarray(llm._input_ids, dtype=np.int32).copy()
    return KVSnapshot(tokens, buf[:written])


def _restore(llm: Any, snap: KVSnapshot) -> None:
    import ctypes

    import llama_cpp

    data = np.ascontiguousarray(snap.data)
    pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    if not llama_cpp.llama_state_seq_set_data(llm.ctx, pointer, data.size, 0):
        llm.reset()  # a failed restore leaves nothing reusable; generate() starts afresh
        return
    n = len(snap.tokens)
    llm.input_ids[:n] = snap.tokens
    llm.n_tokens = n
    llm._requires_eval = True
