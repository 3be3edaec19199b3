"""datasets

Revision ID: 0002_datasets
Revises: 0001
Create Date: 2026-11-23 11:29:07.737183
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002_datasets'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=True),
    sa.Column('format', sa.String(length=16), nullable=True),
    sa.Column('task', sa.String(length=16), nullable=True),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('source_path', sa.Text(), nullable=True),
    sa.Column('root_path', sa.Text(), nullable=True),
    sa.Column('data_yaml', sa.Text(), nullable=True),
    sa.Column('classes', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('stats', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets')),
    sa.UniqueConstraint('owner_id', 'name', name='uq_datasets_owner_name', postgresql_nulls_not_distinct=True)
    )
    op.create_index(op.f('ix_datasets_owner_id'), 'datasets', ['owner_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_datasets_owner_id'), table_name='datasets')
    op.drop_table('datasets')
