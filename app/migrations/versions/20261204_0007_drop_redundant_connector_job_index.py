"""Drop ix_connector_job_request_id: the unique constraint on (request_id, connector_id)
already indexes request_id first, and every connector job is written three times (queued,
started, finished), each time updating every index of the table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("connector_job", schema=None) as batch_op:
        batch_op.drop_index("ix_connector_job_request_id")


def downgrade() -> None:
    with op.batch_alter_table("connector_job", schema=None) as batch_op:
        batch_op.create_index("ix_connector_job_request_id", ["request_id"], unique=False)
