"""NOTIFY trainforge_webhooks on every change of the webhooks table (the deliverer's cache listens)

Revision ID: 0013_webhooks_notify
Revises: 0012_curation_extra
Create Date: 2026-12-03 07:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0013_webhooks_notify"
down_revision = "0012_curation_extra"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION trainforge_webhooks_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('trainforge_webhooks', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER webhooks_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON webhooks
        FOR EACH STATEMENT EXECUTE FUNCTION trainforge_webhooks_changed()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS webhooks_changed ON webhooks")
    op.execute("DROP FUNCTION IF EXISTS trainforge_webhooks_changed()")
