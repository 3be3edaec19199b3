"""users and access: users, login sessions, API tokens, project members, audit log; names unique per owner

Projects get an `owner_id`; project and architecture names become unique per owner (NULLS NOT DISTINCT, so
rows from before users existed keep one name each). Projects that existed before users have no members: only
admins reach them until an admin adds members.

Revision ID: 0008_auth
Revises: 0007_scheduling
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008_auth"
down_revision = "0007_scheduling"
branch_labels = None
depends_on = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "login_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE",
                                                          name="fk_login_sessions_user_id_users"), nullable=False),
        sa.Column("refresh_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("refresh_hash", name="uq_login_sessions_refresh_hash"),
    )
    op.create_index("ix_login_sessions_user_id", "login_sessions", ["user_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE",
                                                          name="fk_api_tokens_user_id_users"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    op.create_table(
        "project_members",
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id", ondelete="CASCADE",
                                                             name="fk_project_members_project_id_projects"),
                  primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE",
                                                          name="fk_project_members_user_id_users"),
                  primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
    )
    op.create_index("ix_project_members_user_id", "project_members", ["user_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("actor_id", sa.String(32), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(128), nullable=True),
        sa.Column("project_id", sa.String(32), nullable=True),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("detail", postgresql.JSONB(), nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_actor_id", "audit_log", ["actor_id"])
    op.create_index("ix_audit_log_action", "audit_log", ["action"])
    op.create_index("ix_audit_log_project_id", "audit_log", ["project_id"])

    op.add_column("projects", sa.Column("owner_id", sa.String(32), nullable=True))
    op.create_index("ix_projects_owner_id", "projects", ["owner_id"])
    op.drop_constraint("uq_projects_name", "projects", type_="unique")
    op.create_unique_constraint("uq_projects_owner_name", "projects", ["owner_id", "name"],
                                postgresql_nulls_not_distinct=True)
    op.drop_constraint("uq_architectures_name", "architectures", type_="unique")
    op.create_unique_constraint("uq_architectures_owner_name", "architectures", ["owner_id", "name"],
                                postgresql_nulls_not_distinct=True)


def downgrade() -> None:
    op.drop_constraint("uq_architectures_owner_name", "architectures", type_="unique")
    op.create_unique_constraint("uq_architectures_name", "architectures", ["name"])
    op.drop_constraint("uq_projects_owner_name", "projects", type_="unique")
    op.create_unique_constraint("uq_projects_name", "projects", ["name"])
    op.drop_index("ix_projects_owner_id", table_name="projects")
    op.drop_column("projects", "owner_id")
    op.drop_table("audit_log")
    op.drop_table("project_members")
    op.drop_table("api_tokens")
    op.drop_table("login_sessions")
    op.drop_table("users")
