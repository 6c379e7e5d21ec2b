// #/patrols — patrol records (巡检记录) of the last week: the collector's own
// rounds (readings against limits, completeness, alarms, open hazards) and
// people's walk-throughs (checklist, notes, photos), each signed and with a
// SHA-256 digest that the detail checks.

import * as api from "../api.js";
import * as data from "../data.js";
import { h, reconcile, pointHref } from "../dom.js";
import { t, word, getLang, stateWord } from "../i18n.js";
import { fmtTime, fmtPct, fmtValue, stateOf } from "../format.js";
import { badge, labelCells, levelBadge, metaItem, openDialog, picker, rowOpener, showError, siteRoomPicker, table } from "../widgets.js";
import { canRecord } from "../session.js";

const PHOTO_TYPES = ["image/jpeg", "image/png", "image/webp"];
const MAX_PHOTOS = 4;
const MAX_PHOTO_BYTES = 2 * 1024 * 1024;

const filter = { room: "", kind: "" }; // room: JSON [site, room]; survives leaving the view
let root = null;
let rowCache = new Map();
let refreshTimer = null;
let unsubs = [];
let generation = 0;
let checklist = null; // it changes only with the collector's configuration

const itemText = (it) => (getLang() === "zh-CN" ? it.zh : it.en) || it.id;

function summary(p) {
  const s = p.summary ?? {};
  return p.kind === "auto"
    ? t("pt.sum_auto", { points: s.points, beyond: s.beyond_limit, stale: s.stale, bad: s.bad, pct: fmtPct(s.completeness), alarms: s.active_alarms, hazards: s.open_hazards })
    : t("pt.sum_manual", { checked: s.checked, failed: s.failed, none: s.not_checked, photos: s.photos });
}

function renderRow(p) {
  return h(
    "tr",
    { class: "prow", tabindex: "0", dataset: { patrol: String(p.id), kind: p.kind } },
    h("td", null, fmtTime(p.kind === "auto" ? p.slot : p.at)),
    h("td", null, `${p.site} / ${p.room}`),
    h("td", null, badge(p.kind, word("pt.kind", p.kind))),
    h("td", null, p.by),
    h("td", { class: "desc" }, summary(p)),
    h("td", { class: "mono", title: p.digest }, String(p.digest).slice(0, 12)),
  );
}

async function load() {
  const gen = ++generation;
  const [site, room] = filter.room ? JSON.parse(filter.room) : [];
  try {
    const list = (await api.get("/api/v1/patrols", { from: "now-7d", site, room, kind: filter.kind }))?.patrols ?? [];
    if (gen !== generation) return;
    root.querySelector(".empty").hidden = list.length > 0;
    root.querySelector("table").hidden = list.length === 0;
    reconcile(root.querySelector("tbody"), list, { key: (p) => p.id, sig: (p) => JSON.stringify(p) + getLang(), render: renderRow, cache: rowCache });
    labelCells(root.querySelector("table"));
  } catch (e) {
    if (e.status !== 401) showError(e.message);
  }
}

// ---------------------------------------------------------------- one record

function autoBody(r) {
  const value = (p) => {
    const state = stateOf(p);
    return state != null ? stateWord(state) : fmtValue(p.value, p.unit);
  };
  const limits = (p) => (p.limits ?? []).map((l) => `L${l.level} ${t("limit." + l.kind, { value: fmtValue(l.value, p.unit) })}: ${t("pt.minutes", { n: l.minutes_beyond })}`).join("; ");
  const list = (title, items) => [h("h3", null, title), items.length ? h("ul", { class: "plain" }, items) : h("p", { class: "muted" }, t("common.none"))];
  return [
    h("p", null, summary(r)),
    table(
      [t("room.point"), t("point.device"), t("room.value"), t("hz.f.status"), t("pt.minmax"), t("pt.completeness"), t("pt.limits")],
      (r.points ?? []).map((p) => [
        h("a", { href: pointHref(r.site, p.point) }, p.point),
        p.device,
        value(p),
        h("span", { class: "pt-status", dataset: { status: p.status } }, word("pt.status", p.status), p.reason ? ` (${p.reason})` : ""),
        p.min == null ? t("common.none") : `${fmtValue(p.min, p.unit)} – ${fmtValue(p.max, p.unit)}`,
        fmtPct(p.completeness),
        limits(p),
      ]),
    ),
    list(t("pt.active_alarms"), (r.active_alarms ?? []).map((a) => h("li", null, levelBadge(a.level, { short: true }), ` ${a.name} #${a.serial} · ${fmtTime(a.raised_at)}`))),
    list(
      t("pt.open_hazards"),
      (r.open_hazards ?? []).map((x) => h("li", null, h("a", { href: "#/hazards" }, `#${x.id}`), ` ${word("hz.grade", x.grade)} · ${x.description} · ${word("hz.status", x.status)}`, x.overdue ? [" ", badge("overdue", t("hz.overdue_flag"))] : null)),
    ),
  ];
}

function manualBody(r) {
  const mark = { pass: "✓ ", fail: "✖ " };
  return [
    table(
      [t("pt.item"), t("pt.result_h"), t("pt.item_note")],
      (r.items ?? []).map((it) => [itemText(it), h("span", { class: "result", dataset: { result: it.result } }, mark[it.result], word("pt.result", it.result)), it.note ?? ""]),
    ),
    r.note ? h("p", null, h("span", { class: "muted" }, `${t("pt.note")}: `), r.note) : null,
    h(
      "div",
      { class: "photos" },
      (r.photos ?? []).map((ph, n) => {
        const src = `/api/v1/patrols/${encodeURIComponent(r.id)}/photos/${n}`;
        return h("a", { href: src, target: "_blank", rel: "noopener", title: `${ph.name} · ${ph.bytes} B · SHA-256 ${ph.sha256}` }, h("img", { src, alt: ph.name, loading: "lazy" }));
      }),
    ),
  ];
}

function showRecord(r) {
  openDialog("dlg-patrol", {
    init: (form, dlg) => {
      dlg.querySelector(".dlg-title").textContent = t("pt.title", { id: r.id });
      dlg.querySelector(".dlg-sub").textContent = `${r.site} / ${r.room} · ${word("pt.kind", r.kind)}`;
      const head = h(
        "dl",
        { class: "alarm-meta" },
        metaItem(t("pt.signed"), `${r.by} · ${fmtTime(r.at)}`),
        r.kind === "auto" ? metaItem(t("pt.period"), `${fmtTime(r.period_from)} → ${fmtTime(r.period_to)}`) : null,
        metaItem(t("pt.digest"), h("span", { class: "mono" }, r.digest), " ", r.digest_ok ? badge("ok", t("pt.digest_ok")) : badge("overdue", t("pt.digest_bad"))),
      );
      dlg.querySelector(".dlg-body").replaceChildren(h("div", null, head, r.kind === "auto" ? autoBody(r) : manualBody(r)));
    },
    submit: async () => {},
  });
}

async function openRecord(id) {
  try {
    showRecord(await api.get(`/api/v1/patrols/${encodeURIComponent(id)}`));
  } catch (e) {
    showError(e.message);
  }
}

// ---------------------------------------------------------------- a walk-through

/** A photo as the API takes it: base64 without the data: URL's prefix. */
const readPhoto = (f) =>
  new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve({ name: f.name, content_type: f.type, data: String(r.result).replace(/^[^,]*,/, "") });
    r.onerror = () => reject(r.error);
    r.readAsDataURL(f);
  });

function checkItem(it) {
  const radio = (value) => h("label", null, h("input", { type: "radio", name: `check-${it.id}`, value, checked: value === "not_checked" }), word("pt.result", value));
  return h(
    "fieldset",
    { class: "check", dataset: { check: it.id } },
    h("legend", null, itemText(it)),
    h("div", { class: "check-opts" }, radio("pass"), radio("fail"), radio("not_checked")),
    h("input", { type: "text", maxlength: "2000", placeholder: t("pt.item_note"), "aria-label": `${t("pt.item_note")}: ${itemText(it)}` }),
  );
}

async function walkThrough() {
  try {
    checklist ??= (await api.get("/api/v1/patrols/checklist"))?.items ?? [];
  } catch (e) {
    return showError(e.message);
  }
  openDialog("dlg-patrol-new", {
    init: (form) => {
      siteRoomPicker(form.elements.site, form.elements.room, ...(filter.room ? JSON.parse(filter.room) : []));
      const box = form.querySelector(".checklist");
      box.replaceChildren(...checklist.map(checkItem));
      // Enter in an item's note must not sign a half-filled record.
      box.onkeydown = (e) => {
        if (e.key === "Enter" && e.target.type === "text") e.preventDefault();
      };
    },
    submit: async (form) => {
      const items = [];
      for (const fs of form.querySelectorAll("[data-check]")) {
        const result = fs.querySelector(":checked").value;
        const note = fs.querySelector("[type=text]").value.trim();
        if (result === "not_checked") {
          if (note) throw new Error(t("pt.note_needs_result", { item: fs.firstChild.textContent }));
        } else items.push({ id: fs.dataset.check, pass: result === "pass", note: note || undefined });
      }
      const files = [...form.elements.photos.files];
      const wrong = files.find((f, i) => i >= MAX_PHOTOS || !PHOTO_TYPES.includes(f.type) || f.size > MAX_PHOTO_BYTES);
      if (wrong) throw new Error(`${wrong.name}: ${t("pt.photos_help")}`);
      const note = form.elements.note.value.trim() || undefined;
      const rec = await api.post("/api/v1/patrols", { site: form.elements.site.value, room: form.elements.room.value, items, note, photos: await Promise.all(files.map(readPhoto)) });
      // The signed record, once this dialog has closed and handed focus back.
      form.parentElement.addEventListener("close", () => showRecord(rec), { once: true });
      load();
    },
  });
}

// ---------------------------------------------------------------- the view

function filters() {
  const set = (k) => (v) => ((filter[k] = v), load());
  const rooms = [...data.rooms.values()].map((r) => JSON.stringify([r.site, r.room]));
  if (filter.room && !rooms.includes(filter.room)) rooms.push(filter.room);
  return h(
    "div",
    { class: "controls filters" },
    picker(t("hz.f.room"), "patrol-filter-room", filter.room, [["", t("common.all")], ...rooms.sort().map((r) => [r, JSON.parse(r).join(" / ")])], set("room")),
    picker(t("pt.kind_h"), "patrol-filter-kind", filter.kind, [["", t("common.all")], ["auto", t("pt.kind.auto")], ["manual", t("pt.kind.manual")]], set("kind")),
  );
}

const opener = rowOpener("patrol", openRecord);

export default {
  id: "view-patrols",
  mount(el) {
    root = el;
    rowCache = new Map();
    el.append(
      h("div", { class: "view-head" }, h("h1", null, t("nav.patrols")), canRecord() ? h("button", { type: "button", id: "patrol-new", class: "primary push-right", onclick: walkThrough }, t("pt.new")) : null),
      filters(),
      h("p", { class: "empty", hidden: true }, t("pt.none")),
      table([t("room.time"), t("hz.f.place"), t("pt.kind_h"), t("pt.by"), t("pt.summary"), t("pt.digest")], []),
    );
    el.addEventListener("click", opener);
    el.addEventListener("keydown", opener);
    load();
    // Rounds come every two hours or so: a list a minute old is fresh enough.
    refreshTimer = setInterval(() => document.hidden || load(), 60_000);
    unsubs = [data.on("structure", () => root.querySelector(".filters").replaceWith(filters()))];
  },
  unmount() {
    generation++;
    clearInterval(refreshTimer);
    for (const u of unsubs) u();
    unsubs = [];
    root?.removeEventListener("click", opener);
    root?.removeEventListener("keydown", opener);
    root = null;
  },
};
