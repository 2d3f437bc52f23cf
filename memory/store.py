"""All Redis access: key names, schema and commands, declared once, here.

Schema (every key of a user shares the `{user}` hash tag, so it lives in one cluster slot):

    memchat:{<user>}:convs                 zset   conversation id -> last update time
    memchat:{<user>}:conv:<cid>            hash   title, created_at, updated_at, next_seq, settings
    memchat:{<user>}:conv:<cid>:msgs       hash   seq -> JSON message record
    memchat:{<user>}:conv:<cid>:vec        vset   seq -> embedding of that message
    memchat:{<user>}:conv:<cid>:summary    hash   text, version, upto_seq, tokens, updated_at
    memchat:{<user>}:conv:<cid>:layout     string JSON: how the latest reply's prompt was laid out
    memchat:{<user>}:conv:<cid>:context    string JSON: what memory packed into the latest reply
    memchat:{<user>}:conv:<cid>:lock:<job> string owner token of a background job (expires)
    memchat:{<user>}:vec                   vset   "<cid>:<seq>" -> embedding (reserved: recall
                                                  across a user's conversations; not written yet)

The conversation hash's `epoch` goes up whenever stored turns are forgotten or rewritten, or the
summary is edited: replicas compare it to drop their caches. Every multi-key step is a MULTI
transaction or a Lua script on one user's keys, so all of it runs on a Redis Cluster too.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AskError, RedisError, ResponseError

from models.errors import BadRequest, NotFound, Unavailable

PREFIX = "memchat"
DEFAULT_USER = "local"
TITLE_CHARS = 60
SEARCH_LIMIT = 50
SCAN_CHUNK = 500
SNIPPET_CHARS = 80
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RETRIES = 3  # per command, on a lost connection or a timeout
RETRY_BASE_S = 0.05
RETRY_CAP_S = 0.25
# Scripts instead of WATCH: atomic on a single node and on a cluster alike (redis-py's async
# cluster client does not run WATCH). KEYS[1] is always the conversation hash.
_ADD_VECTORS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('VADD', KEYS[2], 'FP32', ARGV[i], ARGV[i + 1]) end
return 1
"""
# Seqs up to ARGV[1] stored without a vector. The counts are compared first (turns newer than
# ARGV[1], whose embedding may still be under way, left out of both), so a conversation whose
# turns all have vectors costs a few calls, not a scan.
_UNINDEXED = """
local upto = tonumber(ARGV[1])
local newer_stored, newer_indexed = 0, 0
for seq = upto + 1, tonumber(redis.call('HGET', KEYS[1], 'next_seq') or '0') do
  newer_stored = newer_stored + redis.call('HEXISTS', KEYS[2], tostring(seq))
  newer_indexed = newer_indexed + redis.call('VISMEMBER', KEYS[3], tostring(seq))
end
local stored = redis.call('HLEN', KEYS[2]) - newer_stored
if redis.call('VCARD', KEYS[3]) - newer_indexed >= stored then return {} end
local out = {}
for _, seq in ipairs(redis.call('HKEYS', KEYS[2])) do
  if tonumber(seq) <= upto and redis.call('VISMEMBER', KEYS[3], seq) == 0 then
    out[#out + 1] = seq
  end
end
return out
"""
_PUT_SUMMARY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 'version') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""
_SET_IF_CONVERSATION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""
_MARK_EDITED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('DEL', KEYS[2])
return 1
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Client = Redis | RedisCluster


def connect(url: str, *, cluster: bool = False) -> Client:
    """A client for a Redis 8 node, or with `cluster` for a Redis Cluster reached through any
    of its nodes (the client finds the rest and routes each user's keys to their slot)."""
    if cluster:
        return RedisCluster.from_url(url, decode_responses=True)
    return Redis.from_url(url, decode_responses=True, retry=_retry())


def _retry() -> Retry:
    """Few, short retries: a blip is ridden out, an outage is reported within half a second
    (redis-py's default tries for seconds; finished replies retry storing on their own)."""
    return Retry(ExponentialWithJitterBackoff(base=RETRY_BASE_S, cap=RETRY_CAP_S), RETRIES)


@dataclass(frozen=True)
class Message:
    """One stored turn of a conversation."""

    seq: int
    role: str
    text: str
    time: float
    status: str = "completed"
    speaker: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @staticmethod
    def from_json(raw: str | bytes) -> Message:
        """Parse a stored record."""
        return Message(**json.loads(raw))


@dataclass(frozen=True)
class Conversation:
    """A conversation's metadata."""

    id: str
    title: str
    created_at: float
    updated_at: float
    message_count: int
    user: str = DEFAULT_USER
    epoch: int = 0  # goes up when stored turns or the summary are edited

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API."""
        return {k: v for k, v in asdict(self).items() if k != "epoch"}


@dataclass(frozen=True)
class Summary:
    """The rolling summary of a conversation's older turns."""

    text: str = ""
    version: int = 0
    upto_seq: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class ConversationSettings:
    """A conversation's own reply settings; None follows the server's setting."""

    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Found:
    """A conversation matching a search: by title (seq None) or by a turn's text."""

    conversation: Conversation
    snippet: str
    seq: int | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API."""
        return {**self.conversation.as_dict(), "snippet": self.snippet, "seq": self.seq}


@dataclass(frozen=True)
class Hit:
    """A stored message similar to a query vector."""

    seq: int
    score: float


def check_id(value: str, what: str = "conversation id") -> str:
    """Reject ids that could escape a key name."""
    if not _ID_RE.match(value):
        raise BadRequest("invalid_id", f"{what} must be 1-64 letters, digits, '-' or '_'")
    return value


class Keys:
    """Every key name memchat uses."""

    def __init__(self, user: str) -> None:
        self.base = f"{PREFIX}:{{{check_id(user, 'user')}}}"

    def conversations(self) -> str:
        """Sorted set of the user's conversations."""
        return f"{self.base}:convs"

    def conversation(self, cid: str) -> str:
        """Hash of one conversation's metadata."""
        return f"{self.base}:conv:{check_id(cid)}"

    def messages(self, cid: str) -> str:
        """Hash of one conversation's messages by seq."""
        return self.conversation(cid) + ":msgs"

    def vectors(self, cid: str) -> str:
        """Vector set of one conversation's message embeddings."""
        return self.conversation(cid) + ":vec"

    def user_vectors(self) -> str:
        """Vector set across all of the user's conversations (reserved, not written yet)."""
        return f"{self.base}:vec"

    def summary(self, cid: str) -> str:
        """Hash holding one conversation's rolling summary."""
        return self.conversation(cid) + ":summary"

    def layout(self, cid: str) -> str:
        """String holding the prompt layout of the conversation's latest reply (JSON)."""
        return self.conversation(cid) + ":layout"

    def context(self, cid: str) -> str:
        """String holding the inspection record of the conversation's latest reply (JSON)."""
        return self.conversation(cid) + ":context"

    def lock(self, cid: str, job: str) -> str:
        """String naming the replica that runs one background job of a conversation."""
        return self.conversation(cid) + f":lock:{job}"

    def of_conversation(self, cid: str) -> list[str]:
        """Every key that holds data of one conversation."""
        return [
            self.conversation(cid),
            self.messages(cid),
            self.vectors(cid),
            self.summary(cid),
            self.layout(cid),
            self.context(cid),
        ]


class Store:
    """Conversations, messages, summaries and vectors in Redis 8."""

    def __init__(self, redis: Client) -> None:
        self.redis = redis
        self._add_vectors = redis.register_script(_ADD_VECTORS)
        self._unindexed = redis.register_script(_UNINDEXED)
        self._put_summary = redis.register_script(_PUT_SUMMARY)
        self._unlock = redis.register_script(_UNLOCK)
        self._set_if_conversation = redis.register_script(_SET_IF_CONVERSATION)
        self._mark_edited = redis.register_script(_MARK_EDITED)

    async def check_server(self) -> None:
        """Fail with a fix when the server cannot hold vector sets (Redis < 8), or is a cluster
        node reached without the cluster client."""
        try:
            await self.redis.execute_command("VCARD", f"{PREFIX}:probe")
        except AskError as e:  # MOVED too: the probe's slot is on another node
            raise _plain_client_on_cluster() from e
        except ResponseError as e:
            raise Unavailable(
                "redis_no_vector_sets",
                "this Redis server has no vector sets (VADD/VSIM need Redis 8); run redis:8, "
                "or drop --redis-url to let memchat start its own",
            ) from e
        if isinstance(self.redis, Redis) and (await self.redis.info("cluster")).get(
            "cluster_enabled"
        ):
            raise _plain_client_on_cluster()

    async def ping(self) -> bool:
        """True when Redis answers."""
        return await self.unreachable() is None

    async def unreachable(self) -> str | None:
        """Why Redis does not answer a PING, or None when it does."""
        try:
            await self.redis.ping()
        except (RedisError, OSError) as e:
            return f"{type(e).__name__}: {e}"
        return None

    async def create_conversation(self, user: str, title: str = "") -> Conversation:
        """Start an empty conversation."""
        keys, cid, now = Keys(user), uuid.uuid4().hex, time.time()
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hset(
                keys.conversation(cid),
                mapping={"title": title, "created_at": now, "updated_at": now, "next_seq": 0},
            )
            tx.zadd(keys.conversations(), {cid: now})
            await tx.execute()
        return Conversation(cid, title, now, now, 0, user)

    async def get_conversation(self, user: str, cid: str) -> Conversation:
        """One conversation's metadata, or NotFound."""
        raw = await self.redis.hgetall(Keys(user).conversation(cid))
        if not raw:
            raise NotFound("conversation_not_found", f"no conversation {cid}")
        return _conversation(user, cid, raw)

    async def list_conversations(self, user: str, limit: int = 200) -> list[Conversation]:
        """The user's conversations, most recently updated first."""
        keys = Keys(user)
        raw = await self.redis.zrevrange(keys.conversations(), 0, limit - 1)
        cids = [_text(c) for c in raw if isinstance(c, str | bytes)]
        async with self.redis.pipeline(transaction=False) as p:
            for cid in cids:
                p.hgetall(keys.conversation(cid))
            metas = await p.execute()
        return [_conversation(user, c, m) for c, m in zip(cids, metas, strict=True) if m]

    async def delete_conversation(self, user: str, cid: str) -> None:
        """Remove a conversation and everything derived from it."""
        keys = Keys(user)
        await self.get_conversation(user, cid)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(*keys.of_conversation(cid))
            tx.zrem(keys.conversations(), cid)
            await tx.execute()

    async def append(
        self,
        user: str,
        cid: str,
        role: str,
        text: str,
        *,
        status: str = "completed",
        at: float | None = None,
        speaker: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Message:
        """Store one message at the end of a conversation and return it with its seq."""
        return (await self.append_many(user, cid, [(role, text, status, at, speaker, meta or {})]))[
            0
        ]

    async def append_many(
        self,
        user: str,
        cid: str,
        rows: Sequence[tuple[str, str, str, float | None, str, dict[str, Any]]],
    ) -> list[Message]:
        """Store messages in order, atomically: a reader sees all of them or none."""
        keys = Keys(user)
        conv = await self.get_conversation(user, cid)
        last = await self.redis.hincrby(keys.conversation(cid), "next_seq", len(rows))
        now = time.time()
        msgs = [
            Message(
                last - len(rows) + i + 1,
                role,
                text,
                at if at is not None else now,
                status,
                spk,
                meta,
            )
            for i, (role, text, status, at, spk, meta) in enumerate(rows)
        ]
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hset(keys.messages(cid), mapping={str(m.seq): m.to_json() for m in msgs})
            tx.hset(keys.conversation(cid), "updated_at", now)
            if not conv.title:
                first_user = next((m.text for m in msgs if m.role == "user"), "")
                if first_user:
                    tx.hset(keys.conversation(cid), "title", _title(first_user))
            tx.zadd(keys.conversations(), {cid: now})
            await tx.execute()
        return msgs

    async def last_seq(self, user: str, cid: str) -> int:
        """The highest seq handed out in a conversation."""
        raw = await self.redis.hget(Keys(user).conversation(cid), "next_seq")
        return int(raw or 0)

    async def messages(
        self, user: str, cid: str, *, start: int = 1, end: int | None = None
    ) -> list[Message]:
        """Messages with start <= seq <= end, in order (gaps from crashed writes are skipped)."""
        end = await self.last_seq(user, cid) if end is None else end
        if end < start:
            return []
        return await self.messages_by_seq(user, cid, range(start, end + 1))

    async def messages_by_seq(self, user: str, cid: str, seqs: Iterable[int]) -> list[Message]:
        """The messages with these seqs that exist, in the order given."""
        wanted = [str(s) for s in seqs]
        if not wanted:
            return []
        raw = await self.redis.hmget(Keys(user).messages(cid), wanted)
        return [Message.from_json(r) for r in raw if r is not None]

    async def add_vectors(
        self, user: str, cid: str, seqs: Sequence[int], vectors: npt.NDArray[np.float32]
    ) -> bool:
        """Index message embeddings for recall; False (and nothing written) when the
        conversation was deleted meanwhile, so a late embedding leaves no orphan vectors."""
        keys = Keys(user)
        args: list[bytes | str] = []
        for seq, vec in zip(seqs, vectors, strict=True):
            args += [_blob(vec), str(seq)]
        added = await self._add_vectors(keys=[keys.conversation(cid), keys.vectors(cid)], args=args)
        return bool(added)

    async def unindexed(self, user: str, cid: str, upto: int) -> list[int]:
        """Seqs up to `upto` that are stored but have no vector: their embedding failed (Redis
        was down when it finished, say) and was dropped."""
        keys = Keys(user)
        raw = await self._unindexed(
            keys=[keys.conversation(cid), keys.messages(cid), keys.vectors(cid)], args=[upto]
        )
        return sorted(int(_text(seq)) for seq in raw)

    async def similar(
        self, user: str, cid: str, vector: npt.NDArray[np.float32], k: int
    ) -> list[Hit]:
        """The k stored messages most similar to a vector, best first."""
        key = Keys(user).vectors(cid)
        try:
            raw = await self.redis.execute_command(
                "VSIM", key, "FP32", _blob(vector), "WITHSCORES", "COUNT", k
            )
        except ResponseError:
            return []  # no vectors yet
        return _hits(raw)

    async def vector_count(self, user: str, cid: str) -> int:
        """How many messages of a conversation are indexed."""
        return int(await self.redis.execute_command("VCARD", Keys(user).vectors(cid)) or 0)

    async def get_summary(self, user: str, cid: str) -> Summary:
        """The conversation's rolling summary (empty when none was written yet)."""
        raw = await self.redis.hgetall(Keys(user).summary(cid))
        if not raw:
            return Summary()
        d = {_text(k): _text(v) for k, v in raw.items()}
        return Summary(d["text"], int(d["version"]), int(d["upto_seq"]), int(d["tokens"]))

    async def get_layout(self, user: str, cid: str) -> str | None:
        """The stored prompt layout (JSON), if any."""
        raw = await self.redis.get(Keys(user).layout(cid))
        return None if raw is None else _text(raw)

    async def put_layout(self, user: str, cid: str, layout: str) -> None:
        """Remember the prompt layout of the latest reply."""
        await self.redis.set(Keys(user).layout(cid), layout)

    async def drop_layout(self, user: str, cid: str) -> None:
        """Forget the prompt layout; the next reply lays the prompt out afresh."""
        await self.redis.delete(Keys(user).layout(cid))

    async def put_record(self, user: str, cid: str, record: str) -> bool:
        """Keep the inspection record (JSON) of the latest reply where every replica reads it;
        False (nothing written) when the conversation was deleted meanwhile."""
        keys = Keys(user)
        written = await self._set_if_conversation(
            keys=[keys.conversation(cid), keys.context(cid)], args=[record]
        )
        return bool(written)

    async def get_record(self, user: str, cid: str) -> str | None:
        """The inspection record of the latest reply (JSON), if any."""
        raw = await self.redis.get(Keys(user).context(cid))
        return None if raw is None else _text(raw)

    async def put_summary(
        self, user: str, cid: str, summary: Summary, *, expect_version: int
    ) -> bool:
        """Replace the summary if nobody replaced it since `expect_version` and the conversation
        still exists; True when written."""
        keys = Keys(user)
        fields: dict[str, str | int | float] = {**asdict(summary), "updated_at": time.time()}
        pairs = [str(x) for item in fields.items() for x in item]
        written = await self._put_summary(
            keys=[keys.conversation(cid), keys.summary(cid)], args=[expect_version, *pairs]
        )
        return bool(written)

    async def mark_edited(self, user: str, cid: str) -> None:
        """Tell every replica that derived state of the conversation is stale (its epoch goes
        up) and drop the stored prompt layout, so that the next reply lays it out afresh
        (nothing, for a conversation deleted meanwhile)."""
        keys = Keys(user)
        await self._mark_edited(keys=[keys.conversation(cid), keys.layout(cid)])

    @asynccontextmanager
    async def job_lock(self, user: str, cid: str, job: str, ttl_ms: int) -> AsyncIterator[bool]:
        """Hold a conversation's `job` lock across replicas (SET NX PX with an owner token);
        yields False when another holds it. It expires after `ttl_ms` should its holder die,
        and is released only by its owner."""
        key, token = Keys(user).lock(cid, job), uuid.uuid4().hex
        held = bool(await self.redis.set(key, token, nx=True, px=ttl_ms))
        try:
            yield held
        finally:
            if held:
                await self._unlock(keys=[key], args=[token])

    # --- Edits made from the browser UI: rename, search, settings, forget, rewrite. ---

    async def rename_conversation(self, user: str, cid: str, title: str) -> Conversation:
        """Give a conversation a new title."""
        await self.get_conversation(user, cid)
        await self.redis.hset(Keys(user).conversation(cid), "title", title)
        return await self.get_conversation(user, cid)

    async def search_conversations(
        self, user: str, query: str, limit: int = SEARCH_LIMIT
    ) -> list[Found]:
        """The user's conversations whose title or any turn contains `query` (case-insensitive)."""
        needle = query.casefold()
        found: list[Found] = []
        for conv in await self.list_conversations(user):
            if needle in conv.title.casefold():
                found.append(Found(conv, "", None))
            else:
                hit = await self._first_match(user, conv.id, needle)
                if hit is not None:
                    found.append(Found(conv, _snippet(hit.text, needle), hit.seq))
            if len(found) >= limit:
                break
        return found

    async def _first_match(self, user: str, cid: str, needle: str) -> Message | None:
        key, cursor = Keys(user).messages(cid), 0
        while True:
            cursor, chunk = await self.redis.hscan(key, cursor, count=SCAN_CHUNK)
            for raw in chunk.values() if isinstance(chunk, dict) else chunk:
                m = Message.from_json(raw)
                if needle in m.text.casefold():
                    return m
            if not cursor:
                return None

    async def get_settings(self, user: str, cid: str) -> ConversationSettings:
        """A conversation's own reply settings (unset fields follow the server's)."""
        await self.get_conversation(user, cid)
        raw = await self.redis.hget(Keys(user).conversation(cid), "settings")
        return ConversationSettings(**json.loads(raw)) if raw else ConversationSettings()

    async def put_settings(self, user: str, cid: str, settings: ConversationSettings) -> None:
        """Store a conversation's reply settings."""
        await self.get_conversation(user, cid)
        raw = json.dumps(asdict(settings), ensure_ascii=False)
        await self.redis.hset(Keys(user).conversation(cid), "settings", raw)

    async def message(self, user: str, cid: str, seq: int) -> Message:
        """One stored turn, or NotFound."""
        raw = await self.redis.hget(Keys(user).messages(cid), str(seq))
        if raw is None:
            raise NotFound("message_not_found", f"conversation {cid} has no turn {seq}")
        return Message.from_json(raw)

    async def last_message(self, user: str, cid: str) -> Message | None:
        """The newest stored turn, if any."""
        seqs = await self._seqs(user, cid)
        return await self.message(user, cid, seqs[-1]) if seqs else None

    async def forget_messages(self, user: str, cid: str, seqs: Sequence[int]) -> None:
        """Remove turns and their vectors, atomically (a missing seq is skipped)."""
        if not seqs:
            return
        keys = Keys(user)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hdel(keys.messages(cid), *[str(s) for s in seqs])
            for seq in seqs:
                tx.execute_command("VREM", keys.vectors(cid), str(seq))
            tx.hset(keys.conversation(cid), "updated_at", time.time())
            tx.hincrby(keys.conversation(cid), "epoch", 1)
            tx.delete(keys.layout(cid))
            await tx.execute()

    async def seqs_after(self, user: str, cid: str, seq: int) -> list[int]:
        """The stored seqs newer than `seq`, in order."""
        return [s for s in await self._seqs(user, cid) if s > seq]

    async def rewrite_message(self, user: str, cid: str, seq: int, text: str) -> Message:
        """Replace a turn's text (its vector is removed until it is indexed again)."""
        keys = Keys(user)
        old = await self.message(user, cid, seq)
        new = replace(old, text=text, time=time.time())
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hset(keys.messages(cid), str(seq), new.to_json())
            tx.execute_command("VREM", keys.vectors(cid), str(seq))
            tx.hset(keys.conversation(cid), "updated_at", new.time)
            tx.hincrby(keys.conversation(cid), "epoch", 1)
            tx.delete(keys.layout(cid))
            await tx.execute()
        return new

    async def _seqs(self, user: str, cid: str) -> list[int]:
        await self.get_conversation(user, cid)
        return sorted(int(_text(k)) for k in await self.redis.hkeys(Keys(user).messages(cid)))


def _plain_client_on_cluster() -> Unavailable:
    return Unavailable(
        "redis_is_cluster",
        "this Redis is a cluster node: set MEMCHAT_REDIS_CLUSTER=true so that memchat uses the "
        "cluster client",
    )


def _conversation(user: str, cid: str, raw: dict[Any, Any]) -> Conversation:
    d = {_text(k): _text(v) for k, v in raw.items()}
    return Conversation(
        id=cid,
        title=d.get("title", ""),
        created_at=float(d.get("created_at", 0)),
        updated_at=float(d.get("updated_at", 0)),
        message_count=int(d.get("next_seq", 0)),
        user=user,
        epoch=int(d.get("epoch", 0)),
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def _blob(vector: npt.NDArray[np.float32]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _hits(raw: Any) -> list[Hit]:
    if isinstance(raw, dict):
        return [Hit(int(_text(k)), float(v)) for k, v in raw.items()]
    pairs = zip(raw[0::2], raw[1::2], strict=True)
    return [Hit(int(_text(e)), float(_text(s))) for e, s in pairs]


def _snippet(text: str, needle: str) -> str:
    flat = " ".join(text.split())
    at = max(0, flat.casefold().find(needle) - SNIPPET_CHARS // 4)
    cut = flat[at : at + SNIPPET_CHARS]
    return ("…" if at else "") + cut + ("…" if at + SNIPPET_CHARS < len(flat) else "")
