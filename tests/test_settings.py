"""Settings: declared once, read from the environment and `.env`, refused when unsafe in production."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import readme_table
from app.settings import (
    DEV_ADMIN_PASSWORD,
    DEV_SECRET,
    TABLE_END,
    TABLE_START,
    Settings,
    SettingsError,
    load_settings,
    model_id,
    settings_table,
)

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_for_a_one_command_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "MAX_BATCH", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.database_url.startswith("sqlite://")
    assert settings.redis_url == ""
    assert settings.max_batch == 32 and settings.max_deliveries == 3


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH", "8")
    monkeypatch.setenv("WAIT_TIMEOUT", "2.5")
    monkeypatch.setenv("ADMIN_EMAIL", "Boss@Example.com")
    settings = load_settings()
    assert (settings.max_batch, settings.wait_timeout, settings.admin_email) == (8, 2.5, "boss@example.com")


def test_bad_numbers_say_which_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH", "lots")
    with pytest.raises(SettingsError, match="MAX_BATCH"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("MAX_BATCH", "lots", "MAX_BATCH must be a whole number, got 'lots'"),
        ("PORT", "80.5", "PORT must be a whole number, got '80.5'"),
        ("WAIT_TIMEOUT", "soon", "WAIT_TIMEOUT must be a number, got 'soon'"),
        ("INFERENCE_BACKEND", "pytorch", "INFERENCE_BACKEND must be one of"),
        ("OPENVINO_PRECISION", "f64", "OPENVINO_PRECISION must be empty or one of"),
    ],
)
def test_bad_values_raise_settings_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).startswith(problem)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HEARTBEAT_TTL", "0"),  # Redis refuses SET EX 0: the worker ran but was never seen, /health/ready 503
        ("DECODE_PROCESSES", "0"),
        ("FEED_WINDOW", "0"),  # no room on any stream: collections accepted and never fed
        ("CLAIM_IDLE_MS", "0"),
        ("MAX_DELIVERIES", "0"),  # every job dead-lettered
        ("WAIT_TIMEOUT", "-5"),
        ("DECODE_TIMEOUT", "0"),
        ("DECODE_MEMORY_MB", "0"),
        ("TOKEN_MINUTES", "0"),
        ("REQUEUE_AFTER", "0"),
        ("QUOTA_QUEUED", "0"),
        ("LOGIN_WINDOW_SECONDS", "0"),
        ("MODEL_THREADS", "-1"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("WEB_PROCESSES", "0"),
        ("STORED_HIGH_WATER", "0"),
        ("STORED_HIGH_WATER", "3"),
        ("RESULT_TTL", "-1"),  # behaved as 0
        ("RESULT_TTL", "100000000000"),  # 3,000 years: every upload of an image seen before answered 500
        ("DATABASE_URL", "mysql:/x"),
    ],
)
def test_impossible_values_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Found in review: these were accepted and failed later, deep inside (a worker never seen, a feeder that
    never feeds, every job dead-lettered, a port uvicorn cannot bind, a database Tortoise cannot open, a result
    cache no upload could read)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=rf"^{name} is not valid .*, got '{re.escape(value)}'"):
        load_settings()


def test_the_edges_that_work_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    edges = {"MAX_BATCH": "0", "MODEL_THREADS": "0", "RESULT_TTL": "0", "STORED_HIGH_WATER": "1", "PORT": "65535"}
    for name, value in (edges | {"HEARTBEAT_TTL": "1"}).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.max_batch, settings.model_threads, settings.stored_high_water, settings.port) == (0, 0, 1, 65535)
    for url in ("sqlite://:memory:", "postgres://u:p@db:5432/app", "postgresql://u@db/app", "psycopg://u@db/app"):
        monkeypatch.setenv("DATABASE_URL", url)
        assert load_settings().database_url == url


def test_a_dotenv_not_in_utf8_is_a_settings_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Found in review: a `.env` saved in Latin-1 raised a bare UnicodeDecodeError from inside
    pydantic-settings, naming no file."""
    (tmp_path / ".env").write_bytes(b"ADMIN_PASSWORD=caf\xe9-caf\xe9\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=rf"^{re.escape(str(tmp_path / '.env'))} is not UTF-8 text"):
        load_settings()


def test_empty_means_the_default_except_where_it_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH", "")
    monkeypatch.setenv("ADMIN_EMAIL", "   ")
    monkeypatch.setenv("PORT", " 9000 ")
    monkeypatch.setenv("HTMX_INTEGRITY", "")  # no SRI, for the local copy
    monkeypatch.setenv("INFERENCE_BACKEND", " OpenVINO ")
    settings = load_settings()
    assert (settings.max_batch, settings.admin_email, settings.port) == (32, "admin@example.com", 9000)
    assert settings.htmx_integrity == "" and settings.inference_backend == "openvino"


def test_dotenv_is_read_and_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAX_BATCH=7\nport=9001\nNOT_A_SETTING=1\nUPLOAD_DIR=/srv/uploads\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORT", "9002")
    for name in ("MAX_BATCH", "UPLOAD_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.max_batch, settings.port, settings.upload_dir) == (7, 9002, Path("/srv/uploads"))
    assert "NOT_A_SETTING" not in os.environ  # read, not exported


def test_settings_constructed_directly_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH", "8")
    defaults = Settings()
    assert defaults.max_batch == 32 and defaults.upload_dir == Path("data/uploads")
    assert defaults.worker_name == f"{os.uname().nodename}-{os.getpid()}"
    assert (defaults.model_name, defaults.model_id) == ("resnet50", "resnet50-imagenet")
    changed = dataclasses.replace(load_settings(), wait_timeout=0.5)  # as the tests of the web app do
    assert changed.wait_timeout == 0.5 and changed.max_batch == 8


def test_every_setting_is_described() -> None:
    fields = dataclasses.fields(Settings)
    assert len(fields) > 30
    for field in Settings.__pydantic_fields__.values():  # type: ignore[attr-defined]
        assert field.description and "\n" not in field.description, field
    assert {f.name for f in fields} == set(Settings.__pydantic_fields__)  # type: ignore[attr-defined]


def test_readme_settings_table_is_up_to_date() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert TABLE_START in readme and TABLE_END in readme
    table = settings_table()
    assert readme_table.spliced(readme, table) == readme, "the README's settings table is stale: make settings-table"
    for field in dataclasses.fields(Settings):
        assert f"| `{field.name.upper()}` |" in table
    assert "| `PROMETHEUS_MULTIPROC_DIR` | empty |" in table


@pytest.mark.parametrize(
    ("secret", "password", "problem"),
    [
        (DEV_SECRET, "a-real-password", "SECRET_KEY"),
        ("short", "a-real-password", "SECRET_KEY"),
        ("s" * 40, DEV_ADMIN_PASSWORD, "ADMIN_PASSWORD"),
        ("s" * 40, "short", "ADMIN_PASSWORD"),
    ],
)
def test_production_refuses_placeholders(
    monkeypatch: pytest.MonkeyPatch, secret: str, password: str, problem: str
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", secret)
    monkeypatch.setenv("ADMIN_PASSWORD", password)
    with pytest.raises(SettingsError, match=problem):
        load_settings()


def test_production_starts_with_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", "s" * 40)
    monkeypatch.setenv("ADMIN_PASSWORD", "a-real-password")
    assert load_settings().production


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "my-host.example.com"])
def test_listening_beyond_loopback_refuses_the_published_defaults(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("HOST", host)
    monkeypatch.setenv("SECRET_KEY", DEV_SECRET)
    with pytest.raises(SettingsError, match=f"Listening on {host} SECRET_KEY must be set"):
        load_settings()
    monkeypatch.setenv("SECRET_KEY", "s" * 40)
    monkeypatch.setenv("ADMIN_PASSWORD", DEV_ADMIN_PASSWORD)
    with pytest.raises(SettingsError, match="ADMIN_PASSWORD must be set"):
        load_settings()
    monkeypatch.setenv("ADMIN_PASSWORD", "a-real-password")
    assert load_settings().exposed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_keeps_the_one_command_defaults(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("HOST", host)
    monkeypatch.setenv("SECRET_KEY", DEV_SECRET)
    monkeypatch.setenv("ADMIN_PASSWORD", DEV_ADMIN_PASSWORD)
    assert not load_settings().exposed


def test_stand_in_backend_is_for_tests_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_BACKEND", "Stand-In")
    assert load_settings().inference_backend == "stand-in"
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", "s" * 40)
    monkeypatch.setenv("ADMIN_PASSWORD", "a-real-password")
    with pytest.raises(SettingsError, match="In production INFERENCE_BACKEND must be auto, tensorflow or openvino"):
        load_settings()
    monkeypatch.delenv("INFERENCE_BACKEND")
    assert load_settings().inference_backend == "auto"  # the default: the fastest backend that agrees


def test_importing_the_db_module_reads_no_settings() -> None:
    code = "import app.db\ntry:\n    app.db.TORTOISE_ORM\nexcept Exception as e:\n    print(type(e).__name__)"
    env = os.environ | {"MAX_BATCH": "lots"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "SettingsError"), done.stderr


def test_unknown_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "staging")
    with pytest.raises(SettingsError, match="ENVIRONMENT"):
        load_settings()


def test_model_id() -> None:
    assert model_id("resnet50", "random") == "resnet50-random"
    assert model_id("resnet50", "imagenet") == "resnet50-imagenet"
    assert model_id("resnet50", "/models/My Weights.h5") == "resnet50-my-weights"


def test_email_check_is_linear_on_hostile_input() -> None:
    from app.accounts import EMAIL_PATTERN, email_problem

    # A pattern with overlapping parts backtracks quadratically on this; ours must answer at once.
    hostile = "a@" + "." * 50_000 + "@"
    assert re.match(EMAIL_PATTERN, hostile) is None
    assert email_problem(hostile) == "Enter a valid email address"
    assert email_problem("ada@example.co.uk") is None
    assert email_problem("ada@localhost") == "Enter a valid email address"


def test_an_admin_password_no_sign_in_takes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: an ADMIN_PASSWORD longer than sign-in takes (128 characters) made an admin who could
    never sign in (the API answered 400, the page "Wrong email or password")."""
    monkeypatch.setenv("ADMIN_PASSWORD", "f00d" * 50)
    with pytest.raises(SettingsError, match="ADMIN_PASSWORD must be at most 128 characters") as raised:
        load_settings()
    assert "f00d" not in str(raised.value)  # the message does not show the secret
    monkeypatch.setenv("ADMIN_PASSWORD", "f" * 128)
    assert load_settings().admin_password == "f" * 128
