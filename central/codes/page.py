"""The page a phone opens when it scans a city code: mobile-first, self-contained (no script, no CDN, inline
CSS), in Chinese (default) or English. Pure presentation of `ResolverPart.resolver_view`'s facts."""

from __future__ import annotations

import base64
import hashlib
import html
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

LANGS = ("zh", "en")

# verdict -> (headline, plain-words explanation for whoever holds the phone), per language
_VERDICTS: dict[str, dict[str, tuple[str, str]]] = {
    "zh": {
        "valid": ("有效", "此码由{dept}签发，在有效期内。"),
        "expired": ("已过期", "此码已过有效期，请持码人向{dept}重新申领。"),
        "revoked": ("已撤销", "此码已被签发部门撤销，不能再使用。"),
        "unknown-key": ("非本市签发", "此码不是本市签发的，请勿信任。"),
        "bad-signature": ("码已被篡改或伪造", "此码的内容与签发时不一致，请勿信任，可向签发部门核实。"),
        "malformed": ("不是城市码", "扫描到的内容不是本市的城市码。"),
        "wrong-system": ("不适用于此码制", "此码不属于本服务使用的码制。"),
        "unfiled-url": ("发布地址未备案", "此码使用未经备案的地址发布，请勿信任。"),
    },
    "en": {
        "valid": ("Valid", "Issued by {dept} and within its validity."),
        "expired": ("Expired", "This code is past its validity; its holder should ask {dept} for a new one."),
        "revoked": ("Revoked", "The issuing department has revoked this code; it may no longer be used."),
        "unknown-key": ("Not issued by the city", "This code was not issued by the city. Do not trust it."),
        "bad-signature": ("Forged or altered", "This code does not match what was issued. Do not trust it; "
                                               "the issuing department can confirm."),
        "malformed": ("Not a city code", "What was scanned is not one of the city's codes."),
        "wrong-system": ("Not valid for this code system", "This code belongs to another code system."),
        "unfiled-url": ("Issued under an unfiled address", "This code was published under an address that "
                                                           "was never filed. Do not trust it."),
    },
}
_LABELS = {
    "zh": {"title": "城市码", "scene": "场景", "department": "签发部门", "valid": "有效期", "holder": "持码对象",
           "id": "标识", "revoked": "撤销时间", "serial": "序列号", "reason": "核验结果", "scans": "扫码次数",
           "officer": "您有本部门的查看权限，以下信息未脱敏。", "masked": "持码人信息已脱敏。",
           "to": "至", "person": "个人", "enterprise": "企业", "object": "物品", "place": "场所",
           "other": "English"},
    "en": {"title": "City code", "scene": "Scene", "department": "Issued by", "valid": "Valid", "holder": "Holder",
           "id": "Identifier", "revoked": "Revoked at", "serial": "Serial", "reason": "Check", "scans": "Scans",
           "officer": "You may see this department's codes: nothing below is masked.",
           "masked": "The holder's details are masked.", "to": "to", "person": "Person",
           "enterprise": "Enterprise", "object": "Object", "place": "Place", "other": "中文"},
}

_CSS = """
*{box-sizing:border-box}body{margin:0;font:16px/1.5 "Noto Sans CJK SC","Noto Sans SC","PingFang SC",
"Microsoft YaHei",system-ui,sans-serif;background:#f2f4f7;color:#1d2129}
main{max-width:480px;margin:0 auto;padding:16px}
header{display:flex;justify-content:space-between;align-items:center;margin-bottom:12px}
header h1{font-size:18px;margin:0}header a{font-size:14px;color:#165dff;text-decoration:none}
.card{background:#fff;border-radius:12px;padding:16px;box-shadow:0 1px 3px rgba(0,0,0,.08);margin-bottom:12px}
.verdict{border-left:6px solid #86909c}.verdict h2{margin:0 0 4px;font-size:24px}
.verdict p{margin:0;color:#4e5969}
.ok{border-color:#00b42a}.ok h2{color:#00b42a}.warn{border-color:#ff7d00}.warn h2{color:#d25f00}
.bad{border-color:#f53f3f}.bad h2{color:#cb2634}
dl{margin:0;display:grid;grid-template-columns:max-content 1fr;gap:8px 12px}
dt{color:#86909c}dd{margin:0;overflow-wrap:anywhere}
.note{font-size:13px;color:#86909c;margin:0 0 8px}
"""
_TONE = {"valid": "ok", "expired": "warn", "revoked": "bad"}
# The page's only resource is its inline style, allowed by hash: nothing else may load or run.
CSP = ("default-src 'none'; style-src 'sha256-" + base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
       + "'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def pick_language(query: str | None, accept_language: str | None) -> str:
    """`?lang=` first, then the browser's Accept-Language, then Chinese (the city's language)."""
    if query in LANGS:
        return query
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "zh"


def _when(ts: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M")


def render(view: dict[str, Any], lang: str, tz_name: str) -> str:
    lab, words = _LABELS[lang], _VERDICTS[lang]
    tz = ZoneInfo(tz_name)
    verdict = view["verdict"]
    head, text = words.get(verdict, (verdict, ""))
    text = text.format(dept=view.get("department") or ("签发部门" if lang == "zh" else "the issuing department"))
    rows: list[tuple[str, str]] = []
    if view["found"] and verdict != "malformed":
        dept = f"{view['department']} ({view['dept_id']})" if view["officer"] else view["department"]
        rows += [(lab["scene"], view["scene"]), (lab["department"], dept),
                 (lab["valid"], f"{_when(view['issued_at'], tz)} {lab['to']} {_when(view['expires_at'], tz)}")]
        if view.get("revoked_at"):
            rows.append((lab["revoked"], _when(view["revoked_at"], tz)))
        kind = lab.get(view.get("holder_type") or "", view.get("holder_type") or "")
        holder = " ".join(x for x in (kind, view.get("holder_name") or "") if x)
        if holder:
            rows.append((lab["holder"], holder))
        rows.append((lab["id"], view["holder_id"]))
        if view["officer"]:
            rows += [(lab["serial"], view["serial"]), (lab["reason"], view["reason"]),
                     (lab["scans"], str(view["scans"]))]
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in rows)
    note = ""
    if view["found"] and verdict != "malformed":
        note = f'<p class="note">{html.escape(lab["officer"] if view["officer"] else lab["masked"])}</p>'
    other = "en" if lang == "zh" else "zh"
    return (
        f'<!doctype html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1"><meta name="robots" content="noindex">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f'<title>{html.escape(lab["title"])}</title><style>{_CSS}</style></head><body><main>'
        f'<header><h1>{html.escape(lab["title"])}</h1>'
        f'<a href="?lang={other}" hreflang="{other}">{html.escape(lab["other"])}</a></header>'
        f'<section class="card verdict {_TONE.get(verdict, "bad")}" data-verdict="{html.escape(verdict)}">'
        f'<h2>{html.escape(head)}</h2><p>{html.escape(text)}</p></section>'
        + (f'<section class="card">{note}<dl>{facts}</dl></section>' if rows else "")
        + "</main></body></html>"
    )
