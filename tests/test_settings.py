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
