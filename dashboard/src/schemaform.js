// The run requests' fields from the API's own OpenAPI document (/schema/openapi.json, served by the gateway
// itself): for each run kind of `POST /projects/{ref}/runs` (its body is a oneOf of one schema per kind),
// every property with its type, enum, bounds, default, description and whether it is required. The New-run
// form lays out the main fields by hand and generates the rest from these, so a field added to a run spec
// appears in the form with no UI change.

const RUNS_PATH = "/api/v1/projects/{ref}/runs";
let loading = null;

// {kind: [field]} (see `describe`), fetched once per page load
export function loadRunSchemas() {
  if (!loading) {
    loading = fetch("/schema/openapi.json", { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => { if (!r.ok) throw new Error(`the API's schema: HTTP ${r.status}`); return r.json(); })
      .then(runSchemas)
      .catch((e) => { loading = null; throw e; });
  }
  return loading;
}

function deref(doc, schema) {
  let s = schema || {};
  for (let i = 0; s.$ref && i < 8; i += 1) s = doc.components.schemas[s.$ref.split("/").pop()] || {};
  return s;
}

// a property's alternatives (oneOf/anyOf, nested), and whether one of them is null
function arms(doc, schema, out = []) {
  const alts = schema.oneOf || schema.anyOf;
  if (!alts) { out.push(schema); return out; }
  for (const a of alts) arms(doc, a, out);
  return out;
}

// one request property as a form field:
// {name, type: int|float|bool|enum|text|textarea|list|json, options, min, max, exclusiveMin, minLength,
//  maxLength, pattern, default, description, required, nullable}
export function describe(doc, name, prop, required) {
  const all = arms(doc, prop);
  const nullable = all.some((a) => a.type === "null");
  const armsLeft = all.filter((a) => a.type !== "null");
  const ref = armsLeft.find((a) => a.$ref);
  const inner = armsLeft.length === 1 ? deref(doc, armsLeft[0]) : {};
  const { oneOf, anyOf, ...outer } = prop; // Litestar puts bounds, default and description beside the oneOf
  const s = { ...inner, ...outer };
  let type = "text";
  if (ref || armsLeft.length > 1) type = "json";
  else if (s.enum) type = "enum";
  else if (s.type === "integer") type = "int";
  else if (s.type === "number") type = "float";
  else if (s.type === "boolean") type = "bool";
  else if (s.type === "array") type = (deref(doc, s.items).type === "string") ? "list" : "json";
  else if (s.type === "object") type = "json";
  else if (s.type === "string" && (s.maxLength || 0) > 1024) type = "textarea";
  return {
    name, type, options: s.enum, min: s.minimum, max: s.maximum, exclusiveMin: s.exclusiveMinimum,
    minLength: s.minLength, maxLength: s.maxLength, pattern: s.pattern, default: s.default,
    description: s.description || "", required, nullable,
  };
}

export function runSchemas(doc) {
  const body = doc.paths[RUNS_PATH].post.requestBody.content["application/json"].schema;
  const kinds = {};
  for (const alt of body.oneOf || [body]) {
    const s = deref(doc, alt);
    const kind = s.properties && s.properties.kind && s.properties.kind.const;
    if (!kind) continue;
    const required = new Set(s.required || []);
    kinds[kind] = Object.entries(s.properties).filter(([n]) => n !== "kind")
      .map(([n, p]) => describe(doc, n, p, required.has(n)));
  }
  return kinds;
}

// "1–10000", "> 0", "≥ 7": what the API accepts, for a field's hint
export function bounds(f) {
  const lo = f.exclusiveMin != null ? `> ${f.exclusiveMin}` : f.min != null ? `≥ ${f.min}` : null;
  const hi = f.max != null ? `≤ ${f.max}` : null;
  if (f.min != null && f.max != null) return `${f.min}–${f.max}`;
  return [lo, hi].filter(Boolean).join(", ");
}

// the form value a field starts with: its default, as the control holds it
export function initial(f) {
  if (f.type === "bool") return f.default === true;
  if (f.default == null) return "";
  if (f.type === "json") return JSON.stringify(f.default);
  if (f.type === "list") return f.default.join(", ");
  return String(f.default);
}
