// The new-run form, built from the API's own schema (/schema/openapi.json, `schemaform.js`): every run kind of
// `POST /projects/{ref}/runs` and every field of its request, with its type, enum, bounds, default and
// description. The main fields of each kind are laid out by hand (LAYOUT: labels and pickers: datasets, the
// model picker, export formats, the live runners' container targets); every other field of the schema is
// generated in the "Advanced" section, so a field added to a run spec shows here with no UI change. Main
// fields start at the API's defaults; empty advanced fields are left out, so the API's defaults apply. The
// API validates; its 4xx problem details name fields ($.epochs, params.epochs, images[0]), shown next to the
// field they name (the advanced section opens for one of its own); anything else above the button.
import { useEffect, useState } from "preact/hooks";
import { get, post } from "../api.js";
import { Link, navigate } from "../router.jsx";
import { ErrorBox, Field } from "../components/ui.jsx";
import { ARCH, ModelPicker } from "../components/ModelPicker.jsx";
import { bounds, initial, loadRunSchemas } from "../schemaform.js";

const DEVICES = ["auto", "cpu", "cuda", "cuda:0", "cuda:1"];
const KIND_LABELS = {
  "yolo.train": "yolo.train (train)", "yolo.val": "yolo.val (validate a model)",
  "yolo.export": "yolo.export (export a model)", "yolo.predict": "yolo.predict (predict on images)",
  container: "container (shell command: local or docker)",
};
// fields the form handles itself: `config` by the saved-configuration row, `architecture` by the model picker
const HIDDEN = new Set(["config", "architecture"]);

const L = (name, label, widget, more = {}) => ({ name, label, widget, ...more });
const DEVICE = L("device", "Device", "device");
const MODEL = L("model", "Model", "model", { hint: "pick below, or type: built-in name, library:<model>[:<version>], artifact:<id>" });
// the hand-made layout of each kind's main fields (label, and a picker where the schema's type is not enough)
const LAYOUT = {
  "yolo.train": [
    L("dataset", "Dataset", "dataset"),
    { ...MODEL, hint: "pick below, or type: built-in name, library:<model>[:<version>], architecture:<saved>, artifact:<id>" },
    L("epochs", "Epochs"), L("imgsz", "Image size"), L("batch", "Batch"), DEVICE, L("optimizer", "Optimizer"),
    L("lr0", "lr0"), L("patience", "Patience"),
    L("extra", "Extra arguments (JSON)", "json", { hint: 'e.g. {"plots": true, "workers": 0}' }),
  ],
  "yolo.val": [MODEL, L("dataset", "Dataset", "dataset"), L("split", "Split"), L("imgsz", "Image size"),
    L("batch", "Batch"), L("conf", "Confidence threshold"), L("iou", "IoU threshold"), DEVICE],
  "yolo.export": [MODEL, L("format", "Format", "format"), L("imgsz", "Image size"), L("batch", "Batch"),
    L("opset", "ONNX opset", null, { hint: "empty: the exporter's default" }), L("half", "half (FP16)"),
    L("int8", "int8"), L("dynamic", "dynamic axes"), L("simplify", "simplify"),
    L("dataset", "Calibration dataset (int8)", "dataset"), DEVICE],
  "yolo.predict": [MODEL,
    L("images", "Images", "list", { hint: "comma-separated: upload ids, dataset:<ref>:<split>[:<index>]" }),
    L("conf", "Confidence threshold"), L("iou", "IoU threshold"), L("imgsz", "Image size"),
    L("max_det", "Max detections"), DEVICE],
  container: [
    L("backend", "Backend", null, { hint: "local: bash on a runner's host (admins); docker: docker exec into a container target" }),
    L("target", "Container target", "target"), L("start_command", "Command", "command"),
    L("workdir", "Working directory"), L("timeout_s", "Timeout (s)"),
  ],
};

// a kind's fields: {main, advanced}, each field the schema's description plus the layout's label and widget
function fieldsOf(schema, kind) {
  const byName = new Map((schema[kind] || []).map((f) => [f.name, f]));
  const layout = LAYOUT[kind] || [];
  const main = layout.filter((l) => byName.has(l.name)).map((l) => ({ ...byName.get(l.name), ...l, main: true,
    widget: l.widget || byName.get(l.name).type }));
  const laid = new Set(layout.map((l) => l.name));
  const advanced = (schema[kind] || []).filter((f) => !laid.has(f.name) && !HIDDEN.has(f.name))
    .map((f) => ({ ...f, label: f.name, widget: f.type }));
  return { main, advanced, all: [...main, ...advanced] };
}

// what a field starts with: main fields the API's default; advanced ones empty (the default is the placeholder)
function start(f) {
  return f.main || f.type === "bool" ? initial(f) : "";
}

function defaults(fields) {
  return Object.fromEntries(fields.all.map((f) => [f.name, start(f)]));
}

// the request body of a kind's form values; throws {field, message} for what cannot even be sent
function buildBody(kind, fields, values) {
  const body = { kind };
  for (const f of fields.all) {
    const v = values[f.name];
    if (f.type === "bool") { if (v !== (f.default === true)) body[f.name] = v; continue; }
    const s = typeof v === "string" ? v.trim() : v;
    if (s === "" || s == null) continue;
    if (f.name === "target" && values.backend !== "docker") continue;
    if (f.name === "model" && s.startsWith(ARCH)) { body.architecture = s.slice(ARCH.length); continue; }
    if (f.type === "int" || f.type === "float") {
      const n = Number(s);
      if (!Number.isFinite(n)) throw { field: f.name, message: "not a number" };
      body[f.name] = n;
    } else if (f.type === "json") {
      let parsed;
      try { parsed = JSON.parse(s); } catch { throw { field: f.name, message: "not valid JSON" }; }
      if (JSON.stringify(parsed) === JSON.stringify(f.default)) continue; // e.g. {} for extra: the default
      body[f.name] = parsed;
    } else if (f.type === "list") body[f.name] = s.split(",").map((p) => p.trim()).filter(Boolean);
    else body[f.name] = s;
  }
  return body;
}

// a saved configuration's params as the form's values
function fromParams(fields, params) {
  const next = defaults(fields);
  for (const f of fields.all) {
    if (!(f.name in params)) continue;
    const v = params[f.name];
    next[f.name] = f.type === "json" ? JSON.stringify(v) : f.type === "list" ? v.join(", ")
      : f.type === "bool" ? Boolean(v) : v == null ? "" : String(v);
  }
  if (params.architecture) next.model = ARCH + params.architecture;
  return next;
}

// problem details' errors by the form field they name: `$.epochs`, `params.epochs`, `extra.mosaic`, `images[0]`
function errorsByField(err) {
  const out = {};
  for (const e of (err.problem && err.problem.errors) || []) {
    let name = String(e.field || "").replace(/^\$\.?/, "").replace(/^params\./, "").split(/[.[]/)[0];
    if (name === "architecture") name = "model";
    out[name] = out[name] ? `${out[name]}; ${e.message}` : e.message;
  }
  return out;
}

function useOptions() {
  const [opts, setOpts] = useState({ datasets: [], formats: [], targets: [] });
  useEffect(() => {
    const put = (k) => (v) => setOpts((o) => ({ ...o, [k]: v }));
    get("/datasets?limit=200").then((p) => put("datasets")(p.items), () => {});
    get("/export-formats").then((p) => put("formats")(p.items), () => {});
    get("/targets").then((p) => put("targets")(p.items), () => {});
  }, []);
  return opts;
}

function hintOf(f) {
  const range = f.type === "int" || f.type === "float" ? bounds(f) : "";
  const dflt = !f.main && f.default != null && f.type !== "bool" ? `default: ${JSON.stringify(f.default)}` : "";
  return [f.hint || f.description, range, dflt].filter(Boolean).join(" · ");
}

export function NewRun({ projectId }) {
  const [project, setProject] = useState(null);
  useEffect(() => { get(`/projects/${encodeURIComponent(projectId)}`).then(setProject, () => {}); }, [projectId]);
  const [schema, setSchema] = useState(null);
  const [schemaError, setSchemaError] = useState(null);
  useEffect(() => { loadRunSchemas().then(setSchema, setSchemaError); }, []);
  const [kind, setKind] = useState("yolo.train");
  const [forms, setForms] = useState({});
  const fields = schema ? fieldsOf(schema, kind) : null;
  const form = forms[kind] || (fields ? defaults(fields) : {});
  const opts = useOptions();
  const [errors, setErrors] = useState({});
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [advancedOpen, setAdvancedOpen] = useState(false);

  const [configs, setConfigs] = useState([]);
  const [configName, setConfigName] = useState("");
  const [configNote, setConfigNote] = useState(null);
  const loadConfigs = () => get(`/projects/${encodeURIComponent(projectId)}/configs`)
    .then((p) => setConfigs(p.items), () => {});
  useEffect(() => { loadConfigs(); }, [projectId]);
  const setValue = (name, value) => setForms((all) => ({ ...all, [kind]: { ...(all[kind] || defaults(fields)), [name]: value } }));
  const changeKind = (k) => { setKind(k); setErrors({}); setError(null); setConfigNote(null); };

  // field errors next to their fields; the whole refusal above the button when one names no field shown
  const refused = (err) => {
    const named = errorsByField(err);
    setErrors(named);
    const shown = new Set(fields.all.map((f) => f.name));
    if (fields.advanced.some((f) => f.name in named)) setAdvancedOpen(true);
    if (!Object.keys(named).length || Object.keys(named).some((k) => !shown.has(k))) setError(err);
  };

  const useConfig = (name) => {
    const config = configs.find((c) => c.name === name && c.kind === kind);
    if (!config) return;
    setForms((all) => ({ ...all, [kind]: fromParams(fields, config.params) }));
    if (fields.advanced.some((f) => f.name in config.params)) setAdvancedOpen(true);
    setConfigName(name);
    setConfigNote(`loaded ${name}`);
  };
  const saveConfig = async () => {
    setErrors({});
    setError(null);
    setConfigNote(null);
    let params;
    try { params = buildBody(kind, fields, form); } catch (bad) { setErrors({ [bad.field]: bad.message }); return; }
    delete params.kind;
    try {
      await post(`/projects/${encodeURIComponent(projectId)}/configs`, { name: configName, kind, params });
      setConfigNote(`saved ${configName}`);
      loadConfigs();
    } catch (err) {
      const named = errorsByField(err);
      if (named.name) { setErrors({ config: named.name }); return; }
      refused(err);
    }
  };

  const submit = async (e) => {
    e.preventDefault();
    setErrors({});
    setError(null);
    let body;
    try { body = buildBody(kind, fields, form); } catch (bad) { setErrors({ [bad.field]: bad.message }); return; }
    setBusy(true);
    try {
      const run = await post(`/projects/${encodeURIComponent(projectId)}/runs`, body);
      navigate(`/runs/${run.id}`);
    } catch (err) {
      refused(err);
    } finally {
      setBusy(false);
    }
  };

  const control = (f) => {
    const v = form[f.name];
    const onInput = (e) => setValue(f.name, e.target.value);
    switch (f.widget) {
      case "enum":
        return (
          <select name={f.name} value={v} onChange={onInput}>
            {f.main ? null : <option value="">{f.default != null ? `default (${f.default})` : "—"}</option>}
            {f.nullable && f.main ? <option value="">—</option> : null}
            {f.options.map((o) => <option key={o} value={o}>{o}</option>)}
          </select>
        );
      case "device":
        return <select name={f.name} value={v} onChange={onInput}>{DEVICES.map((o) => <option key={o} value={o}>{o}</option>)}</select>;
      case "dataset":
        return (
          <select name={f.name} value={v} onChange={onInput}>
            <option value="">—</option>
            {opts.datasets.map((d) => <option key={d.id} value={d.name}>{d.name}</option>)}
          </select>
        );
      case "format":
        return (
          <select name={f.name} value={v} onChange={onInput}>
            {opts.formats.length === 0 ? <option value={v}>{v}</option> : null}
            {opts.formats.map((o) => <option key={o.format} value={o.format} disabled={!o.available}>
              {o.name}{o.available ? "" : ` (not here: needs ${o.missing.join(", ")})`}</option>)}
          </select>
        );
      case "bool":
        return <input type="checkbox" name={f.name} checked={v} onChange={(e) => setValue(f.name, e.target.checked)} />;
      case "json": case "command": case "textarea":
        return <textarea name={f.name} rows={f.widget === "json" ? 2 : 4} value={v} onInput={onInput}
          placeholder={f.main || f.default == null ? "" : JSON.stringify(f.default)} />;
      case "model":
        return <ModelPicker kind={kind} projectId={projectId} value={v} onChange={(value) => setValue("model", value)} />;
      case "target": {
        const own = project && project.container_target;
        const offered = opts.targets.map((t) => t.name);
        return (
          <select name="target" value={v} onChange={onInput} disabled={form.backend !== "docker"}>
            <option value="">{own ? `the project's target (${own})` : "— (the project names none)"}</option>
            {opts.targets.map((t) => <option key={t.name} value={t.name}>
              {t.name} ({t.pools.join(", ")}: {t.runners.length} runner{t.runners.length === 1 ? "" : "s"})</option>)}
            {v && !offered.includes(v) ? <option value={v}>{v} (no live runner offers it)</option> : null}
          </select>
        );
      }
      default:
        return <input name={f.name} value={v} onInput={onInput}
          placeholder={f.main || f.default == null ? "" : String(f.default)}
          inputmode={f.type === "int" ? "numeric" : f.type === "float" ? "decimal" : undefined} />;
    }
  };
  const wide = (f) => ["command", "json", "list", "textarea", "model"].includes(f.widget);
  const cell = (f) => (
    <div key={`${kind}-${f.name}`} class={wide(f) ? "span-all" : f.type === "bool" ? "check" : ""} data-field={f.name}>
      <Field label={f.required ? `${f.label} *` : f.label} error={errors[f.name]} hint={hintOf(f)}>{control(f)}</Field>
    </div>
  );
  const kinds = schema ? [...Object.keys(KIND_LABELS).filter((k) => k in schema),
    ...Object.keys(schema).filter((k) => !(k in KIND_LABELS))] : [];
  const advancedErrors = fields ? fields.advanced.filter((f) => errors[f.name]).length : 0;

  return (
    <main>
      <p class="crumbs"><Link href="/projects">projects</Link> / <Link href={`/projects/${projectId}`}>
        {project ? project.name : "project"}</Link> / new run</p>
      <h1>New run</h1>
      <ErrorBox error={schemaError} />
      {!fields ? (schemaError ? null : <p class="muted">loading the API's schema…</p>) : (
        <form class="card form" onSubmit={submit} data-testid="new-run-form" data-kind={kind} novalidate>
          <Field label="Kind" error={errors.kind}>
            <select name="kind" value={kind} onChange={(e) => changeKind(e.target.value)}>
              {kinds.map((k) => <option key={k} value={k}>{KIND_LABELS[k] || k}</option>)}
            </select>
          </Field>
          <div class="inline-form config-row">
            <Field label="Saved configuration" error={errors.config}
              hint={configNote || `load one of this project's ${kind} configurations, or name the form's values and save them`}>
              <input name="config" list="configs" value={configName} data-testid="config-name"
                onInput={(e) => setConfigName(e.target.value)} onChange={(e) => useConfig(e.target.value)} />
              <datalist id="configs">{configs.filter((c) => c.kind === kind).map((c) => <option key={c.id} value={c.name} />)}</datalist>
            </Field>
            <button type="button" data-testid="save-config" onClick={saveConfig} disabled={!configName}>Save configuration</button>
          </div>
          <div class="grid">{fields.main.map(cell)}</div>
          {fields.advanced.length ? (
            <details class="advanced" data-testid="advanced" open={advancedOpen}
              onToggle={(e) => setAdvancedOpen(e.currentTarget.open)}>
              <summary>Advanced: {fields.advanced.length} more field{fields.advanced.length === 1 ? "" : "s"} of
                the {kind} request{advancedErrors ? ` (${advancedErrors} with an error)` : ""}</summary>
              <div class="grid">{fields.advanced.map(cell)}</div>
            </details>
          ) : null}
          <ErrorBox error={error} />
          <button type="submit" class="primary" disabled={busy} data-testid="start">Start</button>
        </form>
      )}
    </main>
  );
}
