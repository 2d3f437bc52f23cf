"""Access control: API keys (one user each), browser origins and per-key request rates."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from yarl import URL

from memory.store import DEFAULT_USER
from server.errors import Forbidden, RateLimited, Unauthorized
from server.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Clock = Callable[[], float]

WS_PROTOCOL = "memchat"  # the subprotocol the server selects
WS_KEY_PREFIX = "bearer."  # browsers offer ["memchat", "bearer.<KEY>"] as subprotocols
PUBLIC_PATHS = frozenset({"/health", "/"})  # no user data: health and the browser UI page
PUBLIC_PREFIXES = ("/static/",)
UNLIMITED_PATHS = frozenset({"/metrics", "/ws"})  # scrapes; websockets count chat.send frames

USER = web.RequestKey("user", str)
API_KEY = web.RequestKey("api_key", str)


class RateLimiter:
    """A token bucket per key: `per_minute` requests, refilled continuously; 0 is unlimited."""

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def check(self, key: str) -> None:
        """Take one request from the key's bucket, or raise RateLimited."""
        if self.per_minute <= 0:
            return
        now, rate = self.clock(), self.per_minute / 60.0
        tokens, at = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited(
                f"this API key may send {self.per_minute} requests a minute; retry shortly",
                retry_after=(1.0 - tokens) / rate,
            )
        self._buckets[key] = (tokens - 1.0, now)


@dataclass
class Access:
    """Who may call: the configured keys, the allowed browser origins, and the rate limiter."""

    keys: dict[str, str]  # key -> user
    origins: tuple[str, ...] = ()
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))

    @staticmethod
    def from_settings(settings: Settings, clock: Clock = time.monotonic) -> Access:
        """Build from the loaded settings."""
        keys = {k.key: k.user for k in settings.api_keys}
        return Access(keys, settings.allowed_origins, RateLimiter(settings.rate_limit, clock))

    @property
    def required(self) -> bool:
        """True when keys are configured."""
        return bool(self.keys)

    def user_for(self, presented: str | None) -> str:
        """The user a presented key acts as, or Unauthorized."""
        if presented is None:
            raise Unauthorized(
                "missing_api_key",
                "this server needs an API key: send 'Authorization: Bearer <KEY>' "
                f"(websockets from a browser: subprotocols ['{WS_PROTOCOL}', "
                f"'{WS_KEY_PREFIX}<KEY>'])",
            )
        found = ""
        for key, user in self.keys.items():  # compare with every key: no early exit to time
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = user
        if not found:
            raise Unauthorized("invalid_api_key", "the API key is not valid on this server")
        return found

    def origin_allowed(self, request: web.Request) -> bool:
        """Non-browser clients (no Origin), the server's own pages, and allow-listed origins."""
        origin = request.headers.get("Origin")
        if origin is None or "*" in self.origins or origin in self.origins:
            return True
        try:
            return URL(origin).raw_authority.lower() == request.host.lower()
        except ValueError:
            return False


ACCESS = web.AppKey("access", Access)


def user_of(request: web.Request) -> str:
    """The user a request acts for (the key's user; "local" when no keys are configured)."""
    if USER not in request:
        raise Unauthorized("missing_api_key", "this route needs an API key")
    return request[USER]


def key_of(request: web.Request) -> str:
    """The API key a request presented ("" when no keys are configured)."""
    return str(request.get(API_KEY, ""))


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the origin, find the caller's user from its key, and apply the key's rate."""
    access = request.app[ACCESS]
    if not access.origin_allowed(request):
        raise Forbidden(
            "origin_not_allowed",
            f"browser origin {request.headers.get('Origin')} is not allowed; "
            "add it to MEMCHAT_ALLOWED_ORIGINS",
        )
    if not access.required:
        request[USER], request[API_KEY] = DEFAULT_USER, ""
        return await handler(request)
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    presented = presented_key(request)
    request[USER], request[API_KEY] = access.user_for(presented), presented or ""
    if request.path not in UNLIMITED_PATHS:
        access.limiter.check(request[API_KEY])
    return await handler(request)


def presented_key(request: web.Request) -> str | None:
    """The key from `Authorization: Bearer`, or from a `bearer.<KEY>` websocket subprotocol."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        name = offered.strip()
        if name.startswith(WS_KEY_PREFIX) and len(name) > len(WS_KEY_PREFIX):
            return name[len(WS_KEY_PREFIX) :]
    return None


def startup_notice(settings: Settings) -> str:
    """What to tell the operator at start about who can connect."""
    host = settings.listen_host()
    if settings.auth_required:
        users = sorted({k.user for k in settings.api_keys})
        return f"API keys required ({len(settings.api_keys)} keys, users: {', '.join(users)})"
    if host != settings.host:
        return (
            f"no API keys configured: listening on {host} only, not {settings.host}; "
            "set MEMCHAT_API_KEYS (or --allow-unauthenticated true) to listen there"
        )
    return f"no API keys configured: anyone who can reach {host} acts as user '{DEFAULT_USER}'"
