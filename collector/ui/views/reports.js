// #/reports — monthly and yearly safety reports (安全报表). The collector
// computes the figures, renders the printable page (print it to PDF from the
// browser) and a CSV of each table; this view shows the figures as tables.

import * as api from "../api.js";
import * as data from "../data.js";
import { h } from "../dom.js";
import { t, getLang, LANGS } from "../i18n.js";
import { fmtTime, fmtDate, fmtPct, fmtNumber } from "../format.js";
import { levelBadge, metaItem, picker, showError, table } from "../widgets.js";

const TABLES = ["alarms", "longest_open", "completeness", "exceedance", "hazards", "patrols", "drills"];

const sel = { kind: "monthly", month: "", year: "", site: "", lang: "" }; // survives leaving the view
let root = null;
let generation = 0;
let unsubs = [];

const valid = () => (sel.kind === "monthly" ? /^\d{4}-\d{2}$/.test(sel.month) : /^\d{4}$/.test(sel.year));
/** The report's address with `extra` parameters (format=html or csv; JSON without). */
const reportUrl = (extra) => api.url(`/api/v1/reports/${sel.kind}`, { ...(sel.kind === "monthly" ? { month: sel.month } : { year: sel.year }), site: sel.site, ...extra });
const place = (x) => (x.room ? `${x.site} / ${x.room}` : x.site);
/** A duration in one style throughout: "45 s", "1 min 49 s", "2 h 5 min", "3 d 4 h". */
function dur(s) {
  if (s == null) return t("common.none");
  const n = Math.max(0, Math.round(s));
  if (n < 60) return `${n} s`;
  if (n < 3600) return `${Math.floor(n / 60)} min ${n % 60} s`;
  if (n < 86400) return `${Math.floor(n / 3600)} h ${Math.floor((n % 3600) / 60)} min`;
  return `${Math.floor(n / 86400)} d ${Math.floor((n % 86400) / 3600)} h`;
}
const lvl = (l) => levelBadge(l, { short: true });
const cols = (keys) => keys.split(" ").map((k) => t(/^\w\w+$/.test(k) ? "rp." + k : k));

function section(name, head, rows) {
  return h("section", { class: "card", dataset: { table: name } }, h("h2", null, t("rp.t." + name)), rows.length ? table(cols(head), rows) : h("p", { class: "muted" }, t("rp.empty")));
}

function monthBody(r) {
  const hz = r.hazards ?? {};
  const major = (n, m) => `${n} (${t("hz.grade.major")} ${m})`;
  return [
    section("alarms", "level hz.f.category raised inhibited acknowledged ack_time cleared clear_time", r.alarms.map((a) => [lvl(a.level), a.category, a.raised, a.inhibited, a.acknowledged, `${dur(a.ack_mean_s)} / ${dur(a.ack_median_s)}`, a.cleared, `${dur(a.clear_mean_s)} / ${dur(a.clear_median_s)}`])),
    section("longest_open", "# alarm level hz.f.place alarms.raised alarms.cleared open_for", r.longest_open.map((a) => [a.serial, a.name, lvl(a.level), place(a), fmtTime(a.raised_at), a.cleared_at ? fmtTime(a.cleared_at) : t("rp.still_open"), dur(a.open_s)])),
    section("completeness", "hz.f.place points pt.completeness worst", r.completeness.map((c) => [place(c), c.points, fmtPct(c.completeness), `${c.worst_point} (${fmtPct(c.worst)})`])),
    section("exceedance", "hz.f.place room.point rule level limit minutes", r.exceedance.map((e) => [place(e), e.point, e.rule, lvl(e.level), t("limit." + e.kind, { value: fmtNumber(e.limit) }), e.minutes])),
    h(
      "section",
      { class: "card", dataset: { table: "hazards" } },
      h("h2", null, t("rp.t.hazards")),
      h("dl", { class: "alarm-meta" }, metaItem(t("rp.opened"), major(hz.opened, hz.opened_major)), metaItem(t("rp.closed"), String(hz.closed)), metaItem(t("hz.overdue"), String(hz.overdue)), metaItem(t("rp.open_at_end"), major(hz.open_at_end, hz.open_major_at_end))),
    ),
    section("patrols", "hz.f.place planned done manual coverage", r.patrols.map((p) => [place(p), p.planned, p.done, p.manual, p.planned ? fmtPct(p.done / p.planned) : t("common.none")])),
    // Drills apart: their alarms are counted here, never in the tables above.
    section("drills", "scenario hz.f.place started ended drill_alarms to_first_alarm to_first_ack pt.by hz.f.note", r.drills.map((d) => [d.scenario, d.room ? `${d.site} / ${d.room}` : `${d.site} / ${t("drills.whole_site")}`, fmtTime(d.started_at), fmtTime(d.ended_at), d.alarms ? h("span", null, lvl(d.worst_level), ` ${d.alarms}`) : "0", dur(d.first_alarm_s), dur(d.first_ack_s), d.by ?? "", d.note ?? ""])),
  ];
}

function yearBody(y) {
  const sum = (list, f) => list.reduce((n, x) => n + f(x), 0);
  const rows = y.months.map((m) => [
    m.period.label,
    sum(m.alarms, (a) => a.raised),
    sum(m.alarms, (a) => (a.level === 1 ? a.raised : 0)),
    m.hazards.opened,
    m.hazards.closed,
    m.hazards.open_major_at_end,
    `${sum(m.patrols, (p) => p.done)} / ${sum(m.patrols, (p) => p.planned)}`,
    m.drills.length,
  ]);
  return h("section", { class: "card" }, table(cols("month raised raised_l1 opened closed open_major_at_end patrols_done rp.t.drills"), rows));
}

function renderLinks() {
  const box = root.querySelector(".rp-links");
  box.hidden = !valid();
  box.replaceChildren(
    h("a", { id: "report-print", class: "button", href: reportUrl({ format: "html", lang: sel.lang }), target: "_blank", rel: "noopener" }, t("rp.print")),
    h("span", { class: "muted" }, "CSV:"),
    ...TABLES.map((name) => h("a", { class: "button", dataset: { csv: name }, href: reportUrl({ format: "csv", table: name }), download: "" }, t("rp.t." + name))),
  );
}

async function load() {
  renderLinks();
  const gen = ++generation;
  const box = root.querySelector(".rp-body");
  if (!valid()) return box.replaceChildren();
  box.replaceChildren(h("p", { class: "muted" }, t("point.loading")));
  try {
    const r = await api.get(reportUrl({}));
    if (gen !== generation) return;
    const monthly = sel.kind === "monthly";
    box.replaceChildren(
      h(
        "p",
        null,
        h("strong", null, t(monthly ? "rp.monthly_of" : "rp.yearly_of", { label: monthly ? r.period.label : r.year })),
        ` · ${r.site ?? t("rp.all_sites")} · ${r.time_zone}`,
        monthly ? ` · ${fmtTime(r.period.from)} → ${fmtTime(r.period.to)}` : "",
        // A month still running (or the collector's first): the figures stop at `until`.
        monthly && Date.parse(r.until) < Date.parse(r.period.to) ? h("span", { class: "muted" }, ` · ${t("rp.until", { at: fmtTime(r.until) })}`) : null,
      ),
      h("div", { class: "rp-sections" }, monthly ? monthBody(r) : yearBody(r)),
    );
  } catch (e) {
    if (gen !== generation || e.status === 401) return;
    box.replaceChildren(h("p", { class: "error" }, e.message));
    showError(e.message);
  }
}

function months() {
  const [y, m] = fmtDate(Date.now()).split("-").map(Number);
  const name = new Intl.DateTimeFormat(getLang(), { year: "numeric", month: "long", timeZone: "UTC" });
  const out = [];
  for (let i = 0; i < 36; i++) {
    const d = new Date(Date.UTC(y, m - 1 - i, 1));
    const value = `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, "0")}`;
    out.push([value, i === 0 ? `${name.format(d)} (${t("rp.to_date")})` : name.format(d)]);
  }
  return out;
}

function controls() {
  const set = (k) => (v) => {
    sel[k] = v;
    if (k === "kind") root.querySelector(".filters").replaceWith(controls());
    if (k === "lang") renderLinks();
    else load();
  };
  const input = (k, attrs) => h("label", null, t("rp." + k), h("input", { id: `report-${k}`, value: sel[k], onchange: (e) => set(k)(e.target.value), ...attrs }));
  const sites = [...new Set([...data.siteNames(), sel.site].filter(Boolean))];
  return h(
    "div",
    { class: "controls filters" },
    picker(t("rp.kind"), "report-kind", sel.kind, [["monthly", t("rp.monthly")], ["yearly", t("rp.yearly")]], set("kind")),
    // Months named in the page's language (a browser's month input follows the
    // browser's, not ours): this month to date first, then the 35 before it.
    sel.kind === "monthly" ? picker(t("rp.month"), "report-month", sel.month, months(), set("month")) : input("year", { type: "number", min: "2000", max: "2100" }),
    picker(t("hz.f.site"), "report-site", sel.site, [["", t("rp.all_sites")], ...sites.map((s) => [s, s])], set("site")),
    picker(t("rp.lang"), "report-lang", sel.lang, LANGS.map((l) => [l, l === "zh-CN" ? "中文" : "English"]), set("lang")),
  );
}

export default {
  id: "view-reports",
  mount(el) {
    root = el;
    const [y, m] = fmtDate(Date.now()).split("-").map(Number); // today in the site's zone
    // This month to date: what an inspector opening the page asks first.
    sel.month ||= `${y}-${String(m).padStart(2, "0")}`;
    sel.year ||= String(y);
    sel.lang ||= getLang();
    el.append(h("div", { class: "view-head" }, h("h1", null, t("nav.reports"))), controls(), h("div", { class: "rp-links controls" }), h("div", { class: "rp-body" }));
    load();
    unsubs = [data.on("structure", () => root.querySelector(".filters").replaceWith(controls()))];
  },
  unmount() {
    generation++;
    for (const u of unsubs) u();
    unsubs = [];
    root = null;
  },
};
