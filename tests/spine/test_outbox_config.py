"""Edge outbox bounds/policies and device-config validation (field-named errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from citybrain.cli import app
from edge.config import ConfigError, load_config
from edge.outbox import Outbox, OutboxFull

ROOT = Path(__file__).resolve().parents[2]


def test_outbox_persists_and_drops_oldest(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_messages=10, on_full="drop_oldest")
    ids = [ob.put("t", f"m{i}".encode()) for i in range(15)]
    assert ob.depth() == 10 and ob.dropped == 5
    ob.close()
    ob = Outbox(tmp_path / "o.db", max_messages=10)
    rows = ob.pending(0, 100)
    assert [r.payload for r in rows] == [f"m{i}".encode() for i in range(5, 15)]
    assert ob.dropped == 5
    ob.delete([r.id for r in rows[:3]])
    assert ob.depth() == 7
    assert ids[-1] == rows[-1].id


def test_outbox_reject_new_by_bytes(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_messages=1000, max_bytes=64 * 1024, on_full="reject_new")
    ob.put("t", b"x" * 40_000)
    with pytest.raises(OutboxFull):
        ob.put("t", b"y" * 40_000)
    assert ob.depth() == 1 and ob.dropped == 1


@pytest.mark.parametrize("name", ["camera.example.yaml", "scanner.example.yaml"])
def test_shipped_examples_validate(name: str) -> None:
    cfg = load_config(ROOT / "firmware_configs" / name)
    assert cfg.kind in name


def test_config_errors_name_fields(tmp_path: Path) -> None:
    bad = yaml.safe_load((ROOT / "firmware_configs" / "camera.example.yaml").read_text())
    bad["mqtt"]["port"] = 70000
    bad["device"] = "has space"
    bad["outbox"]["on_full"] = "explode"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    joined = " | ".join(e.value.errors)
    assert "mqtt.port" in joined and "device" in joined and "outbox.on_full" in joined
    result = CliRunner().invoke(app, ["firmware", "validate", str(p)])
    assert result.exit_code == 1
    assert "mqtt.port" in result.output


def test_cli_validate_ok_and_schema(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["firmware", "validate", str(ROOT / "firmware_configs" / "scanner.example.yaml")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["protocol", "schema", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    names = {p.name for p in tmp_path.iterdir()}
    assert {"event.schema.json", "scan_batch.schema.json", "trust_list.schema.json"} <= names


def test_checked_in_schema_matches_the_model() -> None:
    import json

    from edge.config import json_schema

    on_disk = json.loads((ROOT / "firmware_configs" / "device-config.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(json_schema())), "run `citybrain firmware schema` to refresh it"
