// Small pieces shared by the views: level badges (colour AND a shape AND
// words, so a colour-blind operator or a greyscale screenshot still tells
// levels apart), text badges, the error toast, modal dialogs, site and
// room pickers and plain tables.

import { h } from "./dom.js";
import { levelName } from "./i18n.js";
import { siteNames, roomNames } from "./data.js";

// One shape per level, read together with the level's words.
const LEVEL_ICON = { 0: "✓", 1: "✖", 2: "▲", 3: "◆", 4: "ℹ" };

export function levelBadge(level, { short = false } = {}) {
  const l = level >= 1 && level <= 4 ? level : 0;
  return h(
    "span",
    { class: "lvl", dataset: { level: String(l) } },
    h("span", { class: "lvl-icon", "aria-hidden": "true" }, LEVEL_ICON[l]),
    " ",
    short ? levelName(l).replace(/[（(].*$/, "") : levelName(l),
  );
}

/** A word badge for bad, stale, offline, late, inhibited…; kind picks the style. */
export function badge(kind, text, title) {
  return h("span", { class: `badge badge-${kind}`, title }, text);
}

// ---------------------------------------------------------------- toasts

let toastTimer = null;
/** Shows an error (or a note) at the bottom of the screen; screen readers hear it at once. */
export function showError(msg) {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = msg;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.hidden = true;
  }, 8000);
}

// ---------------------------------------------------------------- dialogs

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

const current = new WeakMap(); // dialog → {submit, opener}

function wire(dlg) {
  if (dlg.dataset.wired) return;
  dlg.dataset.wired = "1";
  const form = dlg.querySelector("form");
  // Tab and Shift+Tab go round inside the dialog: showModal makes the page
  // inert, but focus could still leave for the browser's own bar.
  dlg.addEventListener("keydown", (e) => {
    if (e.key !== "Tab") return;
    const items = [...dlg.querySelectorAll(FOCUSABLE)].filter((el) => el.offsetParent !== null);
    if (items.length === 0) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (e.shiftKey && document.activeElement === first) {
      e.preventDefault();
      last.focus();
    } else if (!e.shiftKey && document.activeElement === last) {
      e.preventDefault();
      first.focus();
    }
  });
  // Escape fires "cancel" and closes by itself; we only hand focus back.
  dlg.addEventListener("close", () => {
    const c = current.get(dlg);
    current.delete(dlg);
    if (c?.opener?.isConnected) c.opener.focus();
  });
  for (const b of dlg.querySelectorAll("[data-close]")) b.addEventListener("click", () => dlg.close());
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const c = current.get(dlg);
    if (!c) return;
    const err = dlg.querySelector(".dlg-error");
    const buttons = [...form.querySelectorAll("button")];
    buttons.forEach((b) => (b.disabled = true));
    err.hidden = true;
    try {
      await c.submit(form, e.submitter);
      dlg.close();
    } catch (ex) {
      err.textContent = ex.message || String(ex);
      err.hidden = false;
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  });
}

/**
 * Opens a <dialog> from index.html as a modal. `init(form)` fills it; `submit(form, button)`
 * does the work (button: the submit button pressed) and throws to keep it open with the error shown.
 */
export function openDialog(id, { init, submit }) {
  const dlg = document.getElementById(id);
  wire(dlg);
  const form = dlg.querySelector("form");
  form.reset();
  const err = dlg.querySelector(".dlg-error");
  err.hidden = true;
  err.textContent = "";
  current.set(dlg, { submit, opener: document.activeElement });
  init?.(form, dlg);
  if (!dlg.open) dlg.showModal();
  const firstField = dlg.querySelector("textarea, input:not([type=hidden]), select");
  // Without scrolling: a long record is read from its top even when the only control is at the bottom.
  (firstField || dlg.querySelector("button"))?.focus({ preventScroll: true });
}

/** A <dt>/<dd> pair for the grids of facts in alarm rows and records. */
export function metaItem(label, ...value) {
  return h("div", null, h("dt", null, label), h("dd", null, ...value));
}

/** A labelled <select> of [value, text] options showing `value`; a change calls `onchange(value)`. */
export function picker(label, id, value, options, onchange) {
  const s = h("select", { id, onchange: () => onchange(s.value) }, options.map(([v, text]) => h("option", { value: v }, text)));
  s.value = value;
  return h("label", null, label, s);
}

/** A click, or Enter, on a row carrying data-<name> calls `open(its value)`; for click and keydown. */
export function rowOpener(name, open) {
  return (e) => {
    const row = e.target.closest(`[data-${name}]`);
    if (row && (e.type === "click" || (e.key === "Enter" && e.target === row))) open(row.dataset[name]);
  };
}

/**
 * Fills a site <select> with the known sites, and `roomSel` (a <select> or a
 * <datalist>) with the rooms of the chosen site, following it when it changes.
 */
export function siteRoomPicker(siteSel, roomSel, site, room) {
  const sites = siteNames();
  if (site && !sites.includes(site)) sites.push(site);
  siteSel.replaceChildren(...sites.sort().map((s) => h("option", { value: s }, s)));
  if (site) siteSel.value = site;
  const fill = (wanted) => {
    const rooms = roomNames(siteSel.value);
    if (wanted && !rooms.includes(wanted)) rooms.push(wanted);
    roomSel.replaceChildren(...rooms.sort().map((r) => h("option", { value: r }, r)));
    if (wanted) roomSel.value = wanted;
  };
  fill(room);
  siteSel.onchange = () => fill(null);
}

/**
 * A table in its scrolling wrapper: `head` the column titles, `rows` arrays
 * of cells; numbers are right-aligned. On a phone its rows become cards,
 * each cell under its column's title (see `labelCells`).
 */
export function table(head, rows, attrs) {
  const num = rows[0]?.map((c) => typeof c === "number") ?? [];
  const cell = (tag, c, isNum) => h(tag, { class: isNum ? "num" : null, scope: tag === "th" ? "col" : null }, c);
  const wrap = h(
    "div",
    { class: "table-wrap" },
    h("table", { ...attrs, class: `cards ${attrs?.class ?? ""}`.trim() }, h("thead", null, h("tr", null, head.map((c, i) => cell("th", c, num[i])))), h("tbody", null, rows.map((r) => h("tr", null, r.map((c) => cell("td", c, typeof c === "number")))))),
  );
  labelCells(wrap.querySelector("table"));
  return wrap;
}

/** Each body cell gets its column's title (`data-label`), which a phone shows beside it once the rows are cards. */
export function labelCells(tableEl) {
  const titles = [...tableEl.querySelectorAll("thead th")].map((th) => th.textContent.trim());
  for (const tr of tableEl.querySelectorAll("tbody tr")) {
    [...tr.children].forEach((cell, i) => {
      if (titles[i] && cell.dataset.label !== titles[i]) cell.dataset.label = titles[i];
    });
  }
}
