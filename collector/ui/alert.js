// Getting attention for a new critical (level 1) alarm: a flashing banner
// and a beep. "New" means a serial this page has not seen before that is
// level 1 and still active (and not in a silenced room); the banner keeps it
// until it is acknowledged, cleared or dismissed. Browsers refuse to play sound before the user has
// touched the page, so the AudioContext is made on the first click or key
// press; until then the banner is the cue. Muting is remembered.

import { h } from "./dom.js";
import { t, getLang } from "./i18n.js";

const MUTE_KEY = "roomguard.muted";
const BEEP_EVERY_MS = 4000;

const seen = new Set();
const pending = new Map(); // serial → alarm, shown in the banner
let audio = null;
let beepTimer = null;
let muted = false;
try {
  muted = localStorage.getItem(MUTE_KEY) === "1";
} catch {
  muted = false;
}

function unlockAudio() {
  if (audio) return;
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  audio = new Ctx();
  renderMute();
  if (pending.size) startBeeping();
}

/** Two short tones, like an alarm panel; quiet enough not to clip. */
function beep() {
  if (!audio || muted) return;
  if (audio.state === "suspended") audio.resume();
  const now = audio.currentTime;
  for (const [i, freq] of [880, 660].entries()) {
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.type = "square";
    osc.frequency.value = freq;
    const start = now + i * 0.22;
    gain.gain.setValueAtTime(0.0001, start);
    gain.gain.exponentialRampToValueAtTime(0.15, start + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.2);
    osc.connect(gain).connect(audio.destination);
    osc.start(start);
    osc.stop(start + 0.21);
  }
}

function startBeeping() {
  if (beepTimer || muted || !audio) return;
  beep();
  beepTimer = setInterval(beep, BEEP_EVERY_MS);
}

function stopBeeping() {
  clearInterval(beepTimer);
  beepTimer = null;
}

function renderMute() {
  const btn = document.getElementById("mute-toggle");
  if (!btn) return;
  btn.setAttribute("aria-pressed", muted ? "true" : "false");
  btn.querySelector(".label").textContent = muted ? t("sound.off") : t("sound.on");
  btn.querySelector(".icon").textContent = muted ? "⊘" : "♪";
  btn.title = audio || muted ? t("sound.title") : `${t("sound.title")} — ${t("sound.pending")}`;
}

function renderBanner() {
  const el = document.getElementById("critical-banner");
  if (!el) return;
  if (pending.size === 0) {
    el.hidden = true;
    el.replaceChildren();
    stopBeeping();
    return;
  }
  const list = [...pending.values()];
  // A drill's alarm says so first: nobody should evacuate for an exercise.
  const names = list.map((a) => `${a.drill != null ? `[${t("banner.drill")}] ` : ""}#${a.serial} ${(getLang() === "zh-CN" && a.name_zh) || a.name} — ${a.room || a.site}`);
  el.replaceChildren(
    h("span", { class: "banner-icon", "aria-hidden": "true" }, "✖"),
    h("strong", null, t("banner.critical")),
    h("span", { class: "banner-list" }, names.join(" · ")),
    h("a", { href: "#/alarms", class: "button" }, t("banner.view")),
    h("button", { type: "button", class: "button", onclick: dismiss }, t("banner.dismiss")),
  );
  el.hidden = false;
  startBeeping();
}

function dismiss() {
  pending.clear();
  renderBanner();
}

/**
 * Level 1 and still active (not acknowledged, not cleared). An alarm inside a
 * maintenance window (silenced) stays quiet here too: the people who opened
 * the window are the ones working in the room.
 */
function wantsAttention(a) {
  return a.level === 1 && a.state === "active" && a.silenced_by == null;
}

/** Looks at a fresh open-alarm list for new critical alarms and drops handled ones. */
export function checkAlarms(alarms) {
  const byserial = new Map(alarms.map((a) => [a.serial, a]));
  for (const a of alarms) {
    if (seen.has(a.serial)) continue;
    seen.add(a.serial);
    if (wantsAttention(a)) pending.set(a.serial, a);
  }
  for (const [serial] of pending) {
    const a = byserial.get(serial);
    if (!a || !wantsAttention(a)) pending.delete(serial);
    else pending.set(serial, a);
  }
  renderBanner();
}

export function initAlerts() {
  for (const ev of ["pointerdown", "keydown"]) window.addEventListener(ev, unlockAudio, { capture: true, passive: true });
  const btn = document.getElementById("mute-toggle");
  btn.addEventListener("click", () => {
    muted = !muted;
    try {
      localStorage.setItem(MUTE_KEY, muted ? "1" : "0");
    } catch {
      // Not remembered across reloads; still muted now.
    }
    if (muted) stopBeeping();
    else if (pending.size) startBeeping();
    renderMute();
  });
  renderMute();
}

/** Redraws texts after a language change. */
export function relabelAlerts() {
  renderMute();
  renderBanner();
}

/** Logout: a new user starts with nothing pending (serials stay seen, so no replay). */
export function clearAlerts() {
  dismiss();
}
