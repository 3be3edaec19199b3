"""run enqueued_at and job_msg_id

`enqueued_at`: when JetStream took the run's job (NULL: not yet; the gateway publishes it again).
`job_msg_id`: the `Nats-Msg-Id` the job was published with, reused when it is published again.

Revision ID: 0004_run_enqueued
Revises: 0003_weights_library
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_run_enqueued"
down_revision = "0003_weights_library"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("job_msg_id", sa.String(length=320), nullable=True))
    op.create_index("ix_runs_unenqueued", "runs", ["created_at"], postgresql_where=sa.text("enqueued_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_runs_unenqueued", table_name="runs")
    op.drop_column("runs", "job_msg_id")
    op.drop_column("runs", "enqueued_at")
