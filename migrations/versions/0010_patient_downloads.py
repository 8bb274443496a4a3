"""patient downloads: holders' download endpoint, one-time download consents

Revision ID: 0010
Revises: 0006
Create Date: 2026-11-29 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.db

revision: str = "0010"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("holders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("download_endpoint", sa.String(length=2000), nullable=True))
    op.create_table(
        "download_consents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("holder_id", sa.String(length=64), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("token_jti", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("granted_at", broker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", broker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", broker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status_entry_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.identifier"], name=op.f("fk_download_consents_holder_id_holders")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_download_consents_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["status_entry_id"],
            ["status_entries.id"],
            name=op.f("fk_download_consents_status_entry_id_status_entries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download_consents")),
    )
    with op.batch_alter_table("download_consents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_download_consents_patient_id"), ["patient_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("download_consents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_download_consents_patient_id"))
    op.drop_table("download_consents")
    with op.batch_alter_table("holders", schema=None) as batch_op:
        batch_op.drop_column("download_endpoint")
