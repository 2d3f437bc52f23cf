"""The LoCoMo conversation format: reading one file into turns and questions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.errors import BadRequest

EVIDENCE_CATEGORIES = (1, 2, 3, 4)  # 5 is adversarial: its answer is not in the conversation
_DATE_FORMAT = "%I:%M %p on %d %B, %Y"


@dataclass(frozen=True)
class LocomoTurn:
    """One turn, ready to store."""

    dia_id: str
    speaker: str
    text: str
    at: float
    role: str


@dataclass(frozen=True)
class LocomoQuestion:
    """One question with the dia_ids of the turns that hold its answer."""

    question: str
    category: int
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class LocomoConversation:
    """A whole LoCoMo conversation."""

    name: str
    speakers: tuple[str, str]
    turns: list[LocomoTurn]
    questions: list[LocomoQuestion]


def parse_time(value: str) -> float:
    """A LoCoMo session time such as `1:56 pm on 8 May, 2023`, as a UTC timestamp."""
    try:
        parsed = datetime.strptime(value.strip(), _DATE_FORMAT)
    except ValueError as e:
        raise BadRequest("invalid_locomo", f"unreadable session time {value!r}") from e
    return parsed.replace(tzinfo=UTC).timestamp()


def turn_text(raw: dict[str, Any]) -> str:
    """A turn's text; a shared photo's caption is part of it, as the photo's description."""
    text = str(raw.get("text", ""))
    caption = raw.get("blip_caption")
    return f"{text} [shares a photo: {caption}]" if caption else text


def parse(data: dict[str, Any], name: str = "") -> LocomoConversation:
    """Read one LoCoMo conversation (the dict of one file, or its `conversation` member)."""
    conv = data.get("conversation", data)
    try:
        speakers = (str(conv["speaker_a"]), str(conv["speaker_b"]))
    except KeyError as e:
        raise BadRequest(
            "invalid_locomo", "a LoCoMo conversation needs speaker_a and speaker_b"
        ) from e
    turns: list[LocomoTurn] = []
    n = 1
    while f"session_{n}_date_time" in conv or f"session_{n}" in conv:
        at = parse_time(str(conv.get(f"session_{n}_date_time", "")))
        for raw in conv.get(f"session_{n}") or []:
            speaker = str(raw.get("speaker", ""))
            role = "assistant" if speaker == speakers[1] else "user"
            turns.append(LocomoTurn(str(raw.get("dia_id", "")), speaker, turn_text(raw), at, role))
        n += 1
    questions = [
        LocomoQuestion(
            str(q["question"]), int(q["category"]), tuple(map(str, q.get("evidence", [])))
        )
        for q in data.get("qa", [])
    ]
    return LocomoConversation(name, speakers, turns, questions)


def load(path: Path) -> LocomoConversation:
    """Read a LoCoMo file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BadRequest("invalid_locomo", f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise BadRequest("invalid_locomo", f"{path} must hold one JSON object")
    return parse(data, path.stem)


def _evidence(question: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(e) for e in question.get("evidence", []))
