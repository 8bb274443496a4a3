"""The pure federation verifier: genuine documents pass, forged and stale ones are refused by reason."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.consent.proofs.jose import b64url_encode
from broker.federation.verify import (
    MAX_DEPTH,
    MAX_DOCUMENT_LENGTH,
    FederationRefused,
    Refusal,
    TrustAnchor,
    json_depth,
    resolve_trust_chain,
    verify_entity_configuration,
    verify_key_rollover,
    verify_subordinate_statement,
    verify_trust_mark,
    verify_trust_mark_status,
)
from broker.keys import KeyStore

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
ANCHOR = "https://anchor.example"
BROKER = "https://broker-a.example"
APP = f"{BROKER}/apps/app_123"
MARK_TYPE = f"{BROKER}/trust-marks/charter/1.0"


class Entity:
    """A federation entity for tests: an id and a key store of its own."""

    def __init__(self, entity_id: str, key_dir: Path) -> None:
        self.id = entity_id
        self.keys = KeyStore(key_dir)
        self.keys.create(NOW)

    def jwks(self) -> dict[str, Any]:
        return self.keys.public_jwks(NOW)

    def configuration(self, **changes: Any) -> str:
        claims: dict[str, Any] = {
            "iss": self.id,
            "sub": self.id,
            "iat": T,
            "exp": T + 3600,
            "jwks": self.jwks(),
            "metadata": {"federation_entity": {}},
        }
        claims.update(changes)
        return self.keys.sign(claims, typ="entity-statement+jwt")

    def statement_about(self, other: Entity, **changes: Any) -> str:
        claims: dict[str, Any] = {
            "iss": self.id,
            "sub": other.id,
            "iat": T,
            "exp": T + 3600,
            "jwks": other.jwks(),
        }
        claims.update(changes)
        return self.keys.sign(claims, typ="entity-statement+jwt")

    def sign(self, claims: dict[str, Any], typ: str) -> str:
        return self.keys.sign(claims, typ=typ)


@pytest.fixture
def entities(tmp_path: Path) -> Callable[[str], Entity]:
    def make(entity_id: str) -> Entity:
        return Entity(entity_id, tmp_path / entity_id.replace("https://", "").replace("/", "_"))

    return make


@pytest.fixture
def anchor(entities: Callable[[str], Entity]) -> Entity:
    return entities(ANCHOR)


@pytest.fixture
def broker(entities: Callable[[str], Entity]) -> Entity:
    return entities(BROKER)


def refused(reason: Refusal, call: Callable[[], Any]) -> FederationRefused:
    with pytest.raises(FederationRefused) as caught:
        call()
    assert caught.value.reason is reason, caught.value
    return caught.value


def _forge(token: str, **changes: Any) -> str:
    """The same header and signature over a changed payload."""
    header, payload, signature = token.split(".")
    claims = json.loads(_decode(payload))
    claims.update(changes)
    body = b64url_encode(json.dumps(claims).encode())
    return f"{header}.{body}.{signature}"


def _decode(segment: str) -> str:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()


# -- entity configurations --------------------------------------------------------------------


def test_entity_configuration_verifies(broker: Entity) -> None:
    statement = verify_entity_configuration(broker.configuration(), entity_id=BROKER, now=NOW)
    assert statement.is_configuration and statement.sub == BROKER
    assert statement.jwks == broker.jwks()


def test_entity_configuration_refusals(broker: Entity, entities: Callable[[str], Entity]) -> None:
    mallory = entities("https://mallory.example")
    # signed by a key that is not in its own jwks
    forged = mallory.sign(
        {"iss": BROKER, "sub": BROKER, "iat": T, "exp": T + 3600, "jwks": broker.jwks()},
        "entity-statement+jwt",
    )
    refused(Refusal.BAD_SIGNATURE, lambda: verify_entity_configuration(forged, entity_id=BROKER, now=NOW))
    # a changed payload under the genuine signature
    tampered = _forge(broker.configuration(), metadata={"x": 1})
    refused(Refusal.BAD_SIGNATURE, lambda: verify_entity_configuration(tampered, entity_id=BROKER, now=NOW))
    # expired
    stale = broker.configuration(iat=T - 7200, exp=T - 3600)
    refused(Refusal.EXPIRED, lambda: verify_entity_configuration(stale, entity_id=BROKER, now=NOW))
    # iss differs from sub, or not the entity asked for
    other = broker.configuration(sub="https://other.example")
    refused(Refusal.WRONG_SUBJECT, lambda: verify_entity_configuration(other, entity_id=None, now=NOW))
    refused(
        Refusal.WRONG_SUBJECT,
        lambda: verify_entity_configuration(broker.configuration(), entity_id=ANCHOR, now=NOW),
    )
    # a trust mark or a status answer passed off as an entity statement
    mark = broker.sign(
        {"iss": BROKER, "sub": BROKER, "iat": T, "exp": T + 60, "jwks": broker.jwks()}, "trust-mark+jwt"
    )
    refused(Refusal.WRONG_TYPE, lambda: verify_entity_configuration(mark, entity_id=BROKER, now=NOW))
    # missing exp
    no_exp = broker.sign(
        {"iss": BROKER, "sub": BROKER, "iat": T, "jwks": broker.jwks()}, "entity-statement+jwt"
    )
    refused(Refusal.MISSING_CLAIM, lambda: verify_entity_configuration(no_exp, entity_id=BROKER, now=NOW))
    # issued in the future
    future = broker.configuration(iat=T + 3600, exp=T + 7200)
    refused(Refusal.NOT_YET_VALID, lambda: verify_entity_configuration(future, entity_id=BROKER, now=NOW))
    # not a JWS at all
    refused(Refusal.MALFORMED, lambda: verify_entity_configuration("a.b", entity_id=BROKER, now=NOW))
    refused(Refusal.MALFORMED, lambda: verify_entity_configuration(None, entity_id=BROKER, now=NOW))


def test_alg_none_and_hmac_are_refused(broker: Entity) -> None:
    genuine = broker.configuration()
    _, payload, _ = genuine.split(".")
    for header in (
        {"alg": "none", "typ": "entity-statement+jwt"},
        {"alg": "HS256", "typ": "entity-statement+jwt"},
    ):
        token = f"{b64url_encode(json.dumps(header).encode())}.{payload}.AAAA"
        refused(Refusal.WRONG_TYPE, lambda t=token: verify_entity_configuration(t, entity_id=BROKER, now=NOW))  # type: ignore[misc]


def test_oversized_and_deeply_nested_documents_are_refused(broker: Entity) -> None:
    padded = broker.configuration(metadata={"federation_entity": {"pad": "x" * MAX_DOCUMENT_LENGTH}})
    refused(Refusal.OVERSIZED, lambda: verify_entity_configuration(padded, entity_id=BROKER, now=NOW))
    nested: Any = "bottom"
    for _ in range(MAX_DEPTH + 1):
        nested = {"n": nested}
    deep = broker.configuration(metadata=nested)
    refused(Refusal.TOO_DEEP, lambda: verify_entity_configuration(deep, entity_id=BROKER, now=NOW))
    # a nesting far beyond the parser's recursion limit is refused by the count, not a crash
    bomb = broker.configuration(metadata={"a": json.loads("[" * 500 + "]" * 500)})
    refused(Refusal.TOO_DEEP, lambda: verify_entity_configuration(bomb, entity_id=BROKER, now=NOW))
    many_keys = broker.configuration(
        jwks={"keys": [dict(broker.jwks()["keys"][0], kid=f"k{i}") for i in range(17)]}
    )
    refused(Refusal.OVERSIZED, lambda: verify_entity_configuration(many_keys, entity_id=BROKER, now=NOW))


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth('{"a": "[[[[{{{{", "b": [1, {"c": "\\"]"}]}') == 3
    assert json_depth("[]") == 1 and json_depth('"x"') == 0


# -- subordinate statements -----------------------------------------------------------------


def test_subordinate_statement_against_its_superior(
    broker: Entity, anchor: Entity, entities: Callable[[str], Entity]
) -> None:
    superior = verify_entity_configuration(anchor.configuration(), entity_id=ANCHOR, now=NOW)
    statement = verify_subordinate_statement(
        anchor.statement_about(broker), superior=superior, subject=BROKER, now=NOW
    )
    assert statement.iss == ANCHOR and statement.jwks == broker.jwks()
    # signed by the subordinate itself, not by the superior
    self_signed = broker.sign(
        {"iss": ANCHOR, "sub": BROKER, "iat": T, "exp": T + 60, "jwks": broker.jwks()}, "entity-statement+jwt"
    )
    refused(
        Refusal.BAD_SIGNATURE,
        lambda: verify_subordinate_statement(self_signed, superior=superior, subject=BROKER, now=NOW),
    )
    # about someone else
    refused(
        Refusal.WRONG_SUBJECT,
        lambda: verify_subordinate_statement(
            anchor.statement_about(broker), superior=superior, subject="https://c.example", now=NOW
        ),
    )
    # issued under another name than the superior's
    renamed = anchor.statement_about(broker, iss="https://intermediate.example")
    refused(
        Refusal.WRONG_ISSUER,
        lambda: verify_subordinate_statement(renamed, superior=superior, subject=BROKER, now=NOW),
    )
    stale = anchor.statement_about(broker, iat=T - 7200, exp=T - 61)
    refused(
        Refusal.EXPIRED,
        lambda: verify_subordinate_statement(stale, superior=superior, subject=BROKER, now=NOW),
    )


# -- trust marks ----------------------------------------------------------------------------------


def _mark(issuer: Entity, **changes: Any) -> str:
    claims: dict[str, Any] = {
        "iss": issuer.id,
        "sub": APP,
        "trust_mark_type": MARK_TYPE,
        "iat": T,
        "exp": T + 3600,
    }
    claims.update(changes)
    return issuer.sign(claims, "trust-mark+jwt")


def test_trust_mark_refusals(broker: Entity, entities: Callable[[str], Entity]) -> None:
    def check(token: str, **overrides: Any) -> Any:
        args: dict[str, Any] = {
            "issuer": BROKER,
            "issuer_jwks": broker.jwks(),
            "subject": APP,
            "trust_mark_type": MARK_TYPE,
            "now": NOW,
        }
        args.update(overrides)
        return verify_trust_mark(token, **args)

    assert check(_mark(broker), status="active").trust_mark_type == MARK_TYPE
    refused(Refusal.TRUST_MARK_OTHER_SUBJECT, lambda: check(_mark(broker, sub=f"{BROKER}/apps/other")))
    refused(
        Refusal.TRUST_MARK_OTHER_TYPE,
        lambda: check(_mark(broker, trust_mark_type=f"{BROKER}/trust-marks/charter/0.9")),
    )
    refused(Refusal.TRUST_MARK_REVOKED, lambda: check(_mark(broker), status="revoked"))
    refused(Refusal.EXPIRED, lambda: check(_mark(broker, iat=T - 7200, exp=T - 3600)))
    refused(Refusal.WRONG_ISSUER, lambda: check(_mark(broker, iss="https://other.example")))
    mallory = entities("https://mallory.example")
    refused(Refusal.BAD_SIGNATURE, lambda: check(_mark(mallory, iss=BROKER)))
    # an entity statement is not a trust mark
    refused(Refusal.WRONG_TYPE, lambda: check(broker.configuration()))


def test_trust_mark_status_answer(broker: Entity, entities: Callable[[str], Entity]) -> None:
    mark = _mark(broker)
    answer = broker.sign(
        {"iss": BROKER, "iat": T, "trust_mark": mark, "status": "revoked"}, "trust-mark-status-response+jwt"
    )
    status = verify_trust_mark_status(
        answer, issuer=BROKER, issuer_jwks=broker.jwks(), trust_mark=mark, now=NOW
    )
    assert status == "revoked"
    refused(
        Refusal.TRUST_MARK_REVOKED,
        lambda: verify_trust_mark(
            mark,
            issuer=BROKER,
            issuer_jwks=broker.jwks(),
            subject=APP,
            trust_mark_type=MARK_TYPE,
            now=NOW,
            status=status,
        ),
    )
    # an answer about another mark does not count
    other = _mark(broker, iat=T - 1)
    refused(
        Refusal.WRONG_SUBJECT,
        lambda: verify_trust_mark_status(
            answer, issuer=BROKER, issuer_jwks=broker.jwks(), trust_mark=other, now=NOW
        ),
    )
    forged = entities("https://mallory.example").sign(
        {"iss": BROKER, "iat": T, "trust_mark": mark, "status": "active"}, "trust-mark-status-response+jwt"
    )
    refused(
        Refusal.BAD_SIGNATURE,
        lambda: verify_trust_mark_status(
            forged, issuer=BROKER, issuer_jwks=broker.jwks(), trust_mark=mark, now=NOW
        ),
    )


# -- trust chains -----------------------------------------------------------------------------------


def test_chain_of_a_broker_and_of_its_app(
    broker: Entity, anchor: Entity, entities: Callable[[str], Entity]
) -> None:
    pinned = TrustAnchor(ANCHOR, anchor.jwks())
    broker_config = broker.configuration(authority_hints=[ANCHOR])
    chain = [broker_config, anchor.statement_about(broker, exp=T + 600), anchor.configuration()]
    resolved = resolve_trust_chain(chain, anchor=pinned, now=NOW)
    assert resolved.subject == BROKER and resolved.anchor == ANCHOR
    assert resolved.expires_at == T + 600
    # an app has no configuration: its chain starts with the broker's statement about it
    app = entities(APP)
    app_chain = [broker.statement_about(app, metadata={"oauth_client": {"client_name": "x"}}), *chain]
    resolved = resolve_trust_chain(app_chain, anchor=pinned, now=NOW)
    assert resolved.subject == APP and resolved.metadata == {"oauth_client": {"client_name": "x"}}
    # the anchor alone is a chain of one
    assert resolve_trust_chain([anchor.configuration()], anchor=pinned, now=NOW).subject == ANCHOR


def test_chain_refusals(broker: Entity, anchor: Entity, entities: Callable[[str], Entity]) -> None:
    pinned = TrustAnchor(ANCHOR, anchor.jwks())
    config = broker.configuration(authority_hints=[ANCHOR])
    about = anchor.statement_about(broker)
    top = anchor.configuration()

    def resolve(chain: list[Any]) -> Any:
        return resolve_trust_chain(chain, anchor=pinned, now=NOW)

    # ends elsewhere than at the anchor
    other = entities("https://other-anchor.example")
    refused(
        Refusal.CHAIN_NOT_ANCHORED,
        lambda: resolve([config, other.statement_about(broker), other.configuration()]),
    )
    refused(Refusal.CHAIN_NOT_ANCHORED, lambda: resolve([config, about]))
    # an impostor anchor: right name, keys of its own, not the pinned ones
    impostor = Entity(ANCHOR, Path(str(broker.keys.key_dir) + "-impostor"))
    refused(
        Refusal.CHAIN_NOT_ANCHORED,
        lambda: resolve([config, impostor.statement_about(broker), impostor.configuration()]),
    )
    # a link missing: the broker's configuration directly under the anchor's
    refused(Refusal.CHAIN_BROKEN, lambda: resolve([config, top]))
    # the superior is not among the configuration's authority hints
    refused(Refusal.CHAIN_BROKEN, lambda: resolve([broker.configuration(), about, top]))
    # the anchor vouches for other keys than those that sign the broker's configuration
    mallory = entities("https://mallory.example")
    vouched_other = anchor.statement_about(broker, jwks=mallory.jwks())
    refused(Refusal.BAD_SIGNATURE, lambda: resolve([config, vouched_other, top]))
    # an expired link anywhere
    refused(Refusal.EXPIRED, lambda: resolve([config, anchor.statement_about(broker, exp=T - 3600), top]))
    # a statement about an app signed by someone else than the broker
    app = entities(APP)
    forged = mallory.sign({"iss": BROKER, "sub": APP, "iat": T, "exp": T + 60}, "entity-statement+jwt")
    refused(Refusal.BAD_SIGNATURE, lambda: resolve([forged, config, about, top]))
    refused(Refusal.OVERSIZED, lambda: resolve([broker.statement_about(app)] * 8 + [top]))
    refused(Refusal.MALFORMED, lambda: resolve([]))


def test_key_rollover_needs_the_previous_key(broker: Entity, entities: Callable[[str], Entity]) -> None:
    before = broker.jwks()
    broker.keys.rotate(timedelta(hours=1), NOW)
    # the new configuration is signed by the new key: unknown to whoever pinned the old one
    refused(
        Refusal.KEY_ROLLOVER_UNSIGNED,
        lambda: verify_key_rollover(before, broker.configuration(), entity_id=BROKER, now=NOW),
    )
    # a configuration whose signer was trusted before is accepted, and gives the new keys
    accepted = verify_key_rollover(broker.jwks(), broker.configuration(), entity_id=BROKER, now=NOW)
    assert {k["kid"] for k in accepted.jwks["keys"]} >= {k["kid"] for k in before["keys"]}
    # an attacker listing the old keys beside its own gains nothing
    mallory = entities("https://mallory.example")
    claims = {
        "iss": BROKER,
        "sub": BROKER,
        "iat": T,
        "exp": T + 60,
        "jwks": {"keys": before["keys"] + mallory.jwks()["keys"]},
    }
    forged = mallory.sign(claims, "entity-statement+jwt")
    refused(
        Refusal.KEY_ROLLOVER_UNSIGNED, lambda: verify_key_rollover(before, forged, entity_id=BROKER, now=NOW)
    )
