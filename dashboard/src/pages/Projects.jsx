import { useEffect, useState } from "preact/hooks";
import { get, post } from "../api.js";
import { Link, navigate } from "../router.jsx";
import { ErrorBox, Field, when } from "../components/ui.jsx";

export function Projects() {
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [formErrors, setFormErrors] = useState({});
  const [createError, setCreateError] = useState(null);

  useEffect(() => {
    get("/projects?limit=200").then(setPage, setError);
  }, []);

  const create = async (e) => {
    e.preventDefault();
    setFormErrors({});
    setCreateError(null);
    try {
      const project = await post("/projects", { name, description });
      navigate(`/projects/${project.id}`);
    } catch (err) {
      setFormErrors(err.fieldErrors ? err.fieldErrors() : {});
      setCreateError(err);
    }
  };

  return (
    <main>
      <h1>Projects</h1>
      <ErrorBox error={error} />
      <form class="card inline-form" onSubmit={create} data-testid="create-project">
        <Field label="New project" error={formErrors.name}>
          <input name="name" placeholder="name" value={name} onInput={(e) => setName(e.target.value)} required />
        </Field>
        <Field label="Description" error={formErrors.description}>
          <input name="description" value={description} onInput={(e) => setDescription(e.target.value)} />
        </Field>
        <button type="submit" class="primary">Create</button>
        {createError && !Object.keys(formErrors).length ? <ErrorBox error={createError} /> : null}
      </form>
      {page ? (
        <table class="table" data-testid="projects">
          <thead><tr><th>Name</th><th>Description</th><th>Runs</th><th>Status</th><th>Created</th></tr></thead>
          <tbody>
            {page.items.map((p) => (
              <tr key={p.id} data-project={p.name}>
                <td><Link href={`/projects/${p.id}`}>{p.name}</Link></td>
                <td>{p.description}</td>
                <td>{p.runs_started}</td>
                <td>{p.status}</td>
                <td>{when(p.created_at)}</td>
              </tr>
            ))}
            {page.items.length === 0 ? <tr><td colspan="5" class="muted">No projects yet.</td></tr> : null}
          </tbody>
        </table>
      ) : <p class="muted">loading…</p>}
    </main>
  );
}
