"""MQTT <-> hub: ingest heartbeats, status, events, scans and acks; publish trust lists, revocations, cmds."""

PERMISSIONS: dict[str, str] = {"bridge.read": "See ingest counters and rejected payloads"}
