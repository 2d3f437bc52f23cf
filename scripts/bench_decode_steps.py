"""Raw llama.cpp decode steps, no server: how well each weight format batches on this CPU, how
faithful each conversion of the packaged model is, and what batch order costs.

    .venv/bin/python scripts/bench_decode_steps.py [--formats q8_0,bf16,q5_0,q4_0] [--steps 12]
        [--keep DIR] [--order]

For the packaged model (as it is) and each format it is converted into (models/weights.py),
prints the prompt rate, the median time of a decode step of 1, 2, 4 and 8 sequences, the
batching gain (8 x one step / eight-sequence step), and the next-token distributions' mean KL
divergence and top-token agreement against the packaged model over LoCoMo conversation text.
With --order, times an eight-sequence step with the sequences added in four orders.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.jobs import EngineConfig
from models.llama_batch import BatchContext
from models.paths import default_chat_model
from models.tokenizer import GGUFTokenizer
from models.weights import log_probs, prepare

SEQUENCES = 8
CONTEXT = 150  # prompt tokens per sequence before the timed steps
WIDTHS = (1, 2, 4, 8)
ORDERS = (
    tuple(range(8)),
    (2, 3, 4, 5, 6, 7, 0, 1),
    (0, 2, 4, 6, 1, 3, 5, 7),
    tuple(range(7, -1, -1)),
)
LOCOMO = Path(__file__).resolve().parent.parent.parent / "shared/data/locomo-dev/26.json"


def _context(path: str) -> BatchContext:
    """Eight sequences holding CONTEXT tokens each."""
    ctx = BatchContext(EngineConfig(path, n_ctx=1024, parallel=SEQUENCES, weights="keep"))
    for seq in range(SEQUENCES):
        for pos in range(CONTEXT):
            ctx.add(100 + (pos * 7 + seq) % 5000, pos, seq, pos == CONTEXT - 1)
        ctx.decode()
    return ctx


def _step_ms(ctx: BatchContext, order: tuple[int, ...], steps: int) -> float:
    """Median ms of a step adding one token to each sequence of `order`, in that order."""
    times = []
    for step in range(steps):
        for seq in order:
            ctx.add(300 + step, CONTEXT, seq, True)
        started = time.perf_counter()
        ctx.decode()
        times.append((time.perf_counter() - started) * 1000)
        for seq in order:
            ctx.truncate(seq, CONTEXT)
    return statistics.median(times)


def speed(path: str, steps: int) -> dict[str, float]:
    """Prompt tokens/s and the step time at each width."""
    ctx = BatchContext(EngineConfig(path, n_ctx=1024, parallel=SEQUENCES, weights="keep"))
    try:
        started = time.perf_counter()
        for pos in range(CONTEXT):
            ctx.add(100 + pos, pos, 0, pos == CONTEXT - 1)
        ctx.decode()
        prompt_rate = CONTEXT / (time.perf_counter() - started)
    finally:
        ctx.close()
    ctx = _context(path)
    try:
        widths = {n: _step_ms(ctx, tuple(range(n)), steps) for n in WIDTHS}
    finally:
        ctx.close()
    return {"prompt": prompt_rate} | {str(n): ms for n, ms in widths.items()}


def sample_texts(tokenizer: GGUFTokenizer) -> list[list[int]]:
    """Up to 500 tokens from each of the first six sessions of LoCoMo conversation 26."""
    conversation = json.loads(LOCOMO.read_text())
    sessions = [k for k in conversation if k.startswith("session_") and "date" not in k]
    texts = []
    for key in sessions[:6]:
        lines = [f"{turn['speaker']}: {turn['text']}" for turn in conversation[key][:12]]
        texts.append(tokenizer.encode("\n".join(lines))[:500])
    return texts


def fidelity(source: str, path: str, texts: list[list[int]]) -> tuple[float, float]:
    """Mean KL(source || path) of next-token distributions, and top-token agreement."""
    kls, agree = [], []
    for tokens in texts:
        ref, got = log_probs(source, tokens), log_probs(path, tokens)
        kls.append((np.exp(ref) * (ref - got)).sum(axis=1))
        agree.append(ref.argmax(axis=1) == got.argmax(axis=1))
    return float(np.concatenate(kls).mean()), float(np.concatenate(agree).mean())


def main() -> None:
    """Convert into a folder, time and compare, print tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="q8_0,bf16,q5_0,q4_0")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--keep", type=Path, default=None, help="keep the converted files here")
    parser.add_argument("--order", action="store_true", help="also time batch orders")
    args = parser.parse_args()
    source = str(default_chat_model())
    texts = sample_texts(GGUFTokenizer(source)) if LOCOMO.exists() else []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        models = {"packaged": source}
        for name in filter(None, args.formats.split(",")):
            models[name] = prepare(source, name, folder)
        header = f"{'weights':<9} {'prompt t/s':>10} " + " ".join(f"{n:>3}-seq ms" for n in WIDTHS)
        print(header + f" {'gain':>5} {'mean KL':>8} {'top-1':>6}")
        for name, path in models.items():
            fig = speed(path, args.steps)
            kl, agree = fidelity(source, path, texts) if texts else (float("nan"),) * 2
            widths = " ".join(f"{fig[str(n)]:9.1f}" for n in WIDTHS)
            gain = SEQUENCES * fig["1"] / fig[str(SEQUENCES)]
            print(f"{name:<9} {fig['prompt']:10.0f} {widths} {gain:5.2f} {kl:8.4f} {agree:6.3f}")
        if args.order:
            paths = list(models.values())
            ctx = _context(paths[1] if len(paths) > 1 else paths[0])  # the first conversion
            try:
                for order in ORDERS:
                    ms = _step_ms(ctx, order, args.steps)
                    print(f"order {' '.join(map(str, order))}: {ms:.1f} ms a step")
            finally:
                ctx.close()


if __name__ == "__main__":
    main()
