"""The `memchat import` and `memchat eval` commands: bulk memory work from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from memory import locomo
from memory.eic import QuestionScore, report, score_conversation
from memory.importer import import_conversation
from memory.manager import MemoryManager
from memory.store import DEFAULT_USER, Store
from server import settings as settings_mod
from server.redis_process import EmbeddedRedis

EVAL_USER = "locomo_eval"
DEFAULT_EVAL_BUDGET = 2048
_BAR_WIDTH = 30


def add_commands(commands: Any) -> None:
    """Register `import` and `eval` on the CLI's subparsers."""
    imp = commands.add_parser("import", help="import a LoCoMo-format conversation")
    imp.add_argument("file", type=Path, help="a LoCoMo conversation JSON file")
    settings_mod.add_arguments(imp)
    ev = commands.add_parser("eval", help="measure memory recall on a benchmark")
    ev.add_argument("benchmark", choices=["locomo"])
    ev.add_argument("--data", type=Path, required=True, help="folder of LoCoMo JSON files")
    ev.add_argument("--budget", type=int, default=DEFAULT_EVAL_BUDGET, help="history tokens")
    ev.add_argument("--json", type=Path, default=None, help="write the figures here")
    ev.add_argument("--redis-url", default="", help="a Redis 8 to use (default: a fresh one)")


def run(args: argparse.Namespace) -> int:
    """Run `import` or `eval`."""
    if args.command == "import":
        return asyncio.run(_import(args))
    return asyncio.run(_eval(args))


def progress_bar(label: str) -> Any:
    """A progress callback that redraws one stderr line."""

    def show(done: int, total: int) -> None:
        filled = _BAR_WIDTH * done // max(total, 1)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        end = "\n" if done >= total else ""
        print(f"\r{label} [{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


@asynccontextmanager
async def _memory(redis_url: str, data_dir: Path | None) -> AsyncIterator[MemoryManager]:
    """A memory manager over the given Redis, or over an embedded one started for the command."""
    from models.embedder import SentenceEmbedder
    from models.paths import default_chat_model, default_embedder
    from models.tokenizer import GGUFTokenizer

    embedded = None
    tmp = None
    if not redis_url:
        if data_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="memchat-eval-")
            data_dir = Path(tmp.name)
        embedded = EmbeddedRedis(data_dir)
        redis_url = await _running_or_started(embedded)
    client = Redis.from_url(redis_url, decode_responses=True)
    embedder = SentenceEmbedder(str(default_embedder()))
    try:
        store = Store(client)
        await store.check_server()
        yield MemoryManager(store, GGUFTokenizer(str(default_chat_model())), embedder)
    finally:
        embedder.close()
        await client.aclose()
        if embedded is not None and tmp is not None:
            embedded.stop()
            tmp.cleanup()


async def _running_or_started(embedded: EmbeddedRedis) -> str:
    """The server's own embedded Redis when it is up (never restart it under a server)."""
    probe = Redis.from_url(embedded.url)
    try:
        if embedded.socket.exists() and await probe.ping():
            return embedded.url
    except OSError:
        pass
    except Exception:
        pass
    finally:
        await probe.aclose()
    return embedded.start()


async def _import(args: argparse.Namespace) -> int:
    settings = settings_mod.load(args)
    conv = locomo.load(args.file)
    async with _memory(settings.redis_url, settings.data_dir) as memory:
        done = await import_conversation(memory, DEFAULT_USER, conv, progress_bar("importing"))
    print(f"memchat: imported {done.turns} turns as conversation {done.cid}", file=sys.stderr)
    return 0


async def _eval(args: argparse.Namespace) -> int:
    files = sorted(args.data.glob("*.json"))
    if not files:
        print(f"memchat: no LoCoMo .json files in {args.data}", file=sys.stderr)
        return 2
    scores: list[QuestionScore] = []
    async with _memory(args.redis_url, None) as memory:
        for path in files:
            conv = locomo.load(path)
            got = await score_conversation(
                memory, EVAL_USER, conv, args.budget, progress_bar(f"{path.name}")
            )
            scores += got
            part = report(got, args.budget)
            print(
                f"{path.name}: eic {part['eic']} full {part['full']} n {part['n']}", file=sys.stderr
            )
    figures = report(scores, args.budget)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0
