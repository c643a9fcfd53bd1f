"""Retention: old events, scans, CDRs and audit rows are purged after the days the settings give, by one
hub worker, in small batches, keeping what is still needed (see service.py)."""
