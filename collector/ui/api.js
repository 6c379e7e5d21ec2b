// Talking to the collector's API: JSON in and out, the CSRF token on every
// write, and errors turned into messages a person can read. The session
// itself is an HttpOnly cookie the browser sends; this module only keeps the
// CSRF token that the login (or /api/v1/me) hands out.

import { t } from "./i18n.js";

/** An answer that is not 2xx, with the API's own `{"error": …}` text when it gave one. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let csrf = null;
let onUnauthorized = () => {};

export function setCsrf(token) {
  csrf = token || null;
}

/** Called once per 401 so the app can show the login instead of failing every view. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** `/api/v1/history` + {point: "a,b"} → "/api/v1/history?point=a%2Cb"; undefined values are left out. */
export function url(path, params) {
  if (!params) return path;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// Long enough for a month of history on a slow link, short enough that a hung
// request does not leave a view spinning forever (the server gives up at 60 s).
const TIMEOUT_MS = 65_000;

async function request(method, path, body, { quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (csrf) headers["X-CSRF-Token"] = csrf;
    init.body = JSON.stringify(body ?? {});
  }
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  init.signal = ctl.signal;
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, t("error.network", { msg: e.name === "AbortError" ? "timeout" : e.message }));
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  const text = await res.text().catch(() => "");
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const msg = (data && typeof data.error === "string" && data.error) || t("error.http", { status: res.status });
    if (res.status === 401 && !quiet401) onUnauthorized();
    throw new ApiError(res.status, msg);
  }
  return data;
}

export function get(path, params, opts) {
  return request("GET", url(path, params), undefined, opts);
}

export function post(path, body, opts) {
  return request("POST", path, body, opts);
}
