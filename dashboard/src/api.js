// The dashboard's API client: same origin, the httpOnly session cookie (never a token in script or URL), the
// session's CSRF token on every request that changes something, problem details (RFC 9457) as ApiError.

export const API = "/api/v1";
const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);
let csrf = null;

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }

  // {field name: message} from a 422's `errors` ([{field: "$.epochs", message}]); "" for the whole body
  fieldErrors() {
    const out = {};
    for (const e of this.problem.errors || []) {
      const field = String(e.field || "").replace(/^\$\.?/, "").split(/[.[]/)[0];
      out[field] = out[field] ? `${out[field]}; ${e.message}` : e.message;
    }
    return out;
  }
}

export async function request(method, path, body, { headers = {}, raw = false } = {}) {
  const h = { Accept: "application/json", ...headers };
  if (!SAFE.has(method) && csrf) h["X-CSRF-Token"] = csrf;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(API + path, { method, headers: h, body: payload, credentials: "same-origin" });
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch { /* not JSON */ }
    if (response.status === 401 && !path.startsWith("/auth/session")) onSessionLost();
    throw new ApiError(response.status, problem);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

// A multipart upload with progress (fetch cannot report upload progress): onProgress(fraction 0..1).
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", API + path);
    xhr.setRequestHeader("Accept", "application/json");
    if (csrf) xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, { detail: "the upload failed (connection lost)" }));
    xhr.send(form);
  });
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const patch = (path, body) => request("PATCH", path, body);
export const del = (path) => request("DELETE", path);

// -- the session ------------------------------------------------------------------------------------------
const listeners = new Set();
export let session = undefined; // undefined: not known yet; null: logged out; {user, csrf_token}

function setSession(value) {
  session = value;
  csrf = value ? value.csrf_token : null;
  for (const fn of listeners) fn(value);
}

export function onSession(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function onSessionLost() {
  if (session) setSession(null);
}

export async function loadSession() {
  try {
    setSession(await request("GET", "/auth/session"));
  } catch (e) {
    if (e.status === 401 || e.status === 404) setSession(null);
    else throw e;
  }
}

export async function login(username, password) {
  setSession(await request("POST", "/auth/session/login", { username, password },
    { headers: { "X-Requested-With": "trainforge" } }));
}

export async function logout() {
  try { await request("DELETE", "/auth/session"); } finally { setSession(null); }
}
