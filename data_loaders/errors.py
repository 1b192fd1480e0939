"""Errors a user can cause with data: each message names the file/column and the fix."""
from __future__ import annotations


class DatasetError(ValueError):
    """An Arrow dataset (dataset.json or a shard) is missing, malformed or inconsistent."""


class IngestError(ValueError):
    """An NWB file (or ingest option) cannot be turned into an Arrow dataset."""
