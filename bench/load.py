"""A realistic mix against two broker nodes on PostgreSQL, with the reference servers beside it.

Starts two ``broker serve`` nodes on one PostgreSQL schema (created and dropped here) behind
a small balancer (``tests/reliability/harness.py``: one issuer URL for both nodes, as nginx
would give), and a holder (the SDK's ``HolderVerifier``) subscribed to the push stream on
node B. Then ``--patients`` threads each loop over what patients, apps and holders do:

- catalog browsing (the catalog page and the catalog API),
- the app refreshes its token (``/token``, refresh_token grant, rotating),
- the holder verifies the new access token (signature, claims, the status list, cached for
  its ttl, and the push stream),
- every ``--revoke-every``-th round the patient withdraws the consent on node A and grants it
  again (log-in once, consent screen, code exchange with PKCE).

Prints per operation: count, throughput, p50/p99 latency, error rate; the memory (RSS) of
each node under load (the peak of one sample a second); the revocation latency from the
patient's withdrawal request (node A) to the first refusal by the holder (subscribed on node
B), p50/p99/max, against the one-second target. Then the token endpoint alone, measured in
this same run with bench/tokens.py's load generator: the broker (2 workers, PostgreSQL) and
the references (node oidc-provider, django-oauth-toolkit on PostgreSQL), with ratios.

    .venv/bin/python bench/load.py [--duration 60] [--long] [--patients 8] [--revoke-every 6]
                                   [--no-reference] [--no-dot] [--token-duration 10]

``--long`` runs the mix for ten minutes instead. No assertion about time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.tokens import (
    DOT_LABEL,
    PG_DEFAULT,
    ROW_HEADER,
    Row,
    bench_broker,
    bench_dot,
    bench_reference,
    pg_schema,
    print_table,
)
from tests.reliability.harness import Brokers
from tests.reliability.load import Load

LONG_SECONDS = 600.0
TARGET_REVOCATION = 1.0


def browse(load: Load, index: int) -> None:
    """A patient looks at the catalog: the page and the API (search, an app's facts)."""
    patient = load.patients[index]
    for op, path in (
        ("catalog", "/catalog"),
        ("catalog api", "/api/catalog/apps"),
        ("catalog api", f"/api/catalog/apps/{patient.client_id}"),
    ):
        began = time.monotonic()
        try:
            response = patient.browser.get(path)
        except httpx.TransportError as exc:
            load.figures.failed(_retryable(type(exc).__name__), op)
            continue
        if response.status_code == 200:
            load.figures.ok(op, time.monotonic() - began)
        else:
            load.figures.failed(_unclear(f"http {response.status_code}", response.text[:200]), op)


def _retryable(kind: str) -> Exception:
    from tests.reliability.harness import Retryable

    return Retryable(kind)


def _unclear(kind: str, detail: str) -> Exception:
    from tests.reliability.harness import Unclear

    return Unclear(kind, detail)


def run_mix(url: str, args: argparse.Namespace, tmp: Path) -> None:
    brokers = Brokers.up(url, tmp / "brokers", patients=args.patients, workers=args.node_workers)
    load = Load(brokers, args.patients, revoke_every=args.revoke_every, on_cycle=browse)
    rss: dict[str, list[float]] = {node.name: [] for node in brokers.nodes}
    duration = LONG_SECONDS if args.long else args.duration
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            for node in brokers.nodes:
                rss[node.name].append(node.rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        load.start()
        sampler.start()
        began = time.monotonic()
        time.sleep(duration)
        elapsed = time.monotonic() - began
    finally:
        stop.set()
        load.stop()
        brokers.down()
    f = load.figures
    print(
        f"Mix on {len(brokers.nodes)} broker nodes ({args.node_workers} worker(s) each) on one PostgreSQL, "
        f"{args.patients} patient threads, {elapsed:.0f} s, a withdrawal every {args.revoke_every} rounds"
    )
    rows: list[tuple[str, ...]] = []
    for op in ("catalog", "catalog api", "grant", "refresh", "verify", "revoke"):
        done = f.ops[op]
        errors = sum(n for k, n in (*f.retryable.items(), *f.unclear.items()) if k.startswith(f"{op}:"))
        rows.append(
            (
                op,
                str(done),
                f"{done / elapsed:.1f}",
                f"{f.percentile(op, 50):.1f}",
                f"{f.percentile(op, 99):.1f}",
                f"{100 * errors / max(1, done + errors):.2f} %",
            )
        )
    total = sum(f.ops.values())
    failures = f.retryable.total() + f.unclear.total()
    rows.append(
        (
            "all",
            str(total),
            f"{total / elapsed:.1f}",
            "",
            "",
            f"{100 * failures / max(1, total + failures):.2f} %",
        )
    )
    print_table(("operation", "count", "per s", "p50 ms", "p99 ms", "errors"), rows)
    if f.unclear:
        print(f"# errors that were not clear and retryable: {f.unclear_samples[:3]}", file=sys.stderr)
    print()
    print_table(
        ("node", "RSS peak MiB", "RSS median MiB"),
        [
            (name, f"{max(values, default=0):.0f}", f"{statistics.median(values) if values else 0:.0f}")
            for name, values in rss.items()
        ],
    )
    latencies = sorted(f.revocation_from_request)
    print()
    if latencies:
        p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
        print(
            f"revocation latency, withdrawal requested on node A -> refused by the holder on node B: "
            f"n={len(latencies)} p50 {1000 * statistics.median(latencies):.0f} ms, p99 {1000 * p99:.0f} ms, "
            f"max {1000 * latencies[-1]:.0f} ms (target p99 < {1000 * TARGET_REVOCATION:.0f} ms: "
            f"{'met' if p99 < TARGET_REVOCATION else 'NOT met'})"
        )
    print()


def run_tokens(url_factory: str, args: argparse.Namespace, tmp: Path) -> None:
    """The token endpoint alone: broker and references, the same load generator, this run."""
    token_args = argparse.Namespace(
        concurrency=args.token_concurrency,
        duration=args.token_duration,
        warmup=2.0,
        workers=2,
        profile=None,
        py_spy="py-spy",
    )
    rows: list[Row] = []
    reference = None
    if not args.no_reference:
        try:
            reference = bench_reference(token_args, tmp)
            rows.append(reference)
        except (RuntimeError, OSError) as exc:
            print(f"# oidc-provider reference not measured: {exc}", file=sys.stderr)
    if not args.no_dot:
        try:
            with pg_schema(url_factory) as url:
                rows.append(bench_dot(token_args, tmp, "postgresql", url))
        except (RuntimeError, OSError) as exc:
            print(f"# {DOT_LABEL} reference not measured: {exc}", file=sys.stderr)
    with pg_schema(url_factory) as url:
        rows.append(bench_broker("postgresql", url, token_args, tmp))
    ref_rate = reference.rate if reference is not None else None
    dot_rate = next((r.rate for r in rows if r.server.startswith(DOT_LABEL)), None)
    print(
        f"Token endpoint alone (bench/tokens.py's generator), refresh_token grant, {token_args.concurrency} "
        f"chains, {token_args.duration:g} s counted, measured in this run"
    )
    print("ref: node oidc-provider (in-memory adapter); DOT: django-oauth-toolkit on PostgreSQL")
    print_table(
        ROW_HEADER,
        [r.cells(ref_rate, dot_rate if r.server == "broker" else None) for r in rows],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load")
    parser.add_argument("--long", action="store_true", help=f"{LONG_SECONDS:.0f} s of mixed load")
    parser.add_argument("--patients", type=int, default=8, help="patient threads")
    parser.add_argument("--revoke-every", type=int, default=6)
    parser.add_argument("--node-workers", type=int, default=1, help="broker serve --workers, per node")
    parser.add_argument("--token-concurrency", type=int, default=16)
    parser.add_argument("--token-duration", type=float, default=10.0)
    parser.add_argument("--no-reference", action="store_true", help="skip node oidc-provider")
    parser.add_argument("--no-dot", action="store_true", help="skip django-oauth-toolkit")
    parser.add_argument("--no-tokens", action="store_true", help="skip the token-endpoint comparison")
    args = parser.parse_args()
    pg_url = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as name:
        tmp = Path(name)
        with pg_schema(pg_url) as url:
            run_mix(url, args, tmp)
        if not args.no_tokens:
            run_tokens(pg_url, args, tmp)


if __name__ == "__main__":
    main()
