// Live events through the API's Server-Sent Events streams. The browser's EventSource sends the session cookie
// and reconnects by itself with Last-Event-ID (a finished run's stream answers 204, which stops it); named
// events need one listener per type (onmessage never fires for them).
import { useEffect, useRef } from "preact/hooks";

export const RUN_EVENT_TYPES = [
  "run.queued", "run.claimed", "run.started", "run.progress", "run.metrics", "run.log", "run.checkpoint",
  "run.artifact", "run.completed", "run.failed", "run.cancel_requested", "run.canceled", "run.requeued",
];

// Subscribe to `url` while the component is mounted; `onEvent(type, data, id)` for each event.
export function useEventStream(url, onEvent, types = RUN_EVENT_TYPES) {
  const handler = useRef(onEvent);
  handler.current = onEvent;
  useEffect(() => {
    if (!url) return undefined;
    const source = new EventSource(url, { withCredentials: true });
    const listen = (type) => (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch { return; }
      handler.current(type, data, Number(e.lastEventId));
    };
    for (const type of types) source.addEventListener(type, listen(type));
    return () => source.close();
  }, [url]);
}
