// Models (the weights library): models with their latest version; a model's versions with their metrics,
// source run, dataset and parent version (lineage), and the weights to download.
import { useEffect, useState } from "preact/hooks";
import { API, get, post, upload } from "../api.js";
import { Link, navigate } from "../router.jsx";
import { ErrorBox, Field, bytes, when } from "../components/ui.jsx";

const KEY_METRICS = ["metrics/mAP50-95(B)", "metrics/mAP50(B)", "metrics/precision(B)", "metrics/recall(B)",
  "metrics/accuracy_top1", "fitness"];

function keyMetrics(metrics) {
  return KEY_METRICS.filter((k) => typeof metrics[k] === "number")
    .map((k) => `${k.replace("metrics/", "")} ${metrics[k].toFixed(3)}`).join(" · ");
}

export function Models() {
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { get("/models?limit=200").then(setPage, setError); }, []);
  return (
    <main>
      <h1>Models</h1>
      <ErrorBox error={error} />
      {page ? (
        <table class="table" data-testid="models">
          <thead><tr><th>Name</th><th>Task</th><th>Versions</th><th>Latest</th><th>Updated</th></tr></thead>
          <tbody>
            {page.items.map((m) => (
              <tr key={m.id} data-model={m.name}>
                <td><Link href={`/models/${m.id}`}>{m.name}</Link></td><td>{m.task}</td><td>{m.versions_count}</td>
                <td>{m.latest ? `v${m.latest.version} ${keyMetrics(m.latest.metrics)}` : ""}</td><td>{when(m.updated_at)}</td>
              </tr>
            ))}
            {page.items.length === 0 ? <tr><td colspan="5" class="muted">No models yet: a completed training registers its best weights here.</td></tr> : null}
          </tbody>
        </table>
      ) : <p class="muted">loading…</p>}
    </main>
  );
}

function Export({ model, versions }) {
  const [formats, setFormats] = useState([]);
  const [projects, setProjects] = useState([]);
  const [form, setForm] = useState({ version: String(versions[0].version), format: "onnx", project: "", imgsz: "640",
    opset: "", half: false, int8: false, dynamic: false });
  const [error, setError] = useState(null);
  const [errors, setErrors] = useState({});
  useEffect(() => {
    get("/export-formats").then((f) => setFormats(f.items), () => {});
    get("/projects?limit=200").then((p) => {
      setProjects(p.items);
      if (p.items.length) setForm((f) => ({ ...f, project: f.project || p.items[0].id }));
    }, () => {});
  }, []);
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  const check = (k) => (e) => setForm({ ...form, [k]: e.target.checked });
  // the options a yolo.export request takes (shared/contracts/yolo.py YoloExportSpec); unset ones keep its defaults
  const start = async (e) => {
    e.preventDefault();
    setError(null);
    setErrors({});
    const body = { kind: "yolo.export", model: `library:${model.name}:${form.version}`, format: form.format,
      imgsz: Number(form.imgsz) };
    if (form.opset.trim()) body.opset = Number(form.opset);
    for (const k of ["half", "int8", "dynamic"]) if (form[k]) body[k] = true;
    try {
      const run = await post(`/projects/${form.project}/runs`, body);
      navigate(`/runs/${run.id}`);
    } catch (err) {
      const fields = err.fieldErrors ? err.fieldErrors() : {};
      setErrors(fields);
      if (!Object.keys(fields).some((k) => ["imgsz", "opset", "format", "half", "int8", "dynamic"].includes(k))) setError(err);
    }
  };
  return (
    <section class="card" data-testid="export">
      <h3>Export</h3>
      <form class="inline-form" onSubmit={start}>
        <Field label="Version"><select name="version" value={form.version} onChange={set("version")}>
          {versions.map((v) => <option key={v.id} value={v.version}>{v.ref}</option>)}</select></Field>
        <Field label="Format"><select name="format" value={form.format} onChange={set("format")}>
          {formats.map((f) => <option key={f.format} value={f.format} disabled={!f.available}>
            {f.name}{f.available ? "" : ` (not here: needs ${f.missing.join(", ")})`}</option>)}</select></Field>
        <Field label="Image size" error={errors.imgsz}><input name="imgsz" value={form.imgsz} onInput={set("imgsz")} inputmode="numeric" /></Field>
        <Field label="ONNX opset" error={errors.opset} hint="empty: the exporter's default">
          <input name="opset" value={form.opset} onInput={set("opset")} inputmode="numeric" /></Field>
        <div class="checks">
          {[["half", "half (FP16)"], ["int8", "int8"], ["dynamic", "dynamic axes"]].map(([k, label]) => (
            <label key={k} class="toggle"><input type="checkbox" name={k} checked={form[k]} onChange={check(k)} /> {label}
              {errors[k] ? <span class="field-error">{errors[k]}</span> : null}</label>))}
        </div>
        <Field label="Run in project"><select name="project" value={form.project} onChange={set("project")}>
          {projects.map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}</select></Field>
        <button type="submit" class="primary">Export</button>
      </form>
      <ErrorBox error={error} />
    </section>
  );
}

const BOX_COLORS = ["#ef4444", "#3b82f6", "#22c55e", "#eab308", "#a855f7", "#06b6d4", "#f97316", "#ec4899"];

function speed(ms) {
  const total = typeof ms === "number" ? ms : Object.values(ms || {}).reduce((a, b) => a + b, 0);
  return total ? `${total.toFixed(0)} ms` : "";
}

function Predict({ model, versions }) {
  const [version, setVersion] = useState(String(versions[0].version)); // any version, the latest first
  const [file, setFile] = useState(null);
  const [url, setUrl] = useState(null);
  const [conf, setConf] = useState("0.25");
  const [maxDet, setMaxDet] = useState("300");
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => () => { if (url) URL.revokeObjectURL(url); }, [url]);
  const choose = (e) => {
    const f = e.target.files[0] || null;
    setFile(f);
    setResult(null);
    setUrl(f ? URL.createObjectURL(f) : null);
  };
  const run = async (e) => {
    e.preventDefault();
    if (!file) return;
    setError(null);
    setBusy(true);
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("conf", conf);
    form.append("max_det", maxDet);
    form.append("version", version);
    try { setResult(await upload(`/models/${model.id}/predict`, form, () => {})); } catch (err) { setError(err); }
    setBusy(false);
  };
  const image = result && result.images[0];
  const boxes = (image && image.boxes) || [];
  return (
    <section class="card" data-testid="predict">
      <h3>Predict</h3>
      <form class="inline-form" onSubmit={run}>
        <Field label="Version"><select name="version" value={version} onChange={(e) => { setVersion(e.target.value); setResult(null); }}>
          {versions.map((v) => <option key={v.id} value={v.version}>{v.ref}</option>)}</select></Field>
        <Field label="Image"><input type="file" name="image" accept="image/*" onChange={choose} /></Field>
        <Field label="Confidence"><input name="conf" value={conf} onInput={(e) => setConf(e.target.value)} /></Field>
        <Field label="Max boxes"><input name="max_det" value={maxDet} onInput={(e) => setMaxDet(e.target.value)} /></Field>
        <button type="submit" class="primary" disabled={!file || busy}>Predict</button>
      </form>
      <ErrorBox error={error} />
      {url ? (
        <div class="prediction" data-boxes={image ? boxes.length : ""}>
          <div class="frame">
            <img src={url} alt="the image to predict" />
            {image ? (
              <svg class="boxes" viewBox={`0 0 ${image.width} ${image.height}`} preserveAspectRatio="none">
                {boxes.map((b, i) => <rect key={i} x={b.xyxy[0]} y={b.xyxy[1]} width={b.xyxy[2] - b.xyxy[0]}
                  height={b.xyxy[3] - b.xyxy[1]} fill="none" stroke={BOX_COLORS[b.class_id % BOX_COLORS.length]}
                  stroke-width="2" vector-effect="non-scaling-stroke"><title>{`${b.name} ${b.score.toFixed(2)}`}</title></rect>)}
              </svg>
            ) : null}
          </div>
          {image ? <p class="muted small">{boxes.length} boxes · {result.model}:{result.version} · {speed(image.speed_ms)} · run <Link href={`/runs/${result.run_id}`} class="mono">{result.run_id.slice(0, 8)}</Link></p> : null}
        </div>
      ) : null}
    </section>
  );
}

export function Model({ id }) {
  const [model, setModel] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { get(`/models/${encodeURIComponent(id)}`).then(setModel, setError); }, [id]);
  if (error) return <main><ErrorBox error={error} /></main>;
  if (!model) return <main><p class="muted">loading…</p></main>;
  const byId = new Map(model.versions.map((v) => [v.id, v]));
  return (
    <main data-testid="model-page">
      <p class="crumbs"><Link href="/models">models</Link> / {model.name}</p>
      <header class="page-head"><h1>{model.name}</h1><span class="muted">{[model.task, model.description].filter(Boolean).join(" · ")}</span></header>
      <table class="table" data-testid="versions">
        <thead><tr><th>Version</th><th>Format</th><th>Metrics</th><th>Classes</th><th>Source run</th><th>Parent</th><th>Size</th><th>Created</th><th /></tr></thead>
        <tbody>
          {model.versions.map((v) => (
            <tr key={v.id} data-version={v.version}>
              <td class="mono">{v.ref}</td><td>{v.format}</td><td class="small">{keyMetrics(v.metrics)}</td>
              <td class="small">{v.class_names.join(", ")}</td>
              <td>{v.source_run_id ? <Link href={`/runs/${v.source_run_id}`} class="mono">{v.source_run_id.slice(0, 8)}</Link> : ""}</td>
              <td class="mono">{v.parent_version_id ? (byId.get(v.parent_version_id)?.ref || v.parent_version_id.slice(0, 8)) : ""}</td>
              <td>{bytes(v.size_bytes)}</td><td>{when(v.created_at)}</td>
              <td><a href={`${API}/models/${model.id}/versions/${v.version}/download`} download>Download</a></td>
            </tr>
          ))}
        </tbody>
      </table>
      {model.versions.length ? <div class="two"><Export model={model} versions={model.versions} /><Predict model={model} versions={model.versions} /></div> : null}
    </main>
  );
}
