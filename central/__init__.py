"""The central hub: one FastAPI app, one SQLite store, one MQTT bridge; a folder per capability."""
