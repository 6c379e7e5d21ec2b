// RoomGuard's browser front end: starts the session (or shows the login),
// keeps the snapshot and the event stream going, and routes between views
// by the URL's hash:
//   #/                      overview of every room
//   #/room/<site>/<room>    one room's devices and points
//   #/point/<site>/<point>  one point's history
//   #/alarms                the alarm console (#/alarms/recent for the recent tab)
//   #/alarm/<serial>        one alarm with its trail, above the console (notifications link here)
//   #/hazards               the hazard register and its zeroing panel
//   #/inbox                 notifications the inbox channels received
//   #/patrols               patrol records, and recording a walk-through
//   #/reports               monthly and yearly safety reports
//   #/cluster               the collector nodes and their sites (admins, cluster mode)
// No build step: the browser loads these ES modules as they are.

import * as api from "./api.js";
import * as data from "./data.js";
import { startLive, stopLive, liveState } from "./live.js";
import { markAllDirty } from "./bind.js";
import { setTimeZone, timeZone } from "./format.js";
import { t, getLang, setLang, applyStatic, onLangChange, roleName } from "./i18n.js";
import { initAlerts, checkAlarms, relabelAlerts, clearAlerts } from "./alert.js";
import { showError } from "./widgets.js";
import { setMe, currentUser } from "./session.js";
import overview from "./views/overview.js";
import room from "./views/room.js";
import point from "./views/point.js";
import alarms from "./views/alarms.js";
import hazards from "./views/hazards.js";
import inbox from "./views/inbox.js";
import patrols from "./views/patrols.js";
import reports from "./views/reports.js";
import cluster from "./views/cluster.js";

const $ = (id) => document.getElementById(id);

const notfound = {
  id: "view-notfound",
  mount() {},
  unmount() {},
};

// ---------------------------------------------------------------- routing

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  let parts;
  try {
    parts = raw.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    return { view: notfound, params: {} };
  }
  if (parts.length === 0) return { view: overview, params: {} };
  if (parts[0] === "room" && parts.length === 3) return { view: room, params: { site: parts[1], room: parts[2] } };
  if (parts[0] === "point" && parts.length === 3) return { view: point, params: { site: parts[1], point: parts[2] } };
  if (parts[0] === "alarms" && parts.length <= 2) return { view: alarms, params: { tab: parts[1] === "recent" ? "recent" : "open" } };
  // One alarm with its trail: the link every notification carries (#alarm/12).
  if (parts[0] === "alarm" && parts.length === 2 && /^\d+$/.test(parts[1])) return { view: alarms, params: { tab: "open", focus: Number(parts[1]) } };
  const plain = new Map([["hazards", hazards], ["patrols", patrols], ["reports", reports], ["inbox", inbox], ["cluster", cluster]]).get(parts[0]);
  if (plain && parts.length === 1) return { view: plain, params: {} };
  return { view: notfound, params: {} };
}

let current = null; // {view, params}
let loggedIn = false;

function unmountCurrent() {
  if (!current) return;
  try {
    current.view.unmount();
  } catch (e) {
    console.error("unmount", e);
  }
  const el = $(current.view.id);
  el.hidden = true;
  el.replaceChildren();
  current = null;
}

function route({ focus = true } = {}) {
  if (!loggedIn) return;
  const next = parseHash();
  // A link inside a dialog (a point in a patrol record) leaves the dialog's view.
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
  unmountCurrent();
  current = next;
  const el = $(next.view.id);
  el.hidden = false;
  for (const a of document.querySelectorAll("a[data-nav]")) {
    // A nav link is named after its view's root: data-nav="alarms" for #view-alarms.
    if (`view-${a.dataset.nav}` === next.view.id) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    next.view.mount(el, next.params);
  } catch (e) {
    console.error("mount", e);
    showError(e.message);
  }
  // Screen readers and keyboards continue from the new view, not the old link.
  if (focus) $("main").focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

// Language change: views rebuild their text; bound values are rewritten.
function remount() {
  if (!current) return;
  const keep = current;
  unmountCurrent();
  current = keep;
  const el = $(keep.view.id);
  el.hidden = false;
  keep.view.mount(el, keep.params);
}

// ---------------------------------------------------------------- header

function renderLive(state) {
  const el = $("live-status");
  el.dataset.state = state === "live" ? "live" : "reconnecting";
  el.querySelector(".label").textContent = state === "live" ? t("live.live") : t("live.reconnecting");
  el.title = state === "live" ? t("live.title.live") : t("live.title.reconnecting");
}

function renderHeader() {
  const me = currentUser();
  $("whoami").textContent = me ? me.user : "";
  $("role").textContent = me ? roleName(me.role) : "";
  $("role").title = t("user.role");
  $("tz-note").textContent = loggedIn ? t("footer.tz", { tz: timeZone() }) : "";
  renderLive(liveState());
  renderAlarmCount();
}

/** Open incidents, as the console's Open tab and the overview's summary count them. */
function renderAlarmCount() {
  const el = $("alarm-count");
  const n = data.incidents(data.openAlarms).length;
  el.hidden = n === 0;
  el.textContent = String(n);
  el.title = t("alarms.count", { n, alarms: data.openAlarms.length });
  const worst = data.openAlarms.reduce((w, a) => (!a.cleared_at && (w === 0 || a.level < w) ? a.level : w), 0);
  el.dataset.level = String(worst);
}

// ---------------------------------------------------------------- session

function showLogin(expired) {
  loggedIn = false;
  stopLive();
  unmountCurrent();
  data.reset();
  clearAlerts();
  setMe(null);
  api.setCsrf(null);
  for (const id of ["user-box", "logout", "live-status"]) $(id).hidden = true;
  document.querySelector(".mainnav").hidden = true;
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-login";
  const note = $("login-note");
  note.hidden = !expired;
  note.textContent = expired ? t("login.expired") : "";
  renderHeader();
  $("login-user").focus();
}

let snapshotTimer = null;
/** Everything the page shows comes from these three; the stream keeps them current. */
async function loadSnapshot() {
  const results = await Promise.allSettled([data.loadLatest(), data.loadAlarms(), data.loadAgents(), data.loadNames()]);
  const failed = results.find((r) => r.status === "rejected");
  if (failed && failed.reason?.status !== 401) showError(failed.reason.message);
}
function snapshotSoon() {
  // Several events in a burst (open + resync) need one refetch, not three.
  clearTimeout(snapshotTimer);
  snapshotTimer = setTimeout(loadSnapshot, 100);
}

function debounced(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn().catch((e) => e.status !== 401 && showError(e.message));
    }, ms);
  };
}
const alarmsSoon = debounced(() => data.loadAlarms(), 150);
const agentsSoon = debounced(() => data.loadAgents(), 150);

async function startSession(me) {
  setMe(me);
  api.setCsrf(me.csrf);
  if (me.time_zone) setTimeZone(me.time_zone);
  loggedIn = true;
  $("user-box").hidden = false;
  // With authentication off everyone is "anonymous" and there is nothing to log out of.
  $("logout").hidden = !me.csrf;
  $("live-status").hidden = false;
  document.querySelector(".mainnav").hidden = false;
  $("view-login").hidden = true;
  // The cluster view is for admins of a cluster: shown when the API has one.
  $("nav-cluster").hidden = true;
  if (me.role === "admin") {
    api
      .get("/api/v1/cluster", null, { quiet401: true })
      .then(() => ($("nav-cluster").hidden = false))
      .catch(() => {});
  }
  renderHeader();
  startLive({
    onState: renderLive,
    onOpen: snapshotSoon,
    onHello: (d) => {
      data.setServerTime(d.server_time);
      if (!me.time_zone && d.time_zone) {
        setTimeZone(d.time_zone);
        renderHeader();
        markAllDirty();
      }
    },
    onReadings: data.applyReadings,
    onAlarms: alarmsSoon,
    onAgents: agentsSoon,
    onResync: snapshotSoon,
    onClosed: async () => {
      try {
        await api.get("/api/v1/me", null, { quiet401: true });
        return true;
      } catch (e) {
        if (e.status === 401) {
          showLogin(true);
          return false;
        }
        return true; // collector down: keep trying
      }
    },
  });
  route({ focus: false });
  // The snapshot is fetched when the stream opens (so nothing falls between the
  // two); if it does not open soon, fetch it anyway and let polling carry on.
  setTimeout(() => {
    if (loggedIn && liveState() !== "live") loadSnapshot();
  }, 2000);
}

async function login(ev) {
  ev.preventDefault();
  const btn = $("login-submit");
  const err = $("login-error");
  err.hidden = true;
  btn.disabled = true;
  btn.textContent = t("login.busy");
  try {
    const user = $("login-user").value.trim();
    const password = $("login-password").value;
    await api.post("/api/v1/login", { user, password }, { quiet401: true });
    $("login-password").value = "";
    // /me also tells the site's time zone, which the login answer does not.
    const me = await api.get("/api/v1/me", null, { quiet401: true });
    await startSession(me);
  } catch (e) {
    err.textContent = t("login.failed", { msg: e.message });
    err.hidden = false;
    $("login-password").select();
  } finally {
    btn.disabled = false;
    btn.textContent = t("login.submit");
  }
}

async function logout() {
  try {
    await api.post("/api/v1/logout", {}, { quiet401: true });
  } catch (e) {
    if (e.status !== 401) showError(e.message);
  }
  showLogin(false);
}

// ---------------------------------------------------------------- start

async function boot() {
  applyStatic(document);
  const langSwitch = $("lang-switch");
  langSwitch.value = getLang();
  langSwitch.addEventListener("change", () => setLang(langSwitch.value));
  onLangChange((l) => {
    langSwitch.value = l;
    renderHeader();
    relabelAlerts();
    markAllDirty();
    remount();
  });
  initAlerts();
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", () => route());
  api.setUnauthorizedHandler(() => {
    if (loggedIn) showLogin(true);
  });
  data.on("alarms", () => {
    renderAlarmCount();
    checkAlarms(data.openAlarms);
  });
  // Freshness is a matter of time passing, not of events: look every few seconds.
  setInterval(data.sweepStale, 5000);
  // If the stream cannot be had (a proxy that buffers it, a backend without it),
  // fall back to polling the snapshot so the screen never silently freezes.
  setInterval(() => {
    if (loggedIn && liveState() !== "live" && !document.hidden) loadSnapshot();
  }, 15_000);

  for (;;) {
    try {
      const me = await api.get("/api/v1/me", null, { quiet401: true });
      await startSession(me);
      return;
    } catch (e) {
      if (e.status === 401) {
        showLogin(false);
        return;
      }
      showError(e.message);
      await new Promise((r) => setTimeout(r, 5000));
    }
  }
}

boot();
