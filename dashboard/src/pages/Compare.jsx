// Compare runs: /compare?runs=<id>,<id>,... — their per-epoch curves overlaid (one chart per metric, one
// line per run) and a table of their arguments and final metrics, the rows that differ highlighted.
import { useEffect, useState } from "preact/hooks";
import { get } from "../api.js";
import { Link, useLocation } from "../router.jsx";
import { Chart } from "../components/Chart.jsx";
import { ErrorBox, StatusBadge } from "../components/ui.jsx";

const PAGE = 5000;
const MAX_RUNS = 10;

async function epochMetrics(runId) {
  // every run.metrics event with an epoch, oldest first; the newest attempt's value wins for an epoch
  const byEpoch = new Map();
  let after = 0;
  for (;;) {
    const page = await get(`/runs/${runId}/metrics?limit=${PAGE}&after=${after}`);
    for (const m of page.items) if (m.epoch != null) byEpoch.set(m.epoch, m.metrics);
    if (page.items.length < PAGE || page.next_after === after) break;
    after = page.next_after;
  }
  return byEpoch;
}

function label(run) {
  return `${run.id.slice(0, 8)} ${run.kind}`;
}

function show(value) {
  if (value === undefined) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4);
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function Compare() {
  const { query } = useLocation();
  const ids = (query.get("runs") || "").split(",").filter(Boolean).slice(0, MAX_RUNS);
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [metric, setMetric] = useState("");

  useEffect(() => {
    setData(null);
    Promise.all(ids.map(async (id) => ({ run: await get(`/runs/${id}`), epochs: await epochMetrics(id) })))
      .then(setData, setError);
  }, [ids.join(",")]);

  if (ids.length < 2) return <main><h1>Compare</h1><p class="muted">Pick two or more runs on a project's page.</p></main>;
  if (error) return <main><h1>Compare</h1><ErrorBox error={error} /></main>;
  if (!data) return <main><h1>Compare</h1><p class="muted">loading…</p></main>;

  const names = [...new Set(data.flatMap((d) => [...d.epochs.values()].flatMap((m) => Object.keys(m))))].sort();
  // by default a score that moves (an untrained model's mAP is 0 throughout: then a loss)
  const values = (n) => data.flatMap((d) => [...d.epochs.values()].map((m) => m[n]).filter((v) => typeof v === "number"));
  const moves = (n) => new Set(values(n)).size > 1;
  const preferred = [...names.filter((n) => n.includes("mAP50-95")), ...names.filter((n) => n.startsWith("metrics/")),
    ...names.filter((n) => n.includes("loss")), ...names];
  const chosen = names.includes(metric) ? metric : (preferred.find(moves) || preferred[0] || "");
  const x = [...new Set(data.flatMap((d) => [...d.epochs.keys()]))].sort((a, b) => a - b);
  const series = new Map(data.map((d) => [label(d.run), x.map((e) => {
    const v = d.epochs.get(e)?.[chosen];
    return typeof v === "number" ? v : null;
  })]));

  const argNames = [...new Set(data.flatMap((d) => Object.keys(d.run.spec || {})))].filter((k) => k !== "kind").sort();
  const finalNames = [...new Set(data.flatMap((d) => Object.keys(d.run.latest_metrics || {})))].sort();
  const row = (name, values, key) => {
    const shown = values.map(show);
    const differs = new Set(shown).size > 1;
    return (
      <tr key={key} class={differs ? "differs" : ""} data-differs={differs ? "yes" : "no"}>
        <th class="mono">{name}</th>{shown.map((v, i) => <td key={i} class="mono">{v}</td>)}
      </tr>
    );
  };

  return (
    <main data-testid="compare-page">
      <h1>Compare {data.length} runs</h1>
      <div class="filters">
        <label>Metric <select value={chosen} data-testid="compare-metric" onChange={(e) => setMetric(e.target.value)}>
          {names.map((n) => <option key={n} value={n}>{n}</option>)}</select></label>
      </div>
      {chosen ? <Chart name="compare" title={chosen} x={x} series={series} version={`${chosen}:${x.length}`} />
        : <p class="card muted">These runs reported no per-epoch metrics.</p>}
      <table class="table compare" data-testid="compare-table">
        <thead><tr><th />{data.map((d) => (
          <th key={d.run.id}><Link href={`/runs/${d.run.id}`} class="mono">{d.run.id.slice(0, 8)}</Link>{" "}
            <StatusBadge status={d.run.status} /></th>))}</tr></thead>
        <tbody>
          {row("kind", data.map((d) => d.run.kind), "kind")}
          <tr class="section"><th colspan={data.length + 1}>Arguments</th></tr>
          {argNames.map((k) => row(k, data.map((d) => d.run.spec[k]), `a:${k}`))}
          <tr class="section"><th colspan={data.length + 1}>Final metrics</th></tr>
          {finalNames.map((k) => row(k, data.map((d) => d.run.latest_metrics[k]), `m:${k}`))}
        </tbody>
      </table>
    </main>
  );
}
