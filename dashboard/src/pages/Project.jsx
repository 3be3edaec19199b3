import { useEffect, useRef, useState } from "preact/hooks";
import { API, del, get, patch, request } from "../api.js";
import { useEventStream } from "../live.js";
import { Link, navigate, useLocation } from "../router.jsx";
import { ErrorBox, Field, StatusBadge, duration, when } from "../components/ui.jsx";

const FEED = 100; // the project's status events, newest first, at most these
const REPLAYED = "stream.replayed"; // the project stream's mark between the stored history and the live part

function Members({ project }) {
  const [members, setMembers] = useState(null);
  const [username, setUsername] = useState("");
  const [role, setRole] = useState("member");
  const [error, setError] = useState(null);
  const load = () => get(`/projects/${project.id}/members`).then(setMembers, setError);
  useEffect(() => { load(); }, [project.id]);
  const add = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      await request("PUT", `/projects/${project.id}/members/${encodeURIComponent(username)}`, { role });
      setUsername("");
      load();
    } catch (err) { setError(err); }
  };
  const remove = async (name) => {
    setError(null);
    try { await del(`/projects/${project.id}/members/${encodeURIComponent(name)}`); load(); } catch (err) { setError(err); }
  };
  return (
    <section class="card" data-testid="members">
      <h3>Members</h3>
      <table class="table compact">
        <tbody>{(members || []).map((m) => (
          <tr key={m.user_id} data-member={m.username}><td>{m.username}</td><td>{m.role}</td>
            <td><button onClick={() => remove(m.username)}>Remove</button></td></tr>))}</tbody>
      </table>
      <form class="inline-form" onSubmit={add}>
        <Field label="Username"><input name="member" value={username} onInput={(e) => setUsername(e.target.value)} required /></Field>
        <Field label="Role">
          <select name="role" value={role} onChange={(e) => setRole(e.target.value)}>
            <option value="viewer">viewer</option><option value="member">member</option><option value="owner">owner</option>
          </select>
        </Field>
        <button type="submit">Add or change</button>
      </form>
      <ErrorBox error={error} />
    </section>
  );
}

const STATUSES = ["", "queued", "claimed", "running", "canceling", "completed", "failed", "canceled"];
const KINDS = ["", "yolo.train", "yolo.val", "yolo.export", "yolo.predict", "container"];
const STATUS_EVENTS = ["run.queued", "run.claimed", "run.started", "run.paused", "run.unpaused", "run.completed",
  "run.failed", "run.cancel_requested", "run.canceled", "run.requeued"];
const FEED_URL = (id) => `${API}/projects/${id}/events?types=${STATUS_EVENTS.join(",")}&history=${FEED}`;

// one feed line of a status event: what happened, and by whom where the event says
function feedText(type, e) {
  const parts = [type.replace("run.", "")];
  if (e.attempt > 1) parts.push(`attempt ${e.attempt}`);
  if (type === "run.claimed" && e.runner_id) parts.push(`by ${e.runner_id}`);
  if (type === "run.requeued" && e.reason) parts.push(e.reason);
  if (type === "run.failed" && e.error) parts.push(String(e.error).slice(0, 120));
  return parts.join(" · ");
}

function bestMetric(run) {
  const m = run.latest_metrics || {};
  for (const k of ["metrics/mAP50-95(B)", "metrics/mAP50(B)", "metrics/accuracy_top1", "fitness"]) {
    if (typeof m[k] === "number") return `${k.replace("metrics/", "")} ${m[k].toFixed(3)}`;
  }
  return "";
}

export function Project({ id }) {
  const { query } = useLocation();
  const status = query.get("status") || "";
  const kind = query.get("kind") || "";
  const [project, setProject] = useState(null);
  const [runs, setRuns] = useState(null);
  const [error, setError] = useState(null);
  const [picked, setPicked] = useState(new Set());
  const [feed, setFeed] = useState([]);
  const [actionError, setActionError] = useState(null);
  const toggle = (runId) => {
    const next = new Set(picked);
    if (next.has(runId)) next.delete(runId); else next.add(runId);
    setPicked(next);
  };
  const live = useRef(false); // the feed's stream is past its stored history (stream.replayed)
  const refreshing = useRef(new Map()); // run id → "busy" | "again": one fetch per run at a time

  useEffect(() => { get(`/projects/${encodeURIComponent(id)}`).then(setProject, setError); }, [id]);
  useEffect(() => {
    const params = new URLSearchParams({ limit: "200" });
    if (status) params.set("status", status);
    if (kind) params.set("kind", kind);
    let current = true; // an answer for filters changed meanwhile is dropped
    get(`/projects/${encodeURIComponent(id)}/runs?${params}`)
      .then((page) => { if (current) setRuns(page.items); }, (e) => current && setError(e));
    return () => { current = false; };
  }, [id, status, kind]);

  const refresh = async (runId) => {
    const state = refreshing.current;
    if (state.has(runId)) { state.set(runId, "again"); return; }
    state.set(runId, "busy");
    try {
      const run = await get(`/runs/${runId}`);
      setRuns((rows) => {
        if (!rows) return rows;
        const fits = (!status || status.split(",").includes(run.status)) && (!kind || run.kind === kind);
        const others = rows.filter((r) => r.id !== run.id);
        if (!fits) return others;
        return rows.some((r) => r.id === run.id) ? rows.map((r) => (r.id === run.id ? run : r)) : [run, ...others];
      });
    } catch { /* deleted meanwhile */ }
    const again = state.get(runId) === "again";
    state.delete(runId);
    if (again) refresh(runId);
  };

  // the feed: the project's stored status events (its newest FEED, replayed), then live ones, which also
  // refresh their run's row (the stored ones are already in the table the API gave)
  useEventStream(project ? FEED_URL(project.id) : null, (type, e, id) => {
    if (type === REPLAYED) { live.current = true; return; }
    if (live.current) refresh(e.run_id);
    setFeed((items) => [{ id, type, run: e.run_id, ts: e.ts, text: feedText(type, e) }, ...items].slice(0, FEED));
  }, [...STATUS_EVENTS, REPLAYED]);
  // progress: no replay (tail), only what moves from now on; reconnects resume by id
  useEventStream(project ? `${API}/projects/${project.id}/events?tail=true&types=run.progress` : null, (type, e) => {
    setRuns((rows) => rows && rows.map((r) => (r.id === e.run_id ? { ...r, progress: e.progress } : r)));
  }, ["run.progress"]);

  const setFilter = (name, value) => {
    const q = new URLSearchParams(location.search);
    if (value) q.set(name, value); else q.delete(name);
    navigate(`${location.pathname}${q.toString() ? `?${q}` : ""}`, { replace: true });
  };

  const archive = async () => {
    setActionError(null);
    const status = project.status === "archived" ? "active" : "archived";
    try { setProject(await patch(`/projects/${project.id}`, { status })); } catch (err) { setActionError(err); }
  };

  if (error) return <main><ErrorBox error={error} /></main>;
  if (!project) return <main><p class="muted">loading…</p></main>;
  return (
    <main data-testid="project-page" data-project={project.name}>
      <p class="crumbs"><Link href="/projects">projects</Link> / {project.name}</p>
      <header class="page-head">
        <h1>{project.name}</h1>
        <span class="muted">{project.description}</span>
        {project.status === "archived" ? <span class="badge">archived</span> : null}
        <span class="grow" />
        <button data-testid="archive" onClick={archive}>{project.status === "archived" ? "Unarchive" : "Archive"}</button>
        <button data-testid="compare" disabled={picked.size < 2}
          onClick={() => navigate(`/compare?runs=${[...picked].join(",")}`)}>Compare{picked.size ? ` (${picked.size})` : ""}</button>
        <button class="primary" data-testid="new-run" onClick={() => navigate(`/projects/${project.id}/new`)}>New run</button>
      </header>
      <ErrorBox error={actionError} />
      <div class="filters">
        <label>Status <select value={status} data-testid="filter-status" onChange={(e) => setFilter("status", e.target.value)}>
          {STATUSES.map((s) => <option value={s} key={s}>{s || "any"}</option>)}</select></label>
        <label>Kind <select value={kind} data-testid="filter-kind" onChange={(e) => setFilter("kind", e.target.value)}>
          {KINDS.map((k) => <option value={k} key={k}>{k || "any"}</option>)}</select></label>
      </div>
      {runs ? (
        <table class="table" data-testid="runs">
          <thead><tr><th /><th>Run</th><th>Kind</th><th>Status</th><th>Progress</th><th>Best metric</th><th>Runner</th><th>Started</th><th>Duration</th></tr></thead>
          <tbody>
            {runs.map((r) => (
              <tr key={r.id} data-run={r.id}>
                <td><input type="checkbox" aria-label="compare" checked={picked.has(r.id)} onChange={() => toggle(r.id)} /></td>
                <td><Link href={`/runs/${r.id}`} class="mono">{r.id.slice(0, 8)}</Link></td>
                <td>{r.kind}</td>
                <td><StatusBadge status={r.status} /></td>
                <td><div class="bar small"><div style={{ width: `${Math.round((r.progress || 0) * 100)}%` }} /></div></td>
                <td>{bestMetric(r)}</td>
                <td class="mono small">{r.runner_id || ""}</td>
                <td>{when(r.started_at)}</td>
                <td>{duration(r.started_at, r.finished_at)}</td>
              </tr>
            ))}
            {runs.length === 0 ? <tr><td colspan="9" class="muted">No runs{status || kind ? " match" : " yet"}.</td></tr> : null}
          </tbody>
        </table>
      ) : <p class="muted">loading…</p>}
      <div class="two">
        <Members project={project} />
        <section class="card" data-testid="feed">
          <h3>Events</h3>
          <p class="hint muted">the project's stored status events (the newest {FEED}), then what happens live</p>
          <ol class="timeline">{feed.map((f) => (
            <li key={f.id} data-type={f.type}><span class="mono">{when(f.ts)}</span> <Link href={`/runs/${f.run}`} class="mono">{f.run.slice(0, 8)}</Link>{" "}
              {f.text}</li>))}</ol>
        </section>
      </div>
    </main>
  );
}
