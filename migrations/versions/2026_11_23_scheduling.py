"""run scheduling: requirements, the dispatcher's verdict (queue position, wait reason), active-runs index

`requirements`: what a runner must have to take the run (device kind, GPU memory, GPU count).
`queue_position`, `wait_reason`: while the gateway's dispatcher holds a queued run, its place in its pool's
line and why it does not start now.

Revision ID: 0007_scheduling
Revises: 0006_yolo_api
Create Date: 2026-11-24 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007_scheduling"
down_revision = "0006_yolo_api"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("requirements", postgresql.JSONB(), nullable=True))
    op.add_column("runs", sa.Column("queue_position", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("wait_reason", sa.Text(), nullable=True))
    op.create_index("ix_runs_active", "runs", ["pool"],
                    postgresql_where=sa.text("status IN ('queued', 'claimed', 'running', 'canceling')"))


def downgrade() -> None:
    op.drop_index("ix_runs_active", table_name="runs")
    op.drop_column("runs", "wait_reason")
    op.drop_column("runs", "queue_position")
    op.drop_column("runs", "requirements")
