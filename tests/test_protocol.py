"""The wire protocol's parsing: every malformed frame gets a precise error code."""

from __future__ import annotations

import json

import pytest

from models.errors import BadRequest
from server import protocol

LIMIT = 100


def test_chat_send_parses_text_and_conversation() -> None:
    frame = protocol.parse_client_frame(
        json.dumps({"type": "chat.send", "text": "hi", "conversation_id": "abc"}), LIMIT
    )
    assert frame == protocol.ChatSend(text="hi", conversation_id="abc")


def test_cancel_without_id_targets_the_current_reply() -> None:
    frame = protocol.parse_client_frame('{"type": "response.cancel"}', LIMIT)
    assert frame == protocol.ResponseCancel(response_id=None)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"text": "no type"}', "invalid_frame"),
        ('{"type": "chat.explode"}', "unknown_type"),
        ('{"type": "chat.send"}', "missing_field"),
        ('{"type": "chat.send", "text": 5}', "invalid_field"),
        ('{"type": "chat.send", "text": "x", "conversation_id": 7}', "invalid_field"),
        ('{"type": "chat.send", "text": "   "}', "empty_message"),
        (json.dumps({"type": "chat.send", "text": "x" * (LIMIT + 1)}), "message_too_long"),
        ('{"type": "response.cancel", "response_id": []}', "invalid_field"),
        ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    ],
)
def test_bad_frames_raise_precise_codes(raw: str, code: str) -> None:
    with pytest.raises(BadRequest) as err:
        protocol.parse_client_frame(raw, LIMIT)
    assert err.value.code == code
    assert err.value.message


def test_text_at_the_limit_is_accepted() -> None:
    frame = protocol.parse_client_frame(
        json.dumps({"type": "chat.send", "text": "x" * LIMIT}), LIMIT
    )
    assert isinstance(frame, protocol.ChatSend)
