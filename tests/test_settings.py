from pathlib import Path

import pytest

from broker.settings import Settings, SettingsError

BASE = {"BROKER_DEV_MODE": "true"}


def test_defaults_in_development(tmp_path: Path) -> None:
    settings = Settings.from_env({**BASE, "BROKER_KEY_DIR": str(tmp_path / "k")})
    assert settings.database_url == "sqlite:///var/broker.db"
    assert settings.issuer == "http://127.0.0.1:8000"
    assert settings.policy_mode == "gate"
    assert len(settings.secret_key) >= 32
    # The development secret is kept, never re-drawn per process.
    again = Settings.from_env({**BASE, "BROKER_KEY_DIR": str(tmp_path / "k")})
    assert again.secret_key == settings.secret_key
    assert (tmp_path / "k" / "development-secret").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"BROKER_PORT": "eighty"}, "BROKER_PORT"),
        ({"BROKER_PORT": "70000"}, "BROKER_PORT"),
        ({"BROKER_DEMO": "maybe"}, "BROKER_DEMO"),
        ({"BROKER_POLICY_MODE": "open"}, "BROKER_POLICY_MODE"),
        ({"BROKER_DATABASE_URL": "mysql://x/y"}, "BROKER_DATABASE_URL"),
        ({"BROKER_ISSUER": "ftp://broker.example"}, "BROKER_ISSUER"),
        ({"BROKER_ISSUER": "https://broker.example/?q=1"}, "BROKER_ISSUER"),
        ({"BROKER_ISSUER": "http://broker.example"}, "BROKER_ISSUER"),
        ({"BROKER_TOKEN_LIFETIME": "3600"}, "BROKER_TOKEN_LIFETIME"),
        ({"BROKER_SECRET_KEY": "short"}, "BROKER_SECRET_KEY"),
    ],
)
def test_invalid_values_name_their_variable(env: dict[str, str], variable: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "BROKER_KEY_DIR": str(tmp_path), **env})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable + ":")


def test_secret_required_outside_development(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"BROKER_ISSUER": "https://broker.example"})
    assert caught.value.variable == "BROKER_SECRET_KEY"
    settings = Settings.from_env({"BROKER_ISSUER": "https://broker.example/", "BROKER_SECRET_KEY": "s" * 40})
    assert settings.issuer == "https://broker.example"
    assert "s" * 40 not in repr(settings)


def test_client_time_limits(tmp_path: Path) -> None:
    base = {**BASE, "BROKER_KEY_DIR": str(tmp_path)}
    defaults = Settings.from_env(base)
    assert (defaults.header_timeout, defaults.body_timeout) == (10, 30)
    chosen = Settings.from_env({**base, "BROKER_HEADER_TIMEOUT": "2", "BROKER_BODY_TIMEOUT": "3"})
    assert (chosen.header_timeout, chosen.body_timeout) == (2, 3)
    for variable, value in (("BROKER_HEADER_TIMEOUT", "0"), ("BROKER_BODY_TIMEOUT", "forever")):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({**base, variable: value})
        assert caught.value.variable == variable
