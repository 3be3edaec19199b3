"""Prometheus metrics of one gateway: `GET /metrics` (docs/operations.md, "Metrics").

Two sources, one scrape:
- HTTP figures from Litestar's Prometheus middleware (`trainforge_http_*`: requests, durations, in progress,
  errors by method, path template and status). That middleware keeps its metrics per process, in
  `prometheus_client`'s default registry, with the process and GC collectors.
- Trainforge's own, in a registry of this app's (`GatewayMetrics.registry`), so that several apps built in
  one process (tests) never register a name twice. Event-driven ones are updated where things happen
  (dispatcher, rate limits); state gauges are read fresh on every scrape (`refresh`): runs by status and
  kind, queue per pool, projection lag, SSE clients, runners by state, GPUs per runner from heartbeats.

Runners expose nothing themselves: the gateway exports what their heartbeats carry.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter as Tally
from typing import TYPE_CHECKING, Any

import nats.errors
from litestar import Controller, Request, get
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.plugins.prometheus import PrometheusConfig
from litestar.response import Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select

from gateway.db.models import Run
from gateway.routeopts import ERRORS_OPT, MEDIA_TYPE_OPT
from shared.contracts.common import RunStatus, utcnow

if TYPE_CHECKING:
    from gateway.state import GatewayState
    from shared.settings import Settings

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)
"""Seconds; a run may wait from a fraction of a second (a free runner) to hours (a busy fleet)."""
MB = 1024 * 1024


def http_metrics_config() -> PrometheusConfig:
    """Litestar's Prometheus middleware: HTTP figures by path template (`/api/v1/runs/{run_id}`, not one series
    per run); `/metrics` itself and paths no route serves (scanners would make a series each) left out."""
    return PrometheusConfig(app_name="trainforge", prefix="trainforge_http", group_path=True,
                            exclude=[f"^{METRICS_PATH}$"], exclude_unhandled_paths=True)


class GatewayMetrics:
    """Trainforge's own metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Gauge("trainforge_runs", "Runs by status and kind (every run the database holds).",
                          ["status", "kind"], registry=r)
        self.queue_length = Gauge("trainforge_queue_length", "Queued runs (no runner has claimed them) per pool.",
                                  ["pool"], registry=r)
        self.queue_oldest_wait = Gauge(
            "trainforge_queue_oldest_wait_seconds", "How long the oldest queued run of a pool has waited.",
            ["pool"], registry=r)
        self.dispatch_latency = Histogram(
            "trainforge_dispatch_latency_seconds",
            "From a run's creation to its job published by the dispatcher (the time it waited its turn).",
            ["pool"], buckets=WAIT_BUCKETS, registry=r)
        self.projection_lag = Gauge(
            "trainforge_projection_lag_events",
            "Events in the stream not yet projected into Postgres (pending plus delivered but unacknowledged).",
            registry=r)
        self.projected = Gauge(
            "trainforge_projected_events",
            "Events this gateway's projector stored since it started; rate() of it is the projection rate.",
            registry=r)
        self.sse_clients = Gauge("trainforge_sse_clients", "Server-sent-event streams open, by stream.",
                                 ["stream"], registry=r)
        self.runners = Gauge("trainforge_runners", "Runners by pool and state, as their heartbeats say.",
                             ["pool", "state"], registry=r)
        self.gpu_utilization = Gauge(
            "trainforge_runner_gpu_utilization_ratio", "GPU utilisation (0..1) per runner and GPU, from heartbeats.",
            ["runner", "gpu", "model"], registry=r)
        self.gpu_memory_used = Gauge(
            "trainforge_runner_gpu_memory_used_bytes", "GPU memory in use per runner and GPU, from heartbeats.",
            ["runner", "gpu", "model"], registry=r)
        self.gpu_memory_total = Gauge(
            "trainforge_runner_gpu_memory_total_bytes", "GPU memory per runner and GPU, from heartbeats.",
            ["runner", "gpu", "model"], registry=r)
        self.rate_limited = Counter("trainforge_rate_limit_refusals", "Requests refused with 429, by limit.",
                                    ["limit"], registry=r)
        self.scrape_errors = Counter(
            "trainforge_metrics_scrape_errors", "Scrapes that could not read a source (database, NATS).",
            ["source"], registry=r)

    def observe_dispatch(self, pool: str, created_at: Any) -> None:
        self.dispatch_latency.labels(pool=pool).observe(max(0.0, (utcnow() - created_at).total_seconds()))

    async def refresh(self, gw: GatewayState) -> None:
        """Read the state gauges fresh; a source that cannot answer keeps its last values and counts an error."""
        try:
            await self._refresh_runs(gw)
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
            log.warning("metrics: could not read runs (%r)", exc)
            self.scrape_errors.labels(source="database").inc()
        try:
            await self._refresh_projection(gw)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("metrics: could not read the projector's consumer (%r)", exc)
            self.scrape_errors.labels(source="nats").inc()
        self._refresh_live(gw)

    async def _refresh_runs(self, gw: GatewayState) -> None:
        async with gw.sessionmaker() as session:
            by_status = (await session.execute(
                select(Run.status, Run.kind, func.count()).group_by(Run.status, Run.kind))).all()
            queued = (await session.execute(
                select(Run.pool, func.count(), func.min(Run.created_at))
                .where(Run.status == RunStatus.QUEUED).group_by(Run.pool))).all()
        now = utcnow()
        self.runs.clear()
        for status in RunStatus:  # every status present, 0 included: a query of one status never goes empty
            for kind in {k for _, k, _ in by_status}:
                self.runs.labels(status=status.value, kind=kind).set(0)
        for stored, kind, count in by_status:
            self.runs.labels(status=stored, kind=kind).set(count)
        self.queue_length.clear()
        self.queue_oldest_wait.clear()
        for pool, count, oldest in queued:
            self.queue_length.labels(pool=pool).set(count)
            self.queue_oldest_wait.labels(pool=pool).set(max(0.0, (now - oldest).total_seconds()))

    async def _refresh_projection(self, gw: GatewayState) -> None:
        names = gw.subjects
        info = await gw.js.consumer_info(names.events_stream, names.projector_consumer, timeout=2)
        self.projection_lag.set((info.num_pending or 0) + (info.num_ack_pending or 0))

    def _refresh_live(self, gw: GatewayState) -> None:
        projector, hub, fleet = gw.projector, gw.eventhub, gw.fleet
        if projector is not None:
            self.projected.set(projector.projected)
        self.sse_clients.labels(stream="events").set(hub.subscribers if hub is not None else 0)
        self.sse_clients.labels(stream="resources").set(fleet.subscribers if fleet is not None else 0)
        self.runners.clear()
        self.gpu_utilization.clear()
        self.gpu_memory_used.clear()
        self.gpu_memory_total.clear()
        if fleet is None:
            return
        views = fleet.runners()
        for (pool, state), count in Tally((v.pool, v.state) for v in views).items():
            self.runners.labels(pool=pool, state=state).set(count)
        for view in views:
            if view.state in ("lost", "stopped"):
                continue
            for n, device in enumerate(d for d in view.devices if d.kind == "cuda"):
                labels = {"runner": view.id, "gpu": str(device.index if device.index is not None else n),
                          "model": device.name}
                if device.utilization is not None:
                    self.gpu_utilization.labels(**labels).set(device.utilization)
                if device.memory_used_mb is not None:
                    self.gpu_memory_used.labels(**labels).set(device.memory_used_mb * MB)
                if device.memory_total_mb is not None:
                    self.gpu_memory_total.labels(**labels).set(device.memory_total_mb * MB)

    def exposition(self) -> bytes:
        """The HTTP figures (process registry) and this app's, in the Prometheus text format."""
        return generate_latest(REGISTRY) + generate_latest(self.registry)


def metrics_of(request: Request[Any, Any, Any]) -> GatewayMetrics | None:
    """The app's metrics from a request (None before the lifespan ran)."""
    return getattr(request.app.state, "metrics", None)


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_scraper(request: Request[Any, Any, Any], settings: Settings) -> None:
    """Who may scrape: with `metrics_token` set, whoever sends `Authorization: Bearer <it>`; unset, loopback
    clients only unless `metrics_public`."""
    if settings.metrics_token:
        import hmac

        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {settings.metrics_token}".encode()):
            raise NotAuthorizedException(detail="metrics need `Authorization: Bearer <TRAINFORGE_METRICS_TOKEN>`")
        return
    if settings.metrics_public:
        return
    if not _loopback(request.client.host if request.client else None):
        raise PermissionDeniedException(
            detail="metrics are served to loopback clients only (set TRAINFORGE_METRICS_TOKEN to scrape from "
                   "elsewhere)")


METRICS_MEDIA_TYPE = "text/plain; version=1.0.0"
"""Prometheus' text format (`prometheus_client.CONTENT_TYPE_LATEST` less the charset, which the response adds)."""


class MetricsController(Controller):
    path = METRICS_PATH
    tags = ["health"]
    include_in_schema = True

    @get(summary="Prometheus metrics (text format)", opt={ERRORS_OPT: {401, 403}, MEDIA_TYPE_OPT: METRICS_MEDIA_TYPE},
         description="HTTP figures and Trainforge's own (runs, queue, dispatch latency, projection lag, SSE "
                     "clients, runners, GPUs, rate-limit refusals). Loopback clients only, or with "
                     "`Authorization: Bearer <TRAINFORGE_METRICS_TOKEN>` when that is set.")
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        gw = request.app.state.gw
        check_scraper(request, gw.settings)
        metrics: GatewayMetrics = request.app.state.metrics
        started = time.monotonic()
        await metrics.refresh(gw)
        log.debug("metrics: refreshed in %.3f s", time.monotonic() - started)
        return Response(metrics.exposition(), media_type=METRICS_MEDIA_TYPE)
