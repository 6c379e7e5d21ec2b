// #/alarms — the alarm console. "Open" lists alarms still active or cleared
// but not acknowledged, most severe first, then newest; "Recent" lists the
// last 200 of any state, newest first. Alarms of one incident (one fault)
// share a card: its most severe alarm, the rest folded beneath; acknowledging
// acknowledges the incident, and incidents can be selected and acknowledged
// together. Responders and admins acknowledge,
// comment, assign and silence a room for maintenance; everyone sees the
// active silences and the drills running (declared here by anyone who records
// patrols), whose alarms carry a drill badge. Rows are keyed by serial, so a refresh after an event
// touches only rows that changed and keyboard focus stays where it was.

import * as api from "../api.js";
import * as data from "../data.js";
import { h, pointHref, reconcile, roomHref } from "../dom.js";
import { pointValue } from "../bind.js";
import { t, getLang, has, stateWord } from "../i18n.js";
import { fmtDateTime, fmtValue, stateOf, timeZone } from "../format.js";
import { levelBadge, badge, labelCells, metaItem, openDialog, showError, siteRoomPicker } from "../widgets.js";
import { canRecord, canRespond, currentUser } from "../session.js";

let root = null;
let tab = "open";
let recent = [];
let rowCache = new Map();
let silenceCache = new Map();
let drills = [];
let drillCache = new Map();
/** The alarm a link named, shown above the list (its buttons act on it too). */
let focused = null;
/** Incidents selected for a bulk acknowledgement, and those shown unfolded. */
let picked = new Set();
let expanded = new Set();
let unsubs = [];
let viewGen = 0;

const alarmName = (a) => (getLang() === "zh-CN" && a.name_zh) || a.name;
const advice = (a) => (getLang() === "zh-CN" && a.advice_zh) || a.advice;

/** A value of an alarm's point as the point shows values: "42.3 °C", or "ALARM" for a smoke head's 1. */
function valueOf(a, v = a.value) {
  const p = a.point ? data.points.get(data.pointKey(a.site, a.point)) : null;
  if (p && v != null) {
    const state = stateOf({ quantity: p.quantity, value: v, text: null });
    if (state != null) return stateWord(state);
  }
  return fmtValue(v, p?.unit ?? "");
}

/** Which point raised it (a cell, a phase, a BMS fault bit), linked to its history. */
function pointOf(a) {
  if (!a.point) return null;
  const short = a.device && a.point.startsWith(a.device + ".") ? a.point.slice(a.device.length + 1) : a.point;
  return h("a", { href: pointHref(a.site, a.point) }, a.device ? `${a.device} · ${short}` : short);
}

function shownAlarms() {
  return tab === "open" ? data.openAlarms : recent;
}

function renderRow(a, g) {
  const respond = canRespond();
  const flags = [];
  if (a.late) flags.push(badge("late", t("alarm.flag.late"), t("alarm.flag.late_title")));
  if (a.inhibited) flags.push(badge("inhibited", t("alarm.flag.inhibited"), t("alarm.flag.inhibited_title")));
  if (a.silenced_by != null) flags.push(badge("silenced", t("alarm.flag.silenced", { id: a.silenced_by })));
  if (a.drill != null) flags.push(badge("drill", t("alarm.flag.drill", { id: a.drill }), t("alarm.flag.drill_title")));
  const place = a.room ? h("a", { href: roomHref(a.site, a.room), title: a.room }, `${a.site} / ${data.roomName(a.site, a.room)}`) : `${a.site} / ${t("alarms.site_wide")}`;
  const ack = a.acknowledged_by ? [a.acknowledged_by, a.acknowledged_at ? h("span", { class: "muted" }, ` ${fmtDateTime(Date.parse(a.acknowledged_at))}`) : null] : [t("common.none")];
  const actions = [];
  if (respond) {
    // Only an unacknowledged alarm can be acknowledged (the API answers 409
    // otherwise); acknowledging one acknowledges its whole incident.
    const waiting = g ? g.alarms.filter((x) => !x.acknowledged_at).length : 0;
    if (!a.acknowledged_at) actions.push(h("button", { type: "button", class: "primary", dataset: { action: "ack" } }, waiting > 1 ? t("action.ack_incident", { n: waiting }) : t("action.ack")));
    actions.push(h("button", { type: "button", dataset: { action: "comment" } }, t("action.comment")));
    actions.push(h("button", { type: "button", dataset: { action: "assign" } }, t("action.assign")));
    if (a.room) actions.push(h("button", { type: "button", dataset: { action: "silence" } }, t("action.silence_room")));
  }
  const nameId = `alarm-${a.serial}-name`;
  return h(
    "article",
    { class: "alarm", tabindex: "0", "aria-labelledby": nameId, dataset: { alarm: String(a.serial), state: a.state, level: String(a.level) } },
    h(
      "div",
      { class: "alarm-level" },
      levelBadge(a.level),
      // The incident's main alarm carries its selection for a bulk acknowledgement.
      respond && g && g.alarms.some((x) => !x.acknowledged_at)
        ? h("label", { class: "pick" }, h("input", { type: "checkbox", class: "pick-incident", checked: picked.has(g.id), dataset: { incident: String(g.id) } }), h("span", { class: "sr-only" }, t("incident.pick", { id: g.id })))
        : null,
    ),
    h(
      "div",
      { class: "alarm-main" },
      h("h3", { class: "alarm-name", id: nameId }, alarmName(a), " ", h("span", { class: "muted serial" }, `#${a.serial}`)),
      flags.length ? h("div", { class: "alarm-flags" }, flags) : null,
      advice(a) ? h("p", { class: "advice" }, h("span", { class: "advice-label" }, `${t("alarms.advice")}: `), advice(a)) : null,
      a.comment ? h("p", { class: "comment" }, h("span", { class: "advice-label" }, `${t("alarms.comment")}: `), a.comment) : null,
    ),
    h(
      "dl",
      { class: "alarm-meta" },
      metaItem(t("alarms.room"), place),
      a.point ? metaItem(t("alarms.point"), pointOf(a)) : null,
      metaItem(t("alarms.value"), valueOf(a)),
      // The figure that matters during an incident: what it reads now, live.
      a.point && !a.cleared_at ? metaItem(t("alarms.now"), pointValue(data.pointKey(a.site, a.point))) : null,
      a.cleared_at && a.clear_value != null ? metaItem(t("alarms.clear_value"), valueOf(a, a.clear_value)) : null,
      metaItem(t("alarms.raised"), fmtDateTime(Date.parse(a.raised_at))),
      a.cleared_at ? metaItem(t("alarms.cleared"), fmtDateTime(Date.parse(a.cleared_at))) : null,
      metaItem(t("alarms.state"), h("span", { class: "state", dataset: { state: a.state } }, t("alarm.state." + a.state))),
      metaItem(t("alarms.ack_by"), ...ack),
      metaItem(t("alarms.assignee"), a.assignee || t("common.none")),
    ),
    actions.length ? h("div", { class: "alarm-actions" }, actions) : null,
  );
}

/**
 * One fault, one card: an incident shows its most severe alarm in full and
 * the others folded beneath it (kept open once opened). The card stays the
 * same element while alarms join or change; only the rows that changed are
 * rebuilt, so a button is not pulled from under a finger when another alarm
 * joins the incident.
 */
function incidentShell(g) {
  const more = h("details", { class: "incident-more", hidden: true, open: expanded.has(g.id) }, h("summary"), h("div", { class: "incident-rest" }));
  more.addEventListener("toggle", () => (more.open ? expanded.add(g.id) : expanded.delete(g.id)));
  const el = h("section", { class: "incident", dataset: { incident: String(g.id) } }, h("p", { class: "incident-head muted", hidden: true }), h("div", { class: "incident-main" }), more);
  el._rows = { main: new Map(), rest: new Map() };
  return el;
}

function fillIncident(el, g, extra) {
  const many = g.alarms.length > 1;
  if (many) el.dataset.count = String(g.alarms.length);
  else delete el.dataset.count;
  const head = el.querySelector(".incident-head");
  head.hidden = !many;
  head.textContent = many ? t("incident.title", { id: g.id, n: g.alarms.length }) : "";
  const waiting = g.alarms.filter((a) => !a.acknowledged_at).length;
  reconcile(el.querySelector(".incident-main"), [g.main], { key: (a) => a.serial, sig: (a) => `${JSON.stringify(a)}${extra}|${waiting}`, render: (a) => renderRow(a, g), cache: el._rows.main });
  const more = el.querySelector(".incident-more");
  more.hidden = !many;
  more.querySelector("summary").textContent = many ? t("incident.more", { n: g.alarms.length - 1 }) : "";
  reconcile(el.querySelector(".incident-rest"), g.alarms.slice(1), { key: (a) => a.serial, sig: (a) => JSON.stringify(a) + extra, render: (a) => renderRow(a, null), cache: el._rows.rest });
}

function renderList() {
  if (!root) return;
  const list = root.querySelector(".alarm-list");
  const groups = data.incidents(shownAlarms());
  if (tab === "recent") groups.sort((x, y) => Date.parse(y.main.raised_at) - Date.parse(x.main.raised_at));
  const empty = root.querySelector(".alarm-empty");
  empty.hidden = groups.length > 0;
  empty.textContent = tab === "open" ? t("alarms.none_open") : t("alarms.none_recent");
  // A selection of incidents no longer shown (acknowledged, gone) is dropped.
  for (const id of picked) if (!groups.some((g) => g.id === id && g.alarms.some((a) => !a.acknowledged_at))) picked.delete(id);
  const extra = `${getLang()}|${canRespond()}`;
  reconcile(list, groups, { key: (g) => g.id, sig: () => extra, render: incidentShell, cache: rowCache });
  for (const g of groups) fillIncident(rowCache.get(g.id).el, g, extra);
  const count = root.querySelector(".tab-count");
  if (count) count.textContent = ` (${data.incidents(data.openAlarms).length})`;
  renderPicked();
}

/** The bulk acknowledgement button says how many incidents are selected. */
function renderPicked() {
  const btn = root?.querySelector(".ack-selected");
  if (!btn) return;
  btn.hidden = picked.size === 0;
  btn.textContent = t("action.ack_selected", { n: picked.size });
}

async function ackSelected(btn) {
  // The first unacknowledged alarm of each incident: the API takes the rest of it.
  const serials = data
    .incidents(shownAlarms())
    .filter((g) => picked.has(g.id))
    .map((g) => g.alarms.find((a) => !a.acknowledged_at)?.serial)
    .filter((s) => s != null);
  if (serials.length === 0) return;
  btn.disabled = true;
  try {
    await api.post("/api/v1/alarms/ack", { serials });
    picked.clear();
    afterAction();
  } catch (e) {
    showError(e.message);
  } finally {
    btn.disabled = false;
    renderPicked();
  }
}

function silenceRow(s) {
  return h(
    "tr",
    { dataset: { silence: String(s.id) } },
    h("td", null, [s.site ?? "*", s.room ?? "*"].join(" / "), s.rule ? h("span", { class: "muted" }, " · " + t("silences.rule", { rule: s.rule })) : null),
    h("td", null, s.reason),
    h("td", null, s.owner),
    h("td", null, `${fmtDateTime(Date.parse(s.starts_at))} → ${fmtDateTime(Date.parse(s.ends_at))}`),
    h("td", null, canRespond() ? h("button", { type: "button", dataset: { action: "end-silence", id: String(s.id) } }, t("action.end_silence")) : null),
  );
}

/**
 * A card listing rows keyed by id with an action in the last column (the
 * silences, the drills): its title, what it says when empty, the table's
 * class and column titles, and the action's name for screen readers.
 */
function listFrame(box, { title, none, empty, cls, heads, action }) {
  box.append(
    h("h2", null, t(title)),
    h("p", { class: `muted ${empty}` }, t(none)),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: `${cls} cards` },
        h("thead", null, h("tr", null, heads.map((k) => h("th", { scope: "col" }, t(k))), h("th", { scope: "col" }, h("span", { class: "sr-only" }, t(action))))),
        h("tbody"),
      ),
    ),
  );
}

function renderSilencesFrame(box) {
  listFrame(box, { title: "silences.title", none: "silences.none", empty: "silences-empty", cls: "silence-table", heads: ["silences.scope", "silences.reason", "silences.owner", "silences.window"], action: "action.end_silence" });
}

/** Keyed like the alarm rows: a refresh never pulls an "End now" button from under a finger or the focus. */
function renderSilences() {
  const box = root?.querySelector(".silences");
  if (!box) return;
  const list = data.silences;
  box.querySelector(".silences-empty").hidden = list.length > 0;
  box.querySelector(".table-wrap").hidden = list.length === 0;
  reconcile(box.querySelector("tbody"), list, { key: (s) => s.id, sig: (s) => JSON.stringify(s), render: silenceRow, cache: silenceCache });
  labelCells(box.querySelector("table"));
}

async function loadRecent() {
  const gen = viewGen;
  try {
    const body = await api.get("/api/v1/alarms", { state: "all", limit: 200 });
    if (gen !== viewGen) return;
    recent = (body.alarms ?? []).slice().sort((a, b) => Date.parse(b.raised_at) - Date.parse(a.raised_at));
    renderList();
  } catch (e) {
    if (e.status !== 401) showError(e.message);
  }
}

function refreshSilences() {
  data.loadSilences().catch((e) => e.status !== 401 && showError(e.message));
}

/** After an action: the event stream will tell too, but the person acting should see it at once. */
function afterAction() {
  data.loadAlarms().catch(() => {});
  if (tab === "recent") loadRecent();
}

function describe(a) {
  return `${alarmName(a)} — ${a.site}${a.room ? " / " + a.room : ""}`;
}

function ackDialog(a) {
  openDialog("dlg-ack", {
    init: (form, dlg) => {
      dlg.querySelector(".dlg-title").textContent = t("dlg.ack.title", { serial: a.serial });
      dlg.querySelector(".dlg-sub").textContent = describe(a);
    },
    submit: async (form) => {
      const comment = form.querySelector("#ack-comment").value.trim();
      await api.post(`/api/v1/alarms/${a.serial}/ack`, comment ? { comment } : {});
      afterAction();
    },
  });
}

function commentDialog(a) {
  openDialog("dlg-comment", {
    init: (form, dlg) => {
      dlg.querySelector(".dlg-title").textContent = t("dlg.comment.title", { serial: a.serial });
      dlg.querySelector(".dlg-sub").textContent = describe(a);
    },
    submit: async (form) => {
      await api.post(`/api/v1/alarms/${a.serial}/comment`, { text: form.querySelector("#comment-text").value.trim() });
      afterAction();
    },
  });
}

function assignDialog(a) {
  openDialog("dlg-assign", {
    init: (form, dlg) => {
      dlg.querySelector(".dlg-title").textContent = t("dlg.assign.title", { serial: a.serial });
      dlg.querySelector(".dlg-sub").textContent = describe(a);
      form.querySelector("#assign-to").value = a.assignee ?? "";
    },
    submit: async (form) => {
      await api.post(`/api/v1/alarms/${a.serial}/assign`, { to: form.querySelector("#assign-to").value.trim() });
      afterAction();
    },
  });
}

function silenceDialog(site, room) {
  openDialog("dlg-silence", {
    init: (form) => {
      siteRoomPicker(form.querySelector("#silence-site"), form.querySelector("#silence-room"), site, room);
      form.querySelector("#silence-owner").value = currentUser()?.user ?? "";
      const dur = form.querySelector("#silence-duration");
      const untilBox = form.querySelector("#silence-until-box");
      const until = form.querySelector("#silence-until");
      form.querySelector("#silence-until-label").textContent = t("dlg.silence.until", { tz: timeZone() });
      const sync = () => {
        untilBox.hidden = dur.value !== "custom";
        until.required = dur.value === "custom";
      };
      dur.onchange = sync;
      sync();
    },
    submit: async (form) => {
      const dur = form.querySelector("#silence-duration").value;
      // now+2h, or a local date-time the API reads in the site's zone.
      const ends_at = dur === "custom" ? form.querySelector("#silence-until").value : `now+${dur}`;
      await api.post("/api/v1/silences", {
        site: form.querySelector("#silence-site").value,
        room: form.querySelector("#silence-room").value,
        reason: form.querySelector("#silence-reason").value.trim(),
        owner: form.querySelector("#silence-owner").value.trim(),
        ends_at,
      });
      refreshSilences();
      afterAction();
    },
  });
}

async function endSilence(id, btn) {
  btn.disabled = true;
  try {
    await api.post(`/api/v1/silences/${encodeURIComponent(id)}/end`, {});
    refreshSilences();
    afterAction();
  } catch (e) {
    btn.disabled = false;
    showError(e.message);
  }
}

// ---------------------------------------------------------------- one alarm

/** The alarm a link named (#alarm/12): in full, with its trail, above the console. */
async function loadFocus(serial) {
  const gen = viewGen;
  const box = root?.querySelector(".alarm-focus");
  if (!box) return;
  try {
    const a = await api.get(`/api/v1/alarms/${serial}`);
    if (gen !== viewGen || !root) return;
    focused = a;
    const trail = (a.events ?? []).map((e) =>
      h("li", null, h("span", { class: "muted" }, fmtDateTime(Date.parse(e.at))), " ", h("strong", null, has("alarm.event." + e.kind) ? t("alarm.event." + e.kind) : e.kind), ` · ${e.by}`, e.text ? ` · ${e.text}` : ""),
    );
    box.replaceChildren(h("h2", null, t("alarms.focus", { serial })), renderRow(a, null), h("h3", null, t("alarms.trail")), h("ol", { class: "trail" }, trail));
    box.hidden = false;
    box.scrollIntoView({ block: "start" });
  } catch (e) {
    if (gen !== viewGen || !root) return;
    box.replaceChildren(h("p", { class: "error" }, e.status === 404 ? t("alarms.no_such", { serial }) : e.message));
    box.hidden = false;
  }
}

// ---------------------------------------------------------------- drills

/** Drills running now: their alarms are marked as drill alarms and kept out of the reports' real counts. */
async function loadDrills() {
  const gen = viewGen;
  try {
    const body = await api.get("/api/v1/drills", { from: "now-1d" });
    if (gen !== viewGen) return;
    const now = data.serverNow();
    drills = (body.drills ?? []).filter((d) => Date.parse(d.started_at) <= now && Date.parse(d.ended_at) > now);
    renderDrills();
  } catch (e) {
    if (e.status !== 401) showError(e.message);
  }
}

function drillRow(d) {
  return h(
    "tr",
    { dataset: { drill: String(d.id) } },
    h("td", null, `#${d.id} ${d.scenario}`),
    h("td", null, `${d.site} / ${d.room || t("drills.whole_site")}`),
    h("td", null, `${fmtDateTime(Date.parse(d.started_at))} → ${fmtDateTime(Date.parse(d.ended_at))}`),
    h("td", null, d.by),
    h("td", null, canRecord() ? h("button", { type: "button", dataset: { action: "end-drill", id: String(d.id) } }, t("action.end_drill")) : null),
  );
}

function renderDrillsFrame(box) {
  listFrame(box, { title: "drills.title", none: "drills.none", empty: "drills-empty", cls: "drill-table", heads: ["drills.scenario", "drills.where", "drills.window", "drills.by"], action: "action.end_drill" });
}

/**
 * Keyed by drill, as the silences are, and rebuilt only when what a row shows
 * changes (not when its alarm figures do): a refresh never replaces an "End
 * drill" button being pressed.
 */
function renderDrills() {
  const box = root?.querySelector(".drills");
  if (!box) return;
  box.querySelector(".drills-empty").hidden = drills.length > 0;
  box.querySelector(".table-wrap").hidden = drills.length === 0;
  reconcile(box.querySelector("tbody"), drills, { key: (d) => d.id, sig: (d) => [d.scenario, d.site, d.room, d.started_at, d.ended_at, d.by, canRecord()].join("|"), render: drillRow, cache: drillCache });
  labelCells(box.querySelector("table"));
}

function drillDialog() {
  openDialog("dlg-drill", {
    init: (form) => {
      const roomSel = form.querySelector("#drill-room");
      siteRoomPicker(form.querySelector("#drill-site"), roomSel, null, null);
      // A drill may take the whole site (a mains failure does).
      const wholeSite = () => roomSel.prepend(h("option", { value: "" }, t("drills.whole_site")));
      wholeSite();
      roomSel.value = "";
      const siteSel = form.querySelector("#drill-site");
      const refill = siteSel.onchange;
      siteSel.onchange = () => {
        refill();
        wholeSite();
        roomSel.value = "";
      };
    },
    submit: async (form) => {
      const note = form.querySelector("#drill-note").value.trim();
      await api.post("/api/v1/drills", {
        site: form.querySelector("#drill-site").value,
        room: form.querySelector("#drill-room").value,
        scenario: form.querySelector("#drill-scenario").value.trim(),
        ended_at: `now+${form.querySelector("#drill-duration").value}`,
        ...(note ? { note } : {}),
      });
      loadDrills();
    },
  });
}

async function endDrill(id, btn) {
  btn.disabled = true;
  try {
    await api.post(`/api/v1/drills/${encodeURIComponent(id)}/end`, {});
    loadDrills();
  } catch (e) {
    btn.disabled = false;
    showError(e.message);
  }
}

function onChange(e) {
  const box = e.target.closest("input.pick-incident");
  if (!box || !root?.contains(box)) return;
  const id = Number(box.dataset.incident);
  if (box.checked) picked.add(id);
  else picked.delete(id);
  renderPicked();
}

function onClick(e) {
  const btn = e.target.closest("button[data-action]");
  if (!btn || !root?.contains(btn)) return;
  const action = btn.dataset.action;
  if (action === "end-silence") return endSilence(btn.dataset.id, btn);
  if (action === "end-drill") return endDrill(btn.dataset.id, btn);
  if (action === "ack-selected") return ackSelected(btn);
  const row = btn.closest("[data-alarm]");
  if (!row) return;
  const serial = Number(row.dataset.alarm);
  const a = shownAlarms().find((x) => x.serial === serial) ?? (focused?.serial === serial ? focused : null);
  if (!a) return;
  if (action === "ack") ackDialog(a);
  else if (action === "comment") commentDialog(a);
  else if (action === "assign") assignDialog(a);
  else if (action === "silence") silenceDialog(a.site, a.room);
}

export default {
  id: "view-alarms",
  mount(el, p) {
    viewGen++;
    root = el;
    tab = p.tab;
    rowCache = new Map();
    silenceCache = new Map();
    const tabLink = (name, href, extra) => h("a", { href, class: "tab", "aria-current": tab === name ? "page" : null }, t("alarms.tab." + name), extra);
    el.append(
      h(
        "div",
        { class: "view-head" },
        h("h1", null, t("alarms.title")),
        h("nav", { class: "tabs", "aria-label": t("alarms.title") }, tabLink("open", "#/alarms", h("span", { class: "tab-count" })), tabLink("recent", "#/alarms/recent")),
        canRespond() ? h("button", { type: "button", class: "primary ack-selected", hidden: true, dataset: { action: "ack-selected" } }) : null,
        canRespond() ? h("button", { type: "button", class: "silence-new", onclick: () => silenceDialog(null, null) }, t("action.silence_new")) : null,
        canRecord() ? h("button", { type: "button", class: "drill-new", onclick: drillDialog }, t("action.drill_new")) : null,
      ),
      h("section", { class: "alarm-focus card", hidden: true, tabindex: "-1" }),
      h("p", { class: "alarm-empty empty", hidden: true }),
      h("div", { class: "alarm-list" }),
      h("section", { class: "drills card" }),
      h("section", { class: "silences card" }),
    );
    el.addEventListener("click", onClick);
    el.addEventListener("change", onChange);
    renderSilencesFrame(el.querySelector(".silences"));
    renderList();
    renderSilences();
    refreshSilences();
    drills = [];
    drillCache = new Map();
    renderDrillsFrame(el.querySelector(".drills"));
    renderDrills();
    loadDrills();
    if (tab === "recent") loadRecent();
    if (p.focus != null) loadFocus(p.focus);
    unsubs = [
      data.on("alarms", () => {
        renderList();
        // The stream's "alarms" event also covers silences.
        refreshSilences();
        loadDrills();
        if (tab === "recent") loadRecent();
      }),
      data.on("silences", renderSilences),
      data.on("structure", renderList), // units of values come with the points
    ];
  },
  unmount() {
    viewGen++;
    for (const u of unsubs) u();
    unsubs = [];
    root?.removeEventListener("click", onClick);
    root?.removeEventListener("change", onChange);
    picked = new Set();
    focused = null;
    rowCache = new Map();
    recent = [];
    root = null;
  },
};
