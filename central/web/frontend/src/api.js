// The console is an API client: every number on screen comes from /api/v1 with the session's bearer token
// (kept in sessionStorage, so it ends with the tab). 401 means the session ended: back to the login page.
import { router } from "./router.js";

const TOKEN = "cb_token";

export const token = () => sessionStorage.getItem(TOKEN);
export const setToken = (t) => sessionStorage.setItem(TOKEN, t);
export const clearToken = () => sessionStorage.removeItem(TOKEN);

export function toLogin() {
  clearToken();
  const next = router.currentRoute.value.fullPath;
  if (router.currentRoute.value.name !== "login") router.replace({ name: "login", query: { next } });
}

export async function api(path, opts = {}) {
  const headers = { Accept: "application/json", ...(opts.headers || {}) };
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  let body = opts.body;
  if (body !== undefined && typeof body !== "string" && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const r = await fetch(path, { method: opts.method || "GET", headers, body });
  if (r.status === 401 && !opts.noRedirect) {
    toLogin();
    return { ok: false, status: 401, data: { detail: "not signed in" } };
  }
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  return { ok: r.ok, status: r.status, data };
}

// 404 "Not Found" on a capability's base route: that capability is not installed on this hub.
export const absent = (res) => res.status === 404 && res.data && res.data.detail === "Not Found";

// The API's own words for a refusal: problem+json `detail`, a field error, or the status.
export function errText(res) {
  const d = res.data;
  if (d && typeof d === "object") {
    if (typeof d.detail === "string") return d.detail;
    if (Array.isArray(d.errors) && d.errors.length) {
      return d.errors.map((e) => [e.field || (e.loc || []).join("."), e.message || e.msg || e.error].filter(Boolean).join(": ")).join("; ");
    }
    if (d.detail !== undefined) return JSON.stringify(d.detail);
    if (d.title) return d.title;
  }
  if (typeof d === "string" && d) return d.slice(0, 200);
  return `HTTP ${res.status}`;
}

async function authBlob(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (r.status === 401) {
    toLogin();
    return null;
  }
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.blob();
}

// An image that needs the bearer token, as a data: URL (the CSP allows data: images, not blob: ones).
export async function authImage(path) {
  const blob = await authBlob(path);
  if (!blob) return null;
  return new Promise((res) => {
    const fr = new FileReader();
    fr.onload = () => res(fr.result);
    fr.readAsDataURL(blob);
  });
}

// A file export that needs the bearer token: fetched, then saved through a temporary object URL (a plain
// link would carry no token and answer 401).
export async function download(path, filename) {
  const blob = await authBlob(path);
  if (!blob) return;
  saveBlob(blob, filename);
}

export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
