"""Holder-side verification throughput, next to the raw signature checks it is built on.

Prints a table: the SDK's ``HolderVerifier.verify`` on a token seen for the first time (full
checks: strict parsing, signature, claims, status list lookup, categories) and on a token
seen before (cache hit: time, status and category checks), beside the bare ``cryptography``
ECDSA P-256 and Ed25519 verifications measured in the same run, and jwcrypto's own JWS
verification for reference. Tokens look like the broker's (same claims, ES256, ~900 bytes).

The JWKS and the status list are served by a local HTTP server and fetched once, as a holder
would; they stay cached during the measurement. Rates are in CPU time of this process
(``time.process_time``), medians over several rounds, so that other work on a shared machine
weighs less; still, compare within one run. Nothing here asserts on time.

    .venv/bin/python bench/verify.py [--rounds 7] [--tokens 2000]
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwk, jws

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))

from broker_sdk import HolderVerifier
from broker_sdk._jose import b64url_encode, sign

AUDIENCE = "https://labo.example/fhir"


def serve(documents: dict[str, tuple[str, bytes]]) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            media_type, body = documents[self.path]
            self.send_response(200)
            self.send_header("Content-Type", media_type)
            self.send_header("Cache-Control", "max-age=3600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def broker_like_tokens(key: jwk.JWK, issuer: str, count: int) -> list[str]:
    now = int(time.time())
    tokens = []
    for i in range(count):
        claims = {
            "iss": issuer,
            "sub": "p_" + secrets.token_urlsafe(32),
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": secrets.token_urlsafe(16),
            "client_id": "app_" + secrets.token_urlsafe(16),
            "scope": "lab_results",
            "authorization_details": [
                {
                    "type": "health_data",
                    "holder": "labo-demo",
                    "purpose": "chronic_disease_followup",
                    "categories": ["lab_results"],
                }
            ],
            "consent_id": "cns_" + secrets.token_urlsafe(16),
            "link_handle": "lnk_" + secrets.token_urlsafe(24),
            "status": {"status_list": {"idx": i % 1000, "uri": f"{issuer}/status/0"}},
        }
        tokens.append(sign(claims, key, typ="at+jwt"))
    return tokens


def rate(operation: Callable[[], None], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        operation()
    return n / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()

    key = jwk.JWK.generate(kty="EC", crv="P-256")
    key = jwk.JWK(**{**key.export(as_dict=True), "kid": key.thumbprint()})
    documents: dict[str, tuple[str, bytes]] = {}
    server, issuer = serve(documents)
    public = key.export_public(as_dict=True)
    public.update(alg="ES256", use="sig")
    documents["/jwks.json"] = ("application/jwk-set+json", json.dumps({"keys": [public]}).encode())
    documents["/.well-known/oauth-authorization-server"] = (
        "application/json",
        json.dumps({"issuer": issuer, "jwks_uri": f"{issuer}/jwks.json"}).encode(),
    )
    now = int(time.time())
    status_list = {"bits": 2, "lst": b64url_encode(zlib.compress(bytes(32 * 1024), 9))}
    status_token = sign(
        {
            "sub": f"{issuer}/status/0",
            "iss": issuer,
            "iat": now,
            "exp": now + 3600,
            "ttl": 3600,
            "status_list": status_list,
        },
        key,
        typ="statuslist+jwt",
    )
    documents["/status/0"] = ("application/statuslist+jwt", status_token.encode())

    tokens = broker_like_tokens(key, issuer, args.tokens)
    size = sum(map(len, tokens)) // len(tokens)

    # The raw primitives, on a message of the same size as a token's signing input.
    message = tokens[0].rsplit(".", 1)[0].encode()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_signature = ec_key.sign(message, ec.ECDSA(hashes.SHA256()))
    ec_public = ec_key.public_key()
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_signature = ed_key.sign(message)
    ed_public = ed_key.public_key()
    n_raw = args.tokens

    # The same raw primitive over the very tokens the SDK verifies (their signing inputs and
    # signatures, converted to DER beforehand): the same work, minus everything but the
    # signature. One message verified over and over stays in the CPU's caches; 2,000
    # different tokens do not, for the SDK or for the primitive.
    token_key = key.get_op_key("verify")
    token_inputs = []
    for token in tokens:
        signing_input, _, signature_b64 = token.rpartition(".")
        raw_signature = base64.urlsafe_b64decode(signature_b64 + "=" * (-len(signature_b64) % 4))
        r, s = int.from_bytes(raw_signature[:32], "big"), int.from_bytes(raw_signature[32:], "big")
        token_inputs.append((signing_input.encode(), encode_dss_signature(r, s)))

    def raw_tokens_round() -> float:
        started = time.process_time()
        for signing_input, der in token_inputs:
            token_key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        return len(token_inputs) / (time.process_time() - started)

    def raw_ecdsa_round() -> float:
        return rate(lambda: ec_public.verify(ec_signature, message, ec.ECDSA(hashes.SHA256())), n_raw)

    def raw_ed25519_round() -> float:
        return rate(lambda: ed_public.verify(ed_signature, message), n_raw)

    verifier = HolderVerifier(issuer, AUDIENCE, holder_id="labo-demo")
    verifier.verify(tokens[0], categories=["lab_results"])  # JWKS and status list fetched once

    def first_sight() -> float:
        verifier._cache.clear()
        started = time.process_time()
        for token in tokens:
            verifier.verify(token, categories=["lab_results"])
        return len(tokens) / (time.process_time() - started)

    def seen_before() -> float:
        for token in tokens:
            verifier.verify(token)  # all in the cache first
        started = time.process_time()
        for _ in range(10):
            for token in tokens:
                verifier.verify(token, categories=["lab_results"])
        return 10 * len(tokens) / (time.process_time() - started)

    public_key = jwk.JWK(**public)

    def jwcrypto_round() -> float:
        started = time.process_time()
        for token in tokens[:500]:
            obj = jws.JWS()
            obj.deserialize(token)
            obj.verify(public_key, alg="ES256")
        return 500 / (time.process_time() - started)

    # Rounds interleave every measure, so that what else runs on a shared machine weighs on
    # each alike; the ratios are taken within each round, then their median is reported.
    measures = {
        "raw_ecdsa": raw_ecdsa_round,
        "raw_tokens": raw_tokens_round,
        "raw_ed25519": raw_ed25519_round,
        "jwcrypto": jwcrypto_round,
        "first": first_sight,
        "seen": seen_before,
    }
    for measure in measures.values():
        measure()  # warm-up, not counted
    samples: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(args.rounds):
        for name, measure in measures.items():
            samples[name].append(measure())
    raw_ecdsa, raw_tokens, raw_ed25519, jwcrypto_rate, sdk_first, sdk_seen = (
        statistics.median(samples[name]) for name in measures
    )

    def ratio(name: str, reference: str) -> float:
        return statistics.median(a / b for a, b in zip(samples[name], samples[reference], strict=True))

    verifier.close()
    server.shutdown()

    rows = [
        ("raw ECDSA P-256 verify (cryptography), one message again and again", raw_ecdsa),
        ("raw ECDSA P-256 verify (cryptography), the same tokens as the SDK", raw_tokens),
        ("raw Ed25519 verify (cryptography)", raw_ed25519),
        ("jwcrypto JWS deserialize + verify (ES256, no claim checks)", jwcrypto_rate),
        ("SDK HolderVerifier.verify, first sight of a token", sdk_first),
        ("SDK HolderVerifier.verify, token seen before", sdk_seen),
    ]
    print(
        f"Holder-side verification: {args.tokens} broker-like ES256 tokens of ~{size} bytes, "
        f"median of {args.rounds} rounds (Python {sys.version.split()[0]})\n"
    )
    width = max(len(name) for name, _ in rows)
    print(f"{'what'.ljust(width)}  {'µs/op':>8}  {'ops/s':>10}  {'× raw, same tokens':>18}")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 10}  {'-' * 18}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {1e6 / value:8.1f}  {value:10,.0f}  {value / raw_tokens:18.2f}")
    print()
    print(
        "medians of per-round ratios (target: first sight ≥ 60% of raw, seen before ≥ 10×):\n"
        f"  against the raw verify of the same tokens:   first sight {ratio('first', 'raw_tokens'):.0%}, "
        f"seen before {ratio('seen', 'raw_tokens'):.1f}×\n"
        f"  against one message verified again and again: first sight {ratio('first', 'raw_ecdsa'):.0%}, "
        f"seen before {ratio('seen', 'raw_ecdsa'):.1f}×"
    )


if __name__ == "__main__":
    main()
