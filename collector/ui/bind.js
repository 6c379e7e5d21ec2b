// Live values in the DOM without re-rendering views. A view that shows a
// point creates its element with pointValue() (or binds its own element with
// bindPoint()); readings mark their point dirty; once per animation frame the
// dirty points' elements get new text, and only nodes whose text or state
// really changed are written. With 2,000 points changing every second that is
// a few hundred small text writes per frame at most, and nothing at all for
// points not on screen. Views that show values derived from several points
// (a room's voltage range, a tile's stale count) register an onFlush hook.

import { points, isStale, agentOffline, serverNow } from "./data.js";
import { fmtReading, fmtTimeShort, fmtAge, stateOf, isAlertState } from "./format.js";
import { t } from "./i18n.js";

/** "site/point" → Set of bindings {root, value, flag, q, ts, last: {...}} */
const bindings = new Map();
const dirty = new Set();
let allDirty = false;
let scheduled = false;
const flushHooks = new Set();

function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(flush);
}

export function markDirty(key) {
  dirty.add(key);
  schedule();
}

/** Language, agents or the clock changed: every bound value is redrawn once. */
export function markAllDirty() {
  allDirty = true;
  schedule();
}

/** fn(dirtyKeys: Set|null) after each frame's writes; null means "everything". Returns an unsubscribe. */
export function onFlush(fn) {
  flushHooks.add(fn);
  return () => flushHooks.delete(fn);
}

/**
 * Binds `root` (which carries data-point) to a point. Children with classes
 * .value, .flag, .q and .ts are filled when present. Elements leave the
 * registry by themselves once they are no longer in the document.
 */
export function bindPoint(root, key) {
  root.dataset.point = key;
  const b = {
    root,
    value: root.querySelector(".value"),
    flag: root.querySelector(".flag"),
    q: root.querySelector(".q"),
    ts: root.querySelector(".ts"),
    last: {},
  };
  let set = bindings.get(key);
  if (!set) bindings.set(key, (set = new Set()));
  set.add(b);
  write(b, points.get(key), serverNow());
  return root;
}

/** A span showing one point's live value: <span data-point><span class=value/><span class=flag/></span>. */
export function pointValue(key, className = "pv") {
  const root = document.createElement("span");
  root.className = className;
  const value = document.createElement("span");
  value.className = "value";
  const flag = document.createElement("span");
  flag.className = "flag";
  root.append(value, flag);
  return bindPoint(root, key);
}

/** The freshness of a reading as one word: good, bad, stale or offline. */
export function conditionOf(p, now = serverNow()) {
  if (!p) return "bad";
  if (agentOffline(p.site, p.agent)) return "offline";
  if (p.quality !== "good") return "bad";
  if (isStale(p, now)) return "stale";
  return "good";
}

function setText(node, lastObj, field, text) {
  if (node && lastObj[field] !== text) {
    node.textContent = text;
    lastObj[field] = text;
  }
}

function write(b, p, now) {
  const cond = conditionOf(p, now);
  if (p) p.stale = cond === "stale";
  const state = p ? stateOf(p) : null;
  const alert = state != null && p.quality === "good" && isAlertState(state) ? "1" : "";
  const last = b.last;
  setText(b.value, last, "value", fmtReading(p));
  // Bad, stale and offline are told in words too, never by colour alone.
  const flagText = cond === "good" ? "" : t(cond === "offline" ? "badge.offline" : "badge." + cond);
  setText(b.flag, last, "flag", flagText);
  if (b.q) {
    let q = t("quality.good");
    if (cond === "bad") q = p?.reason ? t("quality.bad_reason", { reason: p.reason }) : t("quality.bad");
    else if (cond === "stale") q = t("quality.stale", { age: fmtAge(now - p.tsMs) });
    else if (cond === "offline") q = t("badge.offline");
    setText(b.q, last, "q", q);
  }
  if (b.ts) setText(b.ts, last, "ts", p ? fmtTimeShort(p.tsMs, now) : "");
  if (last.cond !== cond) {
    b.root.dataset.cond = cond;
    last.cond = cond;
  }
  if (last.alert !== alert) {
    if (alert) b.root.dataset.alert = "1";
    else delete b.root.dataset.alert;
    last.alert = alert;
  }
  // Tooltips carry the exact reason/time for compact places like tiles.
  const title = p ? `${p.point}${p.reason ? " — " + p.reason : ""}` : "";
  if (last.title !== title) {
    b.root.title = title;
    last.title = title;
  }
}

function writeKey(key, now) {
  const set = bindings.get(key);
  if (!set) return;
  const p = points.get(key);
  for (const b of set) {
    if (!b.root.isConnected) {
      set.delete(b);
      continue;
    }
    write(b, p, now);
  }
  if (set.size === 0) bindings.delete(key);
}

function flush() {
  scheduled = false;
  const now = serverNow();
  const everything = allDirty;
  if (everything) {
    for (const key of [...bindings.keys()]) writeKey(key, now);
  } else {
    for (const key of dirty) writeKey(key, now);
  }
  const keys = everything ? null : new Set(dirty);
  dirty.clear();
  allDirty = false;
  for (const fn of flushHooks) {
    try {
      fn(keys);
    } catch (e) {
      console.error("flush hook failed", e);
    }
  }
}
