// Fleet: runners (state, device, current run; drain/resume for admins), live CPU and memory charts per host
// from the resources stream, and the queue with each run's place and the reason it waits.
import { useEffect, useRef, useState } from "preact/hooks";
import { API, get, post, session } from "../api.js";
import { useEventStream } from "../live.js";
import { Link } from "../router.jsx";
import { Chart } from "../components/Chart.jsx";
import { ErrorBox, when } from "../components/ui.jsx";

const POINTS = 600; // per host: ten minutes of samples at one a second, then the oldest go

class HostSeries {
  constructor() {
    this.x = [];
    this.series = new Map([["cpu %", []], ["memory %", []]]);
  }

  add(t, sample) {
    const mem = sample.memory_total_mb ? (100 * sample.memory_used_mb) / sample.memory_total_mb : null;
    this.x.push(t);
    this.series.get("cpu %").push(sample.cpu_percent ?? null);
    this.series.get("memory %").push(mem);
    for (const [i, gpu] of (sample.gpus || []).entries()) {
      const name = `gpu${i} %`;
      if (!this.series.has(name)) {
        this.series = new Map(this.series);
        this.series.set(name, this.x.slice(0, -1).map(() => null));
      }
      this.series.get(name).push(gpu.utilization ?? null);
    }
    for (const arr of this.series.values()) if (arr.length < this.x.length) arr.push(null);
    if (this.x.length > POINTS) {
      this.x.splice(0, this.x.length - POINTS);
      for (const arr of this.series.values()) arr.splice(0, arr.length - POINTS);
    }
  }
}

export function Fleet() {
  const [runners, setRunners] = useState(null);
  const [queue, setQueue] = useState(null);
  const [error, setError] = useState(null);
  const [actionError, setActionError] = useState(null);
  const [version, setVersion] = useState(0);
  const hosts = useRef(new Map());
  const known = useRef(new Set());
  const start = useRef(Date.now());
  const admin = session && session.user.is_admin;

  const loadRunners = () => get("/runners?limit=200").then((p) => {
    setRunners(p.items);
    known.current = new Set(p.items.map((r) => r.id));
  }, setError);
  useEffect(() => { loadRunners(); get("/queue").then(setQueue, () => setQueue(null)); }, []);

  const addSample = (sample) => {
    if (!hosts.current.has(sample.host)) hosts.current.set(sample.host, new HostSeries());
    hosts.current.get(sample.host).add(Math.round((Date.parse(sample.sampled_at) - start.current) / 1000), sample);
  };
  useEventStream(`${API}/system/resources/events`, (type, data) => {
    if (type === "resources") for (const h of data.hosts) addSample(h);
    else {
      addSample(data);
      // a runner not listed yet: the list is read again (an event, not a timer)
      if ((data.runners || []).some((r) => !known.current.has(r))) loadRunners();
    }
    setVersion((v) => v + 1);
  }, ["resources", "sample"]);

  const control = async (id, action) => {
    setActionError(null);
    try { await post(`/runners/${encodeURIComponent(id)}/${action}`); await loadRunners(); } catch (e) { setActionError(e); }
  };

  return (
    <main data-testid="fleet-page">
      <h1>Fleet</h1>
      <ErrorBox error={error} />
      <ErrorBox error={actionError} />
      {runners ? (
        <table class="table" data-testid="runners">
          <thead><tr><th>Runner</th><th>State</th><th>Host</th><th>Pool</th><th>Device</th><th>Current run</th><th>Last seen</th>{admin ? <th /> : null}</tr></thead>
          <tbody>
            {runners.map((r) => (
              <tr key={r.id} data-runner={r.id}>
                <td class="mono">{r.id}</td>
                <td><span class={`badge r-${r.state}`}>{r.state}</span></td>
                <td>{r.host}</td><td>{r.pool}</td>
                <td>{r.device}{r.devices.length ? ` (${r.devices.map((d) => d.name).join(", ")})` : ""}</td>
                <td>{r.current_run ? <Link href={`/runs/${r.current_run}`} class="mono">{r.current_run.slice(0, 8)}</Link> : ""}</td>
                <td>{when(r.last_seen)}</td>
                {admin ? <td>{r.state === "draining"
                  ? <button onClick={() => control(r.id, "resume")}>Resume</button>
                  : <button onClick={() => control(r.id, "drain")} disabled={r.state === "lost" || r.state === "stopped"}>Drain</button>}</td> : null}
              </tr>
            ))}
            {runners.length === 0 ? <tr><td colspan="8" class="muted">No runner has reported.</td></tr> : null}
          </tbody>
        </table>
      ) : <p class="muted">loading…</p>}
      <div class="charts" data-testid="host-charts">
        {[...hosts.current.entries()].map(([host, s]) => (
          <Chart key={host} name={`host:${host}`} title={`${host}: CPU, memory, GPU (%)`} x={s.x} series={s.series}
            version={version} xLabel="seconds" height={180} />
        ))}
      </div>
      {queue ? (
        <section class="card">
          <h3>Queue</h3>
          <table class="table compact" data-testid="queue">
            <thead><tr><th>Place</th><th>Run</th><th>Pool</th><th>Kind</th><th>Priority</th><th>Why it waits</th></tr></thead>
            <tbody>
              {queue.items.map((q) => (
                <tr key={q.run_id}><td>{q.position ?? "—"}</td><td><Link href={`/runs/${q.run_id}`} class="mono">{q.run_id.slice(0, 8)}</Link></td>
                  <td>{q.pool}</td><td>{q.kind}</td><td>{q.priority}</td><td>{q.reason || ""}</td></tr>
              ))}
              {queue.items.length === 0 ? <tr><td colspan="6" class="muted">Nothing waits.</td></tr> : null}
            </tbody>
          </table>
        </section>
      ) : null}
    </main>
  );
}
