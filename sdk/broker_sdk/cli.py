"""``broker-sdk``: register an app, read its verdict, inspect a token, check a holder,
verify a patient's audit export offline.

Credentials (the registration access token, which rotates on every update) are kept in a
small JSON state file, ``.broker-sdk.json`` in the current directory by default
(``--state`` or ``BROKER_SDK_STATE`` elsewhere), written atomically with mode 0600. Keep it
out of version control.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from broker_sdk import __version__
from broker_sdk._fetch import MAX_JWKS_BYTES, get_bounded
from broker_sdk._jose import load_private_key
from broker_sdk.app import AppClient, Registration, Verdict
from broker_sdk.audit import ExportReport, verify_export
from broker_sdk.errors import BrokerSDKError
from broker_sdk.inspect import Check, check_holder, inspect_token

__all__ = ["main"]

DEFAULT_STATE = ".broker-sdk.json"
MARKS = {True: "✓", False: "✗", None: "·"}


class StateFile:
    """``{"default_issuer": ..., "apps": {issuer: {registration..., "manifest": path}}}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"apps": {}}
        if path.exists():
            self.data = json.loads(path.read_text(encoding="utf-8"))
            self.data.setdefault("apps", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".broker-sdk.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.data, handle, indent=2, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def issuer(self, given: str | None) -> str:
        issuer = given or self.data.get("default_issuer")
        if not issuer:
            raise SystemExit("name the broker with --issuer URL (no registration in the state file yet)")
        return str(issuer).rstrip("/")

    def app(self, issuer: str) -> dict[str, Any]:
        entry = self.data["apps"].get(issuer)
        if entry is None:
            raise SystemExit(
                f"no app registered at {issuer} in {self.path}: run `broker-sdk app register` first"
            )
        return dict(entry)


def _print_verdict(verdict: Verdict) -> None:
    print(
        f"status: {verdict.status}"
        + (f" (charter {verdict.charter_version})" if verdict.charter_version else "")
    )
    for finding in verdict.findings:
        message = finding.get("message") or {}
        text = (message.get("en") or message.get("fr") or "") if isinstance(message, dict) else str(message)
        where = finding.get("field") or ""
        print(f"  - [{finding.get('severity', '?')}] art. {finding.get('article', '?')} {where}: {text}")


def _print_checks(checks: Sequence[Check]) -> int:
    width = max((len(c.name) for c in checks), default=0)
    for check in checks:
        print(f"{MARKS[check.ok]} {check.name.ljust(width)}  {check.detail}")
    failed = sum(1 for c in checks if c.ok is False)
    print(f"\n{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def cmd_app_register(args: argparse.Namespace, state: StateFile) -> int:
    issuer = state.issuer(args.issuer)
    with AppClient(issuer) as client:
        registration = client.register(args.manifest)
    state.data["apps"][issuer] = {**registration.to_json(), "manifest": str(Path(args.manifest).resolve())}
    state.data["default_issuer"] = issuer
    state.save()
    print(f"client_id: {registration.client_id}")
    _print_verdict(registration.verdict)
    print(f"(registration access token kept in {state.path}, mode 0600)")
    return 0


def cmd_app_update(args: argparse.Namespace, state: StateFile) -> int:
    issuer = state.issuer(args.issuer)
    entry = state.app(issuer)
    manifest = args.manifest or entry.get("manifest")
    if not manifest:
        raise SystemExit("name the manifest file")
    with AppClient(issuer, client_id=entry["client_id"]) as client:
        updated = client.update(Registration.from_json(entry), manifest)
    state.data["apps"][issuer] = {**updated.to_json(), "manifest": str(Path(manifest).resolve())}
    state.save()  # the registration access token rotated: the old one is spent
    print(f"client_id: {updated.client_id} (updated)")
    _print_verdict(updated.verdict)
    return 0


def cmd_app_verdict(args: argparse.Namespace, state: StateFile) -> int:
    issuer = state.issuer(args.issuer)
    entry = state.app(issuer)
    with AppClient(issuer, client_id=entry["client_id"]) as client:
        verdict = client.verdict(Registration.from_json(entry))
    print(f"client_id: {entry['client_id']}")
    _print_verdict(verdict)
    return 0 if verdict.approved else 2


def cmd_token_inspect(args: argparse.Namespace, state: StateFile) -> int:
    token = sys.stdin.read() if args.token == "-" else args.token  # noqa: S105 ("-" means stdin)
    checks = inspect_token(
        token,
        issuer=args.issuer.rstrip("/"),
        audience=args.audience,
        holder_id=args.holder_id,
        categories=args.category or (),
    )
    return _print_checks(checks)


def cmd_holder_check(args: argparse.Namespace, state: StateFile) -> int:
    key = load_private_key(args.key) if args.key else None
    checks = check_holder(
        issuer=args.issuer.rstrip("/"), holder_id=args.holder_id, key=key, audience=args.audience
    )
    return _print_checks(checks)


def load_jwks(source: str) -> dict[str, Any]:
    """A JWKS from a file, or fetched from an http(s) URL (the only network step, optional)."""
    if source.startswith(("https://", "http://")):
        with httpx.Client(timeout=10, trust_env=False) as http:
            response = get_bounded(
                http, source, limit=MAX_JWKS_BYTES, accept="application/jwk-set+json, application/json"
            )
            response.raise_for_status()
            jwks = response.json()
    else:
        jwks = json.loads(Path(source).read_text(encoding="utf-8"))
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError(f"{source}: not a JWK Set")
    return jwks


def export_checks(report: ExportReport) -> list[Check]:
    """One line for the document, one for the checkpoint, one per entry."""
    general = [p for p in report.problems if p.index is None and p.kind == "format"]
    checks = [
        Check(
            "export",
            not general,
            "; ".join(p.message for p in general)
            or f"patient {report.patient_id}, {len(report.entries)} entries, issuer {report.issuer}",
        )
    ]
    signed = [p for p in report.problems if p.index is None and p.kind == "signature"]
    cp = report.checkpoint
    if cp is None:
        checks.append(Check("checkpoint", None if not report.entries else False, "none in the export"))
    else:
        said = f"kid {cp.kid}, iss {cp.issuer}, tree size {cp.tree_size}, root {cp.root_hash}"
        detail = "; ".join(p.message for p in signed) if signed else f"ES256 signature valid: {said}"
        checks.append(Check("checkpoint", not signed, detail))
    for entry in report.entries:
        found = [p for p in report.problems if p.index == entry.index]
        name = f"entry {entry.index}"
        what = f"event {entry.event_id}, leaf {entry.leaf_index}, {entry.tag} at {entry.at}"
        if found:
            detail = f"{what}: " + "; ".join(f"{p.kind}: {p.message}" for p in found)
        else:
            detail = f"{what}: commitment opens, inclusion proven"
        checks.append(Check(name, not found, detail))
    if report.pending:
        checks.append(Check("pending", None, f"{report.pending} events not yet covered by a checkpoint"))
    return checks


def cmd_audit_verify_export(args: argparse.Namespace, state: StateFile) -> int:
    jwks = load_jwks(args.jwks)
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    report = verify_export(raw, jwks=jwks, issuer=args.issuer)
    return _print_checks(export_checks(report))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="broker-sdk", description="Tools for apps and holders of the consent broker."
    )
    top.add_argument("--version", action="version", version=f"broker-sdk {__version__}")
    top.add_argument(
        "--state",
        default=os.environ.get("BROKER_SDK_STATE", DEFAULT_STATE),
        help=f"state file with the app's credentials (default {DEFAULT_STATE}; mode 0600)",
    )
    groups = top.add_subparsers(dest="group", required=True)

    app = groups.add_parser("app", help="register an app and follow its charter verdict").add_subparsers(
        dest="command", required=True
    )
    register = app.add_parser("register", help="register from a manifest file (TOML or JSON)")
    register.add_argument("manifest")
    register.add_argument("--issuer", help="the broker's URL")
    register.set_defaults(func=cmd_app_register)
    update = app.add_parser("update", help="send the manifest again (the charter check runs again)")
    update.add_argument("manifest", nargs="?")
    update.add_argument("--issuer")
    update.set_defaults(func=cmd_app_update)
    verdict = app.add_parser("verdict", help="the charter verdict as the broker holds it now")
    verdict.add_argument("--issuer")
    verdict.set_defaults(func=cmd_app_verdict)

    token = groups.add_parser("token", help="tokens").add_subparsers(dest="command", required=True)
    inspect = token.add_parser("inspect", help="decode and verify an access token, explaining each check")
    inspect.add_argument("token", help="the token, or - to read it from standard input")
    inspect.add_argument("--issuer", required=True, help="the broker that should have issued it")
    inspect.add_argument("--audience", help="the holder's base URL the token should be for")
    inspect.add_argument("--holder-id", help="the holder's identifier (filters authorization_details)")
    inspect.add_argument("--category", action="append", help="a category the request needs (repeatable)")
    inspect.set_defaults(func=cmd_token_inspect)

    holder = groups.add_parser("holder", help="holders").add_subparsers(dest="command", required=True)
    check = holder.add_parser("check", help="is this holder's configuration right")
    check.add_argument("--issuer", required=True, help="the broker's URL")
    check.add_argument("--holder-id", required=True, help="the holder's identifier at the broker")
    check.add_argument("--key", help="the holder's private signing key (JWK JSON or PEM)")
    check.add_argument("--audience", help="the API base URL the holder verifies tokens for")
    check.set_defaults(func=cmd_holder_check)

    audit = groups.add_parser("audit", help="the audit log").add_subparsers(dest="command", required=True)
    verify = audit.add_parser(
        "verify-export", help="check a patient's audit export offline (signature, commitments, proofs)"
    )
    verify.add_argument("file", help="the export (JSON from /api/me/audit/export), or - for standard input")
    verify.add_argument("--jwks", required=True, help="the broker's JWKS: a file, or its URL (fetched once)")
    verify.add_argument("--issuer", help="the broker that must have signed the checkpoint")
    verify.set_defaults(func=cmd_audit_verify_export)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    state = StateFile(Path(args.state))
    try:
        return int(args.func(args, state))
    except BrokerSDKError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
