"""Catalog search with 10,000 registered apps, on SQLite and PostgreSQL.

Prints p50/p95 (ms) for each kind of search, through the service and through the HTTP layer
(Litestar's ASGI test client, in process), and the ratio of each median to a reference
measured in the same run: reading one app by its primary key. Target (issue 2): p95 under
20 ms for a filtered search on a 2-core machine.

    .venv/bin/python bench/catalog.py [--apps 10000] [--runs 200]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from broker.catalog import repository, service
from broker.charter import load_charter
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.migrate import upgrade
from broker.settings import Settings
from tests.factories import app_registration, holder_declaration

V2 = Path(__file__).resolve().parent.parent / "tests" / "charter" / "data" / "charter-2.0.json"
RECHECKS: list[tuple[str, ...]] = []
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
WORDS = [
    "Glyco",
    "Cardio",
    "Souffle",
    "Sommeil",
    "Budget",
    "Livret",
    "Vaccin",
    "Allergo",
    "Tension",
    "Poids",
    "Mutuelle",
    "Pharma",
    "Coach",
    "Dossier",
    "Urgence",
    "Analyse",
]
PURPOSE_CATEGORIES = {
    "chronic_disease_followup": ["lab_results", "vital_signs", "device_measurements", "medications"],
    "emergency_card": ["blood_group", "allergies", "conditions", "emergency_contacts"],
    "prevention_coaching": ["physical_activity", "sleep", "nutrition", "device_measurements"],
    "health_budget": ["reimbursements", "coverage", "encounters"],
    "second_opinion": ["clinical_documents", "lab_results", "imaging"],
    "care_coordination": ["calendar", "contact_details", "medications"],
}
MODELS = ["subscription", "one_off_payment", "freemium", "public_service", "insurer_funded"]


def varied_app(rng: random.Random, index: int) -> dict[str, Any]:
    body = app_registration(name=f"{rng.choice(WORDS)} {rng.choice(WORDS)} {index:05d}")
    manifest = body["charter_manifest"]
    purpose = rng.choice(list(PURPOSE_CATEGORIES))
    categories = rng.sample(PURPOSE_CATEGORIES[purpose], k=rng.randint(1, 3))
    manifest["purposes"] = [{"id": purpose, "description": f"{rng.choice(WORDS)} pour {purpose}"}]
    manifest["data_requests"] = [
        {
            "category": c,
            "purpose": purpose,
            "optional": i > 0,
            "justification": f"Needed to show {c} on the main screen.",
        }
        for i, c in enumerate(categories)
    ]
    manifest["business_model"]["model"] = rng.choice(MODELS)
    if rng.random() < 0.1:
        manifest["data_leaves_eu"] = True
    return body


def populate(url: str, settings: Settings, count: int) -> float:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    charter = load_charter()
    rng = random.Random(42)
    started = time.perf_counter()
    with transaction(factory) as session:
        service.add_holder(
            session, body=holder_declaration("labo-bench"), charter=charter, dev_mode=True, now=utcnow()
        )
        service.approve_holder(session, identifier="labo-bench", operator="bench", now=utcnow())
    batch = 500
    for start in range(0, count, batch):
        with transaction(factory) as session:
            for index in range(start, min(count, start + batch)):
                service.register_app(
                    session,
                    body=varied_app(rng, index),
                    charter=charter,
                    secret_key=settings.secret_key,
                    dev_mode=True,
                    now=utcnow(),
                )
    elapsed = time.perf_counter() - started
    if engine.dialect.name == "postgresql":
        # The steady state autovacuum keeps: statistics, and a visibility map that lets the
        # filters run on indexes alone.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return elapsed


def measure(fn: Callable[[], Any], runs: int) -> list[float]:
    for _ in range(min(20, runs)):
        fn()  # warm caches and connection pools
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18]


SEARCHES: list[tuple[str, dict[str, Any]]] = [
    ("first page, no filter", {}),
    ("text: one word", {"q": "cardio"}),
    ("text: two words", {"q": "glyco tension"}),
    ("category", {"categories": ["blood_group"]}),
    ("purpose + business model", {"purpose": "health_budget", "business_models": ["freemium"]}),
    ("holder that can feed it", {"holder": "labo-bench"}),
    ("text + category + EU only", {"q": "sommeil", "categories": ["sleep"], "eu_only": True}),
    ("rare: text matches nothing", {"q": "zzzzzz"}),
]


def bench_backend(name: str, url: str, count: int, runs: int) -> list[tuple[str, ...]]:
    settings = Settings(
        database_url=url,
        key_dir=Path(tempfile.mkdtemp()) / "keys",
        dev_mode=True,
        secret_key=b"bench-secret-key-of-at-least-32-bytes",
    )
    upgrade(url)
    load_seconds = populate(url, settings, count)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    charter = load_charter()
    rows: list[tuple[str, ...]] = []
    with factory() as session:
        some_id = repository.search_apps(session, repository.CatalogQuery(("approved",), limit=1))[
            0
        ].client_id

    def reference() -> None:
        with factory() as session:
            session.expire_all()
            assert repository.get_app(session, some_id) is not None

    ref = measure(reference, runs)
    ref_median = statistics.median(ref)
    rows.append((name, "reference: one app by id", "service", f"{ref_median:.2f}", f"{p95(ref):.2f}", "1.0"))

    for label, params in SEARCHES:

        def search(params: dict[str, Any] = params) -> dict[str, Any]:
            with factory() as session:
                return service.search_catalog(session, charter=charter, policy_mode="gate", **params)

        samples = measure(search, runs)
        median = statistics.median(samples)
        rows.append(
            (name, label, "service", f"{median:.2f}", f"{p95(samples):.2f}", f"{median / ref_median:.1f}")
        )

    # Through the HTTP layer: routing, parameter parsing, worker thread, JSON encoding.
    from litestar.testing import TestClient

    from broker.app import create_app

    with TestClient(app=create_app(settings)) as client:
        http_cases = [
            ("HTTP: first page", {}),
            ("HTTP: text + category", {"q": "glyco", "category": "lab_results"}),
            ("HTTP: holder filter", {"holder": "labo-bench"}),
        ]
        for label, params in http_cases:
            samples = measure(lambda p=params: client.get("/api/catalog/apps", params=p), runs)
            median = statistics.median(samples)
            rows.append(
                (name, label, "http", f"{median:.2f}", f"{p95(samples):.2f}", f"{median / ref_median:.1f}")
            )
    # Issue 3: a new charter version re-checks every app, in one transaction.
    from broker.catalog.enforcement import apply_charter, charter_source

    charter2, document = charter_source(str(V2))
    started = time.perf_counter()
    with transaction(factory) as session:
        report = apply_charter(
            session, charter=charter2, document=document, applied_by="bench", dev_mode=True, now=utcnow()
        )
    recheck = time.perf_counter() - started
    RECHECKS.append(
        (name, str(report.checked), f"{recheck:.2f}", str(len(report.suspended)), f"{load_seconds:.1f}")
    )
    engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results += bench_backend("sqlite", f"sqlite:///{tmp}/bench.db", args.apps, args.runs)
    pg_url = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
    schema = f"bench_{secrets.token_hex(4)}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        from sqlalchemy.engine import make_url

        url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        results += bench_backend(
            "postgresql", url.render_as_string(hide_password=False), args.apps, args.runs
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    print(f"Catalog search, {args.apps} apps, {args.runs} runs each")
    print_table(("backend", "search", "layer", "p50 ms", "p95 ms", "p50 / ref"), results)
    print()
    print("Charter change: re-check every registered app against charter 2.0 (one transaction)")
    print_table(("backend", "apps", "re-check s", "suspended", "registering them took s"), RECHECKS)


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
