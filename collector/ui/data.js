// What the page knows about the site: the latest reading of every point,
// agents, open alarms and silences. Snapshots come from the API; the event
// stream (live.js) keeps readings current in between. Views read from here
// and subscribe to topics:
//   "structure" – points or rooms appeared, vanished or moved (rebuild layouts)
//   "alarms"    – the open-alarm list changed
//   "agents"    – agent states changed
//   "silences"  – the silence list changed
// Single readings do not go through topics: they mark points dirty in bind.js,
// which writes only the DOM nodes showing them, once per animation frame.

import * as api from "./api.js";
import { markDirty, markAllDirty } from "./bind.js";
import { getLang } from "./i18n.js";

/** "site/point" → {site, point, agent, room, device, quantity, unit, ts, tsMs, value, text, quality, reason} */
export const points = new Map();
/** "site/room" → {site, room, keys: ["site/point", …]} in point order. */
export const rooms = new Map();
/** "site/agent" → agent status from /api/v1/agents. */
export const agents = new Map();
/** Open alarms (active, or cleared but not acknowledged), as the API lists them. */
export let openAlarms = [];
export let silences = [];

/**
 * A reading older than this (event time) is shown as stale: 3× a normal poll
 * interval and then some. Points polled slowly (an energy counter read once a
 * minute) get 3× their own interval, learned from the gaps between readings.
 */
export const STALE_MS = 60_000;
const MAX_LEARNED_GAP_MS = 3_600_000;

// Server clock minus ours, from the stream's hello: staleness is judged on the
// collector's clock, so a wall screen whose clock drifted does not cry wolf.
let clockOffsetMs = 0;
export function setServerTime(rfc3339) {
  const ms = Date.parse(rfc3339);
  if (!Number.isNaN(ms)) clockOffsetMs = ms - Date.now();
}
export function serverNow() {
  return Date.now() + clockOffsetMs;
}

export const pointKey = (site, point) => `${site}/${point}`;
export const roomKey = (site, room) => `${site}/${room}`;

/** `[[names]]` of the collector: "site/room" and "site/device" → {name, name_en}. */
const displayNames = { rooms: new Map(), devices: new Map() };
export async function loadNames() {
  const body = await api.get("/api/v1/names");
  displayNames.rooms = new Map((body.rooms ?? []).map((n) => [`${n.site}/${n.room}`, n]));
  displayNames.devices = new Map((body.devices ?? []).map((n) => [`${n.site}/${n.device}`, n]));
  emit("structure");
}
const inLang = (n) => (n ? (getLang() === "en" ? n.name_en : n.name) : null);
/** The name people use for a room, in the page's language, or its id. */
export const roomName = (site, room) => inLang(displayNames.rooms.get(`${site}/${room}`)) ?? room;
/** The name people use for a device, or its id. */
export const deviceName = (site, device) => inLang(displayNames.devices.get(`${site}/${device}`)) ?? device;

const subscribers = new Map();
export function on(topic, fn) {
  if (!subscribers.has(topic)) subscribers.set(topic, new Set());
  subscribers.get(topic).add(fn);
  return () => subscribers.get(topic).delete(fn);
}
function emit(topic) {
  for (const fn of subscribers.get(topic) ?? []) {
    try {
      fn();
    } catch (e) {
      console.error(`subscriber of ${topic} failed`, e);
    }
  }
}

export function isStale(p, now = serverNow()) {
  return p.tsMs != null && now - p.tsMs > Math.max(STALE_MS, 3 * (p.gapMs ?? 0));
}

/** Whether the agent that reads this point last said it is offline. */
export function agentOffline(site, agent) {
  const a = agents.get(`${site}/${agent}`);
  return a != null && a.state !== "online";
}

function rebuildRooms() {
  rooms.clear();
  for (const [key, p] of points) {
    if (!p.room) continue; // described within a minute; not placed until then
    const rk = roomKey(p.site, p.room);
    let r = rooms.get(rk);
    if (!r) rooms.set(rk, (r = { site: p.site, room: p.room, keys: [] }));
    r.keys.push(key);
  }
}

function fromApi(p) {
  return {
    site: p.site,
    point: p.point,
    agent: p.agent ?? "",
    room: p.room ?? "",
    device: p.device ?? "",
    quantity: p.quantity ?? "",
    unit: p.unit ?? "",
    ts: p.ts,
    tsMs: Date.parse(p.ts),
    value: p.value ?? null,
    text: p.text ?? null,
    quality: p.quality === "bad" ? "bad" : "good",
    reason: p.reason ?? null,
    stale: false,
    gapMs: null,
  };
}

let latestInFlight = null;
/** Refetches every point's latest reading; the newer of ours and the snapshot's wins. */
export function loadLatest() {
  if (latestInFlight) return latestInFlight;
  latestInFlight = (async () => {
    try {
      const body = await api.get("/api/v1/latest");
      const seen = new Set();
      let structural = false;
      for (const raw of body.points ?? []) {
        const n = fromApi(raw);
        const key = pointKey(n.site, n.point);
        seen.add(key);
        const old = points.get(key);
        if (!old) {
          points.set(key, n);
          structural = true;
          continue;
        }
        if (old.room !== n.room || old.device !== n.device || old.agent !== n.agent || old.quantity !== n.quantity) {
          structural = true;
        }
        Object.assign(old, { agent: n.agent, room: n.room, device: n.device, quantity: n.quantity, unit: n.unit });
        // A reading from the stream may be newer than this snapshot: keep it.
        if (!(old.tsMs > n.tsMs)) Object.assign(old, pick(n));
        markDirty(key);
      }
      for (const key of points.keys()) {
        if (!seen.has(key)) {
          points.delete(key);
          structural = true;
        }
      }
      if (structural) {
        rebuildRooms();
        emit("structure");
      }
      if ([...points.values()].some((p) => !p.room)) scheduleLatest(30_000);
    } finally {
      latestInFlight = null;
    }
  })();
  return latestInFlight;
}

const pick = (n) => ({ ts: n.ts, tsMs: n.tsMs, value: n.value, text: n.text, quality: n.quality, reason: n.reason });

let latestTimer = null;
/** Refetches the snapshot once after `ms`, however many times it is asked for meanwhile; false if one is already due. */
function scheduleLatest(ms = 1000) {
  if (latestTimer) return false;
  latestTimer = setTimeout(() => {
    latestTimer = null;
    loadLatest().catch((e) => console.warn("latest", e));
  }, ms);
  return true;
}

/** Applies one `readings` event: [{site, point, ts, value, text?, quality, reason?}, …]. */
export function applyReadings(list) {
  let unknown = false;
  for (const r of list) {
    const key = pointKey(r.site, r.point);
    const p = points.get(key);
    if (!p) {
      unknown = true;
      continue;
    }
    const tsMs = Date.parse(r.ts);
    if (tsMs < p.tsMs) continue; // a late, older reading never replaces a newer one
    const gap = tsMs - p.tsMs;
    if (gap > 0 && gap < MAX_LEARNED_GAP_MS) {
      // Smoothed, but quick to grow: one slow poll should not make a point look stale.
      p.gapMs = p.gapMs == null || gap > p.gapMs ? gap : p.gapMs * 0.8 + gap * 0.2;
    }
    p.ts = r.ts;
    p.tsMs = tsMs;
    p.value = r.value ?? null;
    p.text = r.text ?? null;
    p.quality = r.quality === "bad" ? "bad" : "good";
    p.reason = r.reason ?? null;
    markDirty(key);
  }
  // A point we have not seen: its room, device and unit are only in the snapshot.
  // Soon for the first one; then at most every 10 s, so a point the snapshot
  // does not list (yet) cannot make us refetch 2,000 points every second.
  if (unknown) {
    const due = Math.max(1000, lastUnknownFetch + UNKNOWN_REFETCH_MS - Date.now());
    if (scheduleLatest(due)) lastUnknownFetch = Date.now() + due;
  }
}
const UNKNOWN_REFETCH_MS = 10_000;
let lastUnknownFetch = 0;

/** Re-marks points whose freshness changed; called every few seconds. */
export function sweepStale() {
  const now = serverNow();
  for (const [key, p] of points) {
    const s = isStale(p, now);
    if (s !== p.stale) {
      p.stale = s;
      markDirty(key);
    }
  }
}

export async function loadAgents() {
  const body = await api.get("/api/v1/agents");
  agents.clear();
  for (const a of body.agents ?? []) agents.set(`${a.site}/${a.agent}`, a);
  markAllDirty(); // offline badges depend on agents
  emit("agents");
}

const LEVEL_ORDER = (a, b) => a.level - b.level || Date.parse(b.raised_at) - Date.parse(a.raised_at);
function sortAlarms(list) {
  return list.slice().sort(LEVEL_ORDER);
}

/**
 * Alarms grouped by incident (one fault; `incident` is the serial of its
 * first alarm): `{ id, alarms, main }`, each incident's alarms most severe
 * first, `main` the one that speaks for it; incidents in that same order.
 */
export function incidents(list) {
  const by = new Map();
  for (const a of list) {
    const id = a.incident ?? a.serial;
    if (!by.has(id)) by.set(id, []);
    by.get(id).push(a);
  }
  const groups = [...by].map(([id, alarms]) => {
    alarms.sort(LEVEL_ORDER);
    return { id, alarms, main: alarms[0] };
  });
  return groups.sort((x, y) => LEVEL_ORDER(x.main, y.main));
}

export async function loadAlarms() {
  const body = await api.get("/api/v1/alarms", { state: "open", limit: 1000 });
  openAlarms = sortAlarms(body.alarms ?? []);
  emit("alarms");
}

export async function loadSilences() {
  const body = await api.get("/api/v1/silences");
  silences = body.silences ?? [];
  emit("silences");
}

/** The sites the page knows rooms of, sorted. */
export function siteNames() {
  return [...new Set([...rooms.values()].map((r) => r.site))].sort();
}

/** The rooms of `site`, sorted. */
export function roomNames(site) {
  return [...rooms.values()].filter((r) => r.site === site).map((r) => r.room).sort();
}

/** Worst level (1 = critical) of alarms still active (not cleared) in a room, or 0. */
export function roomLevel(site, room) {
  let level = 0;
  for (const a of openAlarms) {
    if (a.site === site && a.room === room && !a.cleared_at && (level === 0 || a.level < level)) level = a.level;
  }
  return level;
}

export function activeAlarmsOf(site, room) {
  return openAlarms.filter((a) => a.site === site && a.room === room && !a.cleared_at);
}

// Limits change only when rules are edited and the collector restarts: cache them.
const limitsCache = new Map();
const LIMITS_TTL_MS = 5 * 60_000;
export async function limitsOf(site, point) {
  const key = pointKey(site, point);
  const hit = limitsCache.get(key);
  if (hit && Date.now() - hit.at < LIMITS_TTL_MS) return hit.promise;
  const promise = api
    .get("/api/v1/limits", { site, point }, { quiet401: true })
    .then((b) => b?.limits ?? [])
    .catch(() => []); // no thresholds is better than no chart
  limitsCache.set(key, { at: Date.now(), promise });
  return promise;
}

/** Forgets everything (logout), so the next user starts clean. */
export function reset() {
  points.clear();
  rooms.clear();
  agents.clear();
  openAlarms = [];
  silences = [];
  limitsCache.clear();
  emit("structure");
  emit("alarms");
  emit("agents");
  emit("silences");
}
