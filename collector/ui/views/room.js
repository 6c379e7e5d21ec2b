// #/room/<site>/<room> — every device of a room and its points: live value,
// quality (with the reason when bad), time of the reading, and a sparkline of
// the last six hours with alarm thresholds. A row opens the point's history.

import * as api from "../api.js";
import * as data from "../data.js";
import { bindPoint } from "../bind.js";
import { h, svg, pointHref } from "../dom.js";
import { t, getLang, quantityName } from "../i18n.js";
import { fmtDateTime, isStateQuantity } from "../format.js";
import { drawSparkline } from "../charts.js";
import { levelBadge, badge } from "../widgets.js";

const SPARK_STEP_S = 300; // 5 min buckets over 6 h: 72 per line
const SPARK_SPAN_S = 6 * 3600;
const SPARK_REFRESH_MS = 5 * 60_000;
const MAX_POINTS_PER_REQUEST = 500; // the history API's limit
const LIMIT_FETCHES_AT_ONCE = 4;

let root = null;
let params = null;
let unsubs = [];
let refreshTimer = null;
let sparks = new Map(); // pointKey → {el, values, limits}
let keysShown = "";
let generation = 0; // bumps on unmount, so late answers for a left view are dropped

const alarmName = (a) => (getLang() === "zh-CN" && a.name_zh) || a.name;

function roomKeys() {
  return data.rooms.get(data.roomKey(params.site, params.room))?.keys ?? [];
}

function renderHead() {
  const level = data.roomLevel(params.site, params.room);
  return h(
    "div",
    { class: "view-head" },
    h("nav", { class: "crumbs", "aria-label": "breadcrumb" }, h("a", { href: "#/" }, t("room.back")), h("span", { "aria-hidden": "true" }, " › "), h("span", null, params.site)),
    // The name people use, with the id engineers use beside it.
    h("h1", { class: "room-title" }, h("span", null, data.roomName(params.site, params.room)), data.roomName(params.site, params.room) !== params.room ? h("span", { class: "muted room-id" }, ` ${params.room}`) : null, " ", h("span", { class: "room-level" }, levelBadge(level))),
  );
}

function renderAlarms() {
  const box = root?.querySelector(".room-alarms");
  if (!box) return;
  const list = data.activeAlarmsOf(params.site, params.room);
  const items = list.map((a) =>
    h(
      "li",
      null,
      h("a", { href: "#/alarms", class: "room-alarm", dataset: { level: String(a.level) } }, levelBadge(a.level, { short: true }), " ", h("span", { class: "name" }, alarmName(a)), " ", h("span", { class: "muted" }, `#${a.serial} · ${fmtDateTime(Date.parse(a.raised_at))}`)),
    ),
  );
  box.replaceChildren(h("h2", null, t("room.alarms")), items.length ? h("ul", { class: "plain" }, items) : h("p", { class: "muted" }, t("room.no_alarms")));
  const lvl = root.querySelector(".room-level");
  if (lvl) lvl.replaceChildren(levelBadge(data.roomLevel(params.site, params.room)));
}

function deviceHealth(site, agent, device) {
  const out = [];
  if (data.agentOffline(site, agent)) out.push(badge("offline", t("badge.offline")));
  const a = data.agents.get(`${site}/${agent}`);
  const d = a?.devices?.find?.((x) => x.device === device);
  if (d && d.consecutive_failures > 0) out.push(badge("bad", t("room.device_health", { n: d.consecutive_failures, err: d.last_error ?? "" })));
  // Not a fault: the agent reads these points one by one since the device refused a larger read.
  if (d && d.reads_split > 0) out.push(badge("muted", t("room.reads_split", { n: d.reads_split })));
  return out;
}

function renderDevices() {
  const box = root.querySelector(".devices");
  const keys = roomKeys();
  keysShown = keys.join("\n");
  sparks = new Map();
  if (keys.length === 0) {
    box.replaceChildren(h("p", { class: "empty" }, t("room.unknown")));
    return;
  }
  const byDevice = new Map();
  for (const k of keys) {
    const p = data.points.get(k);
    const d = p.device || "—";
    if (!byDevice.has(d)) byDevice.set(d, []);
    byDevice.get(d).push(p);
  }
  const frag = document.createDocumentFragment();
  for (const [device, pts] of [...byDevice].sort((a, b) => a[0].localeCompare(b[0]))) {
    const agent = pts[0].agent;
    const tbody = h("tbody");
    for (const p of pts) tbody.append(pointRow(p, device));
    frag.append(
      h(
        "section",
        { class: "device card", dataset: { device } },
        h("h2", { class: "device-name" }, data.deviceName(params.site, device), data.deviceName(params.site, device) !== device ? h("span", { class: "muted" }, ` ${device}`) : null, h("span", { class: "muted device-agent" }, t("room.agent", { agent })), h("span", { class: "device-health", dataset: { agent } }, deviceHealth(params.site, agent, device))),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "points" },
            h("thead", null, h("tr", null, h("th", { scope: "col" }, t("room.point")), h("th", { scope: "col" }, t("room.quantity")), h("th", { scope: "col", class: "num" }, t("room.value")), h("th", { scope: "col" }, t("room.quality")), h("th", { scope: "col" }, t("room.time")), h("th", { scope: "col", class: "spark-col" }, t("room.trend")))),
            tbody,
          ),
        ),
      ),
    );
  }
  box.replaceChildren(frag);
}

function pointRow(p, device) {
  const key = data.pointKey(p.site, p.point);
  const href = pointHref(p.site, p.point);
  // "br-th-1.temperature" under device br-th-1 reads as "temperature".
  const short = p.point.startsWith(device + ".") ? p.point.slice(device.length + 1) : p.point;
  const spark = svg("svg", { class: "spark", "aria-hidden": "true", focusable: "false" });
  sparks.set(key, { el: spark, values: null, limits: [], quantity: p.quantity });
  const row = h(
    "tr",
    { class: "prow", tabindex: "0", "aria-label": t("room.open_point", { point: p.point }) },
    h("th", { scope: "row", title: p.point }, h("a", { href, tabindex: "-1" }, short)),
    h("td", null, quantityName(p.quantity)),
    h("td", { class: "num" }, h("span", { class: "value" })),
    h("td", { class: "q" }),
    h("td", { class: "ts" }),
    h("td", { class: "spark-col" }, spark),
  );
  row.addEventListener("click", (e) => {
    if (e.target.closest("a")) return; // the link navigates by itself
    location.hash = href;
  });
  row.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && e.target === row) location.hash = href;
  });
  return bindPoint(row, key);
}

function redrawSpark(key) {
  const s = sparks.get(key);
  if (!s || !s.values) return;
  const to = Date.now() / 1000;
  drawSparkline(s.el, s.values, SPARK_STEP_S, to - SPARK_SPAN_S, to, s.limits);
}

async function loadSparklines() {
  const gen = generation;
  const site = params.site;
  const ids = [...sparks.keys()].map((k) => k.slice(site.length + 1));
  for (let i = 0; i < ids.length; i += MAX_POINTS_PER_REQUEST) {
    const chunk = ids.slice(i, i + MAX_POINTS_PER_REQUEST);
    let body;
    try {
      body = await api.get("/api/v1/history", { point: chunk.join(","), site, from: "now-6h", to: "now", step: `${SPARK_STEP_S}s` });
    } catch (e) {
      // Sparklines are a help, not the page: log, and let the values stand alone.
      if (gen === generation) console.warn("sparklines", e.message);
      return;
    }
    if (gen !== generation) return;
    for (const s of body.series ?? []) {
      const key = data.pointKey(s.site, s.point);
      const sp = sparks.get(key);
      if (!sp) continue;
      sp.values = s.values ?? [];
      redrawSpark(key);
    }
  }
}

async function loadLimits() {
  const gen = generation;
  const queue = [...sparks].filter(([, s]) => !isStateQuantity(s.quantity)).map(([k]) => k);
  const worker = async () => {
    while (queue.length) {
      const key = queue.shift();
      const point = key.slice(params.site.length + 1);
      const limits = await data.limitsOf(params.site, point);
      if (gen !== generation) return;
      const s = sparks.get(key);
      if (!s) continue;
      s.limits = limits;
      redrawSpark(key);
    }
  };
  await Promise.all(Array.from({ length: LIMIT_FETCHES_AT_ONCE }, worker));
}

function refreshAll() {
  loadSparklines();
  loadLimits();
}

function onStructure() {
  // Rebuild only when this room's point list really changed.
  if (roomKeys().join("\n") === keysShown) return;
  renderDevices();
  refreshAll();
}

function onAgents() {
  for (const el of root.querySelectorAll(".device")) {
    const health = el.querySelector(".device-health");
    health.replaceChildren(...deviceHealth(params.site, health.dataset.agent, el.dataset.device));
  }
}

export default {
  id: "view-room",
  mount(el, p) {
    root = el;
    params = p;
    el.append(renderHead(), h("section", { class: "room-alarms card", "aria-live": "polite" }), h("div", { class: "devices" }));
    renderAlarms();
    renderDevices();
    refreshAll();
    refreshTimer = setInterval(loadSparklines, SPARK_REFRESH_MS);
    unsubs = [data.on("structure", onStructure), data.on("alarms", renderAlarms), data.on("agents", onAgents)];
  },
  unmount() {
    generation++;
    for (const u of unsubs) u();
    unsubs = [];
    clearInterval(refreshTimer);
    refreshTimer = null;
    sparks = new Map();
    root = null;
  },
};

