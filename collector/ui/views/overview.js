// #/ — every room of every site as a tile, coloured and labelled by its worst
// active alarm, with the values an operator glances at first: temperature,
// humidity, hydrogen, AC voltage, UPS state, smoke and water leak. Tiles are
// built once per change of the room list; live values then update in place
// (bind.js) and the derived parts — voltage range, stale/bad/offline badges —
// are recomputed only for rooms whose points changed.

import * as data from "../data.js";
import { pointValue, onFlush, conditionOf } from "../bind.js";
import { h, roomHref } from "../dom.js";
import { t, getLang, stateWord } from "../i18n.js";
import { fmtNumber, stateOf, isAlertState } from "../format.js";
import { levelBadge, badge } from "../widgets.js";

// The key values of a tile, in the order they are shown.
const GROUPS = [
  { id: "temp", label: "tile.temp", quantities: ["temperature", "battery_temperature"], kind: "number" },
  { id: "humidity", label: "tile.humidity", quantities: ["humidity"], kind: "number" },
  { id: "h2", label: "tile.h2", quantities: ["h2_lfl"], kind: "number" },
  { id: "voltage", label: "tile.voltage", quantities: ["voltage"], kind: "number", rangeFrom: 2 },
  { id: "ups", label: "tile.ups", quantities: ["ups_output_source"], kind: "state" },
  // What an engineer asks first in a power incident: how long the UPS holds
  // and how loaded it is, how charged the batteries are, how hot the hottest cell.
  { id: "runtime", label: "tile.ups_runtime", quantities: ["ups_runtime_remaining"], kind: "number" },
  { id: "load", label: "tile.ups_load", quantities: ["ups_load"], kind: "number" },
  { id: "soc", label: "tile.soc", quantities: ["state_of_charge"], kind: "number" },
  { id: "cell", label: "tile.hottest_cell", quantities: ["cell_temperature"], kind: "max", rangeFrom: 1 },
  { id: "smoke", label: "tile.smoke", quantities: ["smoke"], kind: "state" },
  { id: "leak", label: "tile.leak", quantities: ["water_leak"], kind: "state" },
];
// More points than this in a group and the tile shows a summary instead of each value.
const MAX_INLINE = 3;

let root = null;
let tiles = new Map(); // roomKey → tile record
let pointRoom = new Map(); // pointKey → roomKey (for points shown in a tile)
let unsubs = [];

const alarmName = (a) => (getLang() === "zh-CN" && a.name_zh) || a.name;

function siteSort(a, b) {
  return a.localeCompare(b);
}

/** Rooms known from points, plus rooms that only alarms mention. */
function roomList() {
  const list = new Map();
  for (const [k, r] of data.rooms) list.set(k, r);
  for (const a of data.openAlarms) {
    if (!a.room) continue;
    const k = data.roomKey(a.site, a.room);
    if (!list.has(k)) list.set(k, { site: a.site, room: a.room, keys: [] });
  }
  return [...list.values()].sort((a, b) => siteSort(a.site, b.site) || a.room.localeCompare(b.room));
}

function buildTile(r) {
  const rk = data.roomKey(r.site, r.room);
  const levelBox = h("span", { class: "tile-level" });
  const flags = h("div", { class: "tile-flags" });
  const alarmLine = h("div", { class: "tile-alarm" });
  const kv = h("dl", { class: "kv" });
  const aggs = [];
  for (const g of GROUPS) {
    const keys = r.keys.filter((k) => g.quantities.includes(data.points.get(k)?.quantity));
    if (keys.length === 0) continue;
    const dd = h("dd");
    const summarise = keys.length > MAX_INLINE || (g.rangeFrom && keys.length >= g.rangeFrom);
    if (summarise) {
      const value = h("span", { class: "value" });
      const el = h("span", { class: "agg", dataset: { agg: `${rk}/${g.id}` } }, value);
      dd.append(el);
      aggs.push({ group: g, keys, el, value, last: null });
    } else {
      // Several sensors of one kind: say which is which (inlet vs hot aisle).
      for (const k of keys) {
        const pv = pointValue(k);
        if (keys.length > 1) pv.prepend(h("span", { class: "pv-label" }, data.points.get(k)?.device || k));
        dd.append(pv);
      }
    }
    kv.append(h("div", { class: "kv-row", dataset: { group: g.id } }, h("dt", null, t(g.label)), dd));
  }
  if (aggs.length === 0 && kv.childElementCount === 0) kv.append(h("div", { class: "kv-empty" }, t("tile.no_key_values")));
  // Every point of the room counts for its stale/bad/offline badges, shown or not.
  for (const k of r.keys) pointRoom.set(k, rk);
  const el = h(
    "a",
    { class: "tile", href: roomHref(r.site, r.room), dataset: { room: rk, level: "0" } },
    h("div", { class: "tile-head" }, h("span", { class: "tile-name", title: r.room }, data.roomName(r.site, r.room)), levelBox),
    alarmLine,
    flags,
    kv,
  );
  const tile = { r, rk, el, levelBox, flags, alarmLine, aggs, lastFlags: null, lastLevel: null, lastAlarm: null };
  updateAggregates(tile);
  updateFlags(tile);
  updateLevel(tile);
  return tile;
}

function updateAggregates(tile) {
  for (const a of tile.aggs) {
    const now = data.serverNow();
    const all = a.keys.map((k) => data.points.get(k)).filter(Boolean);
    let good = all.filter((p) => conditionOf(p, now) === "good");
    // Nothing fresh: show the last known values, marked as stale, rather than a bare dash.
    const fallback = good.length === 0;
    if (fallback) good = all.filter((p) => p.quality === "good");
    let text;
    let alert = false;
    if (a.group.kind === "max") {
      const vals = good.map((p) => p.value).filter((v) => typeof v === "number");
      const unit = good[0]?.unit ? ` ${good[0].unit}` : "";
      text = vals.length ? `${fmtNumber(Math.max(...vals))}${unit}` : t("common.none");
    } else if (a.group.kind === "number") {
      const vals = good.map((p) => p.value).filter((v) => typeof v === "number");
      if (vals.length === 0) text = t("common.none");
      else {
        const min = Math.min(...vals);
        const max = Math.max(...vals);
        const unit = good[0].unit ? ` ${good[0].unit}` : "";
        text = min === max ? `${fmtNumber(min)}${unit}` : `${fmtNumber(min)}–${fmtNumber(max)}${unit}`;
      }
    } else {
      const counts = new Map();
      for (const p of good) {
        const s = stateOf(p) ?? fmtNumber(p.value);
        counts.set(s, (counts.get(s) ?? 0) + 1);
      }
      // Dangerous states first, so "ALARM ×1" is never hidden behind "normal ×7".
      const entries = [...counts].sort((x, y) => isAlertState(y[0]) - isAlertState(x[0]) || y[1] - x[1]);
      alert = entries.some(([s]) => isAlertState(s));
      text = entries.length ? entries.map(([s, n]) => (entries.length === 1 && n === a.keys.length ? stateWord(s) : `${stateWord(s)} ×${n}`)).join(" · ") : t("common.none");
    }
    const missing = fallback ? a.keys.length : a.keys.length - good.length;
    const sig = `${text}|${alert}|${missing}`;
    if (sig === a.last) continue;
    a.last = sig;
    a.value.textContent = text;
    if (alert) a.el.dataset.alert = "1";
    else delete a.el.dataset.alert;
    a.el.dataset.cond = missing === a.keys.length ? (good.length ? "stale" : "bad") : "good";
    a.el.title = a.keys.map((k) => k.slice(tile.r.site.length + 1)).join(", ");
  }
}

function updateFlags(tile) {
  const now = data.serverNow();
  let stale = 0;
  let bad = 0;
  const offline = new Set();
  for (const k of tile.r.keys) {
    const p = data.points.get(k);
    if (!p) continue;
    const c = conditionOf(p, now);
    if (c === "offline") offline.add(p.agent);
    else if (c === "stale") stale++;
    else if (c === "bad") bad++;
  }
  const sig = `${stale}|${bad}|${[...offline].join(",")}|${getLang()}`;
  if (sig === tile.lastFlags) return;
  tile.lastFlags = sig;
  const items = [];
  if (offline.size) items.push(badge("offline", t("badge.offline_list", { list: [...offline].join(", ") })));
  if (stale) items.push(badge("stale", t("badge.stale_n", { n: stale })));
  if (bad) items.push(badge("bad", t("badge.bad_n", { n: bad })));
  tile.flags.replaceChildren(...items);
  tile.flags.hidden = items.length === 0;
  if (items.length) tile.el.dataset.degraded = offline.size ? "offline" : "stale";
  else delete tile.el.dataset.degraded;
}

function updateLevel(tile) {
  const active = data.activeAlarmsOf(tile.r.site, tile.r.room);
  const level = active.reduce((w, a) => (w === 0 || a.level < w ? a.level : w), 0);
  if (level !== tile.lastLevel) {
    tile.lastLevel = level;
    tile.el.dataset.level = String(level);
    tile.levelBox.replaceChildren(levelBadge(level, { short: true }));
  }
  // The worst alarm's name tells what is wrong without opening the room.
  const top = active[0]; // openAlarms is sorted by level, then newest first
  const sig = top ? `${top.serial}|${active.length}|${getLang()}` : "";
  if (sig === tile.lastAlarm) return;
  tile.lastAlarm = sig;
  tile.alarmLine.hidden = !top;
  tile.alarmLine.replaceChildren(
    ...(top ? [h("span", { class: "tile-alarm-name" }, alarmName(top)), active.length > 1 ? h("span", { class: "more" }, t("overview.more_alarms", { n: active.length - 1 })) : null].filter(Boolean) : []),
  );
}

function renderSummary() {
  const box = root?.querySelector(".summary");
  if (!box) return;
  // Open incidents, as the header's badge counts them: those still active by
  // the worst level active in them, and those over but not yet acknowledged.
  const counts = [0, 0, 0, 0, 0];
  let waiting = 0;
  for (const g of data.incidents(data.openAlarms)) {
    const active = g.alarms.filter((a) => !a.cleared_at);
    if (active.length === 0) waiting++;
    else counts[Math.min(4, Math.max(1, active[0].level))]++;
  }
  const items = [];
  for (let l = 1; l <= 4; l++) {
    if (counts[l]) items.push(h("a", { href: "#/alarms", class: "sum-chip", dataset: { level: String(l) }, title: t("overview.summary.incidents") }, levelBadge(l, { short: true }), h("span", { class: "sum-n" }, String(counts[l]))));
  }
  if (items.length === 0) items.push(h("span", { class: "sum-ok" }, levelBadge(0), " ", t("overview.summary.none")));
  if (waiting) items.push(h("a", { href: "#/alarms", class: "sum-chip sum-waiting" }, t("overview.summary.waiting", { n: waiting })));
  const offline = [...data.agents.values()].filter((a) => a.state !== "online").map((a) => a.agent);
  if (offline.length) items.push(badge("offline", t("overview.summary.agents_offline", { list: offline.join(", ") })));
  box.replaceChildren(...items);
}

function siteHeader(site) {
  const siteAlarms = data.openAlarms.filter((a) => a.site === site && !a.room && !a.cleared_at);
  const worst = siteAlarms.reduce((w, a) => (w === 0 || a.level < w ? a.level : w), 0);
  return h(
    "h2",
    { class: "site-name" },
    site,
    siteAlarms.length ? h("a", { href: "#/alarms", class: "site-alarms" }, levelBadge(worst, { short: true }), " ", t("overview.site_alarms", { n: siteAlarms.length })) : null,
  );
}

function build() {
  if (!root) return;
  tiles = new Map();
  pointRoom = new Map();
  const list = roomList();
  const sites = root.querySelector(".sites");
  if (list.length === 0) {
    sites.replaceChildren(h("p", { class: "empty" }, t("overview.empty")));
    return;
  }
  const bySite = new Map();
  for (const r of list) {
    if (!bySite.has(r.site)) bySite.set(r.site, []);
    bySite.get(r.site).push(r);
  }
  const frag = document.createDocumentFragment();
  for (const [site, rs] of bySite) {
    const grid = h("div", { class: "tiles" });
    for (const r of rs) {
      const tile = buildTile(r);
      tiles.set(tile.rk, tile);
      grid.append(tile.el);
    }
    frag.append(h("section", { class: "site", dataset: { site } }, siteHeader(site), grid));
  }
  sites.replaceChildren(frag);
}

function onAlarms() {
  // A room seen only in a new alarm needs a tile: rebuild; otherwise just recolour.
  const missing = data.openAlarms.some((a) => a.room && !tiles.has(data.roomKey(a.site, a.room)));
  if (missing) build();
  else {
    for (const tile of tiles.values()) updateLevel(tile);
    for (const sec of root.querySelectorAll("section.site")) sec.firstChild.replaceWith(siteHeader(sec.dataset.site));
  }
  renderSummary();
}

function onPointsFlushed(keys) {
  if (keys === null) {
    for (const tile of tiles.values()) {
      updateAggregates(tile);
      updateFlags(tile);
    }
    return;
  }
  const touched = new Set();
  for (const k of keys) {
    const rk = pointRoom.get(k);
    if (rk) touched.add(rk);
  }
  for (const rk of touched) {
    const tile = tiles.get(rk);
    if (!tile) continue;
    updateAggregates(tile);
    updateFlags(tile);
  }
}

export default {
  id: "view-overview",
  mount(el) {
    root = el;
    el.append(
      h("div", { class: "view-head" }, h("h1", null, t("overview.title")), h("div", { class: "summary", "aria-live": "polite" })),
      h("div", { class: "sites" }),
    );
    build();
    renderSummary();
    unsubs = [
      data.on("structure", build),
      data.on("alarms", onAlarms),
      data.on("agents", () => {
        renderSummary();
        for (const tile of tiles.values()) updateFlags(tile);
      }),
      onFlush(onPointsFlushed),
    ];
  },
  unmount() {
    for (const u of unsubs) u();
    unsubs = [];
    tiles = new Map();
    pointRoom = new Map();
    root = null;
  },
};
