// What the run page knows about a run, folded from its event stream (replayed from the start, then live).
// Every collection is bounded: a page left open for hours holds at most these many items.
import { LogBuffer } from "./components/LogTail.jsx";

export const LIMITS = { logLines: 100000, batchPoints: 5000, timeline: 500, epochs: 10000 };
const STATUS_EVENTS = new Set(["run.queued", "run.claimed", "run.started", "run.completed", "run.failed",
  "run.cancel_requested", "run.canceled", "run.requeued"]);

export function metricGroup(name) {
  if (/^lr\//.test(name)) return "lr";
  if (/time/.test(name)) return "time"; // seconds per epoch: not on the same axis as the scores
  if (/loss/.test(name)) return "losses";
  return "metrics";
}

class Series {
  // x values and named y arrays kept aligned (a metric missing at some x is null there)
  constructor(limit) {
    this.limit = limit;
    this.x = [];
    this.series = new Map();
  }

  add(x, values) {
    // the same x again (a repeated epoch, e.g. after a resume) updates the newest point with that x
    let i = this.x.lastIndexOf(x);
    if (i === -1) {
      this.x.push(x);
      for (const arr of this.series.values()) arr.push(null);
      i = this.x.length - 1;
    }
    for (const [name, v] of Object.entries(values)) {
      if (typeof v !== "number") continue;
      if (!this.series.has(name)) {
        this.series = new Map(this.series); // a new Map: the chart rebuilds with the new series
        this.series.set(name, this.x.map(() => null));
      }
      this.series.get(name)[i] = v;
    }
    const over = this.x.length - this.limit;
    if (over > 0) {
      this.x.splice(0, over);
      for (const arr of this.series.values()) arr.splice(0, over);
    }
  }
}

export class RunModel {
  constructor() {
    this.epochs = { losses: new Series(LIMITS.epochs), metrics: new Series(LIMITS.epochs), lr: new Series(LIMITS.epochs),
      time: new Series(LIMITS.epochs) };
    this.batches = new Series(LIMITS.batchPoints);
    this.batchCount = 0;
    this.logs = new LogBuffer(LIMITS.logLines);
    this.timeline = [];
    this.checkpoints = new Map();
    this.artifacts = new Map();
    this.progress = null;
    this.lastId = 0;
    this.terminal = false;
  }

  apply(type, e, id) {
    if (id && id <= this.lastId) return; // seen already (a reconnect resumes after lastId anyway)
    this.lastId = id || this.lastId;
    if (type === "run.metrics") {
      if (e.epoch != null) {
        const groups = { losses: {}, metrics: {}, lr: {}, time: {} };
        for (const [k, v] of Object.entries(e.metrics || {})) groups[metricGroup(k)][k] = v;
        for (const [g, values] of Object.entries(groups)) {
          if (Object.keys(values).length) this.epochs[g].add(e.epoch, values);
        }
      }
    } else if (type === "run.progress") {
      this.progress = e;
      if (e.losses && Object.keys(e.losses).length) {
        this.batchCount += 1;
        this.batches.add(this.batchCount, e.losses);
      }
    } else if (type === "run.log") {
      this.logs.push((e.lines || []).map((l, i) => ({ key: `${id}.${i}`, stream: l.stream, text: l.text })));
    } else if (type === "run.checkpoint") {
      this.checkpoints.set(e.checkpoint_id, { id: e.checkpoint_id, epoch: e.epoch, step: e.step,
        size_bytes: e.size_bytes, resumable: e.resumable, attempt: e.attempt, created_at: e.ts });
    } else if (type === "run.artifact") {
      this.artifacts.set(e.artifact_id, { id: e.artifact_id, name: e.name, kind: e.kind, size_bytes: e.size_bytes,
        media_type: e.media_type, created_at: e.ts });
    }
    if (STATUS_EVENTS.has(type)) {
      this.timeline.push({ id, type, ts: e.ts, attempt: e.attempt, runner: e.runner_id,
        detail: e.message || e.reason || e.host || "" });
      if (this.timeline.length > LIMITS.timeline) this.timeline.splice(0, this.timeline.length - LIMITS.timeline);
    }
    if (type === "run.completed" || type === "run.failed" || type === "run.canceled") this.terminal = true;
  }
}
