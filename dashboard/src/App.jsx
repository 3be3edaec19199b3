import { useEffect, useState } from "preact/hooks";
import { loadSession, logout, onSession, session as initial } from "./api.js";
import { Link, match, navigate, useLocation } from "./router.jsx";
import { Login } from "./pages/Login.jsx";
import { Projects } from "./pages/Projects.jsx";
import { Project } from "./pages/Project.jsx";
import { Run } from "./pages/Run.jsx";
import { NewRun } from "./pages/NewRun.jsx";
import { Compare } from "./pages/Compare.jsx";
import { Dataset, Datasets } from "./pages/Datasets.jsx";
import { Fleet } from "./pages/Fleet.jsx";
import { Admin } from "./pages/Admin.jsx";
import { Model, Models } from "./pages/Models.jsx";

const ROUTES = [
  ["/", () => <Projects />],
  ["/projects", () => <Projects />],
  ["/projects/:id", ({ id }) => <Project id={id} />],
  ["/projects/:id/new", ({ id }) => <NewRun projectId={id} />],
  ["/runs/:id", ({ id }) => <Run id={id} />],
  ["/compare", () => <Compare />],
  ["/datasets", () => <Datasets />],
  ["/datasets/:id", ({ id }) => <Dataset id={id} />],
  ["/models", () => <Models />],
  ["/models/:id", ({ id }) => <Model id={id} />],
  ["/fleet", () => <Fleet />],
  ["/admin", () => <Admin />],
];

function NotYet({ path }) {
  return <main><h1>Not here yet</h1><p class="muted">The page {path} is not part of this dashboard yet.</p></main>;
}

export function App() {
  const [session, setSession] = useState(initial);
  const { path, query } = useLocation();
  useEffect(() => onSession(setSession), []);
  useEffect(() => { loadSession(); }, []);

  useEffect(() => {
    if (session === null && path !== "/login") {
      navigate(`/login?next=${encodeURIComponent(location.pathname + location.search)}`, { replace: true });
    }
  }, [session, path]);

  if (session === undefined) return <p class="muted center">loading…</p>;
  if (path === "/login" || session === null) return <Login next={query.get("next")} />;

  let page = null;
  for (const [pattern, render] of ROUTES) {
    const params = match(pattern, path);
    if (params) { page = render(params); break; }
  }
  return (
    <div class="app">
      <nav class="top">
        <Link href="/projects" class="brand">Trainforge</Link>
        <Link href="/projects">Projects</Link>
        <Link href="/datasets">Datasets</Link>
        <Link href="/models">Models</Link>
        <Link href="/fleet">Fleet</Link>
        <Link href="/admin">{session.user.is_admin ? "Admin" : "Tokens"}</Link>
        <span class="grow" />
        <span class="user" data-testid="user">{session.user.username}{session.user.is_admin ? " (admin)" : ""}</span>
        <button class="link" data-testid="logout" onClick={() => logout()}>Log out</button>
      </nav>
      {page || <NotYet path={path} />}
    </div>
  );
}
