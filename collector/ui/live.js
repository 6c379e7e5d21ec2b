// The event stream (GET /api/v1/events, server-sent events). EventSource
// reconnects by itself after a dropped connection; it gives up only when the
// server answers something other than an event stream (a 401 after the
// session expired, a proxy's error page). Then we ask the app whether the
// session is still good and reopen with a growing delay, or let it show the
// login. Every (re)open refetches the snapshot, since events sent while we
// were away are gone.

const MIN_RETRY_MS = 1000;
const MAX_RETRY_MS = 30_000;

let source = null;
let retryMs = MIN_RETRY_MS;
let retryTimer = null;
let handlers = null;
let state = "reconnecting";

function setState(s) {
  if (s === state) return;
  state = s;
  handlers?.onState?.(s);
}

export function liveState() {
  return state;
}

function parse(ev) {
  try {
    return JSON.parse(ev.data || "{}");
  } catch {
    console.warn("unreadable event", ev.type, ev.data);
    return null;
  }
}

function open() {
  clearTimeout(retryTimer);
  retryTimer = null;
  const es = new EventSource("/api/v1/events");
  source = es;
  es.addEventListener("open", () => {
    if (source !== es) return;
    retryMs = MIN_RETRY_MS;
    setState("live");
    handlers.onOpen?.();
  });
  es.addEventListener("error", () => {
    if (source !== es) return;
    setState("reconnecting");
    if (es.readyState === EventSource.CLOSED) {
      es.close();
      source = null;
      const delay = retryMs;
      retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
      retryTimer = setTimeout(async () => {
        retryTimer = null;
        // The app checks the session (401 → login, which stops us); reopen if it is fine.
        const keepGoing = (await handlers.onClosed?.()) !== false;
        if (keepGoing && handlers) open();
      }, delay);
    }
  });
  const listen = (type, fn) =>
    es.addEventListener(type, (ev) => {
      if (source !== es) return;
      const data = parse(ev);
      if (data) fn(data);
    });
  listen("hello", (d) => handlers.onHello?.(d));
  listen("readings", (d) => handlers.onReadings?.(Array.isArray(d.points) ? d.points : []));
  listen("alarms", () => handlers.onAlarms?.());
  listen("agents", () => handlers.onAgents?.());
  listen("resync", () => handlers.onResync?.());
}

/**
 * Starts the stream. handlers: onState("live"|"reconnecting"), onOpen, onHello(data),
 * onReadings(points), onAlarms, onAgents, onResync, onClosed → Promise<boolean> (false = stop).
 */
export function startLive(h) {
  stopLive();
  handlers = h;
  retryMs = MIN_RETRY_MS;
  state = "";
  setState("reconnecting");
  open();
}

export function stopLive() {
  clearTimeout(retryTimer);
  retryTimer = null;
  if (source) source.close();
  source = null;
  handlers?.onState?.("reconnecting");
  state = "reconnecting";
  handlers = null;
}
