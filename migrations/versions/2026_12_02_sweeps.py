"""hyperparameter sweeps and their trials

Revision ID: 0011_sweeps
Revises: 0010_webhooks
Create Date: 2026-12-02 02:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011_sweeps"
down_revision = "0010_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id", ondelete="CASCADE",
                                                             name="fk_sweeps_project_id_projects"), nullable=False),
        sa.Column("owner_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("base", JSONB(), nullable=False),
        sa.Column("space", JSONB(), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("metric", sa.String(256), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("parallelism", sa.Integer(), nullable=False),
        sa.Column("best_trial", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_sweeps_project_id", "sweeps", ["project_id"])
    op.create_table(
        "sweep_trials",
        sa.Column("sweep_id", sa.String(32), sa.ForeignKey("sweeps.id", ondelete="CASCADE",
                                                           name="fk_sweep_trials_sweep_id_sweeps"), primary_key=True),
        sa.Column("index", sa.Integer(), primary_key=True),
        sa.Column("params", JSONB(), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_sweep_trials_run_id", "sweep_trials", ["run_id"])


def downgrade() -> None:
    op.drop_table("sweep_trials")
    op.drop_table("sweeps")
