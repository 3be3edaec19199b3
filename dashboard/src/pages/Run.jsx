import { useEffect, useRef, useState } from "preact/hooks";
import { API, get, post } from "../api.js";
import { useEventStream } from "../live.js";
import { Link, navigate } from "../router.jsx";
import { RunModel } from "../runmodel.js";
import { Chart } from "../components/Chart.jsx";
import { LogTail } from "../components/LogTail.jsx";
import { ErrorBox, StatusBadge, TERMINAL, bytes, duration, when } from "../components/ui.jsx";

const IMAGE = /\.(png|jpe?g|webp|gif|bmp)$/i;

function useRedraw() {
  // coalesce many events into one render per animation frame
  const [version, setVersion] = useState(0);
  const pending = useRef(false);
  return [version, () => {
    if (pending.current) return;
    pending.current = true;
    requestAnimationFrame(() => { pending.current = false; setVersion((v) => v + 1); });
  }];
}

export function Run({ id }) {
  const [run, setRun] = useState(null);
  const [project, setProject] = useState(null);
  const [error, setError] = useState(null);
  const [actionError, setActionError] = useState(null);
  const model = useRef(null);
  if (model.current === null || model.current.runId !== id) {
    model.current = new RunModel();
    model.current.runId = id;
  }
  const m = model.current;
  const [version, redraw] = useRedraw();

  const reload = () => get(`/runs/${id}`).then((r) => {
    setRun(r);
    for (const a of r.artifacts) if (!m.artifacts.has(a.id)) m.artifacts.set(a.id, a);
    for (const c of r.checkpoints) if (!m.checkpoints.has(c.id)) m.checkpoints.set(c.id, c);
    redraw();
  }, setError);
  useEffect(() => { setRun(null); reload(); }, [id]);
  const projectId = run && run.project_id;
  useEffect(() => { if (projectId) get(`/projects/${projectId}`).then(setProject, () => {}); }, [projectId]);

  useEventStream(`${API}/runs/${encodeURIComponent(id)}/events`, (type, data, eventId) => {
    m.apply(type, data, eventId);
    if (type !== "run.log" && type !== "run.metrics" && type !== "run.progress" && type !== "run.checkpoint"
        && type !== "run.artifact") reload(); // the status changed: the API's view of the run
    else redraw();
  });

  const cancel = async () => {
    setActionError(null);
    try { setRun({ ...run, ...(await post(`/runs/${id}/cancel`)) }); } catch (e) { setActionError(e); }
  };
  const resume = async (checkpointId) => {
    setActionError(null);
    try {
      const next = await post(`/runs/${id}/resume`, checkpointId ? { checkpoint_id: checkpointId } : {});
      navigate(`/runs/${next.id}`);
    } catch (e) { setActionError(e); }
  };

  if (error) return <main><ErrorBox error={error} /></main>;
  if (!run) return <main><p class="muted">loading…</p></main>;
  const p = m.progress;
  const terminal = TERMINAL.has(run.status);
  const checkpoints = [...m.checkpoints.values()].sort((a, b) => (b.epoch ?? 0) - (a.epoch ?? 0));
  const artifacts = [...m.artifacts.values()].sort((a, b) => a.name.localeCompare(b.name));
  const images = artifacts.filter((a) => IMAGE.test(a.name));

  return (
    <main data-testid="run-page" data-run={run.id} data-status={run.status}>
      <p class="crumbs"><Link href="/projects">projects</Link> / <Link href={`/projects/${run.project_id}`}>
        {project ? project.name : "project"}</Link> / run</p>
      <header class="page-head">
        <h1>{run.kind} <span class="mono">{run.id.slice(0, 8)}</span></h1>
        <StatusBadge status={run.status} />
        {!terminal ? <button class="danger" onClick={cancel} data-testid="cancel"
          disabled={run.cancel_requested}>Cancel</button> : null}
      </header>
      <ErrorBox error={actionError} />
      {run.error ? <p class="error">{run.failure_cause ? `${run.failure_cause}: ` : ""}{run.error}</p> : null}
      <section class="card progress-card" data-testid="progress">
        <div class="bar"><div style={{ width: `${Math.round((terminal && run.status === "completed" ? 1 : (p ? p.progress : run.progress)) * 100)}%` }} /></div>
        <p>
          {p && p.epochs ? `epoch ${p.epoch ?? 0}/${p.epochs}` : ""}
          {p && p.batches ? ` · batch ${p.batch ?? 0}/${p.batches}` : ""}
          {p && p.eta_s != null && !terminal ? ` · ETA ${Math.round(p.eta_s)}s` : ""}
          {p && p.message ? ` · ${p.message}` : ""}
        </p>
        <p class="muted small">
          runner {run.runner_id || "—"} · attempt {run.attempt} · started {when(run.started_at)}
          {run.started_at ? ` · ${duration(run.started_at, run.finished_at)}` : ""}
        </p>
      </section>
      {Object.values(m.epochs).some((g) => g.x.length) || m.batches.x.length ? null
        : <p class="card muted" data-testid="no-metrics">No metrics from this run yet.</p>}
      <div class="charts">
        <Chart name="losses" title="Losses per epoch" {...m.epochs.losses} version={version} />
        <Chart name="metrics" title="Metrics per epoch" {...m.epochs.metrics} version={version} />
        <Chart name="lr" title="Learning rate" {...m.epochs.lr} version={version} />
        <Chart name="batch" title="Batch losses" xLabel="batch" {...m.batches} version={version} />
      </div>
      <LogTail buffer={m.logs} version={version} />
      <div class="two">
        <section class="card">
          <h3>Timeline</h3>
          <ol class="timeline" data-testid="timeline">
            {m.timeline.map((t) => (
              <li key={t.id}><span class="mono">{when(t.ts)}</span> {t.type.replace("run.", "")}
                <span class="muted"> · attempt {t.attempt}{t.runner ? ` · ${t.runner}` : ""}{t.detail ? ` · ${t.detail}` : ""}</span></li>
            ))}
          </ol>
        </section>
        <section class="card">
          <h3>Checkpoints</h3>
          <table class="table compact" data-testid="checkpoints">
            <thead><tr><th>Epoch</th><th>Size</th><th /></tr></thead>
            <tbody>
              {checkpoints.map((c) => (
                <tr key={c.id} data-epoch={c.epoch}><td>{c.epoch ?? c.step ?? ""}</td><td>{bytes(c.size_bytes)}</td>
                  <td>{c.resumable && terminal ? <button onClick={() => resume(c.id)}>Resume from here</button> : null}</td></tr>
              ))}
              {checkpoints.length === 0 ? <tr><td colspan="3" class="muted">none</td></tr> : null}
            </tbody>
          </table>
        </section>
      </div>
      <section class="card">
        <h3>Artifacts</h3>
        <table class="table compact" data-testid="artifacts">
          <tbody>
            {artifacts.map((a) => (
              <tr key={a.id}><td><a href={`${API}/artifacts/${a.id}/download`} download={a.name.split("/").pop()}>{a.name}</a></td>
                <td>{a.kind}</td><td>{bytes(a.size_bytes)}</td></tr>
            ))}
            {artifacts.length === 0 ? <tr><td class="muted">none</td></tr> : null}
          </tbody>
        </table>
      </section>
      {images.length ? (
        <section class="card">
          <h3>Plots and images</h3>
          <div class="gallery" data-testid="images">
            {images.map((a) => (
              <figure key={a.id}><img src={`${API}/artifacts/${a.id}/download`} alt={a.name} />
                <figcaption>{a.name}</figcaption></figure>
            ))}
          </div>
        </section>
      ) : null}
    </main>
  );
}
