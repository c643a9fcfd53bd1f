"""A device provisioned by an older build (its broker ACL lacks the receipt topic) gets its receipts once
the hub starts: the hub brings every device's ACL block up to the current contract and reloads mosquitto."""

from __future__ import annotations

from pathlib import Path

from central.app import build_hub
from central.bridge import store as bridge_store
from central.broker import Broker
from edge.config import parse_config
from edge.link import Link
from protocol import messages
from tests.conftest import make_settings
from tests.helpers import wait_for


def test_old_device_acl_gains_its_receipt_topic_at_hub_start(tmp_path: Path, broker: Broker) -> None:
    hub = build_hub(make_settings(tmp_path, broker))
    _row, cfg = hub.services["devices"].provision("site1", "camera", "old1", device="old1")
    cfg["outbox"]["path"] = str(tmp_path / "outbox.db")
    acl = broker.cfg.acl
    acl.write_text(acl.read_text().replace("topic read city/v1/site1/old1/receipt\n", ""))  # as an old build wrote it
    broker.reload()
    assert "old1/receipt" not in acl.read_text()
    link = Link(parse_config(cfg)).start()
    try:
        assert link.wait_connected(20)
        hub.start(bridge=True)
        assert "topic read city/v1/site1/old1/receipt" in acl.read_text()
        assert hub.publisher.wait_connected(20)  # type: ignore[attr-defined]
        link.publish_event(messages.Event(kind="litter", count=1))
        # Only a receipt from the hub empties the outbox (a PUBACK does not).
        wait_for(lambda: link.outbox.depth() == 0, 60, "receipt emptied the outbox")
        with hub.store.read() as db:
            assert bridge_store.count_events(db) == 1
        assert hub.services["devices"].refresh_broker_acl() is False  # idempotent: nothing left to change
    finally:
        link.stop()
        hub.close()
