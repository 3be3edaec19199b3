// Admin: users (create, disable, admin flag; admins only, as the API says), your API tokens (create: the
// token shown once; revoke), and the audit log with filters.
import { useEffect, useState } from "preact/hooks";
import { del, get, patch, post, session } from "../api.js";
import { ErrorBox, Field, when } from "../components/ui.jsx";

function Users() {
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  const [form, setForm] = useState({ username: "", password: "", is_admin: false });
  const [fieldErrors, setFieldErrors] = useState({});
  const load = () => get("/users?limit=200").then(setPage, setError);
  useEffect(() => { load(); }, []);

  const create = async (e) => {
    e.preventDefault();
    setFieldErrors({});
    setError(null);
    try {
      await post("/users", form);
      setForm({ username: "", password: "", is_admin: false });
      load();
    } catch (err) { setFieldErrors(err.fieldErrors()); setError(err); }
  };
  const change = async (user, values) => {
    setError(null);
    try { await patch(`/users/${encodeURIComponent(user.username)}`, values); load(); } catch (err) { setError(err); }
  };

  return (
    <section class="card" data-testid="users">
      <h3>Users</h3>
      <form class="inline-form" onSubmit={create} data-testid="create-user">
        <Field label="Username" error={fieldErrors.username}>
          <input name="username" value={form.username} onInput={(e) => setForm({ ...form, username: e.target.value })} />
        </Field>
        <Field label="Password" error={fieldErrors.password}>
          <input name="password" type="password" autocomplete="new-password" value={form.password}
            onInput={(e) => setForm({ ...form, password: e.target.value })} />
        </Field>
        <label class="toggle"><input type="checkbox" checked={form.is_admin}
          onChange={(e) => setForm({ ...form, is_admin: e.target.checked })} /> admin</label>
        <button type="submit" class="primary">Create user</button>
      </form>
      <ErrorBox error={error && !Object.keys(fieldErrors).length ? error : null} />
      {page ? (
        <table class="table compact">
          <thead><tr><th>Username</th><th>Admin</th><th>Disabled</th><th>Created</th></tr></thead>
          <tbody>{page.items.map((u) => (
            <tr key={u.id} data-user={u.username}>
              <td>{u.username}</td>
              <td><input type="checkbox" aria-label="admin" checked={u.is_admin} onChange={(e) => change(u, { is_admin: e.target.checked })} /></td>
              <td><input type="checkbox" aria-label="disabled" checked={u.disabled} onChange={(e) => change(u, { disabled: e.target.checked })} /></td>
              <td>{when(u.created_at)}</td>
            </tr>))}</tbody>
        </table>
      ) : null}
    </section>
  );
}

function Tokens() {
  const [tokens, setTokens] = useState(null);
  const [name, setName] = useState("");
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  const load = () => get("/tokens").then(setTokens, setError);
  useEffect(() => { load(); }, []);

  const create = async (e) => {
    e.preventDefault();
    setError(null);
    try { setCreated(await post("/tokens", { name })); setName(""); load(); } catch (err) { setError(err); }
  };
  const revoke = async (id) => {
    try { await del(`/tokens/${id}`); load(); } catch (err) { setError(err); }
  };

  return (
    <section class="card" data-testid="tokens">
      <h3>Your API tokens</h3>
      <form class="inline-form" onSubmit={create}>
        <Field label="Name"><input name="token-name" value={name} onInput={(e) => setName(e.target.value)} required /></Field>
        <button type="submit" class="primary">Create token</button>
      </form>
      {created ? <p class="notice" data-testid="new-token">Copy it now, it is shown only once: <code>{created.token}</code></p> : null}
      <ErrorBox error={error} />
      {tokens ? (
        <table class="table compact">
          <thead><tr><th>Name</th><th>Prefix</th><th>Created</th><th>Last used</th><th>Expires</th><th /></tr></thead>
          <tbody>{tokens.map((t) => (
            <tr key={t.id}><td>{t.name}</td><td class="mono">{t.prefix}…</td><td>{when(t.created_at)}</td>
              <td>{when(t.last_used_at)}</td><td>{when(t.expires_at) || "never"}</td>
              <td><button class="danger" onClick={() => revoke(t.id)}>Revoke</button></td></tr>))}
            {tokens.length === 0 ? <tr><td colspan="6" class="muted">none</td></tr> : null}</tbody>
        </table>
      ) : null}
    </section>
  );
}

function Audit() {
  const [filters, setFilters] = useState({ actor: "", action: "" });
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    const q = new URLSearchParams({ limit: "100" });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    let current = true;
    get(`/audit?${q}`).then((p) => { if (current) { setPage(p); setError(null); } }, (e) => current && setError(e));
    return () => { current = false; };
  }, [filters.actor, filters.action]);

  return (
    <section class="card" data-testid="audit">
      <header>
        <h3>Audit log</h3>
        <input placeholder="actor" value={filters.actor} onInput={(e) => setFilters({ ...filters, actor: e.target.value })} />
        <input placeholder="action (run, run.cancel)" value={filters.action}
          onInput={(e) => setFilters({ ...filters, action: e.target.value })} />
      </header>
      <ErrorBox error={error} />
      {page ? (
        <table class="table compact wrap">
          <thead><tr><th class="w-when">When</th><th class="w-actor">Actor</th><th class="w-action">Action</th><th>Resource</th><th>Details</th></tr></thead>
          <tbody>{page.items.map((a) => (
            <tr key={a.id}><td>{when(a.at)}</td><td>{a.actor}</td><td>{a.action}</td>
              <td class="mono small">{a.resource_type}:{a.resource_id}</td><td class="mono small">{JSON.stringify(a.detail)}</td></tr>))}
            {page.items.length === 0 ? <tr><td colspan="5" class="muted">nothing</td></tr> : null}</tbody>
        </table>
      ) : null}
    </section>
  );
}

export function Admin() {
  const admin = session && session.user.is_admin;
  return (
    <main data-testid="admin-page">
      <h1>Admin</h1>
      {admin ? <Users /> : <p class="muted">Users and the audit log are for admins.</p>}
      <Tokens />
      {admin ? <Audit /> : null}
    </main>
  );
}
