// Small pieces shared by the views: level badges (colour AND a shape AND
// words, so a colour-blind operator or a greyscale screenshot still tells
// levels apart), text badges, the error toast and modal dialogs.

import { h } from "./dom.js";
import { levelName } from "./i18n.js";

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
      await c.submit(form);
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
 * Opens a <dialog> from index.html as a modal. `init(form)` fills it; `submit(form)`
 * does the work and throws to keep it open with the error shown.
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
  (firstField || dlg.querySelector("button"))?.focus();
}
