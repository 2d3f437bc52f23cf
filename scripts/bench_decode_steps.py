"""Raw llama.cpp decode steps: one sequence against eight, for the packaged model and the same
model requantized to Q8_0 and Q4_0 (how well each quantization batches on this CPU).

    .venv/bin/python scripts/bench_decode_steps.py [--steps 12] [--keep DIR]

With --keep, the requantized GGUFs stay in DIR, for `memchat bench --model DIR/Q8_0.gguf`.

Prints, per model, the median time of a decode step of one and of eight sequences and the
batching gain (8 x one step / eight-sequence step). No server is involved.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.jobs import EngineConfig
from models.llama_batch import BatchContext
from models.paths import default_chat_model

PROMPT = list(range(100, 140))  # 40 tokens per sequence
SEQUENCES = 8


def requantize(source: str, target: Path, ftype: int) -> None:
    """Write `source` requantized to `ftype` (llama.cpp's own quantizer)."""
    import llama_cpp as ll

    params = ll.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    if ll.llama_model_quantize(source.encode(), str(target).encode(), ctypes.byref(params)):
        raise SystemExit(f"could not requantize {source}")


def step_times(path: str, steps: int) -> tuple[float, float]:
    """Median ms of a decode step of one sequence and of eight."""
    ctx = BatchContext(EngineConfig(path, n_ctx=512, parallel=SEQUENCES, weights="keep"))
    try:
        for seq in range(SEQUENCES):
            for pos, token in enumerate(PROMPT):
                ctx.add(token, pos, seq, pos == len(PROMPT) - 1)
            ctx.decode()
        times: dict[int, list[float]] = {1: [], SEQUENCES: []}
        pos = len(PROMPT)
        for step in range(steps):
            for n, taken in times.items():
                for seq in range(n):
                    ctx.add(200 + step, pos, seq, True)
                started = time.perf_counter()
                ctx.decode()
                taken.append((time.perf_counter() - started) * 1000)
                for seq in range(n):
                    ctx.truncate(seq, pos)
        return statistics.median(times[1]), statistics.median(times[SEQUENCES])
    finally:
        ctx.close()


def main() -> None:
    """Requantize into a temporary folder, time the steps, print a table."""
    import llama_cpp as ll

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--keep", type=Path, default=None, help="keep the requantized files here")
    args = parser.parse_args()
    source = str(default_chat_model())
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        models = {"packaged (Q4_1)": source}
        formats = (("Q8_0", ll.LLAMA_FTYPE_MOSTLY_Q8_0), ("Q4_0", ll.LLAMA_FTYPE_MOSTLY_Q4_0))
        for name, ftype in formats:
            models[name] = str(tmp / f"{name}.gguf")
            requantize(source, Path(models[name]), ftype)
        print(f"{'model':<16} {'1 seq ms':>9} {'8 seq ms':>9} {'gain':>6}")
        for name, path in models.items():
            one, eight = step_times(path, args.steps)
            print(f"{name:<16} {one:9.1f} {eight:9.1f} {SEQUENCES * one / eight:6.2f}", flush=True)


if __name__ == "__main__":
    main()
