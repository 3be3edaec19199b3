"""YOLO API: saved run configurations, custom architectures, run options and weights registration

`runs.options`: the REST-only options of a run (references as given, `register_as`, `model_version_id`).
`runs.registration`: where a completed `yolo.train` run's weights went in the library (or why not).

Revision ID: 0006_yolo_api
Revises: 0005_project_target
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006_yolo_api"
down_revision = "0005_project_target"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("options", postgresql.JSONB(astext_type=sa.Text()),
                                    server_default=sa.text("'{}'::jsonb"), nullable=False))
    op.add_column("runs", sa.Column("registration", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.create_table(
        "run_configs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_run_configs_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_configs")),
        sa.UniqueConstraint("project_id", "name", name="uq_run_configs_project_name"),
    )
    op.create_table(
        "architectures",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=False),
        sa.Column("summary", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_architectures")),
        sa.UniqueConstraint("name", name=op.f("uq_architectures_name")),
    )
    op.create_index(op.f("ix_architectures_owner_id"), "architectures", ["owner_id"], unique=False)
    op.create_index("ix_runs_unregistered", "runs", ["finished_at"],
                    postgresql_where=sa.text("kind = 'yolo.train' AND status = 'completed' AND registration IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_runs_unregistered", table_name="runs")
    op.drop_index(op.f("ix_architectures_owner_id"), table_name="architectures")
    op.drop_table("architectures")
    op.drop_table("run_configs")
    op.drop_column("runs", "registration")
    op.drop_column("runs", "options")
