import { useState } from "preact/hooks";
import { login } from "../api.js";
import { navigate } from "../router.jsx";
import { ErrorBox, Field } from "../components/ui.jsx";

export function Login({ next }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await login(username, password);
      navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : "/projects", { replace: true });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <main class="login">
      <form class="card" onSubmit={submit} data-testid="login-form">
        <h1>Trainforge</h1>
        <Field label="Username">
          <input name="username" autocomplete="username" value={username} required
            onInput={(e) => setUsername(e.target.value)} />
        </Field>
        <Field label="Password">
          <input name="password" type="password" autocomplete="current-password" value={password} required
            onInput={(e) => setPassword(e.target.value)} />
        </Field>
        <ErrorBox error={error} />
        <button type="submit" class="primary" disabled={busy}>Log in</button>
      </form>
    </main>
  );
}
