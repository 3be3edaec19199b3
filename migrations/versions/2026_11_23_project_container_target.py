"""project container_target

The default container target of a project's docker runs.

Revision ID: 0005_project_target
Revises: 0004_run_enqueued
Create Date: 2026-11-23 12:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_project_target"
down_revision = "0004_run_enqueued"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("container_target", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("projects", "container_target")
