"""The audit log on PostgreSQL: append throughput under 16 concurrent writers, and a patient's
timeline in a log of one million events.

1. Appends: 16 threads, each a unit of work per event (session, ``append_event``, commit),
   as requests do, with the background sequencer running every second meanwhile; next to
   plain Core INSERTs of the same rows, one per transaction, into a table of the same shape
   (same columns and indexes) in the same run. Target (issue 6): at least half the plain rate.
2. The sequencer: events placed (commitment, seal, tree, signed checkpoint) per second.
3. Timeline: one million events built with ``generate_series`` (not the ORM), 10,000 patients;
   p50/p95 of one patient's page of 50 (first page, a filtered page, the next page by cursor),
   through the service function. Target: p95 under 50 ms.

    .venv/bin/python bench/audit.py [--events-per-writer 400] [--log-size 1000000] [--runs 200]

Prints tables; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Table, insert, text
from sqlalchemy.engine import make_url

from broker.audit.log import append_event, filter_columns
from broker.audit.models import AuditEvent
from broker.audit.sequencer import sequence
from broker.audit.tags import EventTag
from broker.audit.timeline import patient_events
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.keys import KeyStore
from broker.migrate import upgrade

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
WRITERS = 16
SECRET = b"bench-secret-key-of-at-least-32-bytes"
ISSUER = "https://broker.example"


def details(i: int) -> dict[str, Any]:
    return {
        "holder": "labo-demo",
        "app": "app_bench",
        "categories": ["lab_results"],
        "record_count": i % 40,
        "released_at": 1_770_000_000 + i,
        "consent_id": "cns_bench",
        "token_jti": f"at_{i}",
    }


def run_writers(work: Callable[[int, int], None], per_writer: int) -> float:
    """Events per second of ``WRITERS`` threads each calling ``work(writer, i)``."""
    barrier = threading.Barrier(WRITERS + 1)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        barrier.wait()
        try:
            for i in range(per_writer):
                work(number, i)
        except BaseException as exc:  # noqa: BLE001 (reported after the run)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return WRITERS * per_writer / elapsed


def bench_appends(url: str, keystore: KeyStore, per_writer: int) -> list[tuple[str, ...]]:
    engine = make_engine(url, pool_size=WRITERS + 2, max_overflow=4)
    factory = make_session_factory(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE audit_plain (LIKE audit_events INCLUDING ALL)"))
    plain = Table("audit_plain", AuditEvent.metadata.__class__(), autoload_with=engine)
    now = utcnow()

    def plain_insert(writer: int, i: int) -> None:
        row = details(i)
        with engine.begin() as conn:
            conn.execute(
                insert(plain),
                {
                    "tag": EventTag.DATA_RELEASED.value,
                    "at": now,
                    "patient_id": f"pat_{writer}_{i % 50}",
                    "actor": "holder:labo-demo",
                    "details": row,
                    **filter_columns(row),
                },
            )

    def audit_append(writer: int, i: int) -> None:
        with transaction(factory) as session:
            append_event(
                session,
                tag=EventTag.DATA_RELEASED,
                patient_id=f"pat_{writer}_{i % 50}",
                actor="holder:labo-demo",
                details=details(i),
                at=now,
            )

    # Warm both paths (connections, statement caches) before timing.
    plain_insert(0, 0)
    audit_append(0, 0)
    plain_rate = run_writers(plain_insert, per_writer)

    stop = threading.Event()
    sequenced = [0]

    def sequencer() -> None:
        while not stop.is_set():
            sequenced[0] += sequence(factory, signer=keystore, secret_key=SECRET, issuer=ISSUER, wait=False)
            stop.wait(1.0)

    background = threading.Thread(target=sequencer)
    background.start()
    append_rate = run_writers(audit_append, per_writer)
    stop.set()
    background.join()

    start = time.perf_counter()
    rest = sequence(factory, signer=keystore, secret_key=SECRET, issuer=ISSUER)
    elapsed = time.perf_counter() - start
    total = sequenced[0] + rest
    with engine.connect() as conn:
        checkpoints = conn.execute(text("SELECT count(*) FROM audit_checkpoints")).scalar_one()
    engine.dispose()
    return [
        ("plain INSERT, one per transaction", f"{plain_rate:,.0f}", "1.00"),
        ("append_event in a unit of work (sequencer running)", f"{append_rate:,.0f}",
         f"{append_rate / plain_rate:.2f}"),
        (f"sequencer, after the run ({rest} events left)",
         f"{rest / elapsed:,.0f}" if rest else "-", f"{total} placed, {checkpoints} checkpoints"),
    ]


def build_log(url: str, size: int, patients: int) -> float:
    """``size`` events over ``patients`` patients, already sequenced, with SQL only."""
    engine = make_engine(url)
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events"))
        conn.execute(
            text(
                """
                INSERT INTO audit_events (id, tag, at, patient_id, actor, app_id, holders, categories,
                                          details, leaf_index, commitment, seal)
                SELECT i,
                       CASE i % 4 WHEN 0 THEN 'patient:consent:granted' WHEN 1 THEN 'broker:token:issued'
                                  ELSE 'holder:data:released' END,
                       now() - make_interval(secs => :size - i),
                       'pat_' || (i % :patients),
                       'holder:labo-' || (i % 7),
                       'app_' || (i % 300),
                       ',labo-' || (i % 7) || ',',
                       CASE i % 3 WHEN 0 THEN ',lab_results,' WHEN 1 THEN ',medications,'
                                  ELSE ',lab_results,vital_signs,' END,
                       json_build_object('app', 'app_' || (i % 300), 'holder', 'labo-' || (i % 7),
                                         'record_count', i % 40),
                       i - 1,
                       sha256(int8send(i)),
                       sha256(int8send(-i))
                FROM generate_series(1, :size) AS i
                """
            ),
            {"size": size, "patients": patients},
        )
        conn.execute(text("SELECT setval(pg_get_serial_sequence('audit_events', 'id'), :size)"), {"size": size})
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE audit_events"))
    engine.dispose()
    return time.perf_counter() - start


def measure(fn: Callable[[], Any], runs: int) -> list[float]:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def p95(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.95) - 1]


def bench_timeline(url: str, size: int, runs: int) -> list[tuple[str, ...]]:
    patients = 10_000
    built = build_log(url, size, patients)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    rows = []
    patient = "pat_4242"
    with factory() as session:
        cursor = patient_events(session, patient_id=patient, limit=50)["next_cursor"]
        cases: dict[str, dict[str, Any]] = {
            "first page (50)": {},
            "filtered by category": {"category": "lab_results"},
            "filtered by app and time range": {
                "app": "app_42",
                "since": (utcnow() - timedelta(days=30)).isoformat(),
            },
            "next page by cursor": {"cursor": cursor},
        }
        for name, params in cases.items():

            def page(params: dict[str, Any] = params) -> Any:
                return patient_events(session, patient_id=patient, limit=50, **params)

            found = len(page()["items"])
            samples = measure(page, runs)
            rows.append((name, str(found), f"{statistics.median(samples):.2f}", f"{p95(samples):.2f}"))
    engine.dispose()
    rows.append((f"(building {size:,} events with generate_series took {built:.1f} s)", "", "", ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events-per-writer", type=int, default=400)
    parser.add_argument("--log-size", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    pg_url = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
    schema = f"bench_{secrets.token_hex(4)}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        url_text = url.render_as_string(hide_password=False)
        upgrade(url_text)
        with tempfile.TemporaryDirectory() as tmp:
            keystore = KeyStore(Path(tmp) / "keys")
            keystore.create()
            keystore.load()
            appends = bench_appends(url_text, keystore, args.events_per_writer)
        timeline = bench_timeline(url_text, args.log_size, args.runs)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    print(f"Audit appends on PostgreSQL, {WRITERS} concurrent writers, {args.events_per_writer} events each")
    print_table(("path", "events/s", "ratio to plain"), appends)
    print()
    print(f"A patient's timeline in a log of {args.log_size:,} events (PostgreSQL, {args.runs} runs)")
    print_table(("query", "events", "p50 ms", "p95 ms"), timeline)


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))



if __name__ == "__main__":
    main()
