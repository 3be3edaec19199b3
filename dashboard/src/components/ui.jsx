// Small shared pieces: status badges, durations, errors, field rows.
export const TERMINAL = new Set(["completed", "failed", "canceled"]);

export function StatusBadge({ status }) {
  return <span class={`badge s-${status}`} data-status={status}>{status}</span>;
}

export function duration(fromIso, toIso) {
  if (!fromIso) return "";
  const ms = (toIso ? Date.parse(toIso) : Date.now()) - Date.parse(fromIso);
  if (!(ms >= 0)) return "";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function ErrorBox({ error }) {
  if (!error) return null;
  return <p class="error" role="alert">{error.message || String(error)}</p>;
}

export function Field({ label, error, children, hint }) {
  return (
    <label class={`field${error ? " invalid" : ""}`}>
      <span class="label">{label}</span>
      {children}
      {hint ? <span class="hint">{hint}</span> : null}
      {error ? <span class="field-error" role="alert">{error}</span> : null}
    </label>
  );
}
