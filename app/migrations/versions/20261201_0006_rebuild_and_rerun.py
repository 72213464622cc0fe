"""export_package.results_deleted_at and request_run: staff re-issue a package while its
connector results are held (DSR_EXPORT_RESULTS_GRACE_DAYS), and re-run a request

Packages that had already expired lost their results with them: they are marked so.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_package", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("results_deleted_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE export_package SET results_deleted_at = deleted_at WHERE status = 'expired'")
    op.create_table(
        "request_run",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("request_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
        sa.Column("jobs", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["dsr_request.id"],
            name=op.f("fk_request_run_request_id_dsr_request"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_run")),
        sa.UniqueConstraint("request_id", "run", name=op.f("uq_request_run_request_id")),
    )
    with op.batch_alter_table("request_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_request_run_request_id"), ["request_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("request_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_request_run_request_id"))
    op.drop_table("request_run")
    with op.batch_alter_table("export_package", schema=None) as batch_op:
        batch_op.drop_column("results_deleted_at")
