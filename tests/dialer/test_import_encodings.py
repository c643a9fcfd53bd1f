"""Issue 20, point 5: call lists in any digits and the encodings spreadsheets save, read right or refused
with the reason; export rows unique per task across imports."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient

from central.dialer import service as svc
from central.hub import Hub
from tests.helpers import auth, token_for

pytestmark = pytest.mark.both_backends

API = "/api/v1/dialer"
ORG = "/city/district-a"
LIST = "姓名,手机号\n山田太郎,13800000001\n王喆,+86 138-0000-0002\n"


@pytest.fixture
def h(hub: Hub) -> dict[str, str]:
    return auth(token_for(hub, "ann", role="district_admin", org=ORG))


def _task(client: TestClient, h: dict[str, str]) -> int:
    r = client.post(f"{API}/tasks", headers=h, json={"name": "t", "org": ORG, "template_key": "notice"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _upload(client: TestClient, h: dict[str, str], tid: int, data: bytes, name: str = "l.csv") -> dict:
    r = client.post(f"{API}/tasks/{tid}/contacts", headers=h, files={"file": (name, data)})
    return {"status": r.status_code, **r.json()}


def _names(client: TestClient, h: dict[str, str], tid: int) -> list[tuple[str, str, str]]:
    text = client.get(f"{API}/tasks/{tid}/export.csv", headers=h).text
    return [(r["row"], r["phone"], r["name"]) for r in csv.DictReader(io.StringIO(text))]


@pytest.mark.parametrize("raw", ["１３８００１３８０００", "١٣٨٠٠١٣٨٠٠٠", "۱۳۸۰۰۱۳۸۰۰۰", "१३८००१३८०००",
                                 "＋８６（１３８）００１３－８０００", "0086 138 0013 8000", "138\u200b0013\u20138000"])
def test_full_width_arabic_indic_and_other_digits_are_normalised(raw: str) -> None:
    assert svc.normalize_phone(raw) == "13800138000"


def test_phone_refusals_name_row_and_field_and_keep_the_good_rows(client: TestClient, hub: Hub,
                                                                  h: dict[str, str]) -> None:
    tid = _task(client, h)
    data = ("phone,name,priority\n"
            "１３８００１３８００１,全角,0\n"        # row 2: full-width, imported
            "١٣٨٠٠١٣٨٠٠٢,阿拉伯,0\n"              # row 3: Arabic-Indic, imported
            "138x0013800,坏,0\n"                  # row 4: a letter
            "13800138003,优先,1e309\n"            # row 5: priority overflow (was a 500)
            "13800138004,优先,500\n"              # row 6: priority out of range
            "13800138005,名\x07字,0\n"            # row 7: control character in a name
            f"13800138006,{'长' * 101},0\n"       # row 8: name too long
            "13800138007,好,3\n").encode()        # row 9: imported
    got = _upload(client, h, tid, data)
    assert got["status"] == 200 and got["imported"] == 3, got
    assert [(e["row"], e["field"]) for e in got["errors"]] == [
        (4, "phone"), (5, "priority"), (6, "priority"), (7, "name"), (8, "name")]
    assert "'x'" in got["errors"][0]["error"]
    assert [p for _, p, _ in _names(client, h, tid)] == ["138****8001", "138****8002", "138****8007"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"])
def test_utf16_with_and_without_bom_and_utf8_bom_are_read(client: TestClient, h: dict[str, str],
                                                          encoding: str) -> None:
    tid = _task(client, h)
    data = LIST.encode(encoding)  # "utf-16" writes a BOM; -le/-be do not
    assert (encoding == "utf-16") == data.startswith((b"\xff\xfe", b"\xfe\xff"))
    got = _upload(client, h, tid, data)
    assert got["status"] == 200 and got["imported"] == 2 and got["errors"] == [], got
    assert [n for _, _, n in _names(client, h, tid)] == ["山田太郎", "王喆"]


def test_gb18030_file_is_read(client: TestClient, h: dict[str, str]) -> None:
    tid = _task(client, h)
    data = "姓名,手机号\n王喆,13800000001\n李堃,13800000002\n张伟,13800000003\n".encode("gb18030")
    got = _upload(client, h, tid, data)
    assert got["status"] == 200 and got["imported"] == 3, got
    assert [n for _, _, n in _names(client, h, tid)] == ["王喆", "李堃", "张伟"]


def test_shift_jis_file_is_refused_not_read_as_gb18030(client: TestClient, h: dict[str, str]) -> None:
    tid = _task(client, h)
    data = "name,phone\n山田太郎,13800000001\n鈴木花子,13800000002\n佐藤一郎,13800000003\n".encode("shift_jis")
    assert data.decode("gb18030").splitlines()[1].startswith("嶳揷懢榊")  # what was imported before
    got = _upload(client, h, tid, data)
    assert got["status"] == 400 and got["field"] == "file", got
    assert "Shift-JIS" in got["detail"] and "UTF-8" in got["detail"]
    assert _names(client, h, tid) == []


@pytest.mark.parametrize(("data", "why"), [
    ("name,phone\n\ufffd\ufffd\ufffd,13800000001\n".encode(), "replacement"),
    (b"\xff\xfe" + "name,phone\n".encode("utf-16-le") + b"\x00\xd8,\x00", "UTF-16"),  # lone surrogate
    (b"name,phone\n\x00\x01\x02\x03\x04,1\n", "NUL"),
])
def test_replacement_characters_and_broken_files_are_refused(client: TestClient, h: dict[str, str],
                                                             data: bytes, why: str) -> None:
    tid = _task(client, h)
    got = _upload(client, h, tid, data)
    assert got["status"] == 400 and got["field"] == "file" and why in got["detail"], got


def test_export_row_numbers_are_unique_across_imports(client: TestClient, h: dict[str, str]) -> None:
    tid = _task(client, h)
    first = _upload(client, h, tid, b"phone\n13800000001\nbad\n13800000003\n")
    second = _upload(client, h, tid, b"phone\n13800000004\n13800000005\n")
    assert first["imported"] == 2 and second["imported"] == 2
    assert [e["row"] for e in first["errors"]] == [3]  # errors name the row of the file itself
    rows = _names(client, h, tid)
    # the first import keeps the file's rows, the next one continues after them
    assert [(r, p) for r, p, _ in rows] == [("2", "138****0001"), ("4", "138****0003"), ("5", "138****0004"),
                                            ("6", "138****0005")]
    assert len({r for r, _, _ in rows}) == len(rows)


def test_xlsx_with_full_width_digits(client: TestClient, h: dict[str, str]) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["手机号", "姓名"])
    ws.append(["１３８００００００１１", "王"])
    ws.append([13800000012, "李"])
    buf = io.BytesIO()
    wb.save(buf)
    tid = _task(client, h)
    got = _upload(client, h, tid, buf.getvalue(), "l.xlsx")
    assert got["imported"] == 2 and got["errors"] == [], got
