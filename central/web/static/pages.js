// Console pages. Each page draws from the API only; a capability that is not installed on this hub answers
// 404 "Not Found" on its base route, and the page says so instead of breaking.
"use strict";

const { api, el, table, when, ago, badge } = CB;

const absent = (res) => res.status === 404 && res.data && res.data.detail === "Not Found";
const note = (text, cls = "muted") => el("p", { class: cls }, text);
const fail = (res) => note(CB.errText(res), "error");
const has = (me, perm) => (me.permissions || []).includes(perm);
const hasPrefix = (me, prefix) => (me.permissions || []).some((p) => p.startsWith(prefix));
const section = (title, ...kids) => el("section", { class: "card" }, el("h2", {}, title), ...kids);
const notInstalled = (what) => note(`${what} is not installed on this hub yet.`, "muted absent");

function flash(root, text, cls = "ok") {
  for (const old of root.querySelectorAll(".flash")) old.remove();
  const n = el("p", { class: "flash " + cls, role: "status" }, text);
  root.prepend(n);
  setTimeout(() => n.remove(), 6000);
}

// ---- home ------------------------------------------------------------------------------------
async function home(me, root) {
  const cards = [];
  cards.push(section("You", el("p", {}, `Signed in as ${me.name}. Scope: `, el("b", { id: "home-orgs" }, (me.orgs || []).join(", ") || "—")),
    el("p", { class: "muted" }, `${(me.permissions || []).length} permissions through ${(me.bindings || []).length} role binding(s).`)));
  if (has(me, "devices.read")) {
    const r = await api("/api/v1/devices");
    if (r.ok) {
      const on = r.data.filter((d) => d.state === "online").length;
      cards.push(section("Devices", el("p", { id: "home-devices" }, el("b", {}, String(on)), " online, ",
        el("b", {}, String(r.data.length - on)), " offline"), el("a", { href: "/console/devices" }, "All devices →")));
    }
  }
  if (has(me, "codes.read")) {
    const r = await api("/api/v1/codes/applications");
    if (r.ok) {
      const by = {};
      for (const a of r.data) by[a.status] = (by[a.status] || 0) + 1;
      cards.push(section("Code applications", el("p", { id: "home-codes" },
        Object.entries(by).map(([k, v]) => `${v} ${k}`).join(", ") || "none"), el("a", { href: "/console/codes" }, "Applications →")));
    }
  }
  if (has(me, "registry.read")) {
    const r = await api("/api/v1/registry/applications?status=pending");
    if (r.ok) cards.push(section("Registry usage applications", el("p", {}, `${r.data.items.length} pending`),
      el("a", { href: "/console/registry" }, "Registry →")));
  }
  if (has(me, "video.read")) {
    const r = await api("/api/v1/video/cases?limit=500");
    if (r.ok) {
      const items = Array.isArray(r.data) ? r.data : r.data.items || [];
      const open = items.filter((c) => ["new", "reviewed", "dispatched", "acknowledged"].includes(c.status)).length;
      cards.push(section("Video cases", el("p", {}, `${open} open of ${items.length}`), el("a", { href: "/console/video" }, "Cases →")));
    }
  }
  if (has(me, "audit.read")) {
    const r = await api("/api/v1/iam/audit?limit=1000");
    if (r.ok) {
      const last = r.data.slice(-5).reverse();
      cards.push(section("Recent audit entries", table([
        { title: "When", render: (x) => when(x.ts) }, { title: "Actor", key: "actor" }, { title: "Action", key: "action" },
      ], last), el("a", { href: "/console/audit" }, "Audit log →")));
    }
  }
  root.replaceChildren(el("div", { class: "cards" }, cards));
}

// ---- devices ---------------------------------------------------------------------------------
// What the last heartbeat says a gateway's cameras (or a terminal's revocation list) are doing.
function deviceDetail(d) {
  const hb = d.heartbeat || {};
  const cams = hb.cameras || [];
  if (cams.length) {
    return el("span", { class: "cams" }, ...cams.map((c) => el("span", { class: "cam", "data-cam": c.id, "data-state": c.state },
      badge(c.state, c.state === "live" ? "online" : "offline"),
      ` ${c.id}: ${c.fps_analysed.toFixed(1)} fps, ${Math.round(c.cpu_percent)}% CPU`
      + (c.down_s != null ? `, down ${Math.round(c.down_s)} s` : "") + (c.reconnects ? `, ${c.reconnects} reconnects` : "") + " ")));
  }
  if (hb.revocation_age_s != null) return `revocation list ${Math.round(hb.revocation_age_s / 60)} min old`;
  return "";
}

async function devices(me, root) {
  const r = await api("/api/v1/devices");
  if (!r.ok) return root.replaceChildren(fail(r));
  const list = r.data;
  const on = list.filter((d) => d.state === "online").length;
  const kinds = [...new Set(list.map((d) => d.kind))];
  root.replaceChildren(
    el("p", { id: "device-summary" }, `${list.length} device(s): ${on} online, ${list.length - on} offline`),
    list.length ? CB.barChart(kinds, [
      { name: "online", values: kinds.map((k) => list.filter((d) => d.kind === k && d.state === "online").length) },
      { name: "offline", values: kinds.map((k) => list.filter((d) => d.kind === k && d.state !== "online").length) },
    ], { title: "Devices by kind", height: 160 }) : null,
    table([
      { title: "Device", key: "id" }, { title: "Name", key: "name" }, { title: "Kind", key: "kind" },
      { title: "Org", key: "org_path" }, { title: "State", render: (d) => badge(d.state) },
      { title: "Queue", key: "queue_depth", cls: "n" }, { title: "Dropped", key: "queue_dropped", cls: "n" },
      { title: "Last heartbeat", render: (d) => ago(d.last_heartbeat_at) },
      { title: "Cameras / lists", render: deviceDetail },
    ], list, { id: "devices", rowAttrs: (d) => ({ "data-id": d.id, "data-org": d.org_path }) }),
  );
}

// ---- registry --------------------------------------------------------------------------------
async function registry(me, root) {
  const params = new URLSearchParams(location.search);
  if (params.get("id")) return entity(me, root, params.get("id"));
  const q = el("input", { id: "reg-q", name: "q", placeholder: "name, identifier or address", value: params.get("q") || "" });
  const type = el("select", { id: "reg-type", name: "type" },
    ["", "person", "enterprise", "object", "place"].map((t) => el("option", { value: t, selected: t === (params.get("type") || "") }, t || "any type")));
  const form = el("form", { class: "row", id: "reg-search" }, q, type, el("button", { type: "submit" }, "Search"));
  const results = el("div", { id: "reg-results" });
  const apps = el("div", { id: "reg-apps" });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    search();
  });
  async function search() {
    const u = new URLSearchParams();
    if (q.value) u.set("q", q.value);
    if (type.value) u.set("type", type.value);
    const r = await api("/api/v1/registry/search?" + u);
    if (absent(r)) return results.replaceChildren(notInstalled("The registry"));
    if (!r.ok) return results.replaceChildren(fail(r));
    results.replaceChildren(table([
      { title: "Identifier", render: (e) => el("a", { href: "/console/registry?id=" + encodeURIComponent(e.id) }, e.id) },
      { title: "Type", key: "type" }, { title: "Name", key: "name" }, { title: "Org", key: "org" }, { title: "Status", key: "status" },
    ], r.data.items, { id: "reg-table" }));
  }
  async function loadApps() {
    const r = await api("/api/v1/registry/applications");
    if (!r.ok) return apps.replaceChildren(absent(r) ? notInstalled("The registry") : fail(r));
    apps.replaceChildren(table([
      { title: "#", key: "id" }, { title: "Applicant", render: (a) => `${a.applicant} (${a.applicant_org})` },
      { title: "Owner", key: "owner_org" }, { title: "Purpose", key: "purpose" },
      { title: "Fields", render: (a) => a.fields.join(", ") },
      { title: "Status", render: (a) => badge(a.status) },
      { title: "", render: (a) => (a.status === "pending" && me.scopes && (me.scopes["registry.approve"] || []).some((s) => a.owner_org === s || a.owner_org.startsWith(s + "/"))
        ? el("span", {}, el("button", { class: "approve", "data-id": a.id, onclick: () => decide(a.id, "approve") }, "Approve"),
          " ", el("button", { class: "reject", onclick: () => decide(a.id, "reject") }, "Reject"))
        : "") },
    ], r.data.items, { id: "reg-apps-table", rowAttrs: (a) => ({ "data-id": a.id, "data-status": a.status }) }));
  }
  async function decide(id, verb) {
    const r = await api(`/api/v1/registry/applications/${id}/${verb}`, { method: "POST", body: {} });
    flash(root, r.ok ? `Application ${id}: ${r.data.status}` : CB.errText(r), r.ok ? "ok" : "error");
    loadApps();
  }
  root.replaceChildren(section("Search", form, results), section("Usage applications", apps));
  await Promise.all([search(), loadApps()]);
}

// Entity page with its link graph: parents/owners (outgoing) on the right, children/holders (incoming) left.
async function entity(me, root, id) {
  const [e, links] = await Promise.all([
    api("/api/v1/registry/entities/" + encodeURIComponent(id)),
    api("/api/v1/registry/entities/" + encodeURIComponent(id) + "/links"),
  ]);
  if (!e.ok) return root.replaceChildren(fail(e));
  const fields = Object.entries(e.data).filter(([, v]) => v !== null && typeof v !== "object");
  const dl = el("dl", { class: "kv", id: "entity" }, fields.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  const graph = links.ok ? linkGraph(id, links.data.outgoing || [], links.data.incoming || []) : fail(links);
  root.replaceChildren(el("p", {}, el("a", { href: "/console/registry" }, "← search")),
    section(`${e.data.type || "entity"} ${id}`, dl), section("Links", graph));
}

function linkGraph(id, out, inc) {
  const { svg } = CB;
  const rows = Math.max(out.length, inc.length, 1);
  const W = 760, H = Math.max(120, rows * 44 + 20), cx = W / 2, cy = H / 2;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart graph", id: "link-graph" });
  const node = (x, y, label, href, cls) => {
    const a = svg("a", { href: href || "#" });
    a.append(svg("rect", { x: x - 95, y: y - 14, width: 190, height: 28, rx: 6, class: "node " + cls }));
    a.append(svg("text", { x, y: y + 4, "text-anchor": "middle", class: "node-label" }, label));
    return a;
  };
  const place = (list, x, dir) => list.forEach((l, i) => {
    const y = (H * (i + 1)) / (list.length + 1);
    const other = dir === "out" ? l.dst : l.src;
    g.append(svg("line", { x1: cx, y1: cy, x2: x, y2: y, class: "edge " + l.category }));
    g.append(svg("text", { x: (cx + x) / 2, y: (cy + y) / 2 - 4, "text-anchor": "middle", class: "edge-label" }, l.rel));
    g.append(node(x, y, other, "/console/registry?id=" + encodeURIComponent(other), "peer"));
  });
  place(out, W - 110, "out");
  place(inc, 110, "in");
  g.append(node(cx, cy, id, null, "self"));
  return el("figure", { class: "fig" }, g, el("figcaption", {}, `${out.length} outgoing (right), ${inc.length} incoming (left) links`));
}

// ---- city codes --------------------------------------------------------------------------------
async function codes(me, root) {
  const appsBox = el("div", { id: "code-apps" });
  const issueBox = el("div", { id: "code-issue" });
  const superBox = el("div", { id: "code-supervision" });
  const canApprove = has(me, "codes.approve");
  async function loadApps() {
    const r = await api("/api/v1/codes/applications");
    if (absent(r)) return appsBox.replaceChildren(notInstalled("The city code authority"));
    if (!r.ok) return appsBox.replaceChildren(fail(r));
    const check = (a, k) => {
      const c = (a.checks || {})[k] || {};
      return el("span", { class: "check " + (c.ok ? "pass" : "failed"), title: c.detail || "" }, (c.ok ? "✓ " : "✗ ") + k);
    };
    appsBox.replaceChildren(table([
      { title: "#", key: "id" }, { title: "Dept", key: "dept_id" }, { title: "Scene", render: (a) => `${a.scene_name} (${a.scene_type})` },
      { title: "Code", render: (a) => `${a.code_type}/${a.entity_type}/${a.validity}` },
      { title: "Checks", render: (a) => el("div", { class: "checks" }, ["duty", "duplicate", "sharing"].map((k) => check(a, k)),
        el("small", { class: "muted" }, Object.values(a.checks || {}).filter((c) => !c.ok).map((c) => c.detail).join("; "))) },
      { title: "Status", render: (a) => badge(a.status) },
      { title: "", render: (a) => (a.status === "pending" && canApprove ? approveForm(a) : a.code_system ? `system ${a.code_system}` : "") },
    ], r.data, { id: "code-apps-table", rowAttrs: (a) => ({ "data-id": a.id, "data-status": a.status }) }));
  }
  function approveForm(a) {
    const sys = el("input", { class: "code-system", size: 6, placeholder: "system id", pattern: "[0-9A-Z]{1,8}", required: true });
    const go = async (approve) => {
      const r = await api(`/api/v1/codes/applications/${a.id}/decision`, { method: "POST",
        body: { approve, code_system: approve ? sys.value : null, reason: approve ? "" : "rejected in console" } });
      flash(root, r.ok ? `Application ${a.id}: ${r.data.status}` : CB.errText(r), r.ok ? "ok" : "error");
      loadApps();
    };
    return el("span", {}, sys, el("button", { class: "approve", onclick: () => go(true) }, "Approve"), " ",
      el("button", { class: "reject", onclick: () => go(false) }, "Reject"));
  }
  function issueForm() {
    const app = el("input", { id: "issue-app", type: "number", placeholder: "application #", min: 1 });
    const ident = el("input", { id: "issue-identity", placeholder: "identity id" });
    const data = el("input", { id: "issue-data", placeholder: "department data (optional)", maxlength: 24 });
    const serial = el("input", { id: "lookup-serial", placeholder: "serial" });
    const out = el("div", { id: "issued" });
    const show = async (rec, png) => {
      const img = png ? el("img", { class: "qr", alt: "QR " + rec.serial, src: "data:image/png;base64," + png })
        : await CB.authImage(`/api/v1/codes/issued/${encodeURIComponent(rec.serial)}/qr`, "QR " + rec.serial);
      out.prepend(el("div", { class: "code-card", "data-serial": rec.serial }, img,
        el("dl", { class: "kv" }, ["serial", "identity_id", "status", "scene_name", "text"].filter((k) => rec[k] !== undefined)
          .map((k) => [el("dt", {}, k), el("dd", {}, String(rec[k]))]))));
    };
    const issue = el("form", { class: "row", id: "issue-form" }, app, ident, data, el("button", { type: "submit" }, "Issue"));
    issue.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const r = await api("/api/v1/codes/issue", { method: "POST",
        body: { application_id: Number(app.value), identity_id: ident.value, dept_data: data.value } });
      if (!r.ok) return flash(root, CB.errText(r), "error");
      show(r.data, r.data.png_b64);
    });
    const lookup = el("form", { class: "row", id: "lookup-form" }, serial, el("button", { type: "submit" }, "Find"));
    lookup.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const r = await api("/api/v1/codes/issued/" + encodeURIComponent(serial.value.trim()));
      if (!r.ok) return flash(root, CB.errText(r), "error");
      show(r.data, null);
    });
    issueBox.replaceChildren(has(me, "codes.issue") ? issue : null, lookup, out);
    (async () => {  // the latest codes in scope, newest first, each with its QR image
      const r = await api("/api/v1/codes/issued?limit=12");
      if (!r.ok) return;
      for (const rec of (r.data.items || []).slice().reverse()) await show(rec, null);
    })();
  }
  async function loadSupervision() {
    const r = await api("/api/v1/codes/supervision?days=30");
    if (!r.ok) return superBox.replaceChildren(fail(r));
    const rows = r.data.rows || [];
    const days = [...new Set(rows.flatMap((x) => (x.trend || []).map((t) => t.day)))].sort();
    const sum = (k) => days.map((d) => rows.reduce((n, x) => n + ((x.trend || []).find((t) => t.day === d) || {})[k] || 0, 0));
    superBox.replaceChildren(
      CB.lineChart(days.map((d) => d.slice(5)), [{ name: "issued", values: sum("issued") }, { name: "scanned", values: sum("scanned") }],
        { title: "Issued and scanned per day (30 days)" }),
      CB.barChart(rows.map((x) => x.scene), [
        { name: "active", values: rows.map((x) => x.active) }, { name: "revoked", values: rows.map((x) => x.revoked) },
        { name: "failed", values: rows.map((x) => x.failed) }, { name: "zombies", values: rows.map((x) => x.zombies) },
      ], { title: "By scene" }),
      table([{ title: "Dept", key: "dept_id" }, { title: "Scene", key: "scene" }, { title: "Issued", key: "issued", cls: "n" },
        { title: "Active", key: "active", cls: "n" }, { title: "Scanned", key: "scanned", cls: "n" },
        { title: "Failed", key: "failed", cls: "n" }, { title: "Zombies", key: "zombies", cls: "n" }], rows),
      el("button", { id: "supervision-csv", onclick: () => CB.download("/api/v1/codes/supervision.csv", "supervision.csv") },
        "CSV export"),
    );
  }
  root.replaceChildren(section("Issuance applications", appsBox), section("Issued codes", issueBox),
    has(me, "codes.supervise") ? section("Supervision", superBox) : "");
  issueForm();
  await loadApps();
  if (has(me, "codes.supervise")) await loadSupervision();
}

// ---- video cases -------------------------------------------------------------------------------
// Workflow (central/video): new -> review (confirmed | false positive) -> reviewed -> dispatch -> dispatched
// -> acknowledge -> acknowledged -> resolve -> resolved. Each verb has its own exact body (the API forbids
// extra fields).
const VIDEO_STEPS = {
  new: [["review", "Confirm", (f) => ({ verdict: "confirmed", reason: f.reason })],
    ["review", "False positive", (f) => ({ verdict: "false_positive", reason: f.reason })]],
  reviewed: [["dispatch", "Dispatch", (f) => (f.department ? { department: f.department } : {})]],
  dispatched: [["acknowledge", "Acknowledge", () => undefined]],
  acknowledged: [["resolve", "Resolve", (f) => ({ note: f.reason })]],
};

async function video(me, root) {
  const list = el("div", { id: "video-cases" });
  const detail = el("div", { id: "video-case" });
  const stats = el("div", { id: "video-stats" });
  const params = new URLSearchParams(location.search);
  const status = el("select", { id: "video-status" }, ["", "new", "reviewed", "dispatched", "acknowledged", "resolved", "dismissed"]
    .map((s) => el("option", { value: s, selected: s === (params.get("status") || "") }, s || "any status")));
  const overdue = el("input", { type: "checkbox", id: "video-overdue", checked: params.get("overdue") === "true" });
  const filters = el("form", { class: "row", id: "video-filters" }, status, el("label", {}, overdue, " overdue only"),
    el("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const u = new URLSearchParams();
    if (status.value) u.set("status", status.value);
    if (overdue.checked) u.set("overdue", "true");
    location.assign("/console/video?" + u);
  });
  async function load() {
    const u = new URLSearchParams({ limit: "100" });
    if (params.get("status")) u.set("status", params.get("status"));
    if (params.get("overdue")) u.set("overdue", params.get("overdue"));
    const r = await api("/api/v1/video/cases?" + u);
    if (absent(r)) return list.replaceChildren(notInstalled("Video analysis"));
    if (!r.ok) return list.replaceChildren(fail(r));
    const items = Array.isArray(r.data) ? r.data : r.data.items || [];
    list.replaceChildren(el("p", { class: "muted" }, `${r.data.total ?? items.length} case(s)`), table([
      { title: "#", render: (c) => el("a", { href: "/console/video?case=" + c.id, class: "case-link" }, String(c.id)) },
      { title: "Kind", key: "kind" }, { title: "Site", render: (c) => `${c.site}/${c.device}${c.camera ? "/" + c.camera : ""}` },
      { title: "Org", key: "org" }, { title: "Events", key: "event_count", cls: "n" },
      { title: "First seen", render: (c) => when(c.first_ts) },
      { title: "Status", render: (c) => el("span", {}, badge(c.status), c.overdue ? badge("overdue", "overdue") : "") },
    ], items, { id: "video-table", rowAttrs: (c) => ({ "data-id": c.id, "data-status": c.status }) }));
  }
  async function caseView(id) {
    const r = await api("/api/v1/video/cases/" + encodeURIComponent(id));
    if (!r.ok) return detail.replaceChildren(fail(r));
    const c = r.data;
    const snap = c.snapshot_url ? await CB.authImage(c.snapshot_url, `snapshot of case ${c.id}`) : note("no snapshot");
    const reason = el("input", { id: "case-reason", placeholder: "reason / note", value: "" });
    const dept = el("input", { id: "case-dept", placeholder: "department (dispatch)", value: c.department || "" });
    const steps = VIDEO_STEPS[c.status] || [];
    const buttons = steps.map(([verb, label, body]) => el("button", { class: "wf", "data-action": verb, "data-label": label,
      onclick: () => act(verb, body({ reason: reason.value, department: dept.value })) }, label));
    async function act(verb, body) {
      const res = await api(`/api/v1/video/cases/${encodeURIComponent(id)}/${verb}`, { method: "POST", body });
      flash(root, res.ok ? `Case ${id}: ${res.data.status}` : CB.errText(res), res.ok ? "ok" : "error");
      await Promise.all([caseView(id), load()]);
    }
    detail.replaceChildren(section(`Case ${c.id}: ${c.kind} at ${c.site}`, el("div", { id: "case", "data-status": c.status },
      el("p", {}, "Status: ", badge(c.status), c.overdue ? badge("overdue", "overdue") : "",
        c.due_at ? ` · due ${when(c.due_at)}` : "", c.department ? ` · department ${c.department}` : ""),
      el("div", { class: "snaps" }, snap),
      steps.length ? el("div", { class: "row" }, reason, c.status === "reviewed" ? dept : null, buttons) : null,
      el("h3", {}, "History"),
      table([{ title: "When", render: (h) => when(h.ts) }, { title: "By", key: "actor" }, { title: "Step", key: "action" },
        { title: "Detail", render: (h) => el("code", {}, JSON.stringify(h.detail)) }], c.history || [], { id: "case-history" }),
      (c.alerts || []).length ? el("h3", {}, "Alerts") : null,
      (c.alerts || []).length ? table([{ title: "Channel", key: "channel" }, { title: "Target", key: "target" },
        { title: "Status", render: (a) => badge(a.status) }, { title: "Tries", render: (a) => String(a.attempts ?? "") },
        { title: "Error", render: (a) => a.error || "" },
        // A webhook alert is a delivery in the hub's outbox: it can be sent again (same webhook-id).
        { title: "", render: (a) => a.delivery_id && has(me, "webhooks.manage") ? el("button", { class: "wf replay",
          "data-delivery": a.delivery_id, onclick: () => replay(a.delivery_id, id) }, "Replay") : "" },
      ], c.alerts, { id: "case-alerts" }) : null)));
  }
  async function replay(deliveryId, caseId) {
    const res = await api(`/api/v1/webhooks/deliveries/${encodeURIComponent(deliveryId)}/replay`, { method: "POST" });
    flash(root, res.ok ? `Alert ${deliveryId}: queued again` : CB.errText(res), res.ok ? "ok" : "error");
    await caseView(caseId);
  }
  async function loadStats() {
    const r = await api("/api/v1/video/stats");
    if (!r.ok) return stats.replaceChildren();
    const byHour = r.data.by_hour_of_day || {};
    const hours = [...Array(24).keys()];
    const kinds = Object.keys(r.data.by_kind || {});
    stats.replaceChildren(
      CB.barChart(hours.map(String), [{ name: "cases", values: hours.map((h) => byHour[String(h)] || 0) }],
        { title: "Cases by hour of day (UTC)", height: 160 }),
      kinds.length ? CB.barChart(kinds, [{ name: "cases", values: kinds.map((k) => r.data.by_kind[k]) }], { title: "Cases by kind", height: 160 }) : null,
      el("p", { class: "muted" }, `false-positive rate: ${r.data.false_positive_rate == null ? "—" : Math.round(r.data.false_positive_rate * 100) + "%"}`));
  }
  root.replaceChildren(section("Cases", filters, list), detail, section("Statistics", stats));
  await Promise.all([load(), loadStats(), params.get("case") ? caseView(params.get("case")) : null]);
}

// ---- call tasks --------------------------------------------------------------------------------
async function dialer(me, root) {
  const r = await api("/api/v1/dialer/tasks");
  if (absent(r)) return root.replaceChildren(notInstalled("The outbound call robot"));
  if (!r.ok) return root.replaceChildren(fail(r));
  const tasks = r.data.slice(0, 50);
  const prog = await Promise.all(tasks.map((t) => api(`/api/v1/dialer/tasks/${t.id}/progress`)));
  const bar = (p) => (p && p.ok ? el("span", {}, el("progress", { max: 100, value: p.data.percent }),
    ` ${p.data.finished_contacts}/${p.data.total} · answered ${p.data.answered}`) : "");
  const kids = [table([
    { title: "#", render: (t) => el("a", { href: "/console/dialer?task=" + t.id }, String(t.id)) }, { title: "Name", key: "name" },
    { title: "Org", key: "org" }, { title: "Template", render: (t) => `${t.template_key} v${t.template_version}` },
    { title: "Status", render: (t) => badge(t.status || "") }, { title: "Progress", render: (t) => bar(prog[tasks.indexOf(t)]) },
  ], tasks, { id: "dialer-tasks", rowAttrs: (t) => ({ "data-id": t.id, "data-status": t.status }) })];
  const id = new URLSearchParams(location.search).get("task");
  if (id) {
    const [rep, c] = await Promise.all([api(`/api/v1/dialer/tasks/${encodeURIComponent(id)}/report`),
      api(`/api/v1/dialer/tasks/${encodeURIComponent(id)}/cdrs`)]);
    const out = rep.ok ? rep.data.outcomes || {} : {};
    const act = async (verb) => {
      const res = await api(`/api/v1/dialer/tasks/${encodeURIComponent(id)}/${verb}`, { method: "POST" });
      flash(root, res.ok ? `Task ${id}: ${res.data.status}` : CB.errText(res), res.ok ? "ok" : "error");
    };
    kids.push(section(`Task ${id}`,
      has(me, "dialer.run") ? el("div", { class: "row" }, ["start", "pause", "resume", "cancel"].map((v) =>
        el("button", { class: "wf", "data-action": v, onclick: () => act(v) }, v))) : null,
      Object.keys(out).length ? CB.barChart(Object.keys(out), [{ name: "contacts", values: Object.values(out) }],
        { title: "Call outcomes", height: 160 }) : null,
      el("h3", {}, "Call detail records"),
      c.ok ? table([{ title: "Callee", render: (x) => `${x.name || ""} ${x.phone_masked || ""}` }, { title: "Attempt", key: "attempt", cls: "n" },
        { title: "Start", render: (x) => when(x.started_at) }, { title: "Seconds", render: (x) => (x.duration_s ?? "") },
        { title: "SIP", key: "sip_status" }, { title: "Outcome", render: (x) => badge(x.outcome) }], c.data, { id: "dialer-cdrs" }) : fail(c)));
  }
  root.replaceChildren(...kids);
}

// ---- access channels (pilot) -------------------------------------------------------------------
async function channel(me, root) {
  const [s, g] = await Promise.all([api("/api/v1/channel/scenes"), api("/api/v1/channel/grants")]);
  if (absent(s)) return root.replaceChildren(notInstalled("The access channel pilot"));
  if (!s.ok) return root.replaceChildren(fail(s));
  root.replaceChildren(
    section("Channel scenes", table([{ title: "Application", key: "app_id" }, { title: "Scene", key: "scene_name" },
      { title: "Service", render: (x) => `${x.service_name} ${x.service_addr}:${x.service_port}` }, { title: "Grant TTL (s)", key: "ttl_s", cls: "n" },
      { title: "Terminals", render: (x) => (x.terminals || []).join(", ") }], s.data)),
    section("Grants", g.ok ? table([{ title: "Grant", key: "id" }, { title: "Serial", key: "serial" }, { title: "Via", key: "via" },
      { title: "Peer", key: "peer_address" }, { title: "Expires", render: (x) => when(new Date(x.expires_at * 1000).toISOString()) },
      { title: "Status", render: (x) => el("span", {}, badge(x.status), x.end_reason ? ` ${x.end_reason}` : "") }],
    g.data) : fail(g)),
  );
}

// ---- users & access --------------------------------------------------------------------------------
async function iam(me, root) {
  const [u, b] = await Promise.all([api("/api/v1/iam/users"), api("/api/v1/iam/bindings")]);
  root.replaceChildren(
    section("Users", u.ok ? table([{ title: "User", key: "username" }, { title: "Org", key: "org" }, { title: "Phone", key: "phone" },
      { title: "State", render: (x) => (x.disabled ? badge("disabled") : x.locked_until ? badge("locked") : badge("active")) }], u.data, { id: "users" }) : fail(u)),
    section("Role bindings", b.ok ? table([{ title: "#", key: "id" }, { title: "User", render: (x) => x.username || x.user || x.apikey || "" },
      { title: "Role", key: "role" }, { title: "Org", key: "org" }, { title: "Expires", render: (x) => when(x.expires_at ? new Date(x.expires_at * 1000).toISOString() : null) }],
    b.data) : fail(b)),
  );
}

// ---- audit log ---------------------------------------------------------------------------------------
async function audit(me, root) {
  const params = new URLSearchParams(location.search);
  const after = Number(params.get("after") || 0);
  const r = await api(`/api/v1/iam/audit?after=${after}&limit=200`);
  if (!r.ok) return root.replaceChildren(fail(r));
  const rows = r.data;
  const verifyOut = el("span", { id: "audit-verify" });
  const verifyBtn = el("button", { id: "audit-verify-btn", onclick: async () => {
    const v = await api("/api/v1/iam/audit/verify");
    verifyOut.textContent = v.ok ? (v.data.ok ? `chain intact (${v.data.rows ?? v.data.checked ?? ""} rows)` : `BROKEN: ${JSON.stringify(v.data)}`) : CB.errText(v);
  } }, "Verify hash chain");
  const byAction = {};
  for (const x of rows) byAction[x.action] = (byAction[x.action] || 0) + 1;
  const top = Object.entries(byAction).sort((a, b) => b[1] - a[1]).slice(0, 10);
  const nextAfter = rows.length ? rows[rows.length - 1].seq : after;
  root.replaceChildren(
    el("p", { class: "row" }, verifyBtn, verifyOut),
    top.length ? CB.barChart(top.map((t) => t[0]), [{ name: "entries", values: top.map((t) => t[1]) }], { title: "Actions on this page", height: 170 }) : null,
    table([{ title: "Seq", key: "seq", cls: "n" }, { title: "When", render: (x) => when(x.ts) }, { title: "Actor", key: "actor" },
      { title: "Action", key: "action" }, { title: "Target", key: "target" }, { title: "Org", key: "org" },
      { title: "Detail", render: (x) => el("code", {}, typeof x.detail === "string" ? x.detail : JSON.stringify(x.detail)) }],
    rows, { id: "audit", rowAttrs: (x) => ({ "data-org": x.org || "" }) }),
    rows.length === 200 ? el("a", { href: "/console/audit?after=" + nextAfter }, "Older entries →") : null,
  );
}

// ---- webhooks: every capability's outgoing deliveries, one outbox ------------------------------------
async function webhooks(me, root) {
  const manage = has(me, "webhooks.manage");
  let status = new URLSearchParams(location.search).get("status") || "";
  const list = el("div", { id: "deliveries-box" });
  const filter = el("p", { class: "row", id: "deliveries-filter" }, ...["", "dead", "pending", "delivering", "delivered"].map((s) =>
    el("button", { class: "filter", "data-status": s, onclick: () => { status = s; load(); } }, s || "all")));
  async function load() {
    const [e, d] = await Promise.all([api("/api/v1/webhooks/endpoints"),
      api("/api/v1/webhooks/deliveries?limit=200" + (status ? "&status=" + encodeURIComponent(status) : ""))]);
    list.replaceChildren(
      section("Endpoints", e.ok ? table([{ title: "Owner", key: "id" }, { title: "URL", key: "url" }, { title: "Org", key: "org" },
        { title: "Old secret signs until", render: (x) => (x.prev_until ? when(new Date(x.prev_until * 1000).toISOString()) : "—") },
        { title: "", render: (x) => manage ? el("button", { class: "replay-dead", "data-endpoint": x.id, onclick: () => replayDead(x.id) },
          "Replay dead") : "" }], e.data, { id: "endpoints" }) : fail(e)),
      section(`Deliveries${status ? " (" + status + ")" : ""}`, d.ok ? table([{ title: "#", key: "id", cls: "n" },
        { title: "Event", key: "event_type" }, { title: "About", render: (x) => x.ref || "" }, { title: "Endpoint", key: "endpoint_id" },
        { title: "Status", render: (x) => badge(x.status) }, { title: "Tries", render: (x) => String(x.attempts) },
        { title: "Last error", render: (x) => x.last_error || "" }, { title: "Created", render: (x) => when(x.created_at) },
        // a replay sends the same body again under the same webhook-id: receivers dedupe on it
        { title: "", render: (x) => manage && x.status !== "delivering" ? el("button", { class: "replay", "data-delivery": x.id,
          onclick: () => replay(x.id) }, "Replay") : "" }], d.data, { id: "deliveries", rowAttrs: (x) => ({ "data-id": x.id, "data-status": x.status }) })
        : fail(d)));
    list.dataset.status = status || "all"; // which filter the list shows (the browser test waits for it)
  }
  async function replay(id) {
    const res = await api(`/api/v1/webhooks/deliveries/${encodeURIComponent(id)}/replay`, { method: "POST" });
    await load();
    flash(root, res.ok ? `Delivery ${id}: queued again` : CB.errText(res), res.ok ? "ok" : "error");
  }
  async function replayDead(endpoint) {
    const res = await api(`/api/v1/webhooks/endpoints/${encodeURIComponent(endpoint)}/replay-dead`, { method: "POST" });
    await load();
    flash(root, res.ok ? `${endpoint}: ${res.data.replayed} dead deliveries queued again` : CB.errText(res), res.ok ? "ok" : "error");
  }
  root.replaceChildren(filter, list);
  await load();
}

const PAGE_FNS = { home, devices, registry, codes, video, dialer, channel, webhooks, iam, audit };

(async () => {
  const page = document.body.dataset.page;
  document.getElementById("logout").addEventListener("click", CB.logout);
  const me = await CB.loadMe();
  if (!me) return;
  CB.renderMenu(me, page);
  const root = document.getElementById("content");
  const fn = PAGE_FNS[page];
  try {
    if (!fn) root.replaceChildren(note(`There is no console page for '${page}' yet; its API is at /api/v1/${page}.`));
    else await fn(me, root);
  } catch (e) {
    root.replaceChildren(note(String(e), "error"));
  }
  document.body.dataset.ready = "1"; // the browser test waits for this
})();
