"""Raw llama.cpp prompt chunks and decode steps deep in a context, no server: what a long
conversation's turn costs under each attention setting (flash attention, K cache type).

    .venv/bin/python scripts/bench_depth.py [--depths 100,1000,2500] [--chunks 32,100]
        [--rounds 3] [--steps 48]

Every setting gets its own 4,096-token context, all loaded at once, and the settings take turns
within each round (this machine's speed drifts within minutes). For each depth, a round fills
each context to that depth, times a chunk of new prompt tokens there (what a turn's first token
waits for), then times single-token decode steps after it (what each streamed token costs).
Prints the best chunk time and the median decode rate over the rounds. The default weights
(models/weights.py `auto`) are used, as the server loads them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.jobs import KV_TYPES
from models.paths import default_chat_model
from models.weights import prepare

SETTINGS: dict[str, dict[str, Any]] = {
    "flash attention, K f16 (default)": {"flash_attn": True},
    "no flash attention, K f16": {"flash_attn": False},
    "no flash attention, K q8_0": {"flash_attn": False, "type_k": KV_TYPES["q8_0"]},
}


def _seconds(llm: Any, tokens: list[int], one_by_one: bool = False) -> float:
    start = time.perf_counter()
    for lo in range(0, len(tokens), 1 if one_by_one else len(tokens)):
        llm.eval(tokens[lo : lo + 1] if one_by_one else tokens)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="100,1000,2500")
    parser.add_argument("--chunks", default="32,100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=48, help="decode steps timed a round")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    chunks = [int(c) for c in args.chunks.split(",")]

    import llama_cpp

    path = prepare(str(default_chat_model()), "auto")
    llms = {
        name: llama_cpp.Llama(path, n_ctx=4096, n_threads=2, verbose=False, **extra)
        for name, extra in SETTINGS.items()
    }
    text = " ".join(f"Line {i}: the fox met the dog by the river." for i in range(600))
    tokens = next(iter(llms.values())).tokenize(text.encode())
    print(f"weights: {Path(path).name}")
    print("setting | depth | " + " | ".join(f"{c} tokens ms" for c in chunks) + " | decode tok/s")
    for depth in depths:
        chunk_ms: dict[tuple[str, int], list[float]] = {}
        rates: dict[str, list[float]] = {name: [] for name in llms}
        for _ in range(args.rounds):
            for name, llm in llms.items():
                for chunk in chunks:
                    llm.reset()
                    llm.eval(tokens[:depth])
                    took = _seconds(llm, tokens[depth : depth + chunk])
                    chunk_ms.setdefault((name, chunk), []).append(took * 1000)
                after = tokens[depth + chunks[-1] : depth + chunks[-1] + args.steps]
                rates[name].append(args.steps / _seconds(llm, after, one_by_one=True))
        for name in llms:
            cells = [f"{min(chunk_ms[(name, c)]):.0f}" for c in chunks]
            rate = statistics.median(rates[name])
            print(f"{name} | {depth} | " + " | ".join(cells) + f" | {rate:.1f}", flush=True)
    for llm in llms.values():
        llm.close()


if __name__ == "__main__":
    main()
