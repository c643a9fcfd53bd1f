// City Brain console core: session token, API calls, DOM and SVG chart helpers, menu.
// No framework and no build step: the hub's CSP allows only same-origin scripts, so everything is here.
"use strict";

const CB = (() => {
  const TOKEN = "cb_token";
  const SVG = "http://www.w3.org/2000/svg";

  const token = () => sessionStorage.getItem(TOKEN);

  function toLogin() {
    sessionStorage.removeItem(TOKEN);
    const next = location.pathname + location.search;
    location.assign("/console/login?next=" + encodeURIComponent(next));
  }

  // Every call carries the bearer token; 401 means the session ended (idle expiry, logout elsewhere).
  async function api(path, opts = {}) {
    const headers = { Accept: "application/json", ...(opts.headers || {}) };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    let body = opts.body;
    if (body !== undefined && typeof body !== "string") {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(body);
    }
    const r = await fetch(path, { method: opts.method || "GET", headers, body });
    if (r.status === 401 && !opts.noRedirect) {
      toLogin();
      throw new Error("not signed in");
    }
    const type = r.headers.get("content-type") || "";
    const data = type.includes("json") ? await r.json() : await r.text();
    return { ok: r.ok, status: r.status, data };
  }

  // An image that needs the bearer token: fetched, then shown as a data: URL (the CSP allows data: images).
  async function authImage(path, alt) {
    const img = el("img", { alt, class: "qr" });
    const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
    if (!r.ok) return el("span", { class: "error" }, `image: HTTP ${r.status}`);
    const blob = await r.blob();
    img.src = await new Promise((res) => {
      const fr = new FileReader();
      fr.onload = () => res(fr.result);
      fr.readAsDataURL(blob);
    });
    return img;
  }

  // A file export that needs the bearer token: fetched, then saved through a temporary object URL (a plain
  // link would carry no token and answer 401).
  async function download(path, filename) {
    const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
    if (r.status === 401) return toLogin();
    if (!r.ok) throw new Error(`${filename}: HTTP ${r.status}`);
    const url = URL.createObjectURL(await r.blob());
    const a = el("a", { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function errText(res) {
    const d = res.data;
    if (d && typeof d === "object" && d.detail !== undefined) {
      return typeof d.detail === "string" ? d.detail : JSON.stringify(d.detail);
    }
    return `HTTP ${res.status}`;
  }

  // el("td", {class: "n"}, "text", childNode, ...): attributes set with setAttribute, text as text nodes.
  function el(tag, attrs = {}, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const k of kids.flat()) {
      if (k === undefined || k === null) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }

  function table(columns, rows, attrs = {}) {
    const head = el("tr", {}, columns.map((c) => el("th", {}, c.title)));
    const body = rows.map((r) =>
      el("tr", c_attrs(r, attrs), columns.map((c) => {
        const v = c.render ? c.render(r) : r[c.key];
        return el("td", { class: c.cls }, v === undefined || v === null ? "" : v);
      })),
    );
    return el("table", { class: "grid", id: attrs.id }, el("thead", {}, head), el("tbody", {}, body));
  }
  function c_attrs(r, attrs) {
    return attrs.rowAttrs ? attrs.rowAttrs(r) : {};
  }

  const when = (iso) => (iso ? String(iso).replace("T", " ").slice(0, 19) : "—");
  const ago = (iso) => {
    if (!iso) return "never";
    const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (Number.isNaN(s)) return String(iso);
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  };
  const badge = (text, kind) => el("span", { class: "badge " + (kind || text) }, text);

  function svg(tag, attrs = {}, ...kids) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    for (const k of kids.flat()) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }

  const PALETTE = ["#2b6cb0", "#dd6b20", "#38a169", "#c53030", "#805ad5", "#718096"];

  // Grouped bar chart: labels on x, one bar per series. series = [{name, values}].
  function barChart(labels, series, opts = {}) {
    const W = opts.width || 640, H = opts.height || 220, P = 34;
    const max = Math.max(1, ...series.flatMap((s) => s.values));
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opts.title || "chart" });
    g.append(svg("line", { x1: P, y1: H - P, x2: W - 8, y2: H - P, stroke: "#999" }));
    g.append(svg("text", { x: 2, y: 14, class: "axis" }, String(max)));
    const slot = (W - P - 8) / Math.max(1, labels.length);
    const bw = Math.max(2, (slot - 4) / Math.max(1, series.length));
    labels.forEach((lab, i) => {
      series.forEach((s, j) => {
        const v = s.values[i] || 0;
        const h = ((H - 2 * P) * v) / max;
        const bar = svg("rect", { x: P + i * slot + 2 + j * bw, y: H - P - h, width: bw - 1, height: h,
          fill: PALETTE[j % PALETTE.length], class: "bar" });
        bar.append(svg("title", {}, `${s.name} ${lab}: ${v}`));
        g.append(bar);
      });
      if (labels.length <= 24 || i % Math.ceil(labels.length / 24) === 0) {
        g.append(svg("text", { x: P + i * slot + slot / 2, y: H - P + 14, class: "axis", "text-anchor": "middle" }, lab));
      }
    });
    return el("figure", { class: "fig" }, g, legend(series), opts.title ? el("figcaption", {}, opts.title) : null);
  }

  // Line chart of several series over the same x labels.
  function lineChart(labels, series, opts = {}) {
    const W = opts.width || 640, H = opts.height || 220, P = 34;
    const max = Math.max(1, ...series.flatMap((s) => s.values));
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opts.title || "chart" });
    g.append(svg("line", { x1: P, y1: H - P, x2: W - 8, y2: H - P, stroke: "#999" }));
    g.append(svg("text", { x: 2, y: 14, class: "axis" }, String(max)));
    const x = (i) => P + (labels.length <= 1 ? 0 : (i * (W - P - 12)) / (labels.length - 1));
    const y = (v) => H - P - ((H - 2 * P) * v) / max;
    series.forEach((s, j) => {
      const pts = s.values.map((v, i) => `${x(i)},${y(v || 0)}`).join(" ");
      g.append(svg("polyline", { points: pts, fill: "none", stroke: PALETTE[j % PALETTE.length], "stroke-width": 2,
        class: "line" }));
    });
    const step = Math.ceil(labels.length / 12) || 1;
    labels.forEach((lab, i) => {
      if (i % step === 0) g.append(svg("text", { x: x(i), y: H - P + 14, class: "axis", "text-anchor": "middle" }, lab));
    });
    return el("figure", { class: "fig" }, g, legend(series), opts.title ? el("figcaption", {}, opts.title) : null);
  }

  function legend(series) {
    return el("div", { class: "legend" }, series.map((s, j) =>
      el("span", { class: "key" }, svgSwatch(PALETTE[j % PALETTE.length]), " " + s.name)));
  }
  const svgSwatch = (color) => svg("svg", { width: 10, height: 10 }, svg("rect", { width: 10, height: 10, fill: color }));

  async function loadMe() {
    if (!token()) {
      toLogin();
      return null;
    }
    const r = await api("/api/v1/iam/me");
    if (!r.ok) {
      toLogin();
      return null;
    }
    return r.data;
  }

  function renderMenu(me, page) {
    const nav = document.getElementById("menu");
    const items = [{ id: "home", title: "Home", path: "/console" }, ...(me.menu || [])];
    nav.replaceChildren(...items.map((m) =>
      el("a", { href: m.path, id: "menu-" + m.id, class: m.id === page ? "active" : null }, m.title)));
    const roles = (me.bindings || []).map((b) => `${b.role} @ ${b.org}`).join(", ");
    document.getElementById("who").replaceChildren(el("b", {}, me.name), " · ", el("span", { id: "scope" }, roles));
  }

  async function logout() {
    await api("/api/v1/iam/logout", { method: "POST", noRedirect: true }).catch(() => null);
    sessionStorage.removeItem(TOKEN);
    location.assign("/console/login");
  }

  // ---- login page ----------------------------------------------------------------------------
  function initLogin() {
    const form = document.getElementById("login-form");
    const change = document.getElementById("change-form");
    const err = document.getElementById("login-error");
    const next = new URLSearchParams(location.search).get("next");
    const target = next && next.startsWith("/console") ? next : "/console";
    let oldPassword = "";
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      oldPassword = document.getElementById("password").value;
      const res = await api("/api/v1/iam/login", { method: "POST", noRedirect: true,
        body: { username: document.getElementById("username").value, password: oldPassword } });
      if (!res.ok) {
        // Lockout, rate limiting and wrong passwords are decided by the iam API; show its words.
        err.textContent = errText(res);
        return;
      }
      sessionStorage.setItem(TOKEN, res.data.token);
      if (res.data.must_change_password) {
        form.hidden = true;
        change.hidden = false;
        return;
      }
      location.assign(target);
    });
    change.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const res = await api("/api/v1/iam/change-password", { method: "POST", noRedirect: true,
        body: { old_password: oldPassword, new_password: document.getElementById("new-password").value } });
      if (!res.ok) {
        err.textContent = errText(res);
        return;
      }
      location.assign(target);
    });
  }

  return { api, authImage, download, errText, el, table, when, ago, badge, svg, barChart, lineChart, loadMe, renderMenu,
    logout, initLogin, token };
})();

if (document.body.dataset.page === "login") CB.initLogin();
