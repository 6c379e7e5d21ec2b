// #/inbox — Notifications: what the collector's inbox channels received
// (docs/ALARMS.md, kind = "inbox"), newest first, each as the text a robot
// or an email would carry, in the page's language. The demo sends its
// alarms here, so a newcomer sees what on-call staff would be told, and
// when: one message per incident, again only when it gets worse.

import * as api from "../api.js";
import * as data from "../data.js";
import { h, reconcile } from "../dom.js";
import { t, getLang } from "../i18n.js";
import { fmtDateTime } from "../format.js";
import { levelBadge, badge, showError } from "../widgets.js";

let root = null;
let generation = 0;
let cache = new Map();
let unsubs = [];

function message(m) {
  return h(
    "article",
    { class: "inbox-msg card", dataset: { key: m.key ?? "", kind: m.kind ?? "" } },
    h(
      "header",
      { class: "inbox-head" },
      m.level ? levelBadge(m.level, { short: true }) : null,
      h("span", { class: "inbox-kind" }, t("inbox.kind." + m.kind)),
      m.drill != null ? badge("drill", t("alarm.flag.drill", { id: m.drill })) : null,
      h("span", { class: "muted" }, `${m.channel} · ${fmtDateTime(Date.parse(m.sent_at))}`),
    ),
    h("pre", { class: "inbox-text" }, m.text),
  );
}

async function load() {
  const gen = ++generation;
  try {
    const body = await api.get("/api/v1/inbox", { lang: getLang(), limit: 200 });
    if (gen !== generation || !root) return;
    const list = body.messages ?? [];
    root.querySelector(".inbox-none").hidden = list.length > 0 || !body.inbox;
    root.querySelector(".inbox-off").hidden = body.inbox;
    reconcile(root.querySelector(".inbox-list"), list, { key: (m) => m.id, sig: (m) => m.text, render: message, cache });
  } catch (e) {
    if (e.status !== 401 && root) showError(e.message);
  }
}

export default {
  id: "view-inbox",
  mount(el) {
    root = el;
    cache = new Map();
    el.append(
      h("div", { class: "view-head" }, h("h1", null, t("nav.inbox")), h("p", { class: "muted" }, t("inbox.intro"))),
      h("p", { class: "inbox-off note", hidden: true }, t("inbox.off")),
      h("p", { class: "inbox-none muted", hidden: true }, t("inbox.none")),
      h("div", { class: "inbox-list" }),
    );
    load();
    // A new or changed alarm may have been told: look again (the sender
    // delivers within moments; a second look catches what was still queued).
    unsubs = [
      data.on("alarms", () => {
        load();
        setTimeout(load, 1500);
      }),
    ];
  },
  unmount() {
    generation++;
    for (const u of unsubs) u();
    unsubs = [];
    root = null;
  },
};
