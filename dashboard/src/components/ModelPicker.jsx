// The model field of the New-run form: a text input (with the catalog as suggestions: built-in models of
// GET /models/available, each library model's latest version, saved architectures for yolo.train) and
// pickers that fill it from lists: any version of a library model (`library:<model>:<version>`) and any model
// file a finished run of the project produced (`artifact:<id>`: trained weights, exported models). Lists load
// when opened, one request per choice.
import { useEffect, useState } from "preact/hooks";
import { get } from "../api.js";

export const ARCH = "architecture:";
const MODEL_KINDS = new Set(["weights", "model"]); // artifact kinds of model files (runner/yolo/files.py, export)

function useCatalog() {
  const [catalog, setCatalog] = useState({ suggestions: [], library: [] });
  useEffect(() => {
    Promise.all([
      get("/models/available").then((c) => c.families.flatMap((fam) => fam.sizes.map((s) =>
        ({ value: s.model, label: `${fam.family} ${s.size} (${fam.task}, built-in)` }))), () => []),
      get("/models?limit=200").then((p) => p.items, () => []),
      get("/architectures?limit=200").then((p) => p.items.map((a) =>
        ({ value: ARCH + a.name, label: `${a.name} (saved architecture, yolo.train)`, arch: true })), () => []),
    ]).then(([builtin, library, archs]) => setCatalog({
      library,
      suggestions: [
        ...library.flatMap((m) => [
          { value: `library:${m.name}`, label: `${m.name}: latest version (library)` },
          ...(m.latest ? [{ value: `library:${m.name}:${m.latest.version}`, label: `${m.latest.ref || m.name} (library)` }] : []),
        ]),
        ...archs, ...builtin],
    }));
  }, []);
  return catalog;
}

export function ModelPicker({ kind, projectId, value, onChange }) {
  const catalog = useCatalog();
  const [libraryModel, setLibraryModel] = useState("");
  const [versions, setVersions] = useState(null);
  const [runs, setRuns] = useState(null);
  const [run, setRun] = useState("");
  const [files, setFiles] = useState(null);

  const pickModel = (id) => {
    setLibraryModel(id);
    setVersions(null);
    if (id) get(`/models/${encodeURIComponent(id)}`).then((m) => setVersions({ name: m.name, items: m.versions }), () => setVersions({ name: "", items: [] }));
  };
  const loadRuns = () => {
    if (runs) return;
    get(`/projects/${encodeURIComponent(projectId)}/runs?status=completed&limit=100`)
      .then((p) => setRuns(p.items.filter((r) => r.kind === "yolo.train" || r.kind === "yolo.export")), () => setRuns([]));
  };
  const pickRun = (id) => {
    setRun(id);
    setFiles(null);
    if (id) get(`/runs/${id}/artifacts?limit=200`).then((p) => setFiles((p.items || p).filter((a) => MODEL_KINDS.has(a.kind))), () => setFiles([]));
  };

  return (
    <div class="model-picker">
      <input name="model" list="model-options" value={value} onInput={(e) => onChange(e.target.value)} autocomplete="off" />
      <datalist id="model-options">{catalog.suggestions.filter((m) => kind === "yolo.train" || !m.arch)
        .map((m) => <option key={m.value} value={m.value}>{m.label}</option>)}</datalist>
      <div class="pickers">
        <select name="model-library" value={libraryModel} onChange={(e) => pickModel(e.target.value)} aria-label="library model">
          <option value="">library model…</option>
          {catalog.library.map((m) => <option key={m.id} value={m.id}>{m.name} ({m.versions_count} version{m.versions_count === 1 ? "" : "s"})</option>)}
        </select>
        <select name="model-version" value={value.startsWith("library:") ? value : ""} disabled={!versions} aria-label="library version"
          onChange={(e) => e.target.value && onChange(e.target.value)}>
          <option value="">version…</option>
          {(versions ? versions.items : []).map((v) => <option key={v.id} value={`library:${versions.name}:${v.version}`}>
            {v.ref}{v.source_run_id ? ` (run ${v.source_run_id.slice(0, 8)})` : ""}</option>)}
        </select>
        <select name="model-run" value={run} onFocus={loadRuns} onMouseDown={loadRuns} onChange={(e) => pickRun(e.target.value)}
          aria-label="a finished run of this project">
          <option value="">from a run…</option>
          {(runs || []).map((r) => <option key={r.id} value={r.id}>{r.id.slice(0, 8)} {r.kind}</option>)}
        </select>
        <select name="model-artifact" value={value.startsWith("artifact:") ? value : ""} disabled={!files} aria-label="the run's model file"
          onChange={(e) => e.target.value && onChange(e.target.value)}>
          <option value="">model file…</option>
          {(files || []).map((a) => <option key={a.id} value={`artifact:${a.id}`}>{a.name}</option>)}
        </select>
      </div>
    </div>
  );
}
