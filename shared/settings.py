"""Settings, read from `TRAINFORGE_*` environment variables.

Build them once in `main()` (`Settings.from_env()`) and pass them down; nothing reads the environment at
import time. Each field `foo_bar` is set by `TRAINFORGE_FOO_BAR`; lists are comma-separated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import msgspec

ENV_PREFIX = "TRAINFORGE_"


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    # -- where things live ---------------------------------------------------------------------------
    state_dir: Path = Path(".trainforge")
    """State folder: embedded NATS and Postgres data, artifacts, logs."""
    nats_url: str | None = None
    """External NATS server. Unset: `up` starts an embedded one; gateway/runner use nats://127.0.0.1:4222."""
    nats_replicas: int = 1
    """JetStream replicas of every stream and bucket Trainforge creates (3 on a three-node NATS cluster, so one
    node lost loses nothing). Existing streams are raised in place when the gateway or a runner starts; existing
    buckets keep theirs (`nats kv edit` / `nats stream edit` them)."""
    database_url: str | None = None
    """External Postgres (postgresql+asyncpg://...). Unset: `up` starts an embedded one."""
    database_timeout_s: float = 5.0
    """Gateway: longest wait on Postgres for a connection, a statement or a free pooled connection; a request
    that needs a database that is down or frozen answers 503 after at most this long."""
    bus_prefix: str = "tf"
    """Prefix of every stream, subject and bucket name."""

    # -- bus credentials and job signatures (docs/events.md, "Access"); `up` sets them for its own parts ---
    nats_user: str | None = None
    """NATS user name (with `nats_password`). A URL with userinfo (nats://user:pass@host) works too."""
    nats_password: str | None = None
    nats_password_file: Path | None = None
    """File holding that password (instead of `nats_password`; `trainforge secrets init` writes one per part)."""
    nats_token: str | None = None
    """NATS authorization token (instead of a user)."""
    nats_nkey_seed_file: Path | None = None
    """File holding an nkey seed (`SU...`) for a server that authenticates nkeys (needs the `nkeys` package)."""
    nats_creds_file: Path | None = None
    """A `.creds` file (user JWT and nkey seed) for a server in operator/JWT mode (needs `nkeys`)."""
    nats_inbox_prefix: str = "_INBOX"
    """Prefix of this client's reply subjects; `_INBOX_reader` for the embedded NATS's `reader` user."""
    job_signing_key_file: Path | None = None
    """Gateway: Ed25519 private key (PEM) that signs every job it publishes. Unset: jobs go out unsigned, and
    only runners with `runner_allow_unsigned_jobs` take them."""
    job_verify_key: str | None = None
    """Runner: the gateway's Ed25519 public key (base64, or a file holding it); jobs it did not sign are refused."""
    runner_allow_unsigned_jobs: bool = False
    """Runner, INSECURE: take jobs without a verify key, so anyone who may publish on the bus runs code here."""

    # -- gateway ---------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    events_max_age_days: float = 30.0
    """Retention of the events stream in NATS (Postgres keeps the projection for good)."""
    events_max_bytes: int = -1
    projector_ack_wait_s: float = 5.0
    """How long the projector's fetched events stay unacknowledged before JetStream redelivers them (a gateway
    killed mid-batch delays its runs' events this long); long batches are kept alive with progress acks."""
    projector_gap_wait_s: float = 15.0
    """How long the projector holds a run's events back behind a missing seq before it stores them anyway."""
    sse_keepalive_s: float = 15.0
    cors_origins: list[str] = []
    """Origins (`https://app.example.com`) whose pages may call the API and the event streams (CORS). Empty:
    no CORS headers, same-origin pages only."""
    idempotency_ttl_h: float = 24.0
    page_size_max: int = 200
    max_json_kb: int = 1024
    """Largest request body of a route that takes JSON (413 beyond); uploads have their own limits."""
    max_json_depth: int = 32
    """Deepest nesting of arrays and objects accepted in a JSON body (400 beyond)."""
    preflight_timeout_s: float = 2.0
    """How long run creation waits for a runner to confirm a docker run's files (no answer: queued anyway)."""

    # -- architecture validation (POST /api/v1/architectures[/validate]) ----------------------------------
    architecture_max_params: int = 100_000_000
    """Most parameters a custom model YAML may build to (yolov8x: 68 M), counted before anything is built."""
    architecture_max_gflops: float = 3000.0
    """Most GFLOPs its forward pass may take at the requested imgsz (yolov8x: 258 at 640, 2,640 at 2048)."""
    architecture_max_activation_mb: float = 2048.0
    """Most MB its layers' outputs may take at the requested imgsz, batch 1, float32 (yolov8x at 640: 184)."""
    architecture_validate_memory_mb: int = 4096
    """Address-space limit of the child process that builds the model (torch alone takes ~0.9 GB of it)."""
    architecture_validate_concurrency: int = 2
    """Validations running at once per runner (they answer the gateway's requests); more wait their turn."""
    architecture_validate_timeout_s: float = 120.0
    """A validation still running after this long is killed (503)."""

    # -- users and access ----------------------------------------------------------------------------
    admin_username: str = "admin"
    """The first admin, created when the database has no user."""
    admin_password: str | None = None
    """That admin's password. Unset: a random one is generated and written to
    <state_dir>/secrets/admin-password."""
    jwt_secret: str | None = None
    """Signs access tokens; every gateway of one deployment needs the same. Unset: generated once and kept in
    <state_dir>/secrets/jwt-secret."""
    access_token_ttl_s: float = 900.0
    """Lifetime of an access token (JWT); a refresh token gets a new one."""
    refresh_token_ttl_h: float = 720.0
    """Lifetime of a login session (its refresh token)."""
    auth_cache_s: float = 5.0
    """How long a gateway remembers who a token is (no database query per request meanwhile). A token revoked
    or a session logged out on another gateway stops working there within this time; on the same gateway at
    once. 0: look every token up on every request."""
    open_signup: bool = False
    """Let anyone create an account with `POST /api/v1/auth/signup`. Off: only admins create users."""
    rate_limit_login_per_minute: int = 10
    """Login, refresh and sign-up attempts per client address per minute (429 with Retry-After beyond)."""
    rate_limit_writes_per_minute: int = 300
    """Writes (POST, PUT, PATCH, DELETE) per user per minute."""
    rate_limit_address_writes_per_minute: int = 600
    """Writes per client address per minute, whoever sends them."""

    # -- webhooks (docs/operations.md, "Webhooks") ---------------------------------------------------------
    webhook_allowed_hosts: list[str] = []
    """Where webhooks may point: host names (`hooks.example.com`, `*.example.com`) and addresses or networks
    (`203.0.113.7`, `10.1.0.0/16`). Empty: any host whose addresses are all public. Loopback, link-local,
    private and other non-public addresses are refused unless an entry names the host or covers the address;
    checked when a webhook is created and again, on the resolved addresses, before every delivery."""
    webhook_max_attempts: int = 8
    """Attempts per delivery (one event to one webhook) before it is given up as `failed`."""
    webhook_backoff_s: float = 2.0
    """Wait before the second attempt; doubled for each further one, up to `webhook_backoff_max_s`."""
    webhook_backoff_max_s: float = 600.0
    """Longest wait between two attempts of a delivery."""
    webhook_timeout_s: float = 10.0
    """Longest wait for a receiver's answer to one delivery."""

    # -- jobs ------------------------------------------------------------------------------------------
    job_ack_wait_s: float = 30.0
    """How long a claimed job may go without a heartbeat before JetStream hands it to another runner."""
    job_max_deliver: int = 5
    """Attempts per run before it fails with cause `infrastructure`."""

    # -- scheduling ------------------------------------------------------------------------------------
    max_running_global: int = 0
    """Runs running at once across the fleet; 0: no limit."""
    max_running_per_user: int = 0
    """Runs one user has running at once; 0: no limit."""
    max_running_per_project: int = 0
    """Runs one project has running at once; 0: no limit."""
    lease_ttl_s: float = 15.0
    """A run's leases (and the dispatcher's lock) lapse this long after their holder stops renewing them."""
    attempt_hold_s: float = 60.0
    """A runner cut off from the bus keeps running its jobs this long, then stops them itself; a new attempt
    takes over a silent attempt's claim only after this (plus cancel_grace_s + a heartbeat + 5 s)."""

    # -- runner ----------------------------------------------------------------------------------------
    runner_pool: str = "cpu"
    runner_device: str = "cpu"
    """`cpu`, `cuda:N`, or `auto` (each job takes a free GPU of the host when it is claimed)."""
    runner_id: str | None = None
    runner_slots: int = 1
    runner_local_backend: bool = False
    """Allow `container` runs with backend `local` (bash on this host). Off unless the operator enables it."""
    runner_workdir_root: Path | None = None
    """Root of local-backend working directories. Unset: <state_dir>/work."""
    runner_heartbeat_s: float = 5.0
    shutdown_grace_s: float = 10.0
    """On SIGTERM a runner lets its job run this long before canceling it."""
    shutdown_action: str = "cancel"
    """What a stopping runner does with a job still running after the grace period: cancel | requeue."""
    cancel_grace_s: float = 5.0
    """Between SIGTERM and SIGKILL when a job's processes are stopped."""
    pause_max_s: float = 3600.0
    """Longest a run may stay paused (`POST /runs/{id}/pause`); then its runner cancels it, its checkpoints kept
    (reason `pause_timeout`). 0: no bound."""
    runner_targets_file: Path | None = None
    """TOML file naming this runner's container targets (backend `docker`); see docs/containers.md."""
    runner_reattach: Literal["reattach", "restart"] = "reattach"
    """A new attempt that finds the previous attempt's process still running in its container:
    `reattach` follows it, `restart` ends it and starts the command again."""

    # -- datasets --------------------------------------------------------------------------------------
    data_roots: list[Path] = []
    """Server-side folders clients may register datasets from (by path). Empty: uploads only."""
    max_upload_mb: int = 2048
    """Largest dataset archive accepted; its extracted content may be at most 4x this size."""
    max_upload_files: int = 200_000
    """Most members a dataset archive may hold."""
    dataset_cache_gb: float = 20.0
    """Runner: most disk its cache of fetched datasets (<state_dir>/dataset-cache) may use; the least recently
    used go first (docs/fleet.md, "Datasets")."""
    runner_gateway_url: str | None = None
    """Runner: the gateway it may fetch datasets from over HTTP (`GET /api/v1/fleet/datasets/<sha256>`) when
    the artifact store does not have them. Unset: only the artifact store."""
    runner_gateway_token_file: Path | None = None
    """Runner: file holding its gateway credential (`trainforge secrets init` writes runner/gateway-token)."""
    runner_tokens_file: Path | None = None
    """Gateway: file of the SHA-256 hashes (hex, one a line) of the runner credentials it accepts on
    `/api/v1/fleet/datasets` (`trainforge secrets init` writes gateway/runner-tokens). Set, or with
    `artifact_store = nats`, the gateway packs each dataset a run uses into a content-addressed archive."""

    # -- artifacts and models --------------------------------------------------------------------------
    artifact_store: str = "local"
    """Where runs store checkpoints, weights and plots: `local` (<state_dir>/artifacts) or `nats` (a JetStream
    object store, so runners on other hosts can fetch them)."""
    pretrained_dir: Path | None = None
    """Folder of pretrained YOLO weights (`<name>.pt`). A model name without a file there is built untrained
    from Ultralytics' `<name>.yaml`; nothing is ever downloaded."""

    # -- command-line client -----------------------------------------------------------------------------
    api_url: str = "http://127.0.0.1:8000"
    """The gateway the `trainforge train` and `trainforge runs` commands talk to."""
    api_token: str | None = None
    """API token those commands send. Unset: the one `trainforge login` kept for their gateway, else the one
    `trainforge up` keeps in <state_dir>/secrets/cli-token, if any."""
    max_image_upload_mb: int = 20
    """Largest image accepted by `POST /api/v1/uploads` and synchronous predict."""
    upload_ttl_h: float = 24.0
    """Uploaded images are deleted this many hours after their upload, unless a queued or running run reads
    them (then after it ends). 0 keeps them until deleted (`DELETE /api/v1/uploads/{id}`)."""
    predict_timeout_s: float = 60.0
    """How long `POST /api/v1/models/{ref}/predict` waits for its run before answering 504."""
    predict_cache_models: int = 4
    """Models a runner keeps loaded for synchronous predict, the least recently used going first; 0: none
    (each request loads its model)."""
    predict_cache_mb: int = 2048
    """Most memory (parameters and buffers, or the file size of an exported model) the models a runner keeps
    loaded for synchronous predict may take together; the one just used always stays."""

    # -- metrics (GET /metrics, docs/operations.md) ------------------------------------------------------
    metrics_token: str | None = None
    """Bearer token a Prometheus scraper sends (`Authorization: Bearer ...`) to read `/metrics` from anywhere.
    Unset: `/metrics` answers loopback clients only (403 to others), unless `metrics_public`."""
    metrics_public: bool = False
    """Serve `/metrics` to every client without a token (a network that only scrapers reach)."""

    # -- logs ------------------------------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    """`json`: every process (gateway, runners, `up`, the CLI) writes JSON lines with timestamp, level, logger,
    message and, where they apply, run id, attempt, runner id and request id (docs/operations.md, "Logs")."""

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> environment variable name, for every setting."""
        return {name: ENV_PREFIX + name.upper() for name in cls.__struct_fields__}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        for name, var in cls.env_names().items():
            if var in env and env[var] != "":
                raw[name] = env[var]
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Settings:
        struct_info = cast(msgspec.inspect.StructType, msgspec.inspect.type_info(cls))
        info = {f.name: f.type for f in struct_info.fields}
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if name not in info:
                raise SettingsError(f"unknown setting {name!r}")
            if isinstance(value, str) and isinstance(info[name], msgspec.inspect.ListType):
                value = [v.strip() for v in value.split(",") if v.strip()]
            values[name] = value
        try:
            return msgspec.convert(values, cls, strict=False, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"{exc} (environment variables {ENV_PREFIX}*)") from exc

    # -- derived paths ---------------------------------------------------------------------------------
    @property
    def work_root(self) -> Path:
        return (self.runner_workdir_root or self.state_dir / "work").resolve()

    @property
    def artifacts_dir(self) -> Path:
        return (self.state_dir / "artifacts").resolve()

    @property
    def datasets_dir(self) -> Path:
        """Where uploaded and prepared datasets live, one folder per dataset."""
        return (self.state_dir / "datasets").resolve()

    @property
    def dataset_cache_dir(self) -> Path:
        """A runner's cache of datasets fetched by content hash."""
        return (self.state_dir / "dataset-cache").resolve()

    @property
    def dataset_archives(self) -> bool:
        """Whether the gateway packs the datasets of runs for runners on other hosts."""
        return self.artifact_store == "nats" or self.runner_tokens_file is not None

    @property
    def effective_nats_url(self) -> str:
        return self.nats_url or "nats://127.0.0.1:4222"


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Path and isinstance(obj, str | Path):
        return Path(obj).expanduser()
    raise NotImplementedError
