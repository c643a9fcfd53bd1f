"""Registry bulk import with junk rows: a 10 MB cell, NUL and control characters, non-finite numbers and
huge integers in JSONL, a file that is not UTF-8. One bad row is rejected with its reason (naming the
column) while the good rows are stored; the CLI answers one line and exit 2 where the file itself is bad,
never a traceback."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient

from central.hub import Hub
from central.registry.store import tables
from central.settings import Settings
from tests.helpers import auth, token_for

ROOT = Path(__file__).resolve().parents[2]
BIG_CELL = "x" * 10_000_000


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["type", "region", "name", "address"])
    w.writerows(rows)
    return buf.getvalue()


def _names(hub: Hub) -> set[str]:
    with hub.store.read() as db:
        return set(db.run(sa.select(tables.entities.c.name)).scalars())


def test_api_import_rejects_the_bad_rows_only(hub: Hub, client: TestClient) -> None:
    h = auth(token_for(hub, "importer", role="city_admin", org="/city"))
    text = _csv([["place", "330106", "good 1", ""],
                 ["place", "330106", BIG_CELL, ""],           # over the csv module's own field limit
                 ["place", "330106", "good 2", "y" * 5000],   # over the importer's per-column limit
                 ["place", "330106", "nul\x00name", ""],
                 ["place", "330106", "esc\x1b[31m", ""],
                 ["place", "330106", "good 3", "Road 1\nFloor 2"]])  # a multi-line address is fine
    r = client.post("/api/v1/registry/import?format=csv&org=/city", content=text.encode(),
                    headers={**h, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["created"] == 2 and body["rejected"] == 4, body
    assert [(e["row"], e["field"]) for e in body["errors"]] == [(3, "name"), (4, "address"), (5, "name"),
                                                                (6, "name")], body["errors"]
    assert "longer than" in body["errors"][0]["error"] and "U+0000" in body["errors"][2]["error"]
    assert len(r.text) < 10_000  # the 10 MB cell is never echoed back
    assert {"good 1", "good 3"} <= _names(hub) and "good 2" not in _names(hub)


def test_api_import_jsonl_rejects_junk_numbers_per_row(hub: Hub, client: TestClient) -> None:
    h = auth(token_for(hub, "importer", role="city_admin", org="/city"))
    lines = [{"type": "place", "region": "330106", "name": "ok A"},
             {"type": "place", "region": "330106", "name": BIG_CELL[:2_000_000]},
             {"type": "place", "region": "330106", "name": "big int", "attrs": {"n": 2**70}},
             {"type": "place", "region": "330106", "name": "ok B", "attrs": {"n": 7}}]
    text = "\n".join(json.dumps(x) for x in lines) + '\n{"type": "place", "region": "330106", "name": "nan",' \
        ' "attrs": {"v": NaN}}\n'
    r = client.post("/api/v1/registry/import?format=jsonl&org=/city", content=text.encode(), headers=h)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["created"] == 2, body
    assert [(e["row"], e["field"]) for e in body["errors"]] == [(2, "name"), (3, "attrs.n"), (5, "attrs.v")]
    assert {"ok A", "ok B"} <= _names(hub)


def _cli(tmp_path: Path, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "hub.json"
    cfg.write_text(settings.model_dump_json())
    return subprocess.run([sys.executable, "-m", "citybrain.cli", "hub", "registry", *args, "--config", str(cfg)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)


def test_cli_import_of_a_10mb_cell_stores_the_good_rows(tmp_path: Path, settings: Settings, hub: Hub) -> None:
    src = tmp_path / "big.csv"
    src.write_text(_csv([["place", "330106", "cli good 1", ""], ["place", "330106", "big", BIG_CELL],
                         ["place", "330106", "cli good 2", ""]]), encoding="utf-8")
    res = _cli(tmp_path, settings, "import", str(src), "--org", "/city")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "row 3 address: longer than" in res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["created"] == 2
    assert {"cli good 1", "cli good 2"} <= _names(hub)


def test_cli_import_of_a_file_that_is_not_utf8_is_one_line(tmp_path: Path, settings: Settings, hub: Hub) -> None:
    src = tmp_path / "gbk.csv"
    src.write_bytes(_csv([["place", "330106", "ok", ""]]).encode() + "place,330106,测试,\n".encode("gbk"))
    res = _cli(tmp_path, settings, "import", str(src), "--org", "/city")
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr[-2000:]
    assert "line 3 is not UTF-8" in res.stderr
    assert "ok" not in _names(hub)  # refused before anything was stored
    good = tmp_path / "good.csv"
    good.write_text(_csv([["place", "330106", "not stored", ""]]), encoding="utf-8")
    res = _cli(tmp_path, settings, "import", str(good), "--org", "/city", "--ids",
               str(tmp_path / "missing-dir" / "ids.csv"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "missing-dir" in res.stderr, res.stderr
    assert "not stored" not in _names(hub)  # an unwritable output is found before the import starts
