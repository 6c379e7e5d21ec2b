// #/hazards — the hazard register (隐患台账): per site, the open major hazards
// to drive to zero (清零), overdue ones and their ages; below, the hazards
// (open and proposed ones unless asked). A row opens the hazard, its trail and the steps its
// status allows. Viewers only read; accept, dismiss and verify are for
// inspectors and admins (the API answers 403 to others).

import * as api from "../api.js";
import * as data from "../data.js";
import { h, reconcile } from "../dom.js";
import { t, word, getLang } from "../i18n.js";
import { fmtTime, fmtDate } from "../format.js";
import { badge, labelCells, metaItem, openDialog, picker, rowOpener, showError, siteRoomPicker, table } from "../widgets.js";
import { canRecord, canInspect } from "../session.js";

const STATUSES = ["proposed", "open", "rectifying", "awaiting_verification", "closed", "dismissed"];
// Each status's steps; "i": inspectors and admins only.
const ACTIONS = { proposed: ["accept:i", "dismiss:i"], open: ["start_rectification"], rectifying: ["submit_for_verification"], awaiting_verification: ["verify:i", "reject"] };
// What may be filled in (and saved) in each status.
const FIELDS = { open: ["owner", "deadline", "plan"], rectifying: ["owner", "deadline", "plan", "evidence"] };

const filter = { all: false, site: "", status: "" }; // survives leaving the view
let root = null;
let hazards = [];
let zeroing = [];
let rowCache = new Map();
let unsubs = [];
let generation = 0; // bumps per load and unmount: only the newest answer is shown
let soonTimer = null;

const gradeBadge = (g) => h("span", { class: "grade", dataset: { grade: g } }, g === "major" ? "▲ " : "", word("hz.grade", g));
const statusBadge = (s) => h("span", { class: "hz-status", dataset: { status: s } }, word("hz.status", s));
const overdueBadge = (x) => (x.overdue ? [" ", badge("overdue", t("hz.overdue_flag"))] : null);

function renderZeroing() {
  const box = root?.querySelector(".zeroing");
  if (!box) return;
  // Sites without open hazards are not in the answer: they are at zero.
  const bySite = new Map(data.siteNames().map((site) => [site, { site, open_major: 0, open: 0, overdue: 0, overdue_major: 0 }]));
  for (const z of zeroing) bySite.set(z.site, z);
  const cards = [...bySite.values()].map((z) => {
    const zero = z.open_major === 0;
    const a = z.age ?? {};
    return h(
      "div",
      { class: "zero-card card", dataset: { site: z.site, zero: String(zero) } },
      h("h3", null, z.site),
      h("p", { class: "zero-n" }, zero ? "✓ " : "✖ ", h("strong", null, String(z.open_major)), " ", t("hz.open_major"), h("br"), h("b", null, t(zero ? "hz.zero_met" : "hz.zero_not"))),
      h(
        "dl",
        { class: "alarm-meta" },
        metaItem(t("hz.open_all"), String(z.open)),
        // Not yet accepted, so not in the zeroing figure; but waiting for a decision.
        z.proposed_major ? metaItem(t("hz.proposed_major"), h("span", { class: "bad-n" }, String(z.proposed_major))) : null,
        metaItem(t("hz.overdue"), h("span", { class: z.overdue ? "bad-n" : null }, t("hz.overdue_n", { n: z.overdue, major: z.overdue_major }))),
        z.open ? metaItem(t("hz.age"), t("hz.age_v", { a: a.under_7_days, b: a["7_to_30_days"], c: a.over_30_days, d: z.oldest_open_days })) : null,
      ),
    );
  });
  box.replaceChildren(h("h2", null, t("hz.zeroing"), h("span", { class: "muted" }, ` · ${t("hz.target")}`)), h("div", { class: "zero-grid" }, cards));
}

function renderRow(x) {
  return h(
    "tr",
    { class: "prow", tabindex: "0", dataset: { hazard: String(x.id), status: x.status, grade: x.grade } },
    h("td", { class: "num" }, `#${x.id}`),
    h("td", null, gradeBadge(x.grade)),
    h("td", null, word("hz.cat", x.category)),
    h("td", null, `${x.site} / ${x.room}`),
    h("td", { class: "desc" }, x.description),
    h("td", null, statusBadge(x.status)),
    h("td", null, x.owner || t("common.none")),
    h("td", null, fmtDate(x.deadline) || t("common.none"), overdueBadge(x)),
    h("td", null, word("hz.source", x.source), x.rule ? h("span", { class: "muted" }, ` · ${x.rule}`) : null, x.alarm != null ? [" · ", h("a", { href: `#/alarm/${x.alarm}`, onclick: (e) => e.stopPropagation() }, `#${x.alarm}`)] : null),
  );
}

async function load() {
  const gen = ++generation;
  try {
    // open=true leaves out proposed hazards, which wait for a decision: ask for them too, and list them first.
    const q = { site: filter.site };
    const asks = filter.status ? [{ ...q, status: filter.status }] : filter.all ? [q] : [{ ...q, status: "proposed" }, { ...q, open: "true" }];
    const [z, ...lists] = await Promise.all([api.get("/api/v1/hazards/zeroing"), ...asks.map((a) => api.get("/api/v1/hazards", a))]);
    if (gen !== generation) return;
    zeroing = z?.sites ?? [];
    hazards = lists.flatMap((l) => l?.hazards ?? []);
    renderZeroing();
    root.querySelector(".empty").hidden = hazards.length > 0;
    root.querySelector("table").hidden = hazards.length === 0;
    reconcile(root.querySelector("tbody"), hazards, { key: (x) => x.id, sig: (x) => JSON.stringify(x) + getLang(), render: renderRow, cache: rowCache });
    labelCells(root.querySelector("table"));
  } catch (e) {
    if (e.status !== 401) showError(e.message);
  }
}

// ---------------------------------------------------------------- dialogs

function newHazard() {
  openDialog("dlg-hazard-new", {
    init: (form) => siteRoomPicker(form.elements.site, form.querySelector("datalist"), filter.site || null, null),
    submit: async (form) => {
      const body = {};
      for (const k of ["site", "room", "category", "grade", "description", "owner", "deadline", "plan"]) {
        const v = form.elements[k].value.trim();
        if (v) body[k] = v;
      }
      await api.post("/api/v1/hazards", body);
      load();
    },
  });
}

/** A value in the trail: deadlines come as ms, statuses and grades as API words. */
function changed(k, v) {
  if (v == null || v === "") return t("common.none");
  if (k === "deadline") return fmtDate(v);
  return ["status", "grade", "category"].includes(k) ? word(k === "category" ? "hz.cat" : "hz." + k, v) : String(v);
}

function trail(events) {
  return h(
    "section",
    { class: "trail" },
    h("h3", null, t("hz.trail")),
    h(
      "ol",
      null,
      (events ?? []).map((e) =>
        h(
          "li",
          null,
          h("strong", null, word("hz.action", e.action)),
          h("span", { class: "muted" }, ` ${e.by} · ${fmtTime(e.at)}`),
          h(
            "ul",
            { class: "plain changes" },
            Object.entries(e.changes ?? {})
              .filter(([, v]) => !Array.isArray(v) || v[0] !== v[1])
              .map(([k, v]) => h("li", null, `${word("hz.f", k)}: `, Array.isArray(v) ? `${changed(k, v[0])} → ${changed(k, v[1])}` : String(v))),
          ),
        ),
      ),
    ),
  );
}

function field(name, x) {
  const id = `hazard-edit-${name}`;
  const long = name === "plan" || name === "evidence";
  const input = h(long ? "textarea" : "input", { id, name, rows: long ? "2" : null, type: long ? null : name === "deadline" ? "date" : "text", maxlength: long ? "4000" : "128" });
  input.value = name === "deadline" ? fmtDate(x.deadline) : x[name] ?? "";
  return h("div", null, h("label", { for: id }, word("hz.f", name)), input);
}

async function openHazard(id) {
  let x;
  try {
    x = await api.get(`/api/v1/hazards/${encodeURIComponent(id)}`);
  } catch (e) {
    return showError(e.message);
  }
  const actions = canRecord() ? (ACTIONS[x.status] ?? []).filter((a) => !a.endsWith(":i") || canInspect()).map((a) => a.replace(":i", "")) : [];
  const fields = canRecord() ? FIELDS[x.status] ?? [] : [];
  // A fact not being edited; `always`: shown as "—" when not set.
  const fact = (k, v, always = true) => (fields.includes(k) || (!v && !always) ? null : metaItem(t("hz.f." + k), v || t("common.none")));
  openDialog("dlg-hazard", {
    init: (form, dlg) => {
      dlg.querySelector(".dlg-title").replaceChildren(t("hz.title", { id: x.id }), " ", gradeBadge(x.grade), " ", statusBadge(x.status), ...(overdueBadge(x) ?? []));
      dlg.querySelector(".dlg-sub").textContent = `${x.site} / ${x.room} · ${word("hz.cat", x.category)} · ${word("hz.source", x.source)}${x.rule ? " · " + x.rule : ""}`;
      const facts = h(
        "dl",
        { class: "alarm-meta" },
        metaItem(t("hz.f.found"), `${x.found_by} · ${fmtTime(x.found_at)}`),
        fact("owner", x.owner),
        fact("deadline", fmtDate(x.deadline) || t("common.none")),
        fact("plan", x.plan),
        fact("evidence", x.evidence, false),
        fact("verifier", x.verifier, false),
        fact("closed_at", x.closed_at && fmtTime(x.closed_at), false),
      );
      const note = fields.length + actions.length ? [h("label", { for: "hazard-note" }, t("hz.f.note")), h("textarea", { id: "hazard-note", name: "note", rows: "2", maxlength: "2000" })] : null;
      const edits = fields.length ? h("div", { class: "grid2" }, fields.map((f) => field(f, x))) : null;
      dlg.querySelector(".dlg-body").replaceChildren(h("div", null, h("p", { class: "hz-desc" }, x.description), facts, edits, note, trail(x.events)));
      // Save comes first: it is the button Enter in a text field presses.
      dlg.querySelector(".dlg-buttons").replaceChildren(
        ...(fields.length ? ["save"] : []).concat(actions).map((a, i) => h("button", { type: "submit", class: i === (fields.length ? 1 : 0) ? "primary" : null, dataset: { hazardAction: a } }, t(a === "save" ? "action.save" : "hz.action." + a))),
      );
    },
    submit: async (form, button) => {
      const action = button?.dataset.hazardAction;
      if (!action) return;
      const body = action === "save" ? {} : { action };
      for (const f of fields) {
        const v = form.elements[f].value.trim();
        if (v && v !== (f === "deadline" ? fmtDate(x.deadline) : x[f] ?? "")) body[f] = v;
      }
      const note = form.elements.note?.value.trim();
      if (note) body.note = note;
      await api.post(`/api/v1/hazards/${x.id}`, body);
      load();
    },
  });
}

// ---------------------------------------------------------------- the view

function filters() {
  const set = (k) => (v) => ((filter[k] = v), load());
  const sites = [...new Set([...data.siteNames(), filter.site].filter(Boolean))];
  return h(
    "div",
    { class: "controls filters" },
    picker(t("hz.f.site"), "hazard-filter-site", filter.site, [["", t("common.all")], ...sites.map((s) => [s, s])], set("site")),
    picker(t("hz.f.status"), "hazard-filter-status", filter.status, [["", t("common.all")], ...STATUSES.map((s) => [s, word("hz.status", s)])], set("status")),
    h("label", null, h("input", { type: "checkbox", id: "hazard-all", checked: filter.all, onchange: (e) => set("all")(e.target.checked) }), t("hz.show_all")),
  );
}

const opener = rowOpener("hazard", openHazard);

export default {
  id: "view-hazards",
  mount(el) {
    root = el;
    rowCache = new Map();
    const head = ["#", "grade", "category", "place", "description", "status", "owner", "deadline", "source"].map((k, i) => (i ? t("hz.f." + k) : k));
    el.append(
      h("div", { class: "view-head" }, h("h1", null, t("nav.hazards")), canRecord() ? h("button", { type: "button", id: "hazard-new", class: "primary push-right", onclick: newHazard }, t("hz.new")) : null),
      h("section", { class: "zeroing" }),
      filters(),
      h("p", { class: "empty", hidden: true }, t("hz.none")),
      table(head, []),
    );
    el.addEventListener("click", opener);
    el.addEventListener("keydown", opener);
    renderZeroing();
    load();
    // Hazard changes (anyone's) come as "alarms" events; sites with the first snapshot.
    unsubs = [
      data.on("alarms", () => (clearTimeout(soonTimer), (soonTimer = setTimeout(load, 300)))),
      data.on("structure", () => (renderZeroing(), root.querySelector(".filters").replaceWith(filters()))),
    ];
  },
  unmount() {
    generation++;
    clearTimeout(soonTimer);
    for (const u of unsubs) u();
    unsubs = [];
    root?.removeEventListener("click", opener);
    root?.removeEventListener("keydown", opener);
    root = null;
  },
};
