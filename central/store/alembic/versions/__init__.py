"""Alembic revisions of the hub's schema (one linear history)."""

from __future__ import annotations

import importlib

baseline = importlib.import_module("central.store.alembic.versions.0001_baseline")
