"""connectors: the registry, per-connector jobs, callback receipts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callback_receipt",
        sa.Column("connector_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("webhook_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("connector_id", "webhook_id", name=op.f("pk_callback_receipt")),
    )
    op.create_table(
        "connector",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
        sa.Column("mode", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("request_types", sa.Text(), nullable=False),
        sa.Column("identity_types", sa.Text(), nullable=False),
        sa.Column("categories", sa.Text(), nullable=False),
        sa.Column("processing", sa.Text(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("callback_timeout_s", sa.Float(), nullable=True),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("previous_secret_sealed", sa.Text(), nullable=True),
        sa.Column("previous_secret_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connector")),
    )
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_connector_name"), ["name"], unique=False)

    op.create_table(
        "connector_job",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("request_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("connector_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("engine_job_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("retained", sa.Text(), nullable=True),
        sa.Column("data_files", sa.Text(), nullable=True),
        sa.Column("message_sealed", sa.Text(), nullable=True),
        sa.Column("result_webhook_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("finished_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("callback_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["connector_id"], ["connector.id"], name=op.f("fk_connector_job_connector_id_connector")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"], ["dsr_request.id"], name=op.f("fk_connector_job_request_id_dsr_request")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connector_job")),
        sa.UniqueConstraint("request_id", "connector_id", name=op.f("uq_connector_job_request_id")),
    )
    with op.batch_alter_table("connector_job", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_connector_job_connector_id"), ["connector_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_connector_job_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index("ix_connector_job_status", ["status", "updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("connector_job", schema=None) as batch_op:
        batch_op.drop_index("ix_connector_job_status")
        batch_op.drop_index(batch_op.f("ix_connector_job_request_id"))
        batch_op.drop_index(batch_op.f("ix_connector_job_connector_id"))

    op.drop_table("connector_job")
    with op.batch_alter_table("connector", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_connector_name"))

    op.drop_table("connector")
    op.drop_table("callback_receipt")
