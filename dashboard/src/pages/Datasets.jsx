// Datasets: the list, an upload (zip or tar) with a progress bar; a dataset's inspection report (per split
// and class, problems) and an image browser with the labels drawn as boxes.
import { useEffect, useState } from "preact/hooks";
import { API, get, upload } from "../api.js";
import { Link, navigate } from "../router.jsx";
import { ErrorBox, Field, when } from "../components/ui.jsx";

export function Datasets() {
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  const [name, setName] = useState("");
  const [file, setFile] = useState(null);
  const [progress, setProgress] = useState(null);
  const [uploadError, setUploadError] = useState(null);
  const [fieldErrors, setFieldErrors] = useState({});

  useEffect(() => { get("/datasets?limit=200").then(setPage, setError); }, []);

  const submit = async (e) => {
    e.preventDefault();
    setUploadError(null);
    setFieldErrors({});
    if (!file) { setFieldErrors({ file: "choose a .zip or .tar(.gz) archive" }); return; }
    const form = new FormData();
    form.append("name", name);
    form.append("file", file, file.name);
    setProgress(0);
    try {
      const dataset = await upload("/datasets", form, setProgress);
      navigate(`/datasets/${dataset.id}`);
    } catch (err) {
      setFieldErrors(err.fieldErrors());
      setUploadError(err);
      setProgress(null);
    }
  };

  return (
    <main>
      <h1>Datasets</h1>
      <ErrorBox error={error} />
      <form class="card inline-form" onSubmit={submit} data-testid="upload-dataset">
        <Field label="Name" error={fieldErrors.name}>
          <input name="name" value={name} onInput={(e) => setName(e.target.value)} required />
        </Field>
        <Field label="Archive (.zip, .tar, .tar.gz)" error={fieldErrors.file}>
          <input type="file" name="file" accept=".zip,.tar,.tgz,.gz" onChange={(e) => setFile(e.target.files[0] || null)} />
        </Field>
        <button type="submit" class="primary" disabled={progress !== null}>Upload</button>
        {progress !== null ? (
          <div class="upload-progress" data-testid="upload-progress">
            <div class="bar"><div style={{ width: `${Math.round(progress * 100)}%` }} /></div>
            <span class="muted small">{progress < 1 ? `${Math.round(progress * 100)}%` : "inspecting…"}</span>
          </div>
        ) : null}
        {uploadError && !fieldErrors.name ? <ErrorBox error={uploadError} /> : null}
      </form>
      {page ? (
        <table class="table" data-testid="datasets">
          <thead><tr><th>Name</th><th>Status</th><th>Format</th><th>Task</th><th>Classes</th><th>Images</th><th>Problems</th><th>Registered</th></tr></thead>
          <tbody>
            {page.items.map((d) => (
              <tr key={d.id} data-dataset={d.name}>
                <td><Link href={`/datasets/${d.id}`}>{d.name}</Link></td>
                <td>{d.status}</td><td>{d.format}</td><td>{d.task}</td><td>{d.classes.length}</td>
                <td>{d.images}</td><td>{d.problems_total}</td><td>{when(d.created_at)}</td>
              </tr>
            ))}
            {page.items.length === 0 ? <tr><td colspan="8" class="muted">No datasets yet.</td></tr> : null}
          </tbody>
        </table>
      ) : <p class="muted">loading…</p>}
    </main>
  );
}

const BOX_COLORS = ["#ef4444", "#3b82f6", "#22c55e", "#eab308", "#a855f7", "#06b6d4", "#f97316", "#ec4899"];

function Boxes({ labels }) {
  // detection labels are normalised cx cy w h; other tasks' values are drawn as their bounding box
  return (
    <svg class="boxes" viewBox="0 0 1 1" preserveAspectRatio="none">
      {labels.map((l, i) => {
        const v = l.values;
        if (v.length < 4) return null;
        let x0; let y0; let w; let h;
        if (v.length === 4 || v.length === 5) { [x0, y0, w, h] = [v[0] - v[2] / 2, v[1] - v[3] / 2, v[2], v[3]]; } else {
          const xs = v.filter((_, j) => j % 2 === 0); const ys = v.filter((_, j) => j % 2 === 1);
          x0 = Math.min(...xs); y0 = Math.min(...ys); w = Math.max(...xs) - x0; h = Math.max(...ys) - y0;
        }
        return <rect key={i} x={x0} y={y0} width={w} height={h} fill="none" stroke={BOX_COLORS[l.class_id % BOX_COLORS.length]}
          stroke-width="2" vector-effect="non-scaling-stroke"><title>{l.class_name}</title></rect>;
      })}
    </svg>
  );
}

export function Dataset({ id }) {
  const [dataset, setDataset] = useState(null);
  const [images, setImages] = useState(null);
  const [split, setSplit] = useState("");
  const [offset, setOffset] = useState(0);
  const [error, setError] = useState(null);
  const LIMIT = 24;

  useEffect(() => { get(`/datasets/${encodeURIComponent(id)}`).then(setDataset, setError); }, [id]);
  useEffect(() => {
    if (!dataset || dataset.status !== "ready") return;
    const q = new URLSearchParams({ limit: String(LIMIT), offset: String(offset) });
    if (split) q.set("split", split);
    let current = true; // an answer for a page left meanwhile is dropped
    get(`/datasets/${dataset.id}/images?${q}`).then((p) => current && setImages(p), (e) => current && setError(e));
    return () => { current = false; };
  }, [dataset, split, offset]);

  if (error) return <main><ErrorBox error={error} /></main>;
  if (!dataset) return <main><p class="muted">loading…</p></main>;
  const report = dataset.report;
  return (
    <main data-testid="dataset-page">
      <p class="crumbs"><Link href="/datasets">datasets</Link> / {dataset.name}</p>
      <header class="page-head"><h1>{dataset.name}</h1>
        <span class="muted">{dataset.status} · {dataset.format} · {dataset.task} · {dataset.images} images · {dataset.instances} instances</span></header>
      {report ? (
        <div class="two">
          <section class="card">
            <h3>Splits</h3>
            <table class="table compact" data-testid="splits">
              <thead><tr><th>Split</th><th>Images</th><th>Instances</th><th>Unlabelled</th><th>Broken</th></tr></thead>
              <tbody>{Object.entries(report.splits).map(([name, s]) => (
                <tr key={name}><td>{name}</td><td>{s.images}</td><td>{s.instances}</td><td>{s.images_without_labels}</td><td>{s.broken_images}</td></tr>))}</tbody>
            </table>
          </section>
          <section class="card">
            <h3>Classes</h3>
            <table class="table compact" data-testid="classes">
              <thead><tr><th>Class</th>{Object.keys(report.splits).map((s) => <th key={s}>{s} images / instances</th>)}</tr></thead>
              <tbody>{report.classes.map((c, i) => (
                <tr key={c}><td>{c}</td>{Object.values(report.splits).map((s, j) => {
                  const st = s.classes.find((x) => x.id === i);
                  return <td key={j}>{st ? `${st.images} / ${st.instances}` : "0 / 0"}</td>;
                })}</tr>))}</tbody>
            </table>
          </section>
        </div>
      ) : null}
      {report && report.problems_total ? (
        <section class="card">
          <h3>Problems ({report.problems_total})</h3>
          <ul class="problems">{report.problems.map((p, i) => (
            <li key={i}><span class="mono">{p.path}{p.line ? `:${p.line}` : ""}</span> {p.kind}: {p.message}</li>))}</ul>
        </section>
      ) : null}
      {images ? (
        <section class="card">
          <header>
            <h3>Images</h3>
            <select value={split} onChange={(e) => { setSplit(e.target.value); setOffset(0); }} data-testid="image-split">
              <option value="">all splits</option>
              {Object.keys(dataset.splits).map((s) => <option key={s} value={s}>{s}</option>)}
            </select>
            <button disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - LIMIT))}>Previous</button>
            <span class="muted small">{images.total ? `${offset + 1}–${Math.min(offset + LIMIT, images.total)} of ${images.total}` : "none"}</span>
            <button disabled={offset + LIMIT >= images.total} onClick={() => setOffset(offset + LIMIT)}>Next</button>
          </header>
          <div class="image-grid" data-testid="images">
            {images.items.map((im) => (
              <figure key={`${im.split}/${im.index}`} data-labels={im.labels.length}>
                <div class="frame">
                  <img src={`${API}/datasets/${dataset.id}/images/${im.split}/${im.index}/file`} alt={im.path} />
                  <Boxes labels={im.labels} />
                </div>
                <figcaption>{im.path} · {im.labels.map((l) => l.class_name).join(", ") || "no labels"}</figcaption>
              </figure>
            ))}
          </div>
        </section>
      ) : null}
    </main>
  );
}
