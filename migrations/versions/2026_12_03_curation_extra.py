"""dataset statistics kept per version; datasets and models linked to projects

Revision ID: 0012_curation_extra
Revises: 0011_sweeps
Create Date: 2026-12-03 05:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012_curation_extra"
down_revision = "0012_curation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_stats",
        sa.Column("dataset_id", sa.String(32), sa.ForeignKey("datasets.id", ondelete="CASCADE",
                                                             name="fk_dataset_stats_dataset_id_datasets"),
                  primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True, server_default="1"),
        sa.Column("stats", JSONB(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    for kind, table in (("dataset", "datasets"), ("model", "models")):
        op.create_table(
            f"project_{kind}s",
            sa.Column("project_id", sa.String(32), sa.ForeignKey(
                "projects.id", ondelete="CASCADE", name=f"fk_project_{kind}s_project_id_projects"), primary_key=True),
            sa.Column(f"{kind}_id", sa.String(32), sa.ForeignKey(
                f"{table}.id", ondelete="CASCADE", name=f"fk_project_{kind}s_{kind}_id_{table}"), primary_key=True),
            sa.Column("linked_by", sa.String(32), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        )
        op.create_index(f"ix_project_{kind}s_{kind}_id", f"project_{kind}s", [f"{kind}_id"])


def downgrade() -> None:
    op.drop_table("project_models")
    op.drop_table("project_datasets")
    op.drop_table("dataset_stats")
