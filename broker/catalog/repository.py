"""SQL of the catalog: every query on holders and apps lives here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, exists, intersect, or_, select
from sqlalchemy.orm import Session

from broker.catalog.models import (
    App,
    AppCategory,
    AppPurpose,
    AppSearchTerm,
    CharterVersion,
    Holder,
    HolderCategory,
    OperatorToken,
)


@dataclass(frozen=True)
class CatalogQuery:
    statuses: tuple[str, ...]
    words: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    purpose: str | None = None
    business_models: tuple[str, ...] = ()
    holder: str | None = None
    eu_only: bool = False
    after: tuple[str, str] | None = None  # (name_key, client_id) of the last row seen
    limit: int = 20


def search_apps(session: Session, query: CatalogQuery) -> Sequence[App]:
    """One page of apps in the catalog's stated order (folded name, then client_id).

    Keyset pagination: a page starts strictly after the last (name, id) of the previous one,
    so pages stay stable while apps are registered or removed in between.
    """
    # Two steps: the page's ids from a narrow query, which the indexes alone can answer (the
    # status-name index carries the order), then the page's rows. Selecting the wide rows
    # directly leads PostgreSQL to walk every app in name order and test each one.
    stmt = select(App.client_id).where(App.status.in_(query.statuses))
    # Each filter is an IN over an indexed table, so a selective filter drives the query.
    if query.words:
        # Prefix match on whole words ("glyc" finds "glycemie"), each a range on the primary
        # key; the words' app sets are intersected on their own.
        matches = [
            select(AppSearchTerm.client_id).where(
                AppSearchTerm.term >= word, AppSearchTerm.term < word + "\uffff"
            )
            for word in query.words
        ]
        matched = matches[0] if len(matches) == 1 else intersect(*matches)
        stmt = stmt.where(App.client_id.in_(matched))
    for category in query.categories:
        stmt = stmt.where(
            App.client_id.in_(select(AppCategory.client_id).where(AppCategory.category == category))
        )
    if query.purpose:
        stmt = stmt.where(
            App.client_id.in_(select(AppPurpose.client_id).where(AppPurpose.purpose == query.purpose))
        )
    if query.business_models:
        stmt = stmt.where(App.business_model.in_(query.business_models))
    if query.holder:
        # An app can be fed by a holder that serves at least one category it requests.
        stmt = stmt.where(
            App.client_id.in_(
                select(AppCategory.client_id)
                .join(HolderCategory, HolderCategory.category == AppCategory.category)
                .where(HolderCategory.holder_id == query.holder)
            )
        )
    if query.eu_only:
        stmt = stmt.where(App.data_leaves_eu.is_(False))
    if query.after:
        name_key, client_id = query.after
        stmt = stmt.where(
            or_(App.name_key > name_key, and_(App.name_key == name_key, App.client_id > client_id))
        )
    # The LIMITed id query is a subquery the planner keeps whole: one round trip for both steps.
    page = stmt.order_by(App.name_key, App.client_id).limit(query.limit).subquery()
    return session.scalars(
        select(App).join(page, page.c.client_id == App.client_id).order_by(App.name_key, App.client_id)
    ).all()


def get_app(session: Session, client_id: str) -> App | None:
    return session.get(App, client_id)


def app_by_name_key(session: Session, name_key: str) -> App | None:
    return session.scalars(select(App).where(App.name_key == name_key)).first()


def live_apps(session: Session) -> Sequence[App]:
    return session.scalars(select(App).where(App.status != "deleted").order_by(App.client_id)).all()


def apps_by_status(session: Session, status: str) -> Sequence[App]:
    return session.scalars(
        select(App).where(App.status == status).order_by(App.updated_at, App.client_id)
    ).all()


def get_holder(session: Session, identifier: str) -> Holder | None:
    return session.get(Holder, identifier)


def list_holders(session: Session, status: str | None = None) -> Sequence[Holder]:
    stmt = select(Holder).order_by(Holder.identifier)
    if status:
        stmt = stmt.where(Holder.status == status)
    return session.scalars(stmt).all()


def holders_serving(session: Session, categories: Sequence[str]) -> Sequence[Holder]:
    """Approved holders that serve at least one of ``categories``."""
    if not categories:
        return []
    stmt = (
        select(Holder)
        .where(
            Holder.status == "approved",
            exists().where(
                HolderCategory.holder_id == Holder.identifier,
                HolderCategory.category.in_(categories),
            ),
        )
        .order_by(Holder.legal_name, Holder.identifier)
    )
    return session.scalars(stmt).all()


def operator_token_by_hash(session: Session, token_hash: str) -> OperatorToken | None:
    return session.scalars(
        select(OperatorToken).where(
            OperatorToken.token_hash == token_hash, OperatorToken.revoked_at.is_(None)
        )
    ).first()


def latest_charter_version(session: Session) -> CharterVersion | None:
    return session.scalars(select(CharterVersion).order_by(CharterVersion.applied_at.desc()).limit(1)).first()
