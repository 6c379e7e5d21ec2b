// Charts: small SVG sparklines for the room view (dozens on one screen, so
// no chart library per cell) and the uPlot options for the point history.
// Both draw alarm thresholds from /api/v1/limits, so an operator sees how
// close a value runs to the line that raises an alarm.

import { svg } from "./dom.js";
import { fmtAxisTime, fmtDateTime, fmtNumber, timeZone } from "./format.js";
import { t } from "./i18n.js";

/** Colours per alarm level for threshold lines; the CSS variables hold the same values. */
export const LEVEL_COLOURS = { 1: "#ff6b6b", 2: "#ffa94d", 3: "#ffe066", 4: "#74c0fc" };

/**
 * History values → columns for drawing: xs in seconds, with a null row
 * inserted where buckets are missing so lines break at gaps instead of
 * drawing a straight line across an outage.
 */
export function toColumns(values, stepSeconds) {
  const xs = [];
  const mean = [];
  const min = [];
  const max = [];
  let prev = null;
  for (const v of values) {
    const x = Date.parse(v.t) / 1000;
    if (prev != null && x - prev > stepSeconds * 1.5) {
      xs.push(prev + stepSeconds);
      mean.push(null);
      min.push(null);
      max.push(null);
    }
    xs.push(x);
    mean.push(v.mean ?? v.v ?? null);
    min.push(v.min ?? v.v ?? null);
    max.push(v.max ?? v.v ?? null);
    prev = x;
  }
  return { xs, mean, min, max };
}

/**
 * The y range to show: the data's, widened to take in a threshold lying
 * close by (within the data's own span), so "how far from the alarm line"
 * is visible without squashing the data flat against a distant limit.
 */
function yRange(lo, hi, limits) {
  if (lo == null || hi == null || !Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  const span = Math.max(hi - lo, Math.abs(hi) * 0.02, 0.5);
  let a = lo;
  let b = hi;
  for (const l of limits ?? []) {
    if (l.value >= lo - span && l.value <= hi + span) {
      a = Math.min(a, l.value);
      b = Math.max(b, l.value);
    }
  }
  const pad = (b - a) * 0.08 || 0.5;
  return [a - pad, b + pad];
}

/** Fills `el` (an <svg>) with a sparkline of `values` over [fromS, toS] plus threshold lines. */
export function drawSparkline(el, values, stepSeconds, fromS, toS, limits) {
  const W = 120;
  const H = 28;
  el.setAttribute("viewBox", `0 0 ${W} ${H}`);
  el.setAttribute("preserveAspectRatio", "none");
  el.replaceChildren();
  const { xs, mean } = toColumns(values, stepSeconds);
  const nums = mean.filter((v) => v != null);
  if (nums.length === 0) return;
  const [lo, hi] = yRange(Math.min(...nums), Math.max(...nums), limits);
  const sx = (x) => ((x - fromS) / (toS - fromS)) * W;
  const sy = (y) => H - ((y - lo) / (hi - lo)) * H;
  for (const l of limits ?? []) {
    if (l.value < lo || l.value > hi) continue;
    const y = sy(l.value).toFixed(1);
    el.append(svg("line", { x1: 0, x2: W, y1: y, y2: y, class: "spark-limit", stroke: LEVEL_COLOURS[l.level] ?? "#888", "vector-effect": "non-scaling-stroke" }));
  }
  let d = "";
  for (let i = 0; i < xs.length; i++) {
    if (mean[i] == null) continue;
    const x = sx(xs[i]).toFixed(1);
    const y = sy(mean[i]).toFixed(1);
    const joined = i > 0 && mean[i - 1] != null;
    const alone = !joined && (i + 1 >= xs.length || mean[i + 1] == null);
    // A bucket with no neighbours (just after a gap, or a fresh point) is drawn as a short dash.
    d += joined ? `L${x} ${y}` : alone ? `M${x} ${y}h1.5` : `M${x} ${y}`;
  }
  el.append(svg("path", { d, class: "spark-line", "vector-effect": "non-scaling-stroke" }));
}

// ---------------------------------------------------------------- uPlot

/** The root font size in CSS px: charts scale their text with the page (4K wall screens). */
function rootPx() {
  return parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
}

/** Draws threshold lines with their level colour and a label, over the plot area. */
function thresholdPlugin(getLimits) {
  return {
    hooks: {
      draw: [
        (u) => {
          const limits = getLimits();
          if (!limits?.length) return;
          const { ctx, bbox } = u;
          const dpr = window.devicePixelRatio || 1;
          ctx.save();
          ctx.font = `${Math.round(rootPx() * 0.75 * dpr)}px system-ui, sans-serif`;
          // uPlot leaves its axis text settings on the context; set ours.
          ctx.textAlign = "left";
          ctx.textBaseline = "bottom";
          for (const l of limits) {
            const y = Math.round(u.valToPos(l.value, "y", true));
            if (y < bbox.top || y > bbox.top + bbox.height) continue;
            const colour = LEVEL_COLOURS[l.level] ?? "#aaa";
            ctx.strokeStyle = colour;
            ctx.lineWidth = 1.5 * dpr;
            ctx.setLineDash([6 * dpr, 4 * dpr]);
            ctx.beginPath();
            ctx.moveTo(bbox.left, y);
            ctx.lineTo(bbox.left + bbox.width, y);
            ctx.stroke();
            ctx.fillStyle = colour;
            // Strict, as the rules judge: raised above (below) the value, not at it.
            const label = `${l.kind === "below" ? "<" : ">"} ${fmtNumber(l.value)}  ${l.label ?? ""}`;
            ctx.fillText(label, bbox.left + 6 * dpr, y - 2 * dpr);
          }
          ctx.restore();
        },
      ],
    },
  };
}

/**
 * uPlot options for a point's history: mean as a line, min–max as a band,
 * times in the site's zone, thresholds drawn on top.
 */
export function historyOptions({ width, height, unit, getLimits }) {
  const tz = timeZone();
  const axisColour = "#9aa7b4";
  const gridColour = "rgba(154,167,180,0.15)";
  const withUnit = (v) => (v == null ? "—" : unit ? `${fmtNumber(v)} ${unit}` : fmtNumber(v));
  const rem = rootPx();
  const font = `${Math.round(rem * 0.8)}px system-ui, sans-serif`;
  return {
    width,
    height,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), tz),
    cursor: { drag: { x: true, y: false } },
    scales: {
      x: { time: true },
      y: {
        range: (u, lo, hi) => yRange(lo, hi, getLimits()),
      },
    },
    series: [
      { label: t("point.time"), value: (u, ts) => (ts == null ? "—" : fmtDateTime(ts * 1000)) },
      { label: t("point.mean"), stroke: "#6cb6ff", width: 2, value: (u, v) => withUnit(v), spanGaps: false },
      { label: t("point.max"), stroke: "rgba(108,182,255,0.35)", width: 1, value: (u, v) => withUnit(v) },
      { label: t("point.min"), stroke: "rgba(108,182,255,0.35)", width: 1, value: (u, v) => withUnit(v) },
    ],
    bands: [{ series: [2, 3], fill: "rgba(108,182,255,0.14)" }],
    axes: [
      {
        stroke: axisColour,
        font,
        size: Math.round(rem * 2.6),
        space: Math.round(rem * 5),
        grid: { stroke: gridColour },
        ticks: { stroke: gridColour },
        values: (u, splits) => {
          const span = (u.scales.x.max - u.scales.x.min) * 1000;
          return splits.map((s) => fmtAxisTime(s * 1000, span));
        },
      },
      {
        stroke: axisColour,
        grid: { stroke: gridColour },
        ticks: { stroke: gridColour },
        font,
        size: Math.round(rem * 4),
        space: Math.round(rem * 2),
        values: (u, splits) => splits.map((v) => fmtNumber(v)),
      },
    ],
    plugins: [thresholdPlugin(getLimits)],
  };
}
