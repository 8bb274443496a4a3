"""The ``broker`` command: serve, migrate, keys, holders, operator, charter, reviews, audit,
federation, demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from broker.errors import BrokerError
from broker.keys import KeyStore, KeyStoreError
from broker.settings import Settings, SettingsError


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _with_session(settings: Settings, work: Callable[[Session], Any]) -> Any:
    from broker.db import make_engine, make_session_factory, transaction

    engine = make_engine(settings.database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            return work(session)
    finally:
        engine.dispose()


def _charter_in_force(settings: Settings, session: Session) -> Any:
    from broker.catalog.enforcement import CharterInForce

    return CharterInForce(settings.charter_version).current(session)


def _read_json(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text)


# -- commands -------------------------------------------------------------------------------


def _metrics_directory(workers: int) -> None:
    """Several workers share their metrics through files (prometheus_client multiprocess
    mode): an empty directory, named before any worker imports prometheus_client."""
    import os
    import tempfile

    from broker.ops.metrics import MULTIPROCESS_VARIABLE

    given = os.environ.get(MULTIPROCESS_VARIABLE)
    if given:
        # The operator's directory: last run's files would add stale values to this one's.
        for stale in Path(given).glob("*.db"):
            stale.unlink()
    elif workers > 1:
        os.environ[MULTIPROCESS_VARIABLE] = tempfile.mkdtemp(prefix="broker-metrics-")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from broker.ops.logs import log_config

    host = args.host or settings.host
    port = args.port or settings.port
    _metrics_directory(args.workers)
    print(f"Broker starting — open http://{host}:{port}  (Ctrl-C to stop)", flush=True)
    uvicorn.run(
        "broker.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        # httptools on uvloop, with TCP_NODELAY and a bounded request head (SECURITY J13).
        http="broker.serving:BrokerHttpProtocol",
        loop="uvloop",
        log_level="info",
        # One JSON object per line on standard error, in every worker (broker/ops/logs.py).
        log_config=log_config("INFO"),
        # uvicorn's access log writes query strings (authorization codes, ``state``, link
        # tokens come in them) and costs a log record per request: off.
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from broker.migrate import upgrade

    upgrade(settings.database_url)
    print(f"database migrated: {_safe_url(settings.database_url)}")
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    store = KeyStore(settings.key_dir)
    if args.action == "create":
        info = store.create()
        print("signing key exists already" if info is None else f"created signing key {info.kid}")
    elif args.action == "rotate":
        # The previous key stays published long enough for every token it signed to expire,
        # plus the JWKS cache time of the holders, with a wide margin.
        info = store.rotate(timedelta(seconds=max(3600, 4 * settings.token_lifetime)))
        print(f"rotated: {info.kid} now signs; the previous key stays in the JWKS")
    else:
        store.load()
        _print_json([i.to_json() for i in store.infos()])
    return 0


def cmd_holders(settings: Settings, args: argparse.Namespace) -> int:
    from broker.catalog import service
    from broker.db import utcnow

    def work(session: Session) -> Any:
        if args.action == "add":
            holder = service.add_holder(
                session,
                body=_read_json(args.file),
                charter=_charter_in_force(settings, session),
                dev_mode=settings.dev_mode,
                now=utcnow(),
            )
            return service.holder_json(holder, private=True)
        if args.action == "approve":
            holder = service.approve_holder(
                session, identifier=args.identifier, operator=args.operator, now=utcnow()
            )
            return service.holder_json(holder, private=True)
        return service.list_holders(session, status=args.status)

    _print_json(_with_session(settings, work))
    return 0


def cmd_operator(settings: Settings, args: argparse.Namespace) -> int:
    from broker.catalog.operators import create_operator_token
    from broker.db import utcnow

    token = _with_session(
        settings,
        lambda s: create_operator_token(s, name=args.name, secret_key=settings.secret_key, now=utcnow()),
    )
    print(token)
    print("Keep this token secret: it is shown once and stored only as a hash.", file=sys.stderr)
    return 0


def cmd_charter(settings: Settings, args: argparse.Namespace) -> int:
    from broker.catalog.enforcement import apply_charter, charter_source
    from broker.charter import available_versions
    from broker.db import utcnow

    if args.action == "versions":
        _print_json(available_versions())
        return 0
    if args.action == "show":
        _print_json(_with_session(settings, lambda s: _charter_in_force(settings, s).version))
        return 0
    charter, document = charter_source(args.version)
    report = _with_session(
        settings,
        lambda s: apply_charter(
            s,
            charter=charter,
            document=document,
            applied_by=args.operator,
            dev_mode=settings.dev_mode,
            now=utcnow(),
        ),
    )
    _print_json(report.to_json())
    return 0


def cmd_reviews(settings: Settings, args: argparse.Namespace) -> int:
    from broker.catalog.enforcement import decide_review, pending_reviews
    from broker.db import utcnow

    if args.action == "list":
        _print_json(_with_session(settings, pending_reviews))
        return 0
    app = _with_session(
        settings,
        lambda s: decide_review(
            s,
            client_id=args.client_id,
            decision=args.decision,
            reason=args.reason,
            operator=args.operator,
            charter=_charter_in_force(settings, s),
            dev_mode=settings.dev_mode,
            now=utcnow(),
        ),
    )
    _print_json({"client_id": app.client_id, "status": app.status})
    return 0


def cmd_links(settings: Settings, args: argparse.Namespace) -> int:
    """Operator import of patient ↔ holder links (bulk and demo seeding), from CSV.

    Columns: ``email`` (the patient's account), ``holder`` (identifier), and optionally
    ``handle`` when the holder already has one for this patient.
    """
    import csv

    from broker.consent.links import import_links

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    report = _with_session(settings, lambda s: import_links(s, rows))
    _print_json(report)
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    """The audit log: place pending events and sign (sequence), show the latest checkpoint,
    or check the whole log against its signed checkpoints (verify; exit 1 on damage)."""
    from broker.audit.checkpoints import checkpoint_json, latest_checkpoint
    from broker.audit.sequencer import sequence
    from broker.audit.verify import verify_log
    from broker.db import make_engine, make_session_factory

    keystore = KeyStore(settings.key_dir).load()
    if args.action == "sequence":
        engine = make_engine(settings.database_url)
        try:
            placed = sequence(
                make_session_factory(engine),
                signer=keystore,
                secret_key=settings.secret_key,
                issuer=settings.issuer,
            )
        finally:
            engine.dispose()
        print(f"{placed} events placed in the audit log")
        return 0
    if args.action == "checkpoint":

        def latest(session: Session) -> Any:
            found = latest_checkpoint(session)
            return checkpoint_json(found) if found is not None else None

        found = _with_session(settings, latest)
        if found is None:
            print("broker: the audit log has no checkpoint yet", file=sys.stderr)
            return 1
        _print_json(found)
        return 0
    # Every key the store still holds, retiring ones included: old checkpoints were signed
    # with them.
    kids = [i.kid for i in keystore.infos() if i.status != "retired"]
    report = _with_session(
        settings,
        lambda s: verify_log(
            s,
            trusted_keys={"keys": [keystore.public_key(kid) for kid in kids]},
            secret_key=settings.secret_key,
            issuer=settings.issuer,
        ),
    )
    if report.ok:
        print(f"audit log verified: {report.entries} entries, {report.checkpoints} signed checkpoints")
        return 0
    print(f"audit log DAMAGED at {report.problem}", file=sys.stderr)
    _print_json(report.to_json())
    return 1


def cmd_federation(settings: Settings, args: argparse.Namespace) -> int:
    """Trusted peers, trust chains and synchronisation (OpenID Federation 1.0, issue 8)."""
    from broker.catalog.enforcement import CharterInForce
    from broker.db import make_engine, make_session_factory, utcnow
    from broker.federation import peers, sync
    from broker.outbound import OutboundPolicy

    fetch = sync.guarded_fetch(OutboundPolicy.from_settings(settings))
    if args.action == "sync":
        engine = make_engine(settings.database_url)
        try:
            factory = make_session_factory(engine)
            charters = CharterInForce(settings.charter_version)
            ids = [args.peer] if args.peer else list(sync.peer_ids(factory))
            reports = [
                sync.synchronise(
                    factory,
                    peer_id=peer_id,
                    charter_of=charters.current,
                    fetch=fetch,
                    dev_mode=settings.dev_mode,
                    now=utcnow(),
                )
                for peer_id in ids
            ]
        except LookupError as exc:
            print(f"broker: {exc.args[0]}", file=sys.stderr)
            return 1
        finally:
            engine.dispose()
        _print_json([r.to_json() for r in reports])
        return 0 if all(r.ok for r in reports) else 1
    if args.action == "chain":
        report = _with_session(
            settings,
            lambda s: peers.trust_chain(
                s, entity_id=args.entity_id, issuer=settings.issuer, fetch=fetch, now=utcnow()
            ),
        )
        _print_json(report.to_json())
        return 0 if report.valid else 1
    if args.peer_action == "add":

        def add(session: Session) -> Any:
            peer = peers.add_peer(
                session,
                entity_id=args.entity_id,
                jwks=_read_json(args.jwks) if args.jwks else None,
                trust_anchor=args.trust_anchor,
                trust_anchor_jwks=_read_json(args.anchor_jwks) if args.anchor_jwks else None,
                import_apps=not args.no_import,
                operator=args.operator,
                dev_mode=settings.dev_mode,
                fetch=fetch,
                now=utcnow(),
            )
            return peers.peer_json(session, peer)

        _print_json(_with_session(settings, add))
    elif args.peer_action == "remove":
        suspended = _with_session(
            settings, lambda s: peers.remove_peer(s, entity_id=args.entity_id, now=utcnow())
        )
        _print_json({"removed": args.entity_id, "suspended_apps": suspended})
    else:
        _print_json(_with_session(settings, peers.list_peers))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from broker.demo import seed_demo

    _with_session(settings, lambda s: seed_demo(s, settings))
    print("demo holder and demo app are in place")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the broker's HTTP server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="bring the database schema up to date").set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="signing keys: create, rotate, list")
    keys.add_argument("action", choices=["create", "rotate", "list"])
    keys.set_defaults(func=cmd_keys)

    holders = sub.add_parser("holders", help="data holders: add, approve, list")
    holders_sub = holders.add_subparsers(dest="action", required=True)
    add = holders_sub.add_parser("add", help="register a holder from a JSON file (- for stdin)")
    add.add_argument("file")
    approve = holders_sub.add_parser("approve", help="approve a registered holder")
    approve.add_argument("identifier")
    approve.add_argument("--operator", default="cli")
    listing = holders_sub.add_parser("list", help="list holders")
    listing.add_argument("--status", choices=["pending", "approved", "suspended"])
    holders.set_defaults(func=cmd_holders)

    operator = sub.add_parser("operator-token", help="create an operator token for the admin API")
    operator.add_argument("name")
    operator.set_defaults(func=cmd_operator)

    charter = sub.add_parser("charter", help="the charter in force: show, versions, apply")
    charter_sub = charter.add_subparsers(dest="action", required=True)
    charter_sub.add_parser("show", help="the version in force")
    charter_sub.add_parser("versions", help="packaged versions")
    apply = charter_sub.add_parser("apply", help="put a version in force and re-check every app")
    apply.add_argument("version", help="a packaged version, or the path of a charter JSON file")
    apply.add_argument("--operator", default="cli")
    charter.set_defaults(func=cmd_charter)

    reviews = sub.add_parser("reviews", help="charter checks that need a person")
    reviews_sub = reviews.add_subparsers(dest="action", required=True)
    reviews_sub.add_parser("list")
    decide = reviews_sub.add_parser("decide")
    decide.add_argument("client_id")
    decide.add_argument("decision", choices=["approved", "refused"])
    decide.add_argument("--reason", required=True)
    decide.add_argument("--operator", default="cli")
    reviews.set_defaults(func=cmd_reviews)

    links = sub.add_parser("links", help="patient ↔ holder links")
    links_sub = links.add_subparsers(dest="action", required=True)
    links_import = links_sub.add_parser("import", help="import links from CSV: email,holder[,handle]")
    links_import.add_argument("file")
    links.set_defaults(func=cmd_links)

    audit = sub.add_parser("audit", help="the audit log: verify, checkpoint, sequence")
    audit.add_argument("action", choices=["verify", "checkpoint", "sequence"])
    audit.set_defaults(func=cmd_audit)

    federation = sub.add_parser("federation", help="trusted peer brokers: peer, chain, sync")
    federation_sub = federation.add_subparsers(dest="action", required=True)
    peer = federation_sub.add_parser("peer", help="trusted peers: add, remove, list")
    peer_sub = peer.add_subparsers(dest="peer_action", required=True)
    peer_add = peer_sub.add_parser("add", help="trust a peer, its keys pinned or vouched for by an anchor")
    peer_add.add_argument("entity_id", help="the peer's entity id (its issuer URL)")
    peer_add.add_argument("--jwks", help="the peer's JWKS to pin (a JSON file, - for stdin)")
    peer_add.add_argument("--trust-anchor", help="the entity id of a trust anchor above the peer")
    peer_add.add_argument("--anchor-jwks", help="the trust anchor's JWKS to pin (a JSON file)")
    peer_add.add_argument(
        "--no-import", action="store_true", help="vouch for the peer as its anchor, import none of its apps"
    )
    peer_add.add_argument("--operator", default="cli")
    peer_remove = peer_sub.add_parser("remove", help="stop trusting a peer; its apps are suspended here")
    peer_remove.add_argument("entity_id")
    peer_sub.add_parser("list", help="trusted peers and their last synchronisation")
    chain = federation_sub.add_parser("chain", help="the trust chain of an app, a holder or a broker")
    chain.add_argument("entity_id")
    sync = federation_sub.add_parser("sync", help="synchronise now with one peer, or with all")
    sync.add_argument("peer", nargs="?")
    federation.set_defaults(func=cmd_federation)

    sub.add_parser("demo", help="seed the demo holder and app").set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        result: int = args.func(settings, args)
        return result
    except SettingsError as exc:
        print(f"broker: invalid setting: {exc}", file=sys.stderr)
        return 2
    except (BrokerError, KeyStoreError, ValueError, OSError) as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
