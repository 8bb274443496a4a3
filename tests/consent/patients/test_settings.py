"""The patient settings read from the environment, each error naming its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.settings import Settings, SettingsError

BASE = {"BROKER_DEV_MODE": "true"}


def test_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({**BASE, "BROKER_KEY_DIR": str(tmp_path)})
    assert (settings.session_idle_timeout, settings.session_absolute_timeout) == (1800, 43200)
    assert (settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism) == (
        65536,
        3,
        4,
    )
    assert not settings.oidc_enabled


def test_external_provider(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "BROKER_KEY_DIR": str(tmp_path),
            "BROKER_OIDC_ISSUER": "https://id.example/",
            "BROKER_OIDC_CLIENT_ID": "broker",
            "BROKER_OIDC_CLIENT_SECRET": "s3cret",
            "BROKER_OIDC_NAME": "FranceConnect",
        }
    )
    assert settings.oidc_enabled and settings.oidc_issuer == "https://id.example"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"BROKER_SESSION_IDLE_TIMEOUT": "10"}, "BROKER_SESSION_IDLE_TIMEOUT"),
        (
            {"BROKER_SESSION_IDLE_TIMEOUT": "7200", "BROKER_SESSION_ABSOLUTE_TIMEOUT": "3600"},
            "BROKER_SESSION_ABSOLUTE_TIMEOUT",
        ),
        ({"BROKER_ARGON2_MEMORY_KIB": "8192"}, "BROKER_ARGON2_MEMORY_KIB"),
        ({"BROKER_ARGON2_TIME_COST": "1"}, "BROKER_ARGON2_TIME_COST"),
        ({"BROKER_PASSWORD_HASH_CONCURRENCY": "0"}, "BROKER_PASSWORD_HASH_CONCURRENCY"),
        ({"BROKER_OIDC_ISSUER": "http://id.example", "BROKER_OIDC_CLIENT_ID": "b"}, "BROKER_OIDC_ISSUER"),
        ({"BROKER_OIDC_ISSUER": "https://id.example"}, "BROKER_OIDC_CLIENT_ID"),
        (
            {"BROKER_OIDC_ISSUER": "https://id.example", "BROKER_OIDC_CLIENT_ID": "b"},
            "BROKER_OIDC_CLIENT_SECRET",
        ),
        ({"BROKER_OIDC_SCOPES": "profile email"}, "BROKER_OIDC_SCOPES"),
    ],
)
def test_invalid_values_name_their_variable(env: dict[str, str], variable: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "BROKER_KEY_DIR": str(tmp_path), **env})
    assert caught.value.variable == variable
