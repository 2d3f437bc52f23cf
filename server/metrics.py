"""Prometheus metrics, one registry per app; llama-server's names where they mean the same."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
REPLY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Every metric memchat exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.prompt_tokens = Counter(
            "llamacpp:prompt_tokens", "Number of prompt tokens processed.", registry=r
        )
        self.tokens_predicted = Counter(
            "llamacpp:tokens_predicted", "Number of generation tokens processed.", registry=r
        )
        self.requests_processing = Gauge(
            "llamacpp:requests_processing", "Number of replies being generated.", registry=r
        )
        self.requests_deferred = Gauge(
            "llamacpp:requests_deferred",
            "Number of replies waiting for the model (the queue depth).",
            registry=r,
        )
        self.first_token = Histogram(
            "memchat_first_token_seconds",
            "Seconds from a reply's request to its first generated token.",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.reply_time = Histogram(
            "memchat_reply_seconds",
            "Seconds from a reply's request to its last token.",
            buckets=REPLY_BUCKETS,
            registry=r,
        )
        self.replies = Counter(
            "memchat_replies", "Replies, by how they ended.", ["status"], registry=r
        )
        self.recalls = Counter(
            "memchat_recalls", "Replies whose context recalled older turns.", registry=r
        )
        self.recalled_turns = Counter(
            "memchat_recalled_turns", "Older turns recalled into prompts.", registry=r
        )
        self.summary_jobs = Counter(
            "memchat_summary_jobs", "Rolling-summary jobs run, by result.", ["result"], registry=r
        )
        self.errors = Counter(
            "memchat_errors", "Errors answered to clients, by code.", ["code"], registry=r
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


def handler(metrics: Metrics) -> web.Response:
    """The `/metrics` response."""
    resp = web.Response(body=metrics.render())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
