"""docker-compose.yml and the Dockerfile, checked as far as a machine without Docker can."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _dockerfile() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_compose_runs_official_redis_8_with_aof_on_a_volume_and_a_healthcheck() -> None:
    redis = _compose()["services"]["redis"]
    assert redis["image"] == "redis:8"
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert redis["volumes"][0].split(":")[0] in _compose()["volumes"]


def test_compose_wires_the_app_to_redis_and_mounts_models() -> None:
    compose = _compose()
    app = compose["services"]["memchat"]
    assert app["build"] == "."
    url = app["environment"]["MEMCHAT_REDIS_URL"]
    assert url.startswith("redis://redis:")
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(v.endswith(":/models:ro") for v in app["volumes"])
    assert "MEMCHAT_MODEL" in app["environment"]


def test_dockerfile_copies_every_package_and_runs_the_console_script() -> None:
    lines = _dockerfile()
    copied = {shlex.split(line)[1] for line in lines if line.startswith("COPY ")}
    for folder in ("server", "memory", "models", "web", "pyproject.toml"):
        assert folder in copied
    cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[0] in scripts
    assert any(re.search(r"torch==2\.13\.0", line) for line in lines)


def test_the_image_command_parses_its_arguments() -> None:
    cmd = json.loads(next(line for line in _dockerfile() if line.startswith("CMD "))[4:])
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", *cmd[1:], "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    for flag in ("--host", "--port", "--model", "--redis-url", "--data-dir"):
        assert flag in out.stdout


def test_the_scale_profile_runs_two_replicas_over_the_one_redis_behind_a_proxy() -> None:
    services = _compose()["services"]
    assert {n for n, s in services.items() if "profiles" not in s} == {"redis", "memchat"}
    replicas = [n for n, s in services.items() if s.get("profiles") == ["scale"] and "build" in s]
    assert replicas == ["memchat-a", "memchat-b"]
    single = services["memchat"]["environment"]
    for name in replicas:
        app = services[name]
        assert app["build"] == "."
        assert app["environment"]["MEMCHAT_REDIS_URL"] == single["MEMCHAT_REDIS_URL"]
        assert "MEMCHAT_INFERENCE_URL" in app["environment"]
        assert app["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "ports" not in app  # reached only through the proxy
    proxy = services["proxy"]
    assert proxy["profiles"] == ["scale"]
    assert proxy["image"].startswith("nginx:")
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert all(p.startswith("127.0.0.1:") for p in proxy["ports"])
    assert {n: d["condition"] for n, d in proxy["depends_on"].items()} == {
        n: "service_healthy" for n in replicas
    }


def test_the_proxy_routes_to_the_compose_replicas_by_conversation() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    upstream = re.search(r"upstream memchat \{(.*?)\}", conf, re.DOTALL)
    assert upstream is not None
    port = next(line for line in _dockerfile() if "MEMCHAT_PORT=" in line)
    servers = re.findall(r"server ([\w-]+):(\d+)", upstream.group(1))
    assert servers == [("memchat-a", "8080"), ("memchat-b", "8080")]
    assert "MEMCHAT_PORT=8080" in port
    assert "hash $route_key consistent;" in upstream.group(1)
    assert "$http_x_memchat_conversation" in conf and "$arg_conversation" in conf
    for directive in ("proxy_set_header Upgrade $http_upgrade;", "proxy_buffering off;"):
        assert directive in conf
