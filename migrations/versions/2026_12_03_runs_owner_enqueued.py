"""Index runs by (owner_id, enqueued_at): the dispatcher's fair share asks, every pass, when each waiting
owner last had a job published, one index probe per owner instead of reading all of the owner's runs

Revision ID: 0014_runs_owner_enqueued
Revises: 0013_webhooks_notify
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0014_runs_owner_enqueued"
down_revision = "0013_webhooks_notify"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_owner_enqueued", "runs", ["owner_id", "enqueued_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_owner_enqueued", table_name="runs")
