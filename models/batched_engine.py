"""The batched llama.cpp engine: one worker decodes every active reply together.

One context holds `parallel` sequences. Each step evaluates one token for every streaming
reply plus a chunk of the prompts waiting to be read, so a long prompt never stalls the
replies already streaming. Background work (summaries, prefills) runs only while no chat
request is waiting or running, in small chunks, and stops as soon as one arrives.

This module is the only place its blocking llama.cpp calls cross into asyncio.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

from models.jobs import (
    PREFILL_CHUNK,
    EngineConfig,
    Job,
    LocalEngine,
    ReplyText,
    common_prefix,
)
from models.llama_batch import BatchContext, Sampler
from models.slots import Run, Slot, SlotTable
from models.types import Delta, Finished, FinishReason

log = logging.getLogger(__name__)


class BatchedEngine(LocalEngine):
    """Generates many replies at once in one llama.cpp context, on a single worker thread."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self._cond = threading.Condition()
        self._pending: list[Job] = []  # guarded by _cond
        self._closing = False
        self._table: SlotTable | None = None
        self._samplers: dict[int, Sampler] = {}  # by sequence id
        self._outbox: list[tuple[Job, Delta | Finished]] = []  # sent as the next decode starts
        self._max_gap = config.max_gap  # idle sequences worth padding to join two runs
        self._last_chat = 0.0  # monotonic time the last chat reply ended
        self._last_busy = 0.0  # monotonic time the last job of any kind ended
        self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a sequence."""
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        """Stop the worker once the jobs already submitted are done."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _submit(self, job: Job) -> None:
        with self._cond:
            self._pending.append(job)
            self._cond.notify()

    def _run(self) -> None:
        try:
            ctx = BatchContext(self.config)
        except Exception as e:  # reported through wait_ready / health
            self._loading.finished(e)
            return
        self._table = SlotTable(self.config.parallel, ctx, self.kv)
        if self._max_gap < 0:
            self._max_gap = _max_gap(ctx)
        self._loading.finished()
        try:
            while self._serve_once(ctx):
                pass
        finally:
            self._send()
            for sampler in self._samplers.values():
                sampler.close()
            ctx.close()

    def _serve_once(self, ctx: BatchContext) -> bool:
        """Admit what can start, then decode one step or wait; False once closed and drained."""
        self._stop_runs()
        self._admit(ctx)
        if self._runs():
            self._step(ctx)
            return True
        self._send()
        return self._idle()

    def _runs(self) -> list[tuple[Slot, Run]]:
        assert self._table is not None
        return self._table.runs()

    def _chat_present(self) -> bool:
        """True while a chat request waits or runs: background work gives way."""
        with self._cond:
            if any(job.chat for job in self._pending):
                return True
        return any(run.job.chat for _, run in self._runs())

    def _stop_runs(self) -> None:
        """End cancelled replies, and background work while chat is present."""
        chat = self._chat_present()
        for slot, run in self._runs():
            if run.job.cancel.is_set() or (chat and not run.job.chat):
                self._finish(slot, run, "cancelled")

    def _admit(self, ctx: BatchContext) -> None:
        """Give waiting jobs a sequence: chat in arrival order, background only when quiet."""
        assert self._table is not None
        with self._cond:
            if not self._pending:
                return
            waiting = sorted(self._pending, key=lambda j: (j.priority, j.submitted))
        for job in waiting:
            if not job.chat and not self._background_may_start():
                continue
            slot = self._table.place(job)
            if slot is not None:
                with self._cond:
                    self._pending.remove(job)
                self._start(ctx, slot, job)

    def _background_may_start(self) -> bool:
        if self._chat_present() or any(not run.job.chat for _, run in self._runs()):
            return False
        return self._closing or time.monotonic() >= self._last_chat + self.config.idle_grace_s

    def _start(self, ctx: BatchContext, slot: Slot, job: Job) -> None:
        cached = common_prefix(slot.tokens, job.tokens)
        if not job.prefill_only:
            cached = min(cached, len(job.tokens) - 1)  # the last prompt token gives the logits
        ctx.truncate(slot.seq, cached)
        del slot.tokens[cached:]
        budget = min(job.params.max_tokens, self.n_ctx - len(job.tokens))
        slot.run = Run(job, cached, job.tokens[cached:], budget, text=ReplyText(job.params.stop))
        if not job.prefill_only:
            self._samplers[slot.seq] = Sampler(job.params, ctx.n_vocab)
        if budget <= 0 and not job.prefill_only:
            self._finish(slot, slot.run, "length")

    def _idle(self) -> bool:
        """Nothing runs: wait for work, parking an idle slot once it has been quiet a while."""
        assert self._table is not None
        with self._cond:
            if self._closing and not self._pending:
                return False
            if any(job.chat for job in self._pending):
                return True  # it came after _admit looked: admit it now, without waiting
            grace = self.config.idle_grace_s
            wake = self._last_chat + grace if self._pending else self._last_busy + grace
            timeout = max(0.0, wake - time.monotonic())
            notified = self._cond.wait(timeout) if timeout > 0 else False
            quiet = not notified and not self._pending
        if quiet and self._table.park_lru():
            return True
        if quiet:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait()
        return True

    def _step(self, ctx: BatchContext) -> None:
        """One llama_decode: a token for every streaming reply, then chunks of prompts."""
        runs = self._runs()
        chunks = self._prompt_chunks(ctx, runs)
        by_seq = {slot.seq: (slot, run) for slot, run in runs}
        adding = sorted(s for s, (_, r) in by_seq.items() if r.next_token >= 0 or chunks.get(s))
        pads = self._padding(ctx, adding)
        # In sequence order: llama.cpp splits a batch at every break in consecutive sequence
        # ids and reads all the weights once per piece (BENCHMARKS.md).
        for seq in sorted(by_seq.keys() | pads.keys()):
            if seq in pads:
                pad = pads[seq]
                ctx.add(pad.tokens[-1] if pad.tokens else 0, len(pad.tokens), seq, False)
                continue
            slot, run = by_seq[seq]
            if run.next_token >= 0:
                run.output = ctx.add(run.next_token, len(slot.tokens), slot.seq, True)
                slot.tokens.append(run.next_token)
                run.next_token = -1
            elif chunks.get(slot.seq):
                self._feed(ctx, slot, run, chunks[slot.seq])
        self._send()  # the last step's text goes out while this step decodes
        try:
            ctx.decode()
        except RuntimeError as e:
            log.exception("batched decode failed")
            for slot, run in runs:
                slot.clear(ctx)
                self._finish(slot, run, "error", str(e))
            return
        finally:
            for pad in pads.values():
                ctx.truncate(pad.seq, len(pad.tokens))  # the throwaway token goes again
        for slot, run in runs:
            self._after_step(ctx, slot, run)

    def _padding(self, ctx: BatchContext, seqs: list[int]) -> dict[int, Slot]:
        """Sequences between those with tokens this step that get a throwaway token, so that
        llama.cpp reads the weights once for all of them: a gap of up to `max_gap` sequences,
        where padding costs less than another pass (measured at load)."""
        assert self._table is not None
        pads: dict[int, Slot] = {}
        for before, after in itertools.pairwise(seqs):
            gap = self._table.slots[before + 1 : after]
            if 0 < len(gap) <= self._max_gap and all(len(s.tokens) < ctx.n_ctx_seq for s in gap):
                pads.update((s.seq, s) for s in gap)
        return pads

    def _prompt_chunks(self, ctx: BatchContext, runs: list[tuple[Slot, Run]]) -> dict[int, int]:
        """Prompt tokens each run reads this step, by sequence: oldest request first, within
        the step's room (a chunk while replies stream, so that they keep streaming)."""
        streaming = sum(1 for _, run in runs if run.next_token >= 0)
        room = min(self.config.prompt_chunk if streaming else ctx.n_batch, ctx.n_batch - streaming)
        chunks: dict[int, int] = {}
        for slot, run in runs:
            if run.todo and room > 0:
                limit = room if run.job.chat else min(room, PREFILL_CHUNK)
                chunks[slot.seq] = n = min(len(run.todo), limit)
                room -= n
        return chunks

    def _feed(self, ctx: BatchContext, slot: Slot, run: Run, n: int) -> None:
        """Add the next `n` of the run's prompt tokens to the batch."""
        chunk, run.todo = run.todo[:n], run.todo[n:]
        for i, token in enumerate(chunk):
            last = not run.todo and i == n - 1 and not run.job.prefill_only
            index = ctx.add(token, len(slot.tokens), slot.seq, last)
            slot.tokens.append(token)
            if last:
                run.output = index

    def _after_step(self, ctx: BatchContext, slot: Slot, run: Run) -> None:
        """Sample the run's next token if it has logits; finish it if it is done."""
        if run.job.prefill_only and not run.todo:
            self._finish(slot, run, "completed")
        if run.output < 0 or slot.run is not run:
            return
        if run.job.cancel.is_set():
            self._finish(slot, run, "cancelled")
            return
        token = self._samplers[slot.seq].sample(ctx.ctx, run.output)
        run.output = -1
        if ctx.is_eog(token):
            self._finish(slot, run, "completed")
            return
        run.completion += 1
        run.last = time.perf_counter()
        run.first = run.first or run.last
        text = run.text.add(ctx.piece(token))
        if text:
            self._outbox.append((run.job, Delta(text)))
        if run.text.stopped:
            self._finish(slot, run, "completed")
            return
        run.next_token = token
        if run.completion >= run.budget:
            self._finish(slot, run, "length")

    def _finish(self, slot: Slot, run: Run, reason: FinishReason, error: str = "") -> None:
        """Emit the run's last text and its accounting; the slot keeps its KV cells."""
        sampler = self._samplers.pop(slot.seq, None)
        if sampler is not None:
            sampler.close()
        slot.run = None
        slot.used = self._last_busy = time.monotonic()
        if run.job.chat:
            self._last_chat = slot.used
        job = run.job
        tail = run.text.end()
        if tail:
            self._outbox.append((job, Delta(tail)))
        self._outbox.append((job, _finished(run, reason, error)))

    def _send(self) -> None:
        """Hand the held text and results to their event loops."""
        outbox, self._outbox = self._outbox, []
        for job, item in outbox:
            job.emit(item)


def _max_gap(ctx: BatchContext) -> int:
    """How many idle sequences padding may fill between two runs of replies: as long as their
    tokens cost less than the pass over the weights a second run would cost."""
    if ctx.parallel < 2:
        return 0
    pass_ms, token_ms = ctx.step_costs()
    gap = int(pass_ms // token_ms) if token_ms > 0 else ctx.parallel
    log.info(
        "decode step: %.1f ms a pass, %.1f ms a token; padding gaps of up to %d",
        pass_ms,
        token_ms,
        gap,
    )
    return gap


def _finished(run: Run, reason: FinishReason, error: str) -> Finished:
    """Exact accounting of one run, with its timings."""
    n, job = run.completion, run.job
    if job.prefill_only:
        elapsed = (time.perf_counter() - run.started) * 1000
        return Finished(reason, len(job.tokens), 0, run.cached, elapsed, 0.0, error=error)
    span = run.last - run.first
    return Finished(
        reason=reason,
        prompt_tokens=len(job.tokens),
        completion_tokens=n,
        cached_tokens=run.cached,
        ttft_ms=(run.first - job.submitted) * 1000 if run.first else 0.0,
        tokens_per_s=(n - 1) / span if n > 1 and span > 0 else 0.0,
        error=error,
    )
