"""dataset curation: a working copy of samples, immutable dataset versions; existing datasets become version 1

Revision ID: 0012_curation
Revises: 0011_sweeps
Create Date: 2026-12-03 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012_curation"
down_revision = "0011_sweeps"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("last_version", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("datasets", sa.Column("working_copy", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("model_versions", sa.Column("dataset_version", sa.Integer(), nullable=True))
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("dataset_id", sa.String(32), sa.ForeignKey(
            "datasets.id", ondelete="CASCADE", name="fk_dataset_versions_dataset_id_datasets"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("root_path", sa.Text(), nullable=False),
        sa.Column("data_yaml", sa.Text(), nullable=False),
        sa.Column("classes", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("counts", JSONB(), nullable=True),
        sa.Column("changes", JSONB(), nullable=True),
        sa.Column("materialised", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("dataset_id", "number", name="uq_dataset_versions_dataset_number"),
    )
    op.create_table(
        "dataset_samples",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("dataset_id", sa.String(32), sa.ForeignKey(
            "datasets.id", ondelete="CASCADE", name="fk_dataset_samples_dataset_id_datasets"), nullable=False),
        sa.Column("split", sa.String(8), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("ext", sa.String(16), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("annotations", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("tags", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("problems", JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_dataset_samples_dataset_split", "dataset_samples", ["dataset_id", "split", "position"])
    # every ready dataset is its version 1: its prepared folder, as registered
    op.execute("""
        INSERT INTO dataset_versions (id, dataset_id, number, root_path, data_yaml, classes, materialised, created_by,
                                      created_at)
        SELECT replace(gen_random_uuid()::text, '-', ''), id, 1, root_path, data_yaml, classes, false, owner_id,
               created_at
        FROM datasets WHERE status = 'ready' AND root_path IS NOT NULL AND data_yaml IS NOT NULL
    """)
    op.execute("UPDATE datasets SET last_version = 1 WHERE status = 'ready' AND root_path IS NOT NULL "
               "AND data_yaml IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_dataset_samples_dataset_split", table_name="dataset_samples")
    op.drop_table("dataset_samples")
    op.drop_table("dataset_versions")
    op.drop_column("model_versions", "dataset_version")
    op.drop_column("datasets", "working_copy")
    op.drop_column("datasets", "last_version")
