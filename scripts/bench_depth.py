"""Raw llama.cpp prompt chunks and decode steps deep in a context, no server: what a long
conversation's turn costs under each attention setting (flash attention, K cache type).

    .venv/bin/python scripts/bench_depth.py [--depths 100,2000,3000] [--chunks 32,100]

For each setting, fills a 4,096-token context to each depth, then prints the best of three
times to evaluate a chunk of new prompt tokens there (what a turn's first token waits for) and
the median of five single-token decode steps after it (what each streamed token costs).
The default weights (models/weights.py `auto`) are used, as the server loads them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.paths import default_chat_model
from models.weights import prepare

Q8_0 = 8  # ggml type id
SETTINGS = {
    "flash attention, f16 K and V (default)": {"flash_attn": True},
    "no flash attention, f16 K and V": {"flash_attn": False},
    "no flash attention, q8_0 K": {"flash_attn": False, "type_k": Q8_0},
    "flash attention, q8_0 K and V": {"flash_attn": True, "type_k": Q8_0, "type_v": Q8_0},
}


def _eval_ms(llm: Any, tokens: list[int]) -> float:
    start = time.perf_counter()
    llm.eval(tokens)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="100,2000,3000")
    parser.add_argument("--chunks", default="32,100")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    chunks = [int(c) for c in args.chunks.split(",")]

    import llama_cpp

    path = prepare(str(default_chat_model()), "auto")
    print(f"weights: {Path(path).name}")
    print("setting | depth | " + " | ".join(f"{c} tokens ms" for c in chunks) + " | decode ms")
    for name, extra in SETTINGS.items():
        llm = llama_cpp.Llama(path, n_ctx=4096, n_threads=2, verbose=False, **extra)  # type: ignore[arg-type]
        text = " ".join(f"Line {i}: the fox met the dog by the river." for i in range(500))
        tokens = llm.tokenize(text.encode())
        for depth in depths:
            cells = []
            for chunk in chunks:
                best = []
                for _ in range(3):
                    llm.reset()
                    llm._ctx.kv_cache_clear()
                    llm.eval(tokens[:depth])
                    best.append(_eval_ms(llm, tokens[depth : depth + chunk]))
                cells.append(f"{min(best):.0f}")
            end = depth + chunks[-1]
            steps = [_eval_ms(llm, tokens[end + i : end + i + 1]) for i in range(5)]
            print(f"{name} | {depth} | " + " | ".join(cells) + f" | {statistics.median(steps):.1f}")
        llm.close()


if __name__ == "__main__":
    main()
