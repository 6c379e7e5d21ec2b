// A small element builder, so views read as the markup they make.
// h("a", {href: "#/", class: "x", dataset: {room: "r"}, onclick: fn}, "text", child)
// Text always goes through textContent/text nodes: nothing from the API is
// ever parsed as HTML.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "style") Object.assign(el.style, v);
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs ?? {})) if (v != null) el.setAttribute(k, String(v));
  return el;
}

/**
 * Makes `container`'s children the elements for `items`, in order, reusing
 * the element of an item whose signature did not change. Unchanged rows are
 * never moved, so a row being read or holding keyboard focus stays put while
 * others come and go; if a changed row held focus, the same control in its
 * replacement gets it back.
 */
export function reconcile(container, items, { key, sig, render, cache }) {
  const active = document.activeElement;
  let refocus = null;
  const next = new Map();
  const els = items.map((item) => {
    const k = key(item);
    const s = sig(item);
    let c = cache.get(k);
    if (!c || c.sig !== s) {
      if (c && active && c.el.contains(active)) refocus = { k, action: active.dataset?.action ?? null };
      c = { sig: s, el: render(item) };
    }
    next.set(k, c);
    return c.el;
  });
  cache.clear();
  for (const [k, c] of next) cache.set(k, c);
  for (let i = 0; i < els.length; i++) {
    if (container.children[i] !== els[i]) container.insertBefore(els[i], container.children[i] ?? null);
  }
  while (container.children.length > els.length) container.lastElementChild.remove();
  if (refocus && next.has(refocus.k)) {
    const el = next.get(refocus.k).el;
    const target = (refocus.action && el.querySelector(`[data-action="${refocus.action}"]`)) || el;
    target.focus({ preventScroll: true });
  }
}

/** "#/room/<site>/<room>" with each part escaped (names may hold spaces or slashes). */
export function roomHref(site, room) {
  return `#/room/${encodeURIComponent(site)}/${encodeURIComponent(room)}`;
}

export function pointHref(site, point) {
  return `#/point/${encodeURIComponent(site)}/${encodeURIComponent(point)}`;
}
