"""The chat model's weights in a format this CPU decodes many sequences with quickly.

llama.cpp's CPU kernels for Q4_1 and Q5_1 weights (the packaged SmolLM2 is Q4_1) compute a
batch of eight sequences 1.7x as fast as one sequence alone; Q8_0 weights batch 2.2x and are
faster for one sequence too (BENCHMARKS.md). With the "auto" choice such a model is converted
once, by llama.cpp's own quantizer, into Q8_0 in a cache folder and the copy is loaded instead.
Q8_0 keeps every Q4_1 weight to within 1/254 of its block's largest value: measured against
the original on LoCoMo text, the next-token distributions differ by a mean KL of 0.005.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

# llama.cpp's llama_ftype values: the formats a model can be converted into.
FORMATS = {"q8_0": 7, "bf16": 32, "f16": 1, "q4_0": 2, "q5_0": 8}
CHOICES = ("auto", "keep", *FORMATS)
AUTO_TARGET = "q8_0"
# File types whose CPU kernels batch sequences poorly: "auto" converts them.
SLOW_TO_BATCH = {3: "Q4_1", 9: "Q5_1"}
# ...when the file is small. A big model's decode step is bound by reading its weights from
# memory, where a Q8_0 copy (nearly twice the bytes) would be slower, and it would take GBs of
# disk. Only the packaged 135M model was measured: the limit is a judgment, not a measurement.
AUTO_MAX_BYTES = 512 << 20


def default_dir() -> Path:
    """Where converted weights are cached: $XDG_CACHE_HOME/memchat/weights or ~/.cache/..."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memchat" / "weights"


def file_type(path: str) -> int:
    """The GGUF's `general.file_type` (a llama_ftype), read without loading its tensors."""
    import llama_cpp as ll

    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not read {path}")
    try:
        buf = ctypes.create_string_buffer(32)
        n = ll.llama_model_meta_val_str(model, b"general.file_type", buf, len(buf))
        return int(buf.value) if n > 0 else -1
    finally:
        ll.llama_model_free(model)


def prepare(path: str, choice: str = "auto", cache_dir: Path | None = None) -> str:
    """The path of the weights to load for `choice`: the file itself, or a converted copy.

    "keep" loads the file as it is; "auto" converts only small models in formats that batch
    poorly; a format name ("q8_0", "bf16", ...) converts into it unless the file already is.
    """
    if choice not in CHOICES:
        raise ValueError(f"weights must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "keep":
        return path
    current = file_type(path)
    auto = choice == "auto"
    if auto:
        if current not in SLOW_TO_BATCH or Path(path).stat().st_size > AUTO_MAX_BYTES:
            return path
        choice = AUTO_TARGET
    if current == FORMATS[choice]:
        return path
    try:
        target = _cached_name(Path(path), choice, cache_dir or default_dir())
        if not target.exists():
            _convert(path, target, FORMATS[choice])
    except (OSError, RuntimeError, KeyError) as e:  # KeyError: no home folder to cache in
        if not auto:
            raise
        log.warning("could not convert %s (%s); loading it as it is", path, e)
        return path
    return str(target)


def _cached_name(source: Path, choice: str, folder: Path) -> Path:
    """A name that changes with the source file's content, not with where it is installed: a
    new virtual environment holding the same model reuses the copy instead of adding one."""
    return folder / f"{source.stem}.{_fingerprint(source)}.{choice}.gguf"


def _fingerprint(path: Path, samples: int = 16, block: int = 1 << 16) -> str:
    """A digest of the file's size, its first MiB (the GGUF header and vocabulary), its last
    MiB and blocks spread between: cheap for large files, and it tells apart models of the
    same size and format whose weights differ."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(str(size).encode())
        ends = [(0, 1 << 20), (max(0, size - (1 << 20)), 1 << 20)]
        between = [(size * i // samples, block) for i in range(1, samples)]
        for spot, length in ends + between:
            f.seek(spot)
            digest.update(f.read(length))
    return digest.hexdigest()[:12]


def _convert(source: str, target: Path, ftype: int) -> None:
    """Quantize into a temporary file and rename it, so that no reader sees half a file."""
    import llama_cpp as ll

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    params = ll.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    log.info("converting %s into %s (once; cached)", source, target)
    try:
        if ll.llama_model_quantize(source.encode(), str(partial).encode(), ctypes.byref(params)):
            raise RuntimeError(f"llama.cpp could not convert {source} into {target.name}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def log_probs(path: str, tokens: list[int], **context: Any) -> npt.NDArray[np.float64]:
    """Next-token log-probabilities after each of `tokens`, read in one batch (teacher-forced):
    what a conversion or a context setting (`context`: EngineConfig fields) is compared on
    (tests/test_weights.py, scripts/bench_decode_steps.py)."""
    import llama_cpp as ll

    from models.jobs import EngineConfig
    from models.llama_batch import BatchContext

    config = EngineConfig(path, n_ctx=max(512, len(tokens)), parallel=1, weights="keep", **context)
    ctx = BatchContext(config)
    try:
        for pos, token in enumerate(tokens):
            ctx.add(token, pos, 0, True)
        ctx.decode()
        logits = ctypes.cast(ll.llama_get_logits(ctx.ctx), ctypes.POINTER(ctypes.c_float))
        rows = np.ctypeslib.as_array(logits, shape=(len(tokens), ctx.n_vocab)).astype(np.float64)
    finally:
        ctx.close()
    rows -= rows.max(axis=1, keepdims=True)
    result: npt.NDArray[np.float64] = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
    return result
