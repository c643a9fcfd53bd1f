// Dates in the hub's time zone (GET /api/v1/web/info), whatever the browser's own zone is.
import { ref } from "vue";
import { lang, t } from "./i18n.js";

export const hubZone = ref("UTC");

export async function loadZone() {
  try {
    const r = await fetch("/api/v1/web/info", { headers: { Accept: "application/json" } });
    if (r.ok) hubZone.value = (await r.json()).time_zone || "UTC";
  } catch {
    hubZone.value = "UTC";
  }
  try {
    new Intl.DateTimeFormat("en", { timeZone: hubZone.value });
  } catch {
    hubZone.value = "UTC"; // a zone name this browser does not know
  }
}

const parse = (v) => {
  if (v === null || v === undefined || v === "") return null;
  const d = typeof v === "number" ? new Date(v * 1000) : new Date(String(v).match(/[zZ]|[+-]\d\d:?\d\d$/) ? v : v + "Z");
  return Number.isNaN(d.getTime()) ? null : d;
};

// "2026-12-03 17:05:09" in the hub's zone; an ISO string, or epoch seconds. "—" for none.
export function when(v) {
  const d = parse(v);
  if (!d) return v ? String(v) : "—";
  const parts = new Intl.DateTimeFormat(lang.value === "zh" ? "zh-CN" : "en-GB", {
    timeZone: hubZone.value, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    second: "2-digit", hourCycle: "h23",
  }).formatToParts(d);
  const p = Object.fromEntries(parts.map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

export function ago(v) {
  const d = parse(v);
  if (!d) return t("never");
  const s = Math.max(0, Math.round((Date.now() - d.getTime()) / 1000));
  if (s < 90) return t("agoS", s);
  if (s < 5400) return t("agoMin", Math.round(s / 60));
  return t("agoH", Math.round(s / 3600));
}
