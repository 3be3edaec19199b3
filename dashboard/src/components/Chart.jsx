// A live line chart (uPlot: canvas, appends of thousands of points are cheap). `series` is a Map name →
// number[] aligned with `x`; the component redraws on `version` changes, rebuilds when the set of series
// changes. The data is exposed for tests and tools on the element (data-points, data-series) and on
// window.trainforgeCharts[name] (the arrays themselves).
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";

// tick labels that stay distinct on small ranges and log scales (0.00123, 1.5e-5, 42.1)
const tick = (v) => (v == null ? "" : Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(1)
  : String(Number(v.toPrecision(3))));
const INTEGER_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
  "#4b5563", "#65a30d"];

window.trainforgeCharts = window.trainforgeCharts || {};

export function Chart({ name, title, x, series, version, xLabel = "epoch", height = 220 }) {
  const box = useRef(null);
  const plot = useRef(null);
  const [log, setLog] = useState(false);
  const names = [...series.keys()];
  const key = names.join("\u0000") + (log ? ":log" : "");

  useEffect(() => {
    window.trainforgeCharts[name] = { x, series: Object.fromEntries(series) };
    return () => { delete window.trainforgeCharts[name]; };
  }, [name, x, series]);

  useEffect(() => {
    if (!box.current || names.length === 0) return undefined;
    const opts = {
      width: Math.max(280, box.current.clientWidth || 600),
      height,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      axes: [{ label: xLabel, incrs: INTEGER_STEPS }, { values: (_, vals) => vals.map(tick), size: 60 }],
      series: [{ label: xLabel }, ...names.map((n, i) => ({
        label: n, stroke: COLORS[i % COLORS.length], width: 1.5, points: { size: 4 } }))],
      legend: { live: true },
    };
    const u = new uPlot(opts, data(), box.current);
    plot.current = u;
    const resize = new ResizeObserver(() => {
      const w = box.current && box.current.clientWidth;
      if (w) u.setSize({ width: w, height });
    });
    resize.observe(box.current);
    return () => { resize.disconnect(); u.destroy(); plot.current = null; };
  }, [key]);

  useEffect(() => {
    if (plot.current) plot.current.setData(data());
  }, [version]);

  function data() {
    // a log scale cannot show zero or negatives: those points become gaps
    return [x, ...names.map((n) => (log ? series.get(n).map((v) => (v > 0 ? v : null)) : series.get(n)))];
  }

  return (
    <section class={`card chart${names.length ? "" : " empty"}`} data-chart={name} data-points={x.length}
      data-series={names.join(",")}>
      <header>
        <h3>{title}</h3>
        <label class="toggle"><input type="checkbox" checked={log} onChange={(e) => setLog(e.target.checked)}
          data-testid={`log-${name}`} /> log scale</label>
      </header>
      <div ref={box} class="plot" />
    </section>
  );
}
