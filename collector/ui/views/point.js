// #/point/<site>/<point> — one point's history: the mean as a line with the
// min–max band of each bucket around it, alarm thresholds, a range picker and
// a CSV download of exactly what is drawn. Steps are picked so a range has
// roughly 500–1,000 buckets: enough detail, and an answer the store gives
// from one range scan of one tier.

import * as api from "../api.js";
import * as data from "../data.js";
import { pointValue } from "../bind.js";
import { h, roomHref } from "../dom.js";
import { t, getLang, quantityName } from "../i18n.js";
import { fmtStep, fmtValue, toLocalInput, timeZone } from "../format.js";
import { historyOptions, toColumns, LEVEL_COLOURS } from "../charts.js";
import { levelBadge, showError } from "../widgets.js";

const RANGES = {
  hour: { from: "now-1h", step: 10, refreshMs: 30_000 },
  day: { from: "now-24h", step: 120, refreshMs: 120_000 },
  week: { from: "now-7d", step: 600, refreshMs: 600_000 },
  month: { from: "now-30d", step: 3600, refreshMs: 600_000 },
};
const NICE_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
const TARGET_BUCKETS = 750;

// The range survives moving between points, so comparing two sensors keeps the same window.
let rangeChoice = "hour";
let custom = null; // {from, to} as "YYYY-MM-DDTHH:MM" in the site's zone

let root = null;
let params = null;
let plot = null;
let limits = [];
let unsubs = [];
let refreshTimer = null;
let resizeObs = null;
let generation = 0; // bumps per history request: only the newest answer is drawn
let viewGen = 0; // bumps per mount and unmount: answers for a view left behind are dropped
// The x range drawn: the asked range, so an empty stretch at the end shows "no data yet".
let xFrom = 0;
let xTo = 1;

/** A step giving about TARGET_BUCKETS buckets over `spanS` seconds. */
function stepFor(spanS) {
  const want = spanS / TARGET_BUCKETS;
  return NICE_STEPS.find((s) => s >= want) ?? Math.ceil(want / 86400) * 86400;
}

function query() {
  const base = { point: params.point, site: params.site, tz: timeZone() };
  if (rangeChoice !== "custom" || !custom) {
    const r = RANGES[rangeChoice] ?? RANGES.hour;
    return { ...base, from: r.from, to: "now", step: fmtStep(r.step) };
  }
  // datetime-local values carry no zone; the API reads them in `tz`, the site's.
  const spanS = (Date.parse(custom.to + "Z") - Date.parse(custom.from + "Z")) / 1000;
  return { ...base, from: custom.from, to: custom.to, step: fmtStep(stepFor(Math.max(spanS, 60))) };
}

function limitLabel(l) {
  return `${(getLang() === "zh-CN" && l.name_zh) || l.name || l.rule}`;
}

function renderHead() {
  const key = data.pointKey(params.site, params.point);
  const p = data.points.get(key);
  const crumbs = [h("a", { href: "#/" }, t("room.back"))];
  if (p?.room) crumbs.push(h("span", { "aria-hidden": "true" }, " › "), h("a", { href: roomHref(p.site, p.room) }, p.room));
  const meta = p
    ? h(
        "dl",
        { class: "meta" },
        h("div", null, h("dt", null, t("point.device")), h("dd", null, p.device || "—")),
        h("div", null, h("dt", null, t("point.quantity")), h("dd", null, quantityName(p.quantity))),
        h("div", null, h("dt", null, t("point.agent")), h("dd", null, p.agent || "—")),
      )
    : null;
  return h(
    "div",
    { class: "view-head point-head" },
    h("nav", { class: "crumbs", "aria-label": "breadcrumb" }, crumbs),
    h("h1", null, params.point, " ", h("span", { class: "muted site-tag" }, params.site)),
    h("div", { class: "point-now" }, h("span", { class: "muted" }, t("point.live")), " ", pointValue(key, "pv big")),
    meta,
  );
}

/** The range buttons, the custom from/to form and the CSV link; built once per mount. */
function renderControls() {
  const buttons = Object.keys(RANGES)
    .concat("custom")
    .map((r) =>
      h(
        "button",
        {
          type: "button",
          class: "seg",
          "aria-pressed": "false",
          dataset: { range: r },
          onclick: () => {
            rangeChoice = r;
            if (r === "custom" && !custom) {
              const now = Date.now();
              custom = { from: toLocalInput(now - 86400e3), to: toLocalInput(now) };
            }
            load();
          },
        },
        t("point.range." + r),
      ),
    );
  const from = h("input", { type: "datetime-local", id: "range-from", required: true });
  const to = h("input", { type: "datetime-local", id: "range-to", required: true });
  const form = h(
    "form",
    {
      class: "custom-range",
      onsubmit: (e) => {
        e.preventDefault();
        if (!from.value || !to.value) return;
        custom = { from: from.value, to: to.value };
        load();
      },
    },
    h("label", { for: "range-from" }, t("point.from")),
    from,
    h("label", { for: "range-to" }, t("point.to")),
    to,
    h("button", { type: "submit" }, t("point.apply")),
    h("span", { class: "muted" }, t("point.site_time", { tz: timeZone() })),
  );
  const csv = h("a", { class: "button csv", download: `${params.point}.csv`, title: t("point.csv_title") }, t("point.csv"));
  return [h("div", { class: "segmented", role: "group", "aria-label": t("point.range") }, buttons), form, csv];
}

/** Shows the current choice without rebuilding, so the focused button keeps focus. */
function updateControls() {
  const box = root?.querySelector(".controls");
  if (!box) return;
  for (const b of box.querySelectorAll("button.seg")) b.setAttribute("aria-pressed", String(b.dataset.range === rangeChoice));
  const form = box.querySelector(".custom-range");
  form.hidden = rangeChoice !== "custom";
  if (custom) {
    form.querySelector("#range-from").value = custom.from;
    form.querySelector("#range-to").value = custom.to;
  }
  box.querySelector("a.csv").href = api.url("/api/v1/history", { ...query(), format: "csv" });
}

function renderLimits() {
  const box = root?.querySelector(".limits");
  if (!box) return;
  const unit = data.points.get(data.pointKey(params.site, params.point))?.unit ?? "";
  box.replaceChildren(
    h("h2", null, t("point.limits")),
    limits.length
      ? h(
          "ul",
          { class: "plain" },
          [...limits]
            .sort((a, b) => a.level - b.level)
            .map((l) =>
              h(
                "li",
                null,
                h("span", { class: "limit-swatch", style: { borderColor: LEVEL_COLOURS[l.level] ?? "#888" }, "aria-hidden": "true" }),
                levelBadge(l.level, { short: true }),
                " ",
                t(l.kind === "below" ? "limit.below" : "limit.above", { value: fmtValue(l.value, unit) }),
                " — ",
                limitLabel(l),
                h("span", { class: "muted" }, ` (${l.rule})`),
              ),
            ),
        )
      : h("p", { class: "muted" }, t("point.no_limits")),
  );
}

function chartSize(box) {
  const width = Math.max(280, Math.floor(box.clientWidth));
  const height = Math.max(220, Math.min(Math.round(window.innerHeight * 0.55), Math.round(width * 0.6)));
  return { width, height };
}

async function load({ auto = false } = {}) {
  const gen = ++generation;
  const box = root.querySelector(".chart");
  const info = root.querySelector(".chart-info");
  info.textContent = t("point.loading");
  updateControls(); // the CSV link follows the range
  clearInterval(refreshTimer);
  const r = RANGES[rangeChoice];
  if (rangeChoice !== "custom" && r) refreshTimer = setInterval(() => load({ auto: true }), r.refreshMs);
  let body;
  try {
    body = await api.get("/api/v1/history", query());
  } catch (e) {
    if (gen !== generation) return;
    info.textContent = e.message;
    if (e.status !== 401) showError(e.message);
    return;
  }
  if (gen !== generation || !root) return;
  const series = body.series?.[0];
  const values = series?.values ?? [];
  const stepS = parseInt(body.step, 10) || 60;
  const cols = toColumns(values, stepS);
  const chartData = [cols.xs, cols.mean, cols.max, cols.min];
  if (typeof uPlot === "undefined") {
    info.textContent = "uPlot did not load";
    return;
  }
  // A periodic refresh keeps a zoom the operator made by dragging.
  const zoomed = auto && plot && (plot.scales.x.min > xFrom + 1 || plot.scales.x.max < xTo - 1);
  xFrom = Date.parse(body.from) / 1000;
  xTo = Date.parse(body.to) / 1000;
  if (zoomed) {
    plot.setData(chartData, false);
  } else if (!plot) {
    const opts = historyOptions({ ...chartSize(box), unit: series?.unit ?? "", getLimits: () => limits.map((l) => ({ ...l, label: limitLabel(l) })) });
    plot = new uPlot(opts, chartData, box);
  } else {
    plot.setData(chartData);
  }
  // The whole asked range, not just the data's extent; a drag zooms in from here.
  if (!zoomed && xTo > xFrom) plot.setScale("x", { min: xFrom, max: xTo });
  info.textContent = values.length ? t("point.info", { n: values.length, step: body.step, tier: body.tier }) : t("point.no_data");
}

async function loadLimits() {
  const gen = viewGen;
  const got = await data.limitsOf(params.site, params.point);
  if (!root || gen !== viewGen) return;
  limits = got;
  renderLimits();
  plot?.redraw();
}

export default {
  id: "view-point",
  mount(el, p) {
    viewGen++;
    root = el;
    params = p;
    el.append(
      renderHead(),
      h("div", { class: "controls" }),
      h("div", { class: "chart-card card" }, h("div", { class: "chart", role: "img", "aria-label": t("point.title") + " " + p.point }), h("p", { class: "chart-info muted", "aria-live": "polite" })),
      h("section", { class: "limits card" }),
    );
    el.querySelector(".controls").append(...renderControls());
    updateControls();
    renderLimits();
    load();
    loadLimits();
    const box = el.querySelector(".chart");
    resizeObs = new ResizeObserver(() => {
      if (plot) plot.setSize(chartSize(box));
    });
    resizeObs.observe(box);
    unsubs = [
      data.on("structure", () => {
        // Device, room and unit arrive with the snapshot after a direct link.
        root.querySelector(".point-head")?.replaceWith(renderHead());
      }),
    ];
  },
  unmount() {
    viewGen++;
    generation++;
    for (const u of unsubs) u();
    unsubs = [];
    clearInterval(refreshTimer);
    refreshTimer = null;
    resizeObs?.disconnect();
    resizeObs = null;
    plot?.destroy();
    plot = null;
    limits = [];
    root = null;
  },
};

