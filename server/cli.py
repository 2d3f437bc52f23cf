"""The `memchat` command line."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from models.errors import MemchatError
from server import cli_bench, cli_chat, cli_memory, cli_soak, logs
from server import settings as settings_mod


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `memchat` console script."""
    parser = argparse.ArgumentParser(
        prog="memchat", description="Chat server with long-term memory"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the chat server")
    settings_mod.add_arguments(serve)
    cli_memory.add_commands(commands)
    cli_bench.add_commands(commands)
    cli_chat.add_commands(commands)
    cli_soak.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "chat":
        return cli_chat.run(args)
    logs.setup()
    if args.command == "serve":
        return _serve(args)
    if args.command in ("import", "eval"):
        return cli_memory.run(args)
    if args.command == "bench":
        return cli_bench.run_command(args)
    if args.command == "soak":
        return cli_soak.run_command(args)
    parser.error(f"unknown command {args.command}")
    return 2


def _serve(args: argparse.Namespace) -> int:
    from server import allocator
    from server.app import create_app
    from server.auth import startup_notice

    allocator.tune()  # before the engine's and embedder's threads start
    settings = settings_mod.load(args)
    logs.setup(settings.log_level, settings.log_format)
    host = settings.listen_host()
    print(f"memchat: {startup_notice(settings)}", file=sys.stderr)
    print(f"memchat: serving on http://{host}:{settings.port}", file=sys.stderr)
    try:
        web.run_app(create_app(settings), host=host, port=settings.port, print=None)
    except MemchatError as e:
        print(f"memchat: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
