"""Converted weights: which models are converted, the cache, fidelity to the original."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from models import weights
from models.jobs import KV_TYPES
from models.paths import default_chat_model
from models.tokenizer import GGUFTokenizer
from models.weights import FORMATS, file_type, log_probs, prepare

Q4_1 = 3
SOURCE = str(default_chat_model())
TEXT = (
    "Caroline: I went to a LGBTQ support group yesterday and it was so powerful.\n"
    "Melanie: Wow, that's cool, Caroline! What happened that was so awesome?\n"
    "Caroline: The transgender stories were so inspiring! I was so happy and thankful.\n"
    "Melanie: That's really cool. I'm off to go swimming with the kids later, then we paint.\n"
    "Caroline: Painting sounds relaxing. What do you paint, landscapes or people?\n"
) * 2


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> str:
    return prepare(SOURCE, "auto", tmp_path_factory.mktemp("weights"))


def test_the_packaged_model_is_q4_1_and_auto_converts_it_to_q8_0(converted: str) -> None:
    assert file_type(SOURCE) == Q4_1
    assert converted != SOURCE
    assert file_type(converted) == FORMATS["q8_0"]


def test_a_converted_copy_is_reused_and_a_fast_format_is_kept(converted: str) -> None:
    made = Path(converted).stat().st_mtime_ns
    again = prepare(SOURCE, "auto", Path(converted).parent)
    assert again == converted and Path(again).stat().st_mtime_ns == made
    assert prepare(converted, "auto", Path(converted).parent) == converted, "already Q8_0"
    assert prepare(converted, "q8_0", Path(converted).parent) == converted
    assert not list(Path(converted).parent.glob("*.part")), "no partial files left"


def test_the_same_model_installed_elsewhere_reuses_the_copy(converted: str, tmp_path: Path) -> None:
    """A new virtual environment (another path, a new modification time) holding the same
    model must not add another copy to the cache; a model whose weights differ gets its own."""
    elsewhere = tmp_path / "venv2" / Path(SOURCE).name
    elsewhere.parent.mkdir()
    shutil.copyfile(SOURCE, elsewhere)
    folder = Path(converted).parent
    before = sorted(folder.iterdir())
    assert prepare(str(elsewhere), "auto", folder) == converted
    assert sorted(folder.iterdir()) == before
    data = bytearray(elsewhere.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one weight byte changed
    elsewhere.write_bytes(bytes(data))
    assert weights._cached_name(elsewhere, "q8_0", folder) != Path(converted)


def test_auto_keeps_a_big_model_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big model is bound by memory bandwidth on CPU: a Q8_0 copy would be slower."""
    monkeypatch.setattr(weights, "AUTO_MAX_BYTES", Path(SOURCE).stat().st_size - 1)
    assert prepare(SOURCE, "auto", tmp_path) == SOURCE
    assert prepare(SOURCE, "q8_0", tmp_path) != SOURCE, "asked for explicitly: converted"


def test_keep_loads_the_file_as_it_is(tmp_path: Path) -> None:
    assert prepare(SOURCE, "keep", tmp_path) == SOURCE
    assert not list(tmp_path.iterdir())


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="weights must be one of"):
        prepare(SOURCE, "q3_k")


def test_auto_falls_back_to_the_original_when_it_cannot_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="models.weights"):
        assert prepare(SOURCE, "auto", blocker / "weights") == SOURCE
    assert "could not convert" in caplog.text
    with pytest.raises(OSError):
        prepare(SOURCE, "q8_0", blocker / "weights")  # asked for explicitly: an error


def test_the_converted_model_predicts_as_the_original_does(converted: str) -> None:
    """Mean KL divergence of next-token distributions: 0.005 measured for Q8_0; a lossy
    conversion (Q4_0: 0.28, Q5_0: 0.07) fails this."""
    tokens = GGUFTokenizer(SOURCE).encode(TEXT)
    assert 150 < len(tokens) < 512
    original, copy = log_probs(SOURCE, tokens), log_probs(converted, tokens)
    kl = (np.exp(original) * (original - copy)).sum(axis=1)
    assert kl.mean() < 0.02, f"mean KL {kl.mean():.4f}"
    agree = (original.argmax(axis=1) == copy.argmax(axis=1)).mean()
    assert agree > 0.9, f"top-1 agreement {agree:.3f}"


@pytest.mark.parametrize("flash_attn", [False, True])
def test_a_q8_0_k_cache_predicts_as_an_f16_one_does(converted: str, flash_attn: bool) -> None:
    """The K cache in Q8_0 (--cache-type-k q8_0) changes attention only by rounding; a K cache
    in Q4_0, which llama.cpp also takes, fails this (the check can fail)."""
    tokens = GGUFTokenizer(SOURCE).encode(TEXT)
    f16 = log_probs(converted, tokens, flash_attn=flash_attn)
    for type_k, passes in (("q8_0", True), ("q4_0", False)):
        kv_types = {**KV_TYPES, "q4_0": 2}  # Q4_0 is not offered; here it shows the check bites
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("models.jobs.KV_TYPES", kv_types)
            other = log_probs(converted, tokens, flash_attn=flash_attn, cache_type_k=type_k)
        kl = float((np.exp(f16) * (f16 - other)).sum(axis=1).mean())
        assert (kl < 0.02) == passes, f"{type_k}: mean KL {kl:.4f}"


def test_a_file_that_is_not_a_model_is_named_in_the_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("not a model")
    with pytest.raises(RuntimeError, match=r"could not read .*notes\.gguf"):
        prepare(str(bogus), "auto", tmp_path)


@pytest.mark.parametrize("kind", ["batched", "simple"])
async def test_a_conversion_that_fails_is_reported_as_the_models_load_error(
    tmp_path: Path, kind: str
) -> None:
    """An explicitly asked-for format that cannot be written: the engine does not start, and
    /health and every request say why (`model_failed` with the reason)."""
    from models.batched_engine import BatchedEngine
    from models.errors import Unavailable
    from models.jobs import EngineConfig
    from models.llama_engine import LlamaEngine

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = EngineConfig(SOURCE, n_ctx=512, weights="bf16", weights_dir=blocker / "weights")
    llm = BatchedEngine(config) if kind == "batched" else LlamaEngine(config)
    try:
        with pytest.raises(Unavailable) as err:
            await llm.wait_ready()
        assert err.value.code == "model_failed"
        assert "a-file" in str(err.value)
    finally:
        llm.close()
