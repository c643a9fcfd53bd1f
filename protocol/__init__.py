"""The contract between edge devices and the hub: MQTT topics, payload models, city codes, signatures.

Imported by both `edge/` and `central/`; imports neither.
"""

SCHEMA_VERSION = 1
