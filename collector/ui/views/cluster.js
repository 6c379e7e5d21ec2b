// #/cluster — the collector nodes and who holds which sites (admins, cluster
// mode only; docs/SCALING.md). Read from /api/v1/cluster every 2 s, so a
// node that dies is seen going grey and its partitions moving to the others.

import * as api from "../api.js";
import { h } from "../dom.js";
import { t } from "../i18n.js";
import { fmtAge } from "../format.js";
import { showError, table } from "../widgets.js";

const EVERY_MS = 2000;
let root = null;
let timer = null;
let generation = 0;

const age = (ms) => (ms == null ? "–" : fmtAge(Math.max(0, ms)));

function render(c) {
  const nodes = c.nodes.map((n) => [
    h("span", { class: "cl-node", dataset: { node: n.node, live: String(n.live) } }, n.node + (n.node === c.this_node ? " " + t("cl.this") : "")),
    n.live ? t("cl.live") : n.leaving ? t("cl.left") : t("cl.gone"),
    n.partitions,
    n.maintenance ? t("cl.yes") : "",
    age(n.seen_ms_ago),
    n.http,
  ]);
  const parts = c.partitions
    .filter((p) => p.kind === "sites")
    .map((p) => [p.partition, h("span", { dataset: { owner: p.held ? p.owner ?? "" : "" } }, p.held ? p.owner : t("cl.free")), p.epoch, age(p.held_for_ms), age(p.expires_in_ms), p.sites.join(" ")]);
  root.querySelector(".cl-body").replaceChildren(
    h("section", { class: "card", id: "cluster-nodes" }, h("h2", null, t("cl.nodes")), table([t("cl.node"), t("cl.state"), t("cl.partitions"), t("cl.maintenance"), t("cl.seen"), t("cl.address")], nodes)),
    h("section", { class: "card", id: "cluster-partitions" }, h("h2", null, t("cl.partitions")), table([t("cl.partition"), t("cl.owner"), t("cl.epoch"), t("cl.held_for"), t("cl.expires_in"), t("cl.sites")], parts)),
  );
}

async function refresh(gen) {
  try {
    const c = await api.get("/api/v1/cluster");
    if (gen !== generation || !root) return;
    render(c);
  } catch (e) {
    if (gen !== generation || !root) return;
    const box = root.querySelector(".cl-body");
    box.replaceChildren(h("p", { class: "muted" }, e.status === 404 ? t("cl.off") : e.message));
    if (e.status !== 404 && e.status !== 403) showError(e.message);
  }
  if (gen === generation) timer = setTimeout(() => refresh(gen), EVERY_MS);
}

export default {
  id: "view-cluster",
  mount(el) {
    root = el;
    el.append(h("div", { class: "view-head" }, h("h1", null, t("nav.cluster")), h("p", { class: "muted" }, t("cl.intro"))), h("div", { class: "cl-body" }));
    refresh(++generation);
  },
  unmount() {
    generation++;
    clearTimeout(timer);
    root = null;
  },
};
