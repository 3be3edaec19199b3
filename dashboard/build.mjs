// Builds the dashboard into gateway/dashboard/static (committed: the gateway serves it, no node needed at run
// time). Reproducible: the same sources and package-lock.json give the same bytes. Writes build.json with the
// sha256 of every source and output, which a unit test checks (tests/unit/test_dashboard_build.py).
//   node build.mjs            build
//   node build.mjs --out DIR  build into DIR instead (the test compares it with the committed build)
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outIndex = process.argv.indexOf("--out");
const out = outIndex > 0 ? process.argv[outIndex + 1] : join(here, "..", "gateway", "dashboard", "static");
const sha = (bytes) => createHash("sha256").update(bytes).digest("hex");

function files(dir) {
  return readdirSync(dir).sort().flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

// what the build reads (node_modules is pinned by package-lock.json)
const sources = [...files(join(here, "src")), join(here, "build.mjs"), join(here, "package.json"),
  join(here, "package-lock.json")];

const result = await build({
  entryPoints: [join(here, "src", "main.jsx")],
  bundle: true, minify: true, format: "esm", target: ["es2020"], write: false, legalComments: "none",
  jsx: "automatic", jsxImportSource: "preact", outdir: join(out, "assets"), entryNames: "app",
  charset: "utf8", logLevel: "warning",
});

mkdirSync(join(out, "assets"), { recursive: true });
const written = {};
for (const file of result.outputFiles) {
  writeFileSync(file.path, file.contents);
  written[relative(out, file.path)] = sha(file.contents);
}
const html = readFileSync(join(here, "src", "index.html"), "utf8")
  .replace("__JS_HASH__", written["assets/app.js"].slice(0, 12))
  .replace("__CSS_HASH__", written["assets/app.css"].slice(0, 12));
writeFileSync(join(out, "index.html"), html);
written["index.html"] = sha(html);

const info = {
  note: "Built by dashboard/build.mjs from the sources below; rebuild with `npm --prefix dashboard ci && npm --prefix dashboard run build`",
  sources: Object.fromEntries(sources.map((p) => [relative(here, p), sha(readFileSync(p))])),
  outputs: Object.fromEntries(Object.entries(written).sort()),
};
writeFileSync(join(out, "build.json"), JSON.stringify(info, null, 2) + "\n");
console.log(`built ${Object.keys(written).join(", ")} into ${out}`);
