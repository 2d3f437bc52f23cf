"""Settings come from flags, then MEMCHAT_* variables, then defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from server import settings


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_need_no_configuration() -> None:
    s = settings.load(_parse([]), env={})
    assert (s.host, s.port, s.redis_url, s.model) == ("127.0.0.1", 8080, "", "")
    assert s.data_dir == Path("data")


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"MEMCHAT_PORT": "9000", "MEMCHAT_HOST": "0.0.0.0", "MEMCHAT_DATA_DIR": "/var/mc"}
    s = settings.load(_parse(["--port", "9100"]), env=env)
    assert s.port == 9100
    assert s.host == "0.0.0.0"
    assert s.data_dir == Path("/var/mc")


def test_every_documented_option_is_a_flag() -> None:
    args = _parse(
        [
            "--host",
            "h",
            "--port",
            "1",
            "--model",
            "m.gguf",
            "--redis-url",
            "redis://x",
            "--data-dir",
            "d",
        ]
    )
    s = settings.load(args, env={})
    assert (s.host, s.port, s.model, s.redis_url, s.data_dir) == (
        "h",
        1,
        "m.gguf",
        "redis://x",
        Path("d"),
    )


def test_a_bad_number_says_which_setting() -> None:
    with pytest.raises(SystemExit, match="port"):
        settings.load(_parse([]), env={"MEMCHAT_PORT": "eighty"})


def test_api_keys_come_from_the_environment_and_a_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# users\ncarol:KEY3\n\n dave : KEY4 \n", encoding="utf-8")
    env = {"MEMCHAT_API_KEYS": "alice:KEY1,bob:KEY2"}
    s = settings.load(_parse(["--api-keys-file", str(keys_file)]), env=env)
    assert [(k.user, k.key) for k in s.api_keys] == [
        ("alice", "KEY1"),
        ("bob", "KEY2"),
        ("carol", "KEY3"),
        ("dave", "KEY4"),
    ]
    assert s.auth_required
    assert "KEY1" not in repr(s)
    assert not settings.load(_parse([]), env={}).auth_required


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEMCHAT_API_KEYS": "alice"}, "expected user:key"),
        ({"MEMCHAT_API_KEYS": "al ice:K"}, "expected user:key"),
        ({"MEMCHAT_API_KEYS": "alice:K,bob:K"}, "listed twice"),
        ({"MEMCHAT_API_KEYS_FILE": "/no/such/file"}, "cannot read the API keys file"),
        ({"MEMCHAT_ALLOW_UNAUTHENTICATED": "maybe"}, "true or false"),
        ({"MEMCHAT_WEIGHTS": "q3_k"}, "weights must be one of auto, keep, q8_0"),
        ({"MEMCHAT_CACHE_TYPE_K": "q4_0"}, "cache_type_k must be one of f16, q8_0, not 'q4_0'"),
    ],
)
def test_bad_access_settings_say_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        settings.load(_parse([]), env=env)


def test_origins_and_flags_parse() -> None:
    env = {
        "MEMCHAT_ALLOWED_ORIGINS": "https://a.example, http://b.example:3000",
        "MEMCHAT_ALLOW_UNAUTHENTICATED": "true",
        "MEMCHAT_RATE_LIMIT": "5",
    }
    s = settings.load(_parse([]), env=env)
    assert s.allowed_origins == ("https://a.example", "http://b.example:3000")
    assert s.allow_unauthenticated is True
    assert s.rate_limit == 5


def test_scale_out_settings_name_a_cluster_and_an_inference_server() -> None:
    env = {
        "MEMCHAT_REDIS_URL": "redis://node1:7000/0",
        "MEMCHAT_REDIS_CLUSTER": "yes",
        "MEMCHAT_INFERENCE_URL": "http://llama:8081/v1",
        "MEMCHAT_INFERENCE_API_KEY": "sk-secret",
    }
    s = settings.load(_parse(["--inference-model", "smol"]), env=env)
    assert (s.redis_cluster, s.inference_url, s.inference_model) == (
        True,
        "http://llama:8081/v1",
        "smol",
    )
    assert s.inference_api_key == "sk-secret" and "sk-secret" not in repr(s)
    assert settings.load(_parse([]), env={}).redis_cluster is False
    with pytest.raises(SystemExit, match="redis_cluster"):
        settings.load(_parse([]), env={"MEMCHAT_REDIS_CLUSTER": "maybe"})
    with pytest.raises(SystemExit, match="redis_cluster needs redis_url"):
        settings.load(_parse(["--redis-cluster", "true"]), env={})
