"""The `memchat soak` command: runs server/soak.py and prints its figures as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from server.soak import SoakConfig, run

_HELP = {
    "clients": "concurrent websocket clients",
    "seconds": "how long the clients keep sending",
    "warmup_s": "seconds after which server memory must stay flat",
    "reply_tokens": "the server's reply length (short replies: many turns)",
    "max_queue": "the server's max_queue",
    "kv_ram_mb": "the server's KV-state RAM cache",
    "sample_s": "seconds between memory samples",
    "seed": "seed of the clients' messages",
}
_OWN = [f.name for f in fields(SoakConfig) if f.name in _HELP]


def add_commands(commands: Any) -> None:
    """Register `soak` on the CLI's subparsers."""
    soak = commands.add_parser(
        "soak", help="run many websocket clients against a fresh local server; print JSON figures"
    )
    for f in fields(SoakConfig):
        if f.name in _HELP:
            flag = "--" + f.name.replace("_", "-")
            soak.add_argument(flag, type=type(f.default), default=f.default, help=_HELP[f.name])
    soak.add_argument("--serve-args", default="", help='more server flags: "--engine batched"')
    soak.add_argument("--json", type=Path, default=None, help="also write the figures here")


def run_command(args: argparse.Namespace) -> int:
    """Run the soak in a temporary data dir; exit 1 when a reply failed or anything was lost."""
    cfg = SoakConfig(
        **{name: getattr(args, name) for name in _OWN},
        serve_args=tuple(shlex.split(args.serve_args)),
    )
    with tempfile.TemporaryDirectory(prefix="memchat-soak-") as tmp:
        figures = asyncio.run(run(cfg, Path(tmp), lambda line: print(line, file=sys.stderr)))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    clean = not figures["errors"] and not figures["incomplete"] and not figures["lost"]
    return 0 if clean and figures["server_alive"] else 1
