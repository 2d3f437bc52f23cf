"""The batched engine's sampler against llama.cpp's own sampler chain, token by token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from models.jobs import EngineConfig
from models.llama_batch import PENALTY_LAST_N, BatchContext, Sampler
from models.paths import default_chat_model
from models.tokenizer import GGUFTokenizer
from models.types import ChatMessage, SamplingParams

STEPS = 60
PROMPT = [ChatMessage("user", "Repeat after me, many times: the cat, the cat, the cat, the cat.")]


@pytest.fixture(scope="module")
def ctx() -> Iterator[BatchContext]:
    context = BatchContext(EngineConfig(str(default_chat_model()), n_ctx=512, parallel=2))
    yield context
    context.close()


def _llama_chain(params: SamplingParams, n_vocab: int) -> Any:
    """llama.cpp's chain with its own penalty sampler, as llama-cpp-python builds it."""
    import llama_cpp as ll

    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    parts = [ll.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0, 0)]
    if params.temperature <= 0:
        parts.append(ll.llama_sampler_init_greedy())
    else:
        parts += [
            ll.llama_sampler_init_top_k(params.top_k),
            ll.llama_sampler_init_top_p(params.top_p, 1),
            ll.llama_sampler_init_min_p(params.min_p, 1),
            ll.llama_sampler_init_temp(params.temperature),
            ll.llama_sampler_init_dist(params.seed),
        ]
    for part in parts:
        ll.llama_sampler_chain_add(chain, part)
    return chain


def _generate_side_by_side(
    ctx: BatchContext, params: SamplingParams
) -> tuple[list[int], list[int]]:
    """The same prompt in two sequences, one sampled by ours and one by llama.cpp's chain."""
    import llama_cpp as ll

    tokens = GGUFTokenizer(str(default_chat_model())).prompt_tokens(PROMPT)
    ours, chain = Sampler(params, ctx.n_vocab), _llama_chain(params, ctx.n_vocab)
    outputs = {}
    for seq in (0, 1):
        ctx.truncate(seq, 0)
        for pos, token in enumerate(tokens):
            outputs[seq] = ctx.add(token, pos, seq, pos == len(tokens) - 1)
    ctx.decode()
    got: tuple[list[int], list[int]] = ([], [])
    try:
        for step in range(STEPS):
            got[0].append(ours.sample(ctx.ctx, outputs[0]))
            got[1].append(int(ll.llama_sampler_sample(chain, ctx.ctx, outputs[1])))
            outputs = {seq: ctx.add(got[seq][-1], len(tokens) + step, seq, True) for seq in (0, 1)}
            ctx.decode()
    finally:
        ours.close()
        ll.llama_sampler_free(chain)
    return got


@pytest.mark.integration
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, repeat_penalty=1.5),
        SamplingParams(temperature=0.9, repeat_penalty=1.3, seed=7),
        SamplingParams(temperature=0.0, repeat_penalty=1.0),
    ],
)
def test_sampling_matches_llama_cpps_chain(ctx: BatchContext, params: SamplingParams) -> None:
    ours, theirs = _generate_side_by_side(ctx, params)
    assert ours == theirs


@pytest.mark.integration
def test_the_repeat_penalty_changes_what_is_generated(ctx: BatchContext) -> None:
    penalized, _ = _generate_side_by_side(ctx, SamplingParams(temperature=0.0, repeat_penalty=1.5))
    plain, _ = _generate_side_by_side(ctx, SamplingParams(temperature=0.0, repeat_penalty=1.0))
    assert penalized != plain, "the comparison above must exercise the penalty"
