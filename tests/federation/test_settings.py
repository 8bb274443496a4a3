"""Federation settings: read from their BROKER_FEDERATION_* variables, checked like the issuer."""

from __future__ import annotations

import pytest

from broker.federation import verify
from broker.settings import Settings, SettingsError

BASE = {"BROKER_SECRET_KEY": "s" * 32, "BROKER_ISSUER": "https://broker.example"}


def test_defaults_and_values() -> None:
    default = Settings.from_env(BASE)
    assert default.federation_authority_hints == () and default.federation_trust_marks == ()
    assert default.federation_statement_lifetime == default.federation_trust_mark_lifetime == 86400
    given = Settings.from_env(
        {
            **BASE,
            "BROKER_FEDERATION_AUTHORITY_HINTS": "https://anchor.example/ https://region.example",
            "BROKER_FEDERATION_TRUST_MARKS": "a.b.c  d.e.f",
            "BROKER_FEDERATION_STATEMENT_LIFETIME": "3600",
            "BROKER_FEDERATION_TRUST_MARK_LIFETIME": "7200",
        }
    )
    assert given.federation_authority_hints == ("https://anchor.example", "https://region.example")
    assert given.federation_trust_marks == ("a.b.c", "d.e.f")
    assert (given.federation_statement_lifetime, given.federation_trust_mark_lifetime) == (3600, 7200)
    assert "a.b.c" not in repr(given)
    assert default.federation_sync_interval == 300
    assert Settings.from_env({**BASE, "BROKER_FEDERATION_SYNC_INTERVAL": "0"}).federation_sync_interval == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BROKER_FEDERATION_AUTHORITY_HINTS", "http://anchor.example"),
        ("BROKER_FEDERATION_AUTHORITY_HINTS", "https://anchor.example/?x=1"),
        ("BROKER_FEDERATION_STATEMENT_LIFETIME", "10"),
        ("BROKER_FEDERATION_TRUST_MARK_LIFETIME", "forever"),
        ("BROKER_FEDERATION_SYNC_INTERVAL", "-1"),
    ],
)
def test_bad_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, name: value})
    assert caught.value.variable == name


def test_verify_all_is_complete() -> None:
    public = {n for n in dir(verify) if not n.startswith("_") and n.isidentifier()}
    assert set(verify.__all__) <= public
    for name in verify.__all__:
        assert getattr(verify, name) is not None
