"""run status `paused`: the active-runs index counts paused runs (they keep their runner, leases and job)

Revision ID: 0009_run_paused
Revises: 0008_auth
Create Date: 2026-12-02 01:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_run_paused"
down_revision = "0008_auth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_runs_active", table_name="runs")
    op.create_index("ix_runs_active", "runs", ["pool"],
                    postgresql_where=sa.text("status IN ('queued', 'claimed', 'running', 'paused', 'canceling')"))


def downgrade() -> None:
    op.drop_index("ix_runs_active", table_name="runs")
    op.create_index("ix_runs_active", "runs", ["pool"],
                    postgresql_where=sa.text("status IN ('queued', 'claimed', 'running', 'canceling')"))
