"""The page a phone opens when it scans a code (`/c/...`): Chinese by default, English on request; scene,
department and validity for anyone with the holder masked; details for an officer over the department; the
reason for a refusal in plain words; fits a phone's width."""

from __future__ import annotations

import re
from pathlib import Path

from central.codes.service import service_of
from central.codes.service.resolver import mask_id
from tests.codes.conftest import City, register_entity
from tests.helpers import auth, chromium, serve, token_for


def _issued(city: City, name: str = "Zhang San") -> tuple[str, str, str]:
    app_id = city.approved_scene()
    person = register_entity(city.hub, name=name)
    out = city.ok(city.issue(app_id, person, image="none"), 201)
    return person, out["serial"], "/c" + out["text"][len(service_of(city.hub).hub_resolver):]


def _facts(page: str) -> dict[str, str]:
    return dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", page))


def test_anyone_sees_department_scene_validity_and_a_masked_holder_in_chinese(city: City) -> None:
    person, serial, path = _issued(city, name="王小明")
    r = city.c.get(path)
    assert r.status_code == 200 and r.headers["content-language"] == "zh"
    facts = _facts(r.text)
    assert "有效" in r.text and facts["场景"] == "Clinic pass" and facts["签发部门"] == "Health"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d 至 \d{4}-\d\d-\d\d \d\d:\d\d", facts["有效期"])
    assert facts["持码对象"] == "个人 王**" and facts["标识"] == mask_id(person) != person
    assert person not in r.text and serial not in r.text and "王小明" not in r.text and "HEALTH" not in r.text
    assert "持码人信息已脱敏" in r.text
    en = city.c.get(path, headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert en.headers["content-language"] == "en" and _facts(en.text)["Issued by"] == "Health"
    assert city.c.get(path, params={"lang": "en"}, headers={"Accept-Language": "zh-CN"}).headers[
        "content-language"] == "en"  # the page's own switch wins over the browser


def test_an_officer_sees_details_and_the_name_only_with_registry_rights(city: City) -> None:
    person, serial, path = _issued(city, name="王小明")
    nurse = _facts(city.c.get(path, headers=city.issuer).text)  # codes.read over HEALTH; the holder lives in /city
    assert nurse["标识"] == person and nurse["序列号"] == serial and nurse["签发部门"] == "Health (HEALTH)"
    assert nurse["持码对象"] == "个人 王**" and nurse["扫码次数"] == "0"
    admin = _facts(city.c.get(path, headers=city.admin).text)  # registry.read over /city as well
    assert admin["持码对象"] == "个人 王小明"
    outsider = city.c.get(path, headers=city.outsider).text  # logged in, not over this department
    assert person not in outsider and serial not in outsider and "持码人信息已脱敏" in outsider
    viewer = auth(token_for(city.hub, "viewer", role="street_operator", org="/city/roads"))
    assert person not in city.c.get(path, headers=viewer).text


def test_refusals_are_explained_in_plain_words(city: City) -> None:
    _, serial, path = _issued(city)
    city.ok(city.c.post("/api/v1/codes/revoke", headers=city.admin, json={"serial": serial, "reason": "lost"}))
    zh = city.c.get(path)
    assert zh.status_code == 200 and 'data-verdict="revoked"' in zh.text
    assert "已撤销" in zh.text and "不能再使用" in zh.text and "撤销时间" in zh.text
    assert "lost" not in zh.text  # the department's own reason is for officers
    en = city.c.get(path, params={"lang": "en"}).text
    assert "Revoked" in en and "may no longer be used" in en
    forged = city.c.get(path[:-3] + ("000" if not path.endswith("000") else "111"))
    assert forged.status_code == 404 and "Clinic pass" not in forged.text
    junk = city.c.get("/c/garbage/x", params={"lang": "en"})
    assert junk.status_code == 404 and "Not a city code" in junk.text and "<dl>" not in junk.text


def test_expired_code_page_says_so(city: City) -> None:
    _, serial, path = _issued(city)
    svc = service_of(city.hub)
    rec = svc.code_record(serial)
    assert rec is not None
    view = svc.resolver_view(*path.split("/")[2:4], None)
    assert view["verdict"] == "valid"
    from central.codes import page

    expired = {**view, "verdict": "expired"}
    html = page.render(expired, "zh", "Asia/Shanghai")
    assert "已过期" in html and "重新申领" in html and "Health" in html


def test_the_page_fits_a_phone(city: City, tmp_path: Path) -> None:
    _, _, path = _issued(city, name="王小明")
    shots = tmp_path / "shots"
    shots.mkdir()
    with serve(city.hub) as url, chromium(tmp_path / "profile", 390, 844) as drv:
        for lang in ("zh", "en"):
            drv.get(f"{url}{path}?lang={lang}")
            body = drv.find_element("tag name", "body").text
            assert ("有效" if lang == "zh" else "Valid") in body and "Clinic pass" in body
            assert not any(bad in body for bad in ("[object", "undefined", "NaN"))
            sideways = drv.execute_script("return document.documentElement.scrollWidth - "
                                          "document.documentElement.clientWidth")
            assert sideways <= 0, f"{lang}: scrolls sideways by {sideways}px at 390px"
            shot = shots / f"code-page-{lang}.png"
            drv.save_screenshot(str(shot))
            print(f"screenshot: {shot}")
            errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, [e["message"][-160:] for e in errors]
