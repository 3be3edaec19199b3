// The live log tail: at most `capacity` lines kept in memory (the oldest dropped), the last `shown` matching
// lines rendered as text (never as HTML), following the end unless the reader scrolls up or unticks follow.
import { useEffect, useRef, useState } from "preact/hooks";

export class LogBuffer {
  constructor(capacity = 100000) {
    this.capacity = capacity;
    this.lines = [];
    this.dropped = 0;
    this.version = 0;
  }

  push(lines) {
    for (const line of lines) this.lines.push(line);
    const over = this.lines.length - this.capacity;
    if (over > 0) {
      this.lines.splice(0, over);
      this.dropped += over;
    }
    this.version += 1;
  }
}

export function LogTail({ buffer, version, shown = 1000 }) {
  const [follow, setFollow] = useState(true);
  const [search, setSearch] = useState("");
  const box = useRef(null);
  const needle = search.trim().toLowerCase();
  const matching = needle ? buffer.lines.filter((l) => l.text.toLowerCase().includes(needle)) : buffer.lines;
  const visible = matching.slice(-shown);

  useEffect(() => {
    if (follow && box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [version, follow, needle]);

  const onScroll = () => {
    const el = box.current;
    if (!el) return;
    const atEnd = el.scrollHeight - el.scrollTop - el.clientHeight < 8;
    if (atEnd !== follow) setFollow(atEnd);
  };

  return (
    <section class="card logs">
      <header>
        <h3>Log</h3>
        <input type="search" placeholder="search the log" value={search} data-testid="log-search"
          onInput={(e) => setSearch(e.target.value)} />
        <label class="toggle"><input type="checkbox" checked={follow} data-testid="log-follow"
          onChange={(e) => setFollow(e.target.checked)} /> follow</label>
      </header>
      <div class="logbox" ref={box} onScroll={onScroll} data-testid="log-tail" data-lines={buffer.lines.length}>
        {visible.map((l) => <div class={`line ${l.stream}`} key={l.key}>{l.text}</div>)}
      </div>
      <p class="muted small">
        {needle ? `${matching.length} matching of ` : ""}{buffer.lines.length} lines
        {buffer.dropped ? ` (${buffer.dropped} older lines dropped from this page)` : ""}
        {matching.length > shown ? `; the last ${shown} shown` : ""}
      </p>
    </section>
  );
}
