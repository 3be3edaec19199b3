"""The Postgres schema (SQLAlchemy 2 declarative). Alembic migrations in `migrations/` create it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


ACTIVE_WHERE = "status IN ('queued', 'claimed', 'running', 'paused', 'canceling')"
"""Runs that are not finished (the dispatcher's working set)."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, list[str]: JSONB, datetime: DateTime(timezone=True)}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    """Unique among its owner's projects."""
    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    """The user who created it (also its first member, role owner)."""
    description: Mapped[str] = mapped_column(Text, default="")
    objective: Mapped[str] = mapped_column(Text, default="")
    task_type: Mapped[str] = mapped_column(String(64), default="")
    owner: Mapped[str] = mapped_column(String(128), default="")
    dataset_name: Mapped[str] = mapped_column(String(256), default="")
    training_yaml_name: Mapped[str] = mapped_column(String(256), default="")
    container_target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSONB, default=list)
    status: Mapped[str] = mapped_column(String(16), default="active")
    runs_started: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_projects_owner_name", postgresql_nulls_not_distinct=True),
    )


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    pool: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    """The run's command as published (the `spec` of the `Job`)."""
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    runner_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failure_cause: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    resume_of: Mapped[str | None] = mapped_column(String(32), nullable=True)
    resume_checkpoint_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    gateway_seq: Mapped[int] = mapped_column(Integer, default=0)
    """Last seq the gateway used for this run's attempt-0 events."""
    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=50)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    claimed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    enqueued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    """When JetStream took the run's job; NULL until then (the gateway publishes it again)."""
    job_msg_id: Mapped[str | None] = mapped_column(String(320), nullable=True)
    """The `Nats-Msg-Id` of the run's job, reused when it is published again."""
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    """What the client asked for beyond the spec (REST only): references as given (`model`, `dataset`,
    `architecture`, `config`), `register_as`, `model_version_id` (the library version it starts from)."""
    registration: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    """A completed `yolo.train` run's weights in the library: `{model, version, model_version_id}`, or
    `{error}`; NULL until registered."""
    requirements: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    """What a runner must have (`Requirements`: device kind, GPU memory, GPU count); NULL: anything."""
    queue_position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """While the dispatcher holds the run: its place in its pool's line (1 = next)."""
    wait_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    """While the dispatcher holds the run: why it does not start now."""

    __table_args__ = (
        Index("ix_runs_project_created", "project_id", "created_at"),
        Index("ix_runs_unenqueued", "created_at", postgresql_where=text("enqueued_at IS NULL")),
        Index("ix_runs_unregistered", "finished_at",
              postgresql_where=text("kind = 'yolo.train' AND status = 'completed' AND registration IS NULL")),
        Index("ix_runs_active", "pool", postgresql_where=text(ACTIVE_WHERE)),
        Index("ix_runs_owner_enqueued", "owner_id", "enqueued_at"),
    )


class EventRecord(Base):
    """Every run event, once. `position` is the monotonic id SSE clients resume from."""

    __tablename__ = "events"

    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(48))
    ts: Mapped[datetime] = mapped_column()
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    """The event exactly as it was on the wire."""

    __table_args__ = (
        UniqueConstraint("run_id", "attempt", "seq", name="uq_events_run_attempt_seq"),
        Index("ix_events_run_position", "run_id", "position"),
        Index("ix_events_project_position", "project_id", "position"),
        Index("ix_events_run_type_position", "run_id", "type", "position"),
    )


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    resumable: Mapped[bool] = mapped_column(Boolean, default=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column()


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True, nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(32), default="file")
    uri: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    media_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column()


class IdempotencyKey(Base):
    """First response to a POST with an `Idempotency-Key`, returned again for a repeat of it."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(512), primary_key=True)
    """Method, path and caller the key was used with."""
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """None while the first request is still being handled."""
    body: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Dataset(Base):
    """A registered dataset: where it came from, where its prepared copy lives, and its inspection."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """yolo | coco | voc | classify; None until prepared."""
    task: Mapped[str | None] = mapped_column(String(16), nullable=True)
    source: Mapped[str] = mapped_column(String(8))
    """path | upload."""
    source_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The server-side folder a `path` dataset was registered from."""
    root_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The prepared folder (`gateway.datasets.list_images` takes it)."""
    data_yaml: Mapped[str | None] = mapped_column(Text, nullable=True)
    """What training gets as `data=`: the data YAML, or the classification root."""
    classes: Mapped[list[str]] = mapped_column(JSONB, default=list)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    """The inspection report."""
    status: Mapped[str] = mapped_column(String(16), default="preparing")
    """preparing | ready | failed."""
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """The highest version number ever given (a deleted version's number is never reused)."""
    working_copy: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    """Whether the working copy (`dataset_samples`) was made; it is made from version 1 on first use."""
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        # NULLS NOT DISTINCT: one name per owner, and also one per name among datasets without owner.
        UniqueConstraint("owner_id", "name", name="uq_datasets_owner_name", postgresql_nulls_not_distinct=True),
    )


class DatasetVersion(Base):
    """A frozen, immutable version of a dataset: the folder a training reads (`data_yaml`)."""

    __tablename__ = "dataset_versions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    root_path: Mapped[str] = mapped_column(Text)
    data_yaml: Mapped[str] = mapped_column(Text)
    classes: Mapped[list[str]] = mapped_column(JSONB, default=list)
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    """Images and instances per split and class (NULL: read from the dataset's inspection, version 1)."""
    changes: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    """Sample ids added / removed / relabelled / moved since the previous version."""
    materialised: Mapped[bool] = mapped_column(Boolean, default=False)
    """True: a folder of its own below the dataset's `versions/`; False: the registered prepared folder."""
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (UniqueConstraint("dataset_id", "number", name="uq_dataset_versions_dataset_number"),)


class DatasetSample(Base):
    """One image of a dataset's working copy, with its annotations (in pixels)."""

    __tablename__ = "dataset_samples"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    """The image's content hash: its blob in the dataset's store."""
    ext: Mapped[str] = mapped_column(String(16))
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    annotations: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    tags: Mapped[list[str]] = mapped_column(JSONB, default=list)
    problems: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    position: Mapped[int] = mapped_column(BigInteger)
    """Order of the listing (import order, then upload order)."""
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_dataset_samples_dataset_split", "dataset_id", "split", "position"),)


class Model(Base):
    """A named model of the weights library; its versions hold the weights."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(16))
    """detect | segment | pose | obb | classify: every version of the model has this task."""
    description: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    """The highest version number ever given, so that a deleted version's number is never reused."""
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_models_owner_name", postgresql_nulls_not_distinct=True),
    )


class ModelVersion(Base):
    """One version of a model: a weights file in the artifact store and where it came from."""

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    """1, 2, 3, ... per model."""
    uri: Mapped[str] = mapped_column(Text)
    """Artifact-store URI of the weights (`file://<state_dir>/artifacts/models/...` for the local store)."""
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(16))
    class_names: Mapped[list[str]] = mapped_column(JSONB, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    source_run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    """The training run that produced the weights (kept as provenance, also after the run is gone)."""
    dataset_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """The dataset the weights were trained on (provenance, like `source_run_id`)."""
    dataset_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """The version of that dataset (`dataset_versions.number`)."""
    parent_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True)
    """The version training started from (fine-tuning), if it came from the library."""
    format: Mapped[str] = mapped_column(String(16), default="pt")
    """pt | onnx | torchscript."""
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)


class RunConfig(Base):
    """A saved set of run parameters of a project, reused by name (`config` of a run request)."""

    __tablename__ = "run_configs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    """REST fields of a run request of `kind` (as a client would send them)."""
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_run_configs_project_name"),)


class Architecture(Base):
    """A validated custom model architecture (Ultralytics model YAML), usable as the model of a training."""

    __tablename__ = "architectures"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    yaml: Mapped[str] = mapped_column(Text)
    task: Mapped[str] = mapped_column(String(16))
    summary: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    """What validation found: parameters, GFLOPs, layers, output shapes (at `imgsz`)."""
    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_architectures_owner_name", postgresql_nulls_not_distinct=True),
    )


# -- users and access ------------------------------------------------------------------------------------


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    """argon2id (argon2-cffi's encoded form)."""
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    """A disabled user cannot log in, and its sessions and API tokens stop working."""
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class LoginSession(Base):
    """One login: its refresh token (stored hashed) and the access tokens issued from it (they carry its id)."""

    __tablename__ = "login_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    refresh_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """sha256 of the current refresh token; a refresh replaces it (the old token stops working)."""
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    refreshed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ApiToken(Base):
    """A long-lived bearer token (`tfp_...`) for services and the CLI, stored hashed."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    """The token's first characters, to tell tokens apart in a listing."""
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ProjectMember(Base):
    """Who may reach a project besides admins, and how: `owner` (everything, members too), `member` (runs,
    configs: reads and writes), `viewer` (reads)."""

    __tablename__ = "project_members"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class AuditEntry(Base):
    """Who did what to which resource, and when. Written in the same transaction as the change where there
    is one, so an entry exists exactly when the change does."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
    actor_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    """The actor's username when it acted (kept if the user is deleted)."""
    action: Mapped[str] = mapped_column(String(64), index=True)
    """`<resource>.<verb>`: run.create, run.cancel, run.resume, run.delete, project.delete, model.export, ..."""
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class Webhook(Base):
    """A project's webhook: where its runs' events are POSTed (signed with `secret`), and which types."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(JSONB, default=list)
    secret: Mapped[str] = mapped_column(String(256))
    """HMAC key of the signatures; shown once, when the webhook is created."""
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class WebhookDelivery(Base):
    """One event for one webhook: its delivery id (sent as `Trainforge-Delivery`), attempts and outcome."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    """pending (being tried), delivered (a 2xx answer), failed (attempts used up)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)

    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_webhook_event"),
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at"),
    )


class Sweep(Base):
    """A hyperparameter sweep of a project: trial runs of one yolo.train request over a search space."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """Who created it: its trial runs are theirs (limits and fair share count them so)."""
    status: Mapped[str] = mapped_column(String(16), default="running")
    """running, completed (every trial finished), canceled."""
    base: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    """The yolo.train request every trial starts from (without `kind`)."""
    space: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    method: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str] = mapped_column(String(256))
    direction: Mapped[str] = mapped_column(String(16))
    parallelism: Mapped[int] = mapped_column(Integer)
    best_trial: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class SweepTrial(Base):
    __tablename__ = "sweep_trials"

    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    """None until the trial is started."""
    status: Mapped[str] = mapped_column(String(16), default="pending")
    """pending (not started), the run's status while it runs, then completed / failed / canceled."""
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    """The sweep's metric in the trial's latest metrics, once it completed."""
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class DatasetStatsRow(Base):
    """A dataset's statistics (`gateway.datasets.stats`), computed once per version and kept."""

    __tablename__ = "dataset_stats"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, default=1, server_default="1")
    stats: Mapped[dict[str, Any]] = mapped_column(JSONB)
    computed_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ProjectDataset(Base):
    """A dataset a project uses: its members may read it (not change it)."""

    __tablename__ = "project_datasets"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True,
                                            index=True)
    linked_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ProjectModel(Base):
    """A model of the weights library a project uses: its members may read it (not change it)."""

    __tablename__ = "project_models"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True, index=True)
    linked_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
