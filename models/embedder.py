"""Sentence embeddings with sentence-transformers, off the event loop.

This module is the only place blocking embedding calls cross into asyncio.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
_BATCH = 64


class SentenceEmbedder:
    """Normalized float32 vectors from a local sentence-transformers model folder."""

    def __init__(self, model_dir: str, *, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self._model: Any = SentenceTransformer(model_dir, device="cpu")
        dimension: Any = getattr(self._model, "get_embedding_dimension", None)
        dimension = dimension or self._model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        # One thread: the model is never used from two threads at once.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    @classmethod
    async def load(cls, model_dir: str) -> SentenceEmbedder:
        """Open the model on a thread (it takes seconds), leaving the event loop free."""
        return await asyncio.get_running_loop().run_in_executor(None, cls, model_dir)

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Embed and wait, from code that has no event loop (CLI tools)."""
        return self._pool.submit(self._encode, list(texts)).result()

    def _encode(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._model.encode(
            list(texts),
            batch_size=_BATCH,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed a batch of texts without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._encode, list(texts))

    def close(self) -> None:
        """Release the worker thread."""
        self._pool.shutdown(wait=True)
