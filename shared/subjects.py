"""Every stream, subject, consumer and bucket name, in one place.

All names hang off a prefix (setting `TRAINFORGE_BUS_PREFIX`, default `tf`) so that several deployments
(or test runs) can share one NATS server. Subjects carry a version token (`v1`): a breaking change to a
message is a new tag or a `.v2` subject, never a silent change of `v1`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.contracts.common import TOKEN_RE


def _token(value: str, what: str) -> str:
    if not TOKEN_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: letters, digits, '-' and '_' only, at most 64")
    return value


@dataclass(frozen=True, slots=True)
class Subjects:
    prefix: str = "tf"

    # -- jobs: a work-queue stream, one subject (and one durable consumer) per runner pool -------------
    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix.upper()}_JOBS"

    def job(self, pool: str) -> str:
        return f"{self.prefix}.jobs.v1.{_token(pool, 'pool')}"

    @property
    def jobs_all(self) -> str:
        return f"{self.prefix}.jobs.v1.*"

    def pool_consumer(self, pool: str) -> str:
        return f"pool-{_token(pool, 'pool')}"

    # -- events: a limits stream; one subject per run and event type ---------------------------------
    @property
    def events_stream(self) -> str:
        return f"{self.prefix.upper()}_EVENTS"

    def run_event(self, project_id: str, run_id: str, event_type: str) -> str:
        return f"{self.prefix}.events.v1.{project_id}.{run_id}.{event_type}"

    def run_events(self, project_id: str, run_id: str) -> str:
        return f"{self.prefix}.events.v1.{project_id}.{run_id}.>"

    @property
    def events_all(self) -> str:
        return f"{self.prefix}.events.v1.>"

    @property
    def projector_consumer(self) -> str:
        return "projector"

    @property
    def webhooks_consumer(self) -> str:
        """The gateway's durable consumer that delivers events to webhooks (`gateway.webhooks.deliverer`)."""
        return "webhooks"

    # -- runners: heartbeats, the latest one per runner kept ------------------------------------------
    @property
    def runners_stream(self) -> str:
        return f"{self.prefix.upper()}_RUNNERS"

    def runner_heartbeat(self, runner_id: str) -> str:
        return f"{self.prefix}.runners.v1.{_token(runner_id, 'runner id')}.heartbeat"

    @property
    def runner_heartbeats_all(self) -> str:
        return f"{self.prefix}.runners.v1.*.heartbeat"

    # -- control: cancel (core NATS for speed, plus a KV record so a runner claiming later sees it) ---
    def cancel(self, run_id: str) -> str:
        return f"{self.prefix}.control.v1.cancel.{run_id}"

    @property
    def cancel_all(self) -> str:
        return f"{self.prefix}.control.v1.cancel.*"

    @property
    def control_all(self) -> str:
        """Every control subject: cancel, dispatch, preflight, runner control, advice."""
        return f"{self.prefix}.control.v1.>"

    # -- control: pause/unpause of one run (request/reply; the runner running it answers) -----------------
    def run_pause(self, run_id: str) -> str:
        return f"{self.prefix}.control.v1.pause.{_token(run_id, 'run id')}"

    @property
    def run_pause_all(self) -> str:
        return f"{self.prefix}.control.v1.pause.*"

    @property
    def cancel_bucket(self) -> str:
        return f"{self.prefix}_cancels"

    # -- scheduling: leases held while a run runs (limits), and the dispatcher's leader lock --------
    @property
    def leases_bucket(self) -> str:
        """KV bucket of run leases (`global.<n>`, `user.<owner>.<n>`, `project.<id>.<n>`) and the key
        `dispatcher` (which gateway dispatches); every key lapses `lease_ttl_s` after its last write."""
        return f"{self.prefix}_leases"

    @property
    def attempts_bucket(self) -> str:
        """KV bucket of attempt claims: key `<run_id>`, held by the one attempt that may run the run now
        (`runner.claims`); keys are kept 7 days after their last write."""
        return f"{self.prefix}_attempts"

    @property
    def dispatch_wake(self) -> str:
        """Core NATS: a gateway that is not the dispatching one asks it to look at the queue now."""
        return f"{self.prefix}.control.v1.dispatch"

    # -- rate limits: request counts shared by every gateway --------------------------------------------
    @property
    def rate_limits_bucket(self) -> str:
        """KV bucket (in memory) of the gateways' rate-limit counts; keys lapse 2 minutes after their last write."""
        return f"{self.prefix}_rate_limits"

    # -- artifacts: a JetStream object store (setting `artifact_store = nats`) ------------------------
    @property
    def artifacts_bucket(self) -> str:
        return f"{self.prefix}_artifacts"

    # -- preflight: request/reply, answered by one runner of the pool (queue group) -------------------
    def preflight(self, pool: str) -> str:
        return f"{self.prefix}.control.v1.preflight.{_token(pool, 'pool')}"

    @property
    def preflight_group(self) -> str:
        return "preflight"

    # -- fleet: drain/resume one runner; resource advice from a runner of a pool (request/reply) -------
    def runner_control(self, runner_id: str) -> str:
        return f"{self.prefix}.control.v1.runner.{_token(runner_id, 'runner id')}"

    def advice(self, pool: str) -> str:
        return f"{self.prefix}.control.v1.advice.{_token(pool, 'pool')}"

    @property
    def advice_group(self) -> str:
        return "advice"

    # -- synchronous predict: request/reply, answered by one runner of the pool (queue group) -----------
    def predict(self, pool: str) -> str:
        """One image through a loaded model, answered at once (`shared.contracts.yolo_service.PredictRequest`)."""
        return f"{self.prefix}.control.v1.predict.{_token(pool, 'pool')}"

    @property
    def predict_group(self) -> str:
        return "predict"

    # -- YOLO services: request/reply, answered by one runner that has Ultralytics (queue group) -------
    def yolo_service(self, operation: str) -> str:
        """`architecture` (validate a model YAML) or `export_formats` (what this runner can export to);
        the gateway asks, so that torch and Ultralytics never load into its process."""
        return f"{self.prefix}.control.v1.yolo.{_token(operation, 'operation')}"

    @property
    def yolo_service_group(self) -> str:
        return "yolo-service"
