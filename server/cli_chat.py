"""`memchat chat`: a terminal client over the websocket; replies stream, Ctrl+C stops one."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException
from yarl import URL

from server import protocol

DEFAULT_URL = "http://127.0.0.1:8080"
KEY_ENV = "MEMCHAT_API_KEY"
_STALE = {"nothing_to_cancel", "unknown_response"}  # a cancel that arrived after the reply ended


def add_commands(commands: Any) -> None:
    """Register `chat` on the CLI's subparsers."""
    chat = commands.add_parser("chat", help="chat with a running server in the terminal")
    chat.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    chat.add_argument("--conversation", default=None, help="continue this conversation id")
    chat.add_argument("--api-key", default=None, help=f"API key [{KEY_ENV}]")


def run(args: argparse.Namespace) -> int:
    """Run the interactive client until end of input, /quit, or Ctrl+C at the prompt."""
    key = args.api_key or os.environ.get(KEY_ENV, "")
    return asyncio.run(main(ws_url(args.url, args.conversation), args.conversation, key))


def ws_url(url: str, conversation: str | None = None) -> str:
    """The websocket URL for a server URL: http(s) becomes ws(s), an empty path /ws. A
    conversation to continue goes on it too (`?conversation=`), so that a proxy in front of
    several replicas (deploy/nginx.conf) sends it where its KV cache is warm."""
    parsed = URL(url)
    scheme = {"http": "ws", "https": "wss"}.get(parsed.scheme, parsed.scheme)
    path = parsed.path if parsed.path not in ("", "/") else "/ws"
    out = parsed.with_scheme(scheme).with_path(path).with_query(parsed.query)
    return str(out.update_query(conversation=conversation) if conversation else out)


class ChatClient:
    """One websocket session: send a line, print the reply as it streams."""

    def __init__(self, ws: ClientConnection, out: TextIO, conversation: str | None) -> None:
        self.ws = ws
        self.out = out
        self.conversation = conversation
        self.streaming = False
        self._cancelling: asyncio.Task[None] | None = None

    async def send(self, text: str) -> str:
        """Send one message and print its reply; return how the reply ended."""
        frame: dict[str, Any] = {"type": protocol.CHAT_SEND, "text": text}
        if self.conversation:
            frame["conversation_id"] = self.conversation
        await self.ws.send(json.dumps(frame))
        self.streaming = True
        try:
            async for raw in self.ws:
                status = self._show(json.loads(raw))
                if status is not None:
                    return status
        finally:
            self.streaming = False
        raise ConnectionError("the server closed the connection")

    def interrupt(self) -> bool:
        """Stop the reply streaming now; False when none is."""
        if not self.streaming:
            return False
        self._cancelling = asyncio.ensure_future(
            self.ws.send(json.dumps({"type": protocol.RESPONSE_CANCEL}))
        )
        return True

    async def repl(self, lines: AsyncIterator[str]) -> None:
        """Read lines and chat until they end or one is /quit."""
        self._write("memchat: type a message; Ctrl+C stops a reply; Ctrl+D or /quit leaves\n> ")
        async for line in lines:
            text = line.strip()
            if text in ("/quit", "/exit"):
                return
            if text:
                await self.send(text)
            self._write("> ")

    def _show(self, frame: dict[str, Any]) -> str | None:
        kind = frame.get("type")
        if kind == protocol.CONVERSATION_CREATED:
            self.conversation = frame["conversation_id"]
            self._write(f"[conversation {self.conversation}]\n")
        elif kind == protocol.RESPONSE_DELTA:
            self._write(frame["delta"])
        elif kind == protocol.RESPONSE_DONE:
            status = str(frame["status"])
            self._write("\n" if status == "completed" else f"\n[{status}]\n")
            return status
        elif kind == protocol.ERROR and frame.get("code") not in _STALE:
            self._write(f"\n[error {frame.get('code')}: {frame.get('message')}]\n")
            return "error"
        return None

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


async def main(url: str, conversation: str | None, key: str, out: TextIO = sys.stdout) -> int:
    """Connect, then chat over standard input until it ends."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with connect(url, additional_headers=headers, max_size=None) as ws:
            client = ChatClient(ws, out, conversation)
            await _interactive(client)
    except InvalidStatus as e:
        print(f"memchat: the server refused the connection: {_refusal(e)}", file=sys.stderr)
        return 1
    except (OSError, InvalidURI, WebSocketException) as e:
        print(f"memchat: cannot chat over {url}: {e}", file=sys.stderr)
        return 1
    return 0


async def _interactive(client: ChatClient) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_interrupt() -> None:
        if not client.interrupt() and task is not None:
            task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        await client.repl(_stdin_lines())
    except asyncio.CancelledError:
        client.out.write("\n")
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _stdin_lines() -> AsyncIterator[str]:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield line.decode(errors="replace")


def _refusal(e: InvalidStatus) -> str:
    try:
        return str(json.loads(e.response.body or b"{}")["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {e.response.status_code}"
