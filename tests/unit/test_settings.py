"""Settings: read from the environment, refused when unsafe in production."""

from __future__ import annotations

import pytest

from app.settings import DEV_ADMIN_PASSWORD, DEV_SECRET, SettingsError, load_settings, model_id


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


def test_unknown_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "staging")
    with pytest.raises(SettingsError, match="ENVIRONMENT"):
        load_settings()


def test_model_id() -> None:
    assert model_id("resnet50", "random") == "resnet50-random"
    assert model_id("resnet50", "imagenet") == "resnet50-imagenet"
    assert model_id("resnet50", "/models/My Weights.h5") == "resnet50-my-weights"


def test_email_check_is_linear_on_hostile_input() -> None:
    import re

    from app.accounts import EMAIL_PATTERN, email_problem

    # A pattern with overlapping parts backtracks quadratically on this; ours must answer at once.
    hostile = "a@" + "." * 50_000 + "@"
    assert re.match(EMAIL_PATTERN, hostile) is None
    assert email_problem(hostile) == "Enter a valid email address"
    assert email_problem("ada@example.co.uk") is None
    assert email_problem("ada@localhost") == "Enter a valid email address"
