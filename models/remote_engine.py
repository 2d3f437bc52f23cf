"""A chat model served over HTTP by an OpenAI-compatible server (llama-server, vLLM, memchat).

Replies stream from `POST {url}/chat/completions`. Prompts are counted by the local GGUF
tokenizer of the same model (its vocabulary and chat template), so memory packs them exactly as
it does for the in-process engine; the server's own count, when it reports usage, is checked
against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from models.errors import BadRequest, MemchatError, ModelError, Unavailable
from models.types import (
    CancelToken,
    ChatMessage,
    Delta,
    Finished,
    FinishReason,
    SamplingParams,
    Tokenizer,
)

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.05  # how often a stalled stream checks whether its reply was cancelled
_FINISH: dict[str, FinishReason] = {"stop": "completed", "length": "length"}


@dataclass(frozen=True)
class RemoteConfig:
    """Where the inference server is, and the local GGUF that tokenizes for it."""

    url: str  # the server's OpenAI base URL, e.g. http://llama:8081/v1
    model_path: str  # the GGUF the server runs (only its vocabulary and template are read)
    n_ctx: int = 4096  # the context the server gives each request
    model: str = ""  # the `model` field sent (vLLM checks it); empty: the GGUF file's stem
    api_key: str = field(default="", repr=False)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0  # longest silence between two chunks (a queued request)
    retry_after_s: float = 2.0  # after a failed connection, report not ready this long

    @property
    def model_name(self) -> str:
        """The model name requests carry."""
        return self.model or Path(self.model_path).stem


@dataclass
class _Progress:
    """What one stream has received so far."""

    started: float
    chunks: int = 0
    first: float = 0.0
    last: float = 0.0
    finish: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class RemoteEngine:
    """Generates replies on a remote OpenAI-compatible server; counts tokens locally."""

    def __init__(self, config: RemoteConfig, tokenizer: Tokenizer | None = None) -> None:
        if tokenizer is None:
            from models.tokenizer import GGUFTokenizer

            tokenizer = GGUFTokenizer(config.model_path)
        self.config = config
        self.tokenizer = tokenizer
        self.n_ctx = config.n_ctx
        self._down_at: float | None = None

    @property
    def ready(self) -> bool:
        """False for a short while after the server could not be reached, then True again."""
        down = self._down_at
        return down is None or time.monotonic() - down > self.config.retry_after_s

    async def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        priority: int = 0,
        cache_key: str | None = None,
    ) -> AsyncIterator[Delta | Finished]:
        """Yield reply deltas as the server sends them, then one Finished.

        The server schedules requests itself, so `priority` and `cache_key` are not sent:
        llama-server and vLLM reuse a cached prompt prefix on their own.
        """
        prompt = self.tokenizer.count(messages)
        if prompt >= self.n_ctx:
            raise BadRequest(
                "context_overflow",
                f"the prompt has {prompt} tokens; the model's context holds {self.n_ctx}",
            )
        progress = _Progress(time.perf_counter())
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.config.connect_timeout_s, sock_read=self.config.read_timeout_s
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            response = await self._post(session, _body(self.config, messages, params))
            watcher = asyncio.ensure_future(_close_on_cancel(cancel, response))
            try:
                async for text in _deltas(response, progress, cancel):
                    yield Delta(text)
            finally:
                watcher.cancel()
                response.release()
        yield self._finished(progress, prompt, cancel)

    async def prefill(self, messages: list[ChatMessage], *, cache_key: str) -> Finished:
        """Nothing is evaluated ahead of time: the server caches prompt prefixes itself when the
        next reply arrives. Says so with zero tokens evaluated and none cached."""
        return Finished("completed", 0, 0, 0, 0.0, 0.0)

    def close(self) -> None:
        """Nothing to release: each reply opens and closes its own connection."""

    async def _post(
        self, session: aiohttp.ClientSession, body: dict[str, Any]
    ) -> aiohttp.ClientResponse:
        url = self.config.url.rstrip("/") + "/chat/completions"
        headers = {"Accept": "text/event-stream"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        try:
            response = await session.post(url, json=body, headers=headers)
        except (aiohttp.ClientConnectionError, TimeoutError) as e:
            self._down_at = time.monotonic()
            raise Unavailable(
                "inference_unreachable",
                f"cannot reach the inference server at {self.config.url} ({e or type(e).__name__})"
                "; start it, or fix MEMCHAT_INFERENCE_URL",
            ) from e
        self._down_at = None
        if response.status != 200:
            detail = await _error_detail(response)
            response.release()
            raise _http_error(response.status, detail, self.config.url)
        return response

    def _finished(self, progress: _Progress, prompt: int, cancel: CancelToken) -> Finished:
        usage = progress.usage
        reported = int(usage.get("prompt_tokens") or prompt)
        if reported != prompt:
            log.warning(
                "the inference server counted %d prompt tokens, the local tokenizer %d: "
                "MEMCHAT_MODEL should name the GGUF the server runs",
                reported,
                prompt,
            )
        reason: FinishReason
        if progress.error:
            reason = "error"
        elif cancel.is_set():
            reason = "cancelled"
        elif progress.finish is None:
            reason, progress.error = "error", "the inference server ended the stream early"
        else:
            reason = _FINISH.get(progress.finish, "completed")
        details = usage.get("prompt_tokens_details") or {}
        n, first, last = progress.chunks, progress.first, progress.last
        return Finished(
            reason=reason,
            prompt_tokens=reported,
            completion_tokens=int(usage.get("completion_tokens") or n),
            cached_tokens=int(details.get("cached_tokens") or 0),
            ttft_ms=(first - progress.started) * 1000 if first else 0.0,
            tokens_per_s=(n - 1) / (last - first) if n > 1 and last > first else 0.0,
            error=progress.error,
        )


def _body(
    config: RemoteConfig, messages: list[ChatMessage], params: SamplingParams
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": config.model_name,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        # llama-server's and vLLM's own sampling fields; OpenAI-compatible servers ignore them.
        "top_k": params.top_k,
        "min_p": params.min_p,
        "repeat_penalty": params.repeat_penalty,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    return body


async def _deltas(
    response: aiohttp.ClientResponse, progress: _Progress, cancel: CancelToken
) -> AsyncIterator[str]:
    """The content of each server-sent event; finish, usage and errors go into `progress`."""
    try:
        async for raw in response.content:
            if cancel.is_set():
                return
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            text = _apply(json.loads(data), progress)
            if text:
                progress.chunks += 1
                progress.last = time.perf_counter()
                progress.first = progress.first or progress.last
                yield text
    except (aiohttp.ClientError, ValueError) as e:
        if not cancel.is_set():  # a cancelled reply's connection is closed on purpose
            progress.error = f"the inference stream broke: {e or type(e).__name__}"


def _apply(event: dict[str, Any], progress: _Progress) -> str:
    """Record what one chunk says; return its text."""
    if "error" in event:
        err = event["error"]
        progress.error = str(err.get("message", err) if isinstance(err, dict) else err)
        return ""
    if event.get("usage"):
        progress.usage = event["usage"]
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if choice.get("finish_reason"):
        progress.finish = choice["finish_reason"]
    return str((choice.get("delta") or {}).get("content") or "")


async def _close_on_cancel(cancel: CancelToken, response: aiohttp.ClientResponse) -> None:
    """Close the connection once the reply is cancelled, so the server stops generating."""
    while not cancel.is_set():
        await asyncio.sleep(CANCEL_POLL_S)
    response.close()


async def _error_detail(response: aiohttp.ClientResponse) -> str:
    try:
        body = await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return (await response.text(errors="replace"))[:200]
    err = body.get("error", body) if isinstance(body, dict) else body
    return str(err.get("message", err) if isinstance(err, dict) else err)[:500]


def _http_error(status: int, detail: str, url: str) -> MemchatError:
    """The memchat error for an HTTP error answer of the inference server."""
    said = f"the inference server at {url} answered {status}: {detail}"
    if status in (401, 403):
        return Unavailable("inference_unauthorized", f"{said}; set MEMCHAT_INFERENCE_API_KEY")
    if status == 404:
        return Unavailable("inference_not_found", f"{said}; the URL should end in /v1")
    if status in (429, 503):
        return Unavailable("inference_busy", f"{said}; retry shortly")
    if 400 <= status < 500:
        return BadRequest("inference_rejected", said)
    return ModelError("inference_failed", said)
