"""Operator credentials for the admin API: opaque bearer tokens stored as HMACs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from broker.catalog import repository
from broker.catalog.models import OperatorToken
from broker.errors import Unauthorized
from broker.opaque import new_secret, secret_digest

OPERATOR_TOKEN_PREFIX = "hcb_op"  # noqa: S105 (a prefix, not a secret)


def create_operator_token(session: Session, *, name: str, secret_key: bytes, now: datetime) -> str:
    """A new operator token; shown once, stored only as its HMAC."""
    if not name.strip() or len(name) > 100:
        raise ValueError("the operator name must have 1 to 100 characters")
    token = new_secret(OPERATOR_TOKEN_PREFIX)
    session.add(OperatorToken(name=name, token_hash=secret_digest(secret_key, token), created_at=now))
    return token


def authenticate_operator(session: Session, *, token: str | None, secret_key: bytes) -> str:
    """The operator's name for a valid token, else 401."""
    if token:
        # Lookup by HMAC: the digest is the index key, so no comparison of secrets happens
        # in Python at all (nothing to time).
        row = repository.operator_token_by_hash(session, secret_digest(secret_key, token))
        if row is not None:
            return row.name
    raise Unauthorized("a valid operator token is required (Authorization: Bearer …)")
