"""Federation: synchronising 10,000 apps from a peer, and resolving a trust chain cold and cached.

Starts two brokers as their own processes on loopback (SQLite files): a trust anchor ``T`` and
a peer ``A`` holding ``--apps`` approved apps (registered through the registry's service, as in
bench/catalog.py), ``A`` naming ``T`` among its authority hints and ``T`` vouching for ``A``.
Then, in this process, a local broker database trusts ``A`` through ``T`` and:

- **first synchronisation**: fetch ``A``'s configuration and the chain to ``T``, the list, every
  app's subordinate statement (8 at a time, through the guarded outbound client), verify
  every statement and trust mark, re-check each manifest against the local charter and import
  every app (one transaction); a fresh local database each run;
- **synchronisation again**: the same fetches and checks, nothing to import;
- **reference**: fetching the same statements only (same client, same 8 threads, no check, no
  database): the floor set by the peer signing each statement and by HTTP.

And a trust chain (``A``'s configuration, ``T``'s statement about ``A``, ``T``'s configuration):

- **cold**: the SDK's ``IssuerResolver`` on a new resolver (3 fetches, 4 signature checks);
- **cached**: the same resolver again (its cache, valid until the statements expire);
- the broker's pure ``resolve_trust_chain`` over documents already fetched;
- **reference**: one plain GET of ``A``'s entity configuration with the same HTTP client.

Medians over ``--runs`` runs (sync) and ``--chain-runs`` runs (chain), each with its ratio to
the reference measured in the same run. Nothing here asserts on time.

    .venv/bin/python bench/federation.py [--apps 10000] [--runs 3] [--chain-runs 100]
"""
# ruff: noqa: S603  (the bench starts its own brokers)

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sdk"))

import httpx
from broker_sdk import IssuerResolver
from catalog import populate, print_table
from tokens import free_port, running

from broker.catalog.enforcement import CharterInForce
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.federation import peers
from broker.federation.sync import FETCH_WORKERS, guarded_fetch, synchronise
from broker.federation.verify import TrustAnchor, resolve_trust_chain
from broker.migrate import upgrade
from broker.outbound import ENTITY_STATEMENT, OutboundPolicy
from broker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POLICY = OutboundPolicy(dev_mode=True)  # loopback http, as in development


def broker_env(base: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "BROKER_DATABASE_URL": f"sqlite:///{base / 'broker.db'}",
        "BROKER_KEY_DIR": str(base / "keys"),
        "BROKER_DEV_MODE": "true",
        "BROKER_ISSUER": f"http://127.0.0.1:{port}",
        "BROKER_PORT": str(port),
        "BROKER_AUDIT_INTERVAL": "0",
        "BROKER_FEDERATION_SYNC_INTERVAL": "0",
        **extra,
    }


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"broker {args}: {done.stderr}")
    return done.stdout


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_sync(base: Path, peer: str, anchor: str, anchor_jwks: dict[str, Any], run: int) -> list[float]:
    url = f"sqlite:///{base / f'local-{run}.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    fetch = guarded_fetch(POLICY)
    with transaction(factory) as session:
        peers.add_peer(
            session,
            entity_id=peer,
            jwks=None,
            trust_anchor=anchor,
            trust_anchor_jwks=anchor_jwks,
            import_apps=True,
            operator="bench",
            dev_mode=True,
            fetch=fetch,
            now=utcnow(),
        )

    def once() -> Any:
        return synchronise(
            factory,
            peer_id=peer,
            charter_of=CharterInForce(None).current,
            fetch=fetch,
            dev_mode=True,
            now=utcnow(),
        )

    ids = httpx.get(f"{peer}/federation/list", params={"entity_type": "oauth_client"}, timeout=30).json()
    apps = len(ids)  # the approved ones: the peer lists those only
    first_report: list[Any] = []
    first = timed(lambda: first_report.append(once()))
    report = first_report[0]
    if not report.ok or len(report.imported) != apps:
        refused = [(r.entity_id, r.reason, r.detail) for r in report.refused[:3]]
        raise RuntimeError(f"the first synchronisation imported {len(report.imported)} of {apps}: {refused}")
    again_report: list[Any] = []
    again = timed(lambda: again_report.append(once()))
    if again_report[0].unchanged != apps:
        refused = [(r.entity_id, r.reason, r.detail) for r in again_report[0].refused[:3]]
        raise RuntimeError(
            f"the second synchronisation left {again_report[0].unchanged} unchanged: {refused}"
        )

    def fetch_only() -> None:
        def one(entity_id: str) -> bytes:
            return fetch(f"{peer}/federation/fetch?sub={quote(entity_id, safe='')}", ENTITY_STATEMENT, None)

        with ThreadPoolExecutor(max_workers=FETCH_WORKERS) as pool:
            list(pool.map(one, ids))

    reference = timed(fetch_only)
    engine.dispose()
    return [first, again, reference, apps]


def bench_chain(peer: str, anchor: str, anchor_jwks: dict[str, Any], runs: int) -> dict[str, float]:
    http = httpx.Client(trust_env=False, timeout=10)
    cold: list[float] = []
    cached: list[float] = []
    reference: list[float] = []
    for _ in range(runs):
        resolver = IssuerResolver(trust_anchor=anchor, anchor_jwks=anchor_jwks, http=http)
        cold.append(timed(lambda r=resolver: r.resolve(peer)))  # type: ignore[misc]
        cached.append(timed(lambda r=resolver: r.resolve(peer)))  # type: ignore[misc]
        reference.append(timed(lambda: http.get(f"{peer}/.well-known/openid-federation").raise_for_status()))
    chain = [
        http.get(f"{peer}/.well-known/openid-federation").text,
        http.get(f"{anchor}/federation/fetch", params={"sub": peer}).text,
        http.get(f"{anchor}/.well-known/openid-federation").text,
    ]
    trust_anchor = TrustAnchor(anchor, anchor_jwks)
    pure = [timed(lambda: resolve_trust_chain(chain, anchor=trust_anchor, now=utcnow())) for _ in range(runs)]
    http.close()
    return {
        "cold": statistics.median(cold),
        "cached": statistics.median(cached),
        "pure": statistics.median(pure),
        "reference": statistics.median(reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chain-runs", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        base = Path(tmp)
        anchor_port, peer_port = free_port(), free_port()
        anchor, peer = f"http://127.0.0.1:{anchor_port}", f"http://127.0.0.1:{peer_port}"
        (base / "T").mkdir()
        (base / "A").mkdir()
        anchor_env = broker_env(base / "T", anchor_port)
        peer_env = broker_env(base / "A", peer_port, BROKER_FEDERATION_AUTHORITY_HINTS=anchor)
        cli(anchor_env, "migrate")
        cli(peer_env, "migrate")
        settings = Settings(
            database_url=peer_env["BROKER_DATABASE_URL"],
            dev_mode=True,
            secret_key=b"bench-secret-key-32-bytes-long!!!",
        )
        print(f"registering {args.apps} apps at the peer …", flush=True)
        populate(settings.database_url, settings, args.apps)
        argv = [sys.executable, "-m", "broker.cli", "serve"]
        with (
            running(argv, anchor_env, f"{anchor}/jwks.json", base / "T.log", cwd=ROOT),
            running(argv, peer_env, f"{peer}/jwks.json", base / "A.log", cwd=ROOT),
        ):
            jwks_file = base / "A-jwks.json"
            jwks_file.write_text(httpx.get(f"{peer}/jwks.json").text)
            cli(anchor_env, "federation", "peer", "add", peer, "--jwks", str(jwks_file), "--no-import")
            anchor_jwks = httpx.get(f"{anchor}/jwks.json").json()

            rows = []
            for run in range(args.runs):
                print(f"synchronisation run {run + 1}/{args.runs} …", flush=True)
                rows.append(bench_sync(base, peer, anchor, anchor_jwks, run))
            first, again, reference = (statistics.median(r[i] for r in rows) for i in range(3))
            listed = int(rows[0][3])
            chain = bench_chain(peer, anchor, anchor_jwks, args.chain_runs)

    print()
    print(
        f"Synchronising {listed:,} apps from a peer (the approved ones of {args.apps:,} registered; "
        f"median of {args.runs} runs, loopback HTTP)"
    )
    print_table(
        ("measure", "median s", "apps/s", "× reference"),
        [
            (
                "first synchronisation (import)",
                f"{first:.2f}",
                f"{listed / first:,.0f}",
                f"{first / reference:.2f}",
            ),
            (
                "synchronisation again (no change)",
                f"{again:.2f}",
                f"{listed / again:,.0f}",
                f"{again / reference:.2f}",
            ),
            (
                "reference: fetch the statements only",
                f"{reference:.2f}",
                f"{listed / reference:,.0f}",
                "1.00",
            ),
        ],
    )
    print()
    print(f"Resolving a trust chain: peer → anchor (median of {args.chain_runs} runs)")
    ref = chain["reference"]
    print_table(
        ("measure", "median ms", "× reference"),
        [
            (
                "cold: SDK IssuerResolver (3 fetches, 4 signatures)",
                f"{chain['cold'] * 1e3:.2f}",
                f"{chain['cold'] / ref:.2f}",
            ),
            (
                "cached: SDK IssuerResolver again",
                f"{chain['cached'] * 1e3:.4f}",
                f"{chain['cached'] / ref:.4f}",
            ),
            (
                "broker resolve_trust_chain, documents in hand",
                f"{chain['pure'] * 1e3:.2f}",
                f"{chain['pure'] / ref:.2f}",
            ),
            ("reference: one GET of the entity configuration", f"{ref * 1e3:.2f}", "1.00"),
        ],
    )


if __name__ == "__main__":
    main()
