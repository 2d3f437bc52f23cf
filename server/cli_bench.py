"""The `memchat bench` command: runs server/bench.py, prints a table, writes JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from server import settings as settings_mod
from server.bench import BenchConfig, run

PARTS = ("stream", "long", "alternating", "scale", "concurrency")
CONCURRENCY_TARGET = 2.0  # aggregate tokens/s of the most chats at once over one chat alone
# (part, JSON key, what it is, target, True when higher is better)
TARGETS = [
    ("stream", "stream_efficiency", "websocket tokens/s over raw llama-cpp-python", 0.95, True),
    ("long", "ttft_ratio_300", "first-token time, 300 prior turns / turn 2", 1.5, False),
    ("long", "kv_reuse", "share of prompt tokens reused from KV cache", 0.7, True),
    ("long", "ttft_ratio_300_no_notes", "the same, without per-message recall notes", 1.5, False),
    ("scale", "build_p95_ms_10k", "context build p95 (ms), 10k turns, 1M vectors", 50.0, False),
    ("alternating", "alternating_ratio", "first-token time, 4 conversations / 1", 1.5, False),
]


def add_commands(commands: Any) -> None:
    """Register `bench` on the CLI's subparsers."""
    bench = commands.add_parser("bench", help="measure speed side by side; print and save figures")
    bench.add_argument("--json", type=Path, default=None, help="write the figures here")
    bench.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    bench.add_argument("--prior-turns", type=int, default=BenchConfig.prior_turns)
    bench.add_argument("--scale-turns", type=int, default=BenchConfig.scale_turns)
    bench.add_argument("--scale-vectors", type=int, default=BenchConfig.scale_vectors)
    bench.add_argument(
        "--compare-simple",
        action="store_true",
        help="concurrency: also measure the simple engine (replies queue: slow)",
    )
    settings_mod.add_arguments(bench)


def run_command(args: argparse.Namespace) -> int:
    """Run the benchmark."""
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = set(parts) - set(PARTS)
    if unknown:
        print(
            f"memchat bench: unknown parts {sorted(unknown)}; choose from {PARTS}", file=sys.stderr
        )
        return 2
    cfg = replace(
        BenchConfig(),
        parts=parts,
        prior_turns=args.prior_turns,
        scale_turns=args.scale_turns,
        scale_vectors=args.scale_vectors,
        concurrency_simple=args.compare_simple,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings = settings_mod.load(args)
    results = asyncio.run(run(settings, cfg, lambda line: print(line, file=sys.stderr)))
    figures = flatten(results)
    print(table(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures | {"details": results}, indent=2))
    return 0


def flatten(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures under their JSON keys."""
    out: dict[str, Any] = {}
    for part, key, *_ in TARGETS:
        if part in results:
            out[key] = round(float(results[part][key]), 3)
    if "concurrency" in results:
        keys = ("throughput_ratio", "ttft_p50_ms", "ttft_p95_ms", "fairness")
        levels = results["concurrency"]["levels"]
        out["concurrency"] = {n: {k: fig[k] for k in keys} for n, fig in levels.items()}
    return out


def table(figures: dict[str, Any]) -> str:
    """A plain-text table of figure, target and verdict."""
    rows = [("figure", "value", "target", "met"), ("-" * 46, "-" * 8, "-" * 8, "---")]
    for _part, key, what, target, higher in TARGETS:
        if key not in figures:
            continue
        met = figures[key] >= target if higher else figures[key] <= target
        sign = ">=" if higher else "<="
        rows.append(
            (f"{what} [{key}]", f"{figures[key]:.3f}", f"{sign} {target}", "yes" if met else "NO")
        )
    rows += _concurrency_rows(figures.get("concurrency", {}))
    return "\n".join(f"{a:<62} {b:>8} {c:>8} {d:>4}" for a, b, c, d in rows)


def _concurrency_rows(levels: dict[str, dict[str, float]]) -> list[tuple[str, str, str, str]]:
    rows = []
    top = max(levels, key=int, default=None)
    for n, fig in levels.items():
        ratio = fig["throughput_ratio"]
        target, met = ("", "")
        if n == top and int(n) > 1:
            target, met = f">= {CONCURRENCY_TARGET}", "yes" if ratio >= CONCURRENCY_TARGET else "NO"
        rows.append(
            (
                f"{n} chats: aggregate tokens/s over one chat [concurrency.{n}]",
                f"{ratio:.3f}",
                target,
                met,
            )
        )
        rows.append(
            (
                f"{n} chats: first token p50 / p95 ms, fairness",
                f"{fig['ttft_p50_ms']:.0f}/{fig['ttft_p95_ms']:.0f}",
                f"{fig['fairness']:.2f}",
                "",
            )
        )
    return rows
