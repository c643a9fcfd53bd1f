"""Scan terminal (城市码 = city code scanner): offline verdicts with or without a network.

decode.py (pyzbar / zxing-cpp, QR only) -> verify.py (protocol.citycode.verify_offline + trust_store.py +
replay.py) -> agent.py (trust sync over MQTT, scan log batches through the link's outbox) and cli.py
(`citybrain edge verify`).
"""
