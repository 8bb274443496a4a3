"""The broker's signing keys: ES256 keys made with jwcrypto, kept in the key directory.

Layout of ``BROKER_KEY_DIR`` (directory 0700, files 0600)::

    keyring.json      which keys exist, which one signs, until when the others are published
    <kid>.jwk         one private key each (JWK JSON); never read by anything but this module

The ``kid`` is the key's RFC 7638 thumbprint. Rotation makes a new key the signer and keeps
the previous public key in the JWKS for ``publish_for`` seconds, long enough for every token
it signed to expire (DESIGN step 6). Public material leaves this module only through
``public_jwks`` and ``public_key``, which export with ``private_keys=False`` semantics.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwcrypto import jwk

ALGORITHM = "ES256"
CURVE = "P-256"
KEYRING = "keyring.json"
_P256_BYTES = 32
REFRESH_SECONDS = 1.0  # how often signing looks for a rotation made by another process


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class KeyStoreError(RuntimeError):
    """The key directory is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    alg: str
    created_at: datetime
    status: str  # "active" signs; "retiring" is published only; "retired" is neither
    publish_until: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "created_at": self.created_at.isoformat(),
            "status": self.status,
            "publish_until": self.publish_until.isoformat() if self.publish_until else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyInfo:
        until = data.get("publish_until")
        return cls(
            kid=data["kid"],
            alg=data["alg"],
            created_at=datetime.fromisoformat(data["created_at"]),
            status=data["status"],
            publish_until=datetime.fromisoformat(until) if until else None,
        )


class KeyStore:
    """Signing keys of one broker, read from and written to its key directory."""

    def __init__(self, key_dir: Path) -> None:
        self.key_dir = key_dir
        self._infos: list[KeyInfo] = []
        self._private: dict[str, jwk.JWK] = {}
        self._signers: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._headers: dict[tuple[str, str], bytes] = {}
        self._mtime: float | None = None
        self._checked_at = time.monotonic()

    def __repr__(self) -> str:  # never shows key material
        return f"KeyStore({str(self.key_dir)!r}, kids={[i.kid for i in self._infos]})"

    # -- reading -------------------------------------------------------------------------

    @property
    def _keyring_path(self) -> Path:
        return self.key_dir / KEYRING

    def load(self) -> KeyStore:
        path = self._keyring_path
        try:
            stat = path.stat()
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise KeyStoreError(f"no signing keys in {self.key_dir}: run `broker keys create`") from None
        infos = [KeyInfo.from_json(item) for item in data["keys"]]
        private: dict[str, jwk.JWK] = {}
        for info in infos:
            if info.status == "retired":
                continue
            key = jwk.JWK.from_json((self.key_dir / f"{info.kid}.jwk").read_text())
            if key.thumbprint() != info.kid:
                raise KeyStoreError(f"key file {info.kid}.jwk does not match its kid")
            private[info.kid] = key
        if sum(1 for i in infos if i.status == "active") != 1:
            raise KeyStoreError(f"{path} must name exactly one active key")
        self._infos, self._private, self._mtime = infos, private, stat.st_mtime
        self._signers = {kid: key.get_op_key("sign") for kid, key in private.items()}
        return self

    def refresh(self) -> None:
        """Reload when another process (``broker keys rotate``) changed the keyring."""
        try:
            mtime = self._keyring_path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            self.load()

    def exists(self) -> bool:
        return self._keyring_path.exists()

    def infos(self) -> list[KeyInfo]:
        return list(self._infos)

    @property
    def active_kid(self) -> str:
        for info in self._infos:
            if info.status == "active":
                return info.kid
        raise KeyStoreError("no active signing key")

    def public_jwks(self, now: datetime | None = None) -> dict[str, Any]:
        """The JWKS: the signing key and every retiring key still within its window."""
        now = now or datetime.now(UTC)
        keys = []
        for info in self._infos:
            published = info.status == "active" or (
                info.status == "retiring" and info.publish_until is not None and now < info.publish_until
            )
            if published:
                keys.append(self.public_key(info.kid))
        return {"keys": keys}

    def public_key(self, kid: str) -> dict[str, Any]:
        exported: dict[str, Any] = self._private[kid].export_public(as_dict=True)
        exported.update({"kid": kid, "alg": ALGORITHM, "use": "sig"})
        return exported

    # -- signing -------------------------------------------------------------------------

    def sign(self, claims: dict[str, Any], typ: str) -> str:
        """A compact JWS of ``claims`` with the active key; ``typ`` says what it is (RFC 8725 §3.11).

        Every access token goes through here, so the JWS is assembled over the key object
        jwcrypto holds, with the ``cryptography`` primitive (RFC 7515 §7.1, RFC 7518 §3.4):
        jwcrypto's JWS object costs about four times the signature itself (DESIGN,
        performance notes). Tests verify these tokens with jwcrypto and with PyJWT.

        At most once a second it looks whether the keyring changed (a ``broker keys rotate``
        run for every node sharing the key directory): every node signs with the new key
        within a second, long before the previous one stops being published.
        """
        now = time.monotonic()
        if now - self._checked_at >= REFRESH_SECONDS:
            self._checked_at = now
            self.refresh()
        kid = self.active_kid
        header = self._headers.get((kid, typ))
        if header is None:
            protected = {"alg": ALGORITHM, "kid": kid, "typ": typ}
            header = _b64(json.dumps(protected, separators=(",", ":")).encode())
            self._headers[(kid, typ)] = header
        payload = _b64(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
        signing_input = header + b"." + payload
        r, s = decode_dss_signature(self._signers[kid].sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
        return (signing_input + b"." + _b64(signature)).decode("ascii")

    # -- writing (the `broker keys` command) ---------------------------------------------

    def create(self, now: datetime | None = None) -> KeyInfo | None:
        """Make the first key; ``None`` when the keyring exists already."""
        if self.exists():
            self.load()
            return None
        info = self._new_key(now or datetime.now(UTC))
        self._write([info])
        return info

    def rotate(self, publish_for: timedelta, now: datetime | None = None) -> KeyInfo:
        """A new signer; the previous one stays published for ``publish_for``."""
        now = now or datetime.now(UTC)
        self.load()
        infos = []
        for info in self._infos:
            if info.status == "active":
                info = KeyInfo(info.kid, info.alg, info.created_at, "retiring", now + publish_for)
            elif info.status == "retiring" and info.publish_until and info.publish_until <= now:
                info = KeyInfo(info.kid, info.alg, info.created_at, "retired", info.publish_until)
            infos.append(info)
        new = self._new_key(now)
        self._write([*infos, new])
        return new

    def _new_key(self, now: datetime) -> KeyInfo:
        self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.key_dir, 0o700)
        key = jwk.JWK.generate(kty="EC", crv=CURVE)
        kid = key.thumbprint()
        fd = os.open(self.key_dir / f"{kid}.jwk", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.export_private())
        return KeyInfo(kid, ALGORITHM, now, "active", None)

    def _write(self, infos: list[KeyInfo]) -> None:
        # Write-then-rename: a serving process never reads a half-written keyring.
        tmp = self.key_dir / f".{KEYRING}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"keys": [i.to_json() for i in infos]}, handle, indent=2)
        os.replace(tmp, self._keyring_path)
        self.load()
