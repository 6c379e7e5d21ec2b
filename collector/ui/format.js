// Turning readings, numbers and times into text. Times are shown in the
// site's time zone (from /api/v1/me), not the browser's: an operator in
// another city reads the same clock as the people in the room.

import { t, stateWord } from "./i18n.js";

let zone = undefined; // undefined = the browser's zone until /me says otherwise

export function setTimeZone(tz) {
  if (!tz) return;
  try {
    new Intl.DateTimeFormat("en", { timeZone: tz });
    zone = tz;
  } catch {
    // An unknown zone name: keep the browser's rather than failing every format.
  }
  formatters.clear();
}

export function timeZone() {
  return zone || Intl.DateTimeFormat().resolvedOptions().timeZone;
}

// One Intl.DateTimeFormat per shape and zone: creating them is the slow part.
const formatters = new Map();
function dtf(kind) {
  let f = formatters.get(kind);
  if (!f) {
    const base = { timeZone: zone, hourCycle: "h23" };
    const opts = {
      full: { ...base, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" },
      minute: { ...base, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" },
      day: { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit" },
    }[kind];
    f = new Intl.DateTimeFormat("en-US", opts);
    formatters.set(kind, f);
  }
  return f;
}

function parts(ms, kind) {
  const o = {};
  for (const p of dtf(kind).formatToParts(new Date(ms))) o[p.type] = p.value;
  return o;
}

/**
 * "2026-11-28 17:40:02" in the site's zone: numeric and the same in both
 * languages, so a time read aloud over the phone is unambiguous.
 */
export function fmtDateTime(ms) {
  if (ms == null || Number.isNaN(ms)) return t("common.none");
  const p = parts(ms, "full");
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

/** An API time (RFC 3339 text, or ms since the epoch in reports) as fmtDateTime; "—" when absent. */
export function fmtTime(v) {
  return fmtDateTime(v == null ? null : typeof v === "number" ? v : Date.parse(v));
}

/** "2026-12-31": the day of an API time in the site's zone (a date input's value), or "". */
export function fmtDate(v) {
  const ms = v == null ? NaN : typeof v === "number" ? v : Date.parse(v);
  if (Number.isNaN(ms)) return "";
  const p = parts(ms, "day");
  return `${p.year}-${p.month}-${p.day}`;
}

/** A share from 0 to 1 as "97.3 %". */
export function fmtPct(x) {
  return x == null || !Number.isFinite(x) ? t("common.none") : `${fmtNumber(x * 100)} %`;
}

/** "17:40:02" when `ms` is today in the site's zone, else the full date-time. */
export function fmtTimeShort(ms, nowMs = Date.now()) {
  if (ms == null || Number.isNaN(ms)) return t("common.none");
  const p = parts(ms, "full");
  const today = parts(nowMs, "day");
  if (p.year === today.year && p.month === today.month && p.day === today.day) {
    return `${p.hour}:${p.minute}:${p.second}`;
  }
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

/** Axis labels for charts: "17:40", "11-28 17:40" or "11-28", by the span shown. */
export function fmtAxisTime(ms, spanMs) {
  const p = parts(ms, "minute");
  if (spanMs <= 36 * 3600e3) return `${p.hour}:${p.minute}`;
  if (spanMs <= 8 * 86400e3) return `${p.month}-${p.day} ${p.hour}:${p.minute}`;
  return `${p.month}-${p.day}`;
}

/** "YYYY-MM-DDTHH:MM" in the site's zone, the form a datetime-local input and the API take. */
export function toLocalInput(ms) {
  const p = parts(ms, "minute");
  return `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}`;
}

/** A span of time as "45 s", "12 min", "3 h", "2 d". */
export function fmtAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

const numFormats = new Map();
/** Numbers without grouping (so they read and parse the same in both languages). */
export function fmtNumber(v) {
  if (v == null || !Number.isFinite(v)) return t("common.none");
  const a = Math.abs(v);
  const digits = a >= 1000 ? 0 : a >= 100 ? 1 : 2;
  let f = numFormats.get(digits);
  if (!f) {
    f = new Intl.NumberFormat("en-US", { maximumFractionDigits: digits, useGrouping: false });
    numFormats.set(digits, f);
  }
  return f.format(v);
}

// Two-state quantities arrive as 0/1 without a text: name their states so an
// operator reads "smoke: ALARM", not "smoke: 1".
const BOOLEAN_STATES = {
  smoke: ["normal", "alarm"],
  water_leak: ["dry", "leak"],
  breaker_closed: ["open", "closed"],
  spd_failed: ["ok", "failed"],
  detector_fault: ["ok", "fault"],
  bms_fault: ["ok", "fault"],
};

/** Whether a quantity's value is a state (shown as words, not drawn as a sparkline range). */
export function isStateQuantity(q) {
  return q in BOOLEAN_STATES || q === "ups_output_source" || q === "ups_battery_status";
}

/** The state word of a reading ("alarm", "on_battery"), or null for a plain number. */
export function stateOf(p) {
  if (p.text != null && p.text !== "") return p.text;
  const names = BOOLEAN_STATES[p.quantity];
  if (names && (p.value === 0 || p.value === 1)) return names[p.value];
  return null;
}

/** States that mean danger; shown with a warning style besides their word. */
const ALERT_STATES = new Set(["alarm", "leak", "failed", "fault", "on_battery", "low", "depleted", "none", "open"]);
export function isAlertState(word) {
  return ALERT_STATES.has(word);
}

/** A reading as the .value text: "23.4 °C", "on battery", or "—" when bad. */
export function fmtReading(p) {
  if (!p || p.quality !== "good") return t("common.none");
  const state = stateOf(p);
  if (state != null) return stateWord(state);
  if (p.value == null) return t("common.none");
  return p.unit ? `${fmtNumber(p.value)} ${p.unit}` : fmtNumber(p.value);
}

/** A value with a unit, for alarm rows and thresholds. */
export function fmtValue(v, unit) {
  if (v == null) return t("common.none");
  return unit ? `${fmtNumber(v)} ${unit}` : fmtNumber(v);
}

/** "10s", "2m", "1h", as the API writes steps. */
export function fmtStep(seconds) {
  if (seconds % 86400 === 0) return `${seconds / 86400}d`;
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}
