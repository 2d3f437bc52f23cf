"""llama.cpp's low-level API for the batched engine: one context of several sequences.

Only the batched engine's worker thread calls into these objects.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections import deque
from typing import Any

import numpy as np

from models.jobs import EngineConfig, threads
from models.kv_cache import KVSnapshot
from models.types import SamplingParams

PENALTY_LAST_N = 64  # tokens the repeat penalty looks back over, as llama-cpp-python's default
_PIECE_BYTES = 256


class Sampler:
    """One sequence's sampling, built from a request's SamplingParams.

    The repeat penalty is applied here, to the few recently generated tokens' logits in
    place: llama.cpp's penalty sampler looks every vocabulary entry up in a hash map (0.2 ms
    a token for SmolLM2's 49,152, which is 2 ms of every eight-reply step). The rest is
    llama.cpp's chain, in the order llama-cpp-python's Llama.generate builds it; a greedy
    reply takes the largest logit directly.
    """

    def __init__(self, params: SamplingParams, n_vocab: int) -> None:
        import llama_cpp as ll

        self._n_vocab = n_vocab
        self._penalty = params.repeat_penalty
        self._recent: deque[int] = deque(maxlen=PENALTY_LAST_N)
        self._chain: Any = None
        if params.temperature <= 0:
            return
        self._chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        seed = ll.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        for part in (
            ll.llama_sampler_init_top_k(params.top_k),
            ll.llama_sampler_init_top_p(params.top_p, 1),
            ll.llama_sampler_init_min_p(params.min_p, 1),
            ll.llama_sampler_init_temp(params.temperature),
            ll.llama_sampler_init_dist(seed),
        ):
            ll.llama_sampler_chain_add(self._chain, part)

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits of batch output `index`, and remember the token."""
        import llama_cpp as ll

        logits = ll.llama_get_logits_ith(ctx, index)
        if self._penalty != 1.0:
            for token in set(self._recent):  # as llama.cpp's penalty: shrink towards zero
                value = logits[token]
                logits[token] = value * self._penalty if value <= 0 else value / self._penalty
        if self._chain is None:
            row = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
            token = int(row.argmax())
        else:
            token = int(ll.llama_sampler_sample(self._chain, ctx, index))
        self._recent.append(token)
        return token

    def close(self) -> None:
        """Free the chain (and the samplers it owns)."""
        import llama_cpp as ll

        if self._chain:
            ll.llama_sampler_free(self._chain)
            self._chain = None


class BatchContext:
    """A model and one context of `parallel` sequences, each holding `n_ctx` tokens."""

    def __init__(self, config: EngineConfig) -> None:
        import llama_cpp as ll

        ll.llama_backend_init()
        path = config.weights_path()
        self.model = ll.llama_model_load_from_file(path.encode(), ll.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = ll.llama_context_default_params()
        params.n_seq_max = config.parallel
        params.n_ctx = config.n_ctx * config.parallel
        params.kv_unified = False  # every sequence attends over its own cells only
        params.n_batch = params.n_ubatch = config.n_batch
        params.n_threads = params.n_threads_batch = threads(config.n_threads)
        flash = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn else 0  # 0: disabled
        params.flash_attn_type = flash
        params.type_k = config.type_k()
        self.ctx = ll.llama_init_from_model(self.model, params)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context; try a smaller --parallel")
        self.n_ctx_seq = int(ll.llama_n_ctx_seq(self.ctx))
        self.n_batch = config.n_batch
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self._memory = ll.llama_get_memory(self.ctx)
        self._batch = ll.llama_batch_init(config.n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(_PIECE_BYTES)
        self.parallel = config.parallel

    def step_costs(self, repeats: int = 4) -> tuple[float, float]:
        """Measure a decode step as (ms a pass over the weights, ms a token): one-token steps
        of one sequence, then of every sequence, on empty sequences, which are emptied again.
        The first step of each width is not counted: it builds and allocates that graph."""
        medians = []
        for width in (1, self.parallel):
            taken = []
            for _ in range(repeats + 1):
                for seq in range(width):
                    self.add(0, 0, seq, True)
                started = time.perf_counter()
                self.decode()
                taken.append((time.perf_counter() - started) * 1000)
                for seq in range(width):
                    self.truncate(seq, 0)
            medians.append(statistics.median(taken[1:]))
        one, every = medians
        per_token = max(every - one, 0.0) / max(self.parallel - 1, 1)
        return max(one - per_token, 0.0), per_token

    @property
    def size(self) -> int:
        """Tokens in the batch being built."""
        return int(self._batch.n_tokens)

    def add(self, token: int, pos: int, seq: int, output: bool) -> int:
        """Append one token of sequence `seq` at position `pos`; return its batch index."""
        b = self._batch
        i = int(b.n_tokens)
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = output
        b.n_tokens = i + 1
        return i

    def decode(self) -> None:
        """Evaluate the batch built so far, then start an empty one."""
        import llama_cpp as ll

        rc = ll.llama_decode(self.ctx, self._batch) if self._batch.n_tokens else 0
        self._batch.n_tokens = 0
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def truncate(self, seq: int, keep: int) -> None:
        """Drop sequence `seq`'s cells from position `keep` on."""
        import llama_cpp as ll

        ll.llama_memory_seq_rm(self._memory, seq, keep, -1)

    def is_eog(self, token: int) -> bool:
        """True for an end-of-generation token."""
        import llama_cpp as ll

        return bool(ll.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        """The bytes of one generated token (special tokens render as nothing)."""
        import llama_cpp as ll

        n = ll.llama_token_to_piece(self.vocab, token, self._piece, _PIECE_BYTES, 0, False)
        return self._piece.raw[: max(n, 0)]

    def save(self, seq: int, tokens: list[int]) -> KVSnapshot:
        """Serialize sequence `seq`'s KV cells (which hold `tokens`)."""
        import llama_cpp as ll

        size = ll.llama_state_seq_get_size(self.ctx, seq)
        buf = np.empty(size, dtype=np.uint8)  # written in place: no intermediate copies
        pointer = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        written = ll.llama_state_seq_get_data(self.ctx, pointer, size, seq)
        return KVSnapshot(np.asarray(tokens, dtype=np.int32), buf[:written])

    def restore(self, seq: int, snap: KVSnapshot) -> bool:
        """Load a snapshot into sequence `seq`; False (and the sequence empty) if it fails."""
        import llama_cpp as ll

        self.truncate(seq, 0)
        data = np.ascontiguousarray(snap.data)
        pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        if ll.llama_state_seq_set_data(self.ctx, pointer, data.size, seq):
            return True
        self.truncate(seq, 0)
        return False

    def close(self) -> None:
        """Free the batch, the context and the model."""
        import llama_cpp as ll

        ll.llama_batch_free(self._batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)
