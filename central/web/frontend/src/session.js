// Who is signed in (GET /api/v1/iam/me): permissions, scopes and the menu the API builds from the roles.
import { ref } from "vue";
import { api, clearToken, token } from "./api.js";
import { loadLang } from "./i18n.js";

export const me = ref(null);

export async function loadMe() {
  if (!token()) return null;
  const r = await api("/api/v1/iam/me");
  if (!r.ok) return null;
  me.value = r.data;
  loadLang(r.data.name);
  return r.data;
}

export const has = (perm) => (me.value?.permissions || []).includes(perm);

// May the caller act with `perm` on an object of `org` (granted at that org or an ancestor)?
export const scoped = (perm, org) =>
  (me.value?.scopes?.[perm] || []).some((s) => org === s || String(org).startsWith(s.replace(/\/$/, "") + "/"));

export async function logout() {
  await api("/api/v1/iam/logout", { method: "POST", noRedirect: true }).catch(() => null);
  clearToken();
  me.value = null;
}
